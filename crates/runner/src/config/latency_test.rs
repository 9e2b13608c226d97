//! `[latency_test]`: the run and budgets of `hybridlive latency-test`.

use toml::de::{DeTable, DeValue};

use super::diagnostics::Diagnostic;
use super::model::LatencyTest;
use super::reader::Fields;

/// Reads the optional `[latency_test]` table; absent keys stay `None`.
pub(super) fn read(diags: &mut Vec<Diagnostic>, document: &DeTable) -> LatencyTest {
    let Some(value) = document.get("latency_test") else {
        return LatencyTest::default();
    };
    let DeValue::Table(table) = value.get_ref() else {
        return LatencyTest::default();
    };
    let mut f = Fields::new(table, Some("latency_test".into()), value.span());
    let mut budget = |f: &mut Fields, key: &'static str, max: f64| {
        let value = f.number(diags, key, 0.0, max, 0.0);
        table.contains_key(key).then_some(value)
    };
    let test = LatencyTest {
        duration: budget(&mut f, "duration", 3600.0),
        webrtc_p95_ms: budget(&mut f, "webrtc_p95_ms", 600_000.0),
        hls_p95_ms: budget(&mut f, "hls_p95_ms", 600_000.0),
        first_frame_ms: budget(&mut f, "first_frame_ms", 600_000.0),
        interaction_ms: budget(&mut f, "interaction_ms", 600_000.0),
    };
    f.finish(diags);
    test
}
