//! The pipeline file parser and validator behind `hybridlive validate` and `hybridlive run`:
//! any text yields a pipeline or diagnostics that render; never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    static INIT: std::sync::Once = std::sync::Once::new();
    INIT.call_once(|| hybridlive_runner::init().expect("GStreamer initialises"));
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Err(invalid) = hybridlive_runner::parse_named("fuzz.toml", text) {
        assert!(invalid.count > 0);
        assert!(invalid.rendered.starts_with("fuzz.toml:"));
    }
});
