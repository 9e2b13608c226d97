//! Where a run's events go: JSON lines (`--json`), plain lines for a person, nothing, or an
//! embedding application's own sink. The runner is handed an [`Events`] when it starts and
//! passes it to every part that reports something, so two runs in one process each report
//! to their own sink.

use std::io::{IsTerminal as _, Write as _};
use std::sync::{Arc, LazyLock};

use crate::state;

/// The runner's GStreamer debug category: `GST_DEBUG=hybridlive*:5` traces the runner with
/// the elements.
pub(crate) static CAT: LazyLock<gst::DebugCategory> = LazyLock::new(|| {
    gst::DebugCategory::new(
        "hybridlive-runner",
        gst::DebugColorFlags::empty(),
        Some("hybridlive runner: outputs, ingest, HTTP server"),
    )
});

/// One thing that happened during a run.
#[derive(Debug, Clone, Copy)]
pub struct Event<'a> {
    /// What happened: `ready`, `output`, `warning`, `source`, `shutdown`, `stopped`, ...
    pub kind: &'a str,
    /// When, in nanoseconds since the Unix epoch (UTC).
    pub utc_ns: u64,
    /// Its details, a JSON object. Secrets (stream keys, tokens) are already masked.
    pub fields: &'a serde_json::Value,
}

/// Receives a run's events. An application embedding the runner implements it to route
/// events into its own log or UI.
pub trait EventSink: Send + Sync {
    /// One event. Called from the runner's threads: it must not block for long.
    fn event(&self, event: &Event<'_>);

    /// The run's figures, once a second: `status` is the JSON document `GET /api/status`
    /// serves and `line` a one-line summary for a person. Ignored unless overridden.
    fn status(&self, _status: &serde_json::Value, _line: &str) {}

    /// The run is ending: no more status comes (called once, before `stopped`).
    fn end(&self) {}
}

/// A cheap, clonable handle on a run's sink.
#[derive(Clone)]
pub struct Events(Arc<dyn EventSink>);

impl std::fmt::Debug for Events {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Events")
    }
}

impl Events {
    /// Events go to `sink`.
    pub fn new(sink: impl EventSink + 'static) -> Self {
        Self(Arc::new(sink))
    }

    /// One JSON object per line on standard output: events and a `status` event a second.
    pub fn json_lines() -> Self {
        Self::new(JsonLines)
    }

    /// Plain lines on standard output; on a terminal also a live status line.
    pub fn human() -> Self {
        Self::new(HumanLines {
            terminal: std::io::stdout().is_terminal(),
        })
    }

    /// Nowhere (but the debug log).
    pub fn discard() -> Self {
        Self::new(Discard)
    }

    /// Reports one event; it is also logged at INFO in the `hybridlive-runner` category.
    pub fn emit(&self, kind: &str, fields: serde_json::Value) {
        gst::info!(CAT, "{kind}: {fields}");
        self.0.event(&Event {
            kind,
            utc_ns: state::utc_now_ns(),
            fields: &fields,
        });
    }

    /// Reports the run's figures (once a second).
    pub fn status(&self, status: &serde_json::Value, line: &str) {
        self.0.status(status, line);
    }

    /// Says the run has ended.
    pub fn end(&self) {
        self.0.end();
    }
}

/// `--json`: one object per line, `{"event": kind, "utc": ..., ...fields}`.
struct JsonLines;

impl EventSink for JsonLines {
    fn event(&self, event: &Event<'_>) {
        let mut object =
            serde_json::json!({"event": event.kind, "utc": state::rfc3339(event.utc_ns)});
        if let (Some(o), serde_json::Value::Object(f)) = (object.as_object_mut(), event.fields) {
            o.extend(f.clone());
        }
        let _ = writeln!(std::io::stdout().lock(), "{object}");
    }

    fn status(&self, status: &serde_json::Value, _line: &str) {
        self.event(&Event {
            kind: "status",
            utc_ns: state::utc_now_ns(),
            fields: &serde_json::json!({ "status": status }),
        });
    }
}

/// Lines for a person. On a terminal an event first erases the live status line it
/// replaces; a file, a pipe or the journal gets plain lines, with no control codes.
struct HumanLines {
    terminal: bool,
}

impl EventSink for HumanLines {
    fn event(&self, event: &Event<'_>) {
        let mut out = std::io::stdout().lock();
        let erase = if self.terminal { "\r\x1b[K" } else { "" };
        let fields = event.fields;
        if event.kind == "ready" {
            let url = |key: &str| {
                fields
                    .get(key)
                    .and_then(|v| v.as_str())
                    .unwrap_or_default()
                    .to_string()
            };
            let _ = writeln!(
                out,
                "{erase}hybridlive: viewer at {}  (metrics {}{})",
                url("viewer"),
                url("metrics"),
                match url("hls").as_str() {
                    "" => String::new(),
                    hls => format!(", HLS {hls}"),
                }
            );
        } else {
            let _ = writeln!(out, "{erase}{}: {fields}", event.kind);
        }
    }

    fn status(&self, _status: &serde_json::Value, line: &str) {
        if self.terminal {
            let mut out = std::io::stdout().lock();
            let _ = write!(out, "\r\x1b[K{line}");
            let _ = out.flush();
        }
    }

    fn end(&self) {
        if self.terminal {
            println!();
        }
    }
}

/// Nothing but the debug log.
struct Discard;

impl EventSink for Discard {
    fn event(&self, _event: &Event<'_>) {}
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    #[derive(Default)]
    struct Collect(Mutex<Vec<(String, serde_json::Value)>>);

    impl EventSink for Arc<Collect> {
        fn event(&self, event: &Event<'_>) {
            self.0
                .lock()
                .unwrap()
                .push((event.kind.to_string(), event.fields.clone()));
        }
    }

    #[test]
    fn two_sinks_in_one_process_each_get_only_their_own_events() {
        gst::init().unwrap();
        let (a, b) = (Arc::new(Collect::default()), Arc::new(Collect::default()));
        let (events_a, events_b) = (Events::new(a.clone()), Events::new(b.clone()));
        events_a.emit("output", serde_json::json!({"output": "a"}));
        events_b.emit("warning", serde_json::json!({"message": "b"}));
        events_a.clone().emit("stopped", serde_json::json!({}));
        let kinds = |c: &Collect| {
            c.0.lock()
                .unwrap()
                .iter()
                .map(|(k, _)| k.clone())
                .collect::<Vec<_>>()
        };
        assert_eq!(kinds(&a), ["output", "stopped"]);
        assert_eq!(kinds(&b), ["warning"]);
    }
}
