//! Shared helpers of the latency plugin's integration tests.
#![allow(dead_code)]

use gst::prelude::*;
use std::sync::{Arc, Mutex, Once};

pub fn init() {
    static INIT: Once = Once::new();
    INIT.call_once(|| {
        gst::init().unwrap();
        gstlatency::plugin_register_static().expect("latency plugin registers");
    });
}

/// Capture times (ns since the epoch) seen on a pad, in order, from the x-unix meta.
#[derive(Clone, Default)]
pub struct Recorded(pub Arc<Mutex<Vec<u64>>>);

impl Recorded {
    pub fn get(&self) -> Vec<u64> {
        self.0.lock().unwrap().clone()
    }
}

/// Records the x-unix reference timestamp of every buffer leaving `element`'s src pad.
pub fn record_stamps(pipeline: &gst::Pipeline, element: &str) -> Recorded {
    let recorded = Recorded::default();
    let pad = pipeline
        .by_name(element)
        .unwrap_or_else(|| panic!("no element {element}"))
        .static_pad("src")
        .unwrap();
    let sink = recorded.clone();
    pad.add_probe(gst::PadProbeType::BUFFER, move |_, info| {
        if let Some(buf) = info.buffer() {
            let stamp = buf
                .iter_meta::<gst::ReferenceTimestampMeta>()
                .find(|m| m.reference().structure(0).unwrap().name() == "timestamp/x-unix")
                .map(|m| m.timestamp().nseconds());
            if let Some(stamp) = stamp {
                sink.0.lock().unwrap().push(stamp);
            }
        }
        gst::PadProbeReturn::Ok
    });
    recorded
}

pub fn parse(desc: &str) -> gst::Pipeline {
    gst::parse::launch(desc)
        .unwrap_or_else(|e| panic!("{desc}: {e}"))
        .downcast::<gst::Pipeline>()
        .unwrap()
}

/// Runs `pipeline` to EOS (failing on any error or after `timeout`) and returns the last
/// `latency-report` posted by the element named `meter`, if any.
pub fn run_to_eos(
    pipeline: &gst::Pipeline,
    meter: &str,
    timeout: gst::ClockTime,
) -> Option<gst::Structure> {
    run_to_eos_reports(pipeline, timeout).remove(meter)
}

/// Runs `pipeline` to EOS and returns the last `latency-report` of every meter, by name.
pub fn run_to_eos_reports(
    pipeline: &gst::Pipeline,
    timeout: gst::ClockTime,
) -> std::collections::HashMap<String, gst::Structure> {
    let mut reports = std::collections::HashMap::new();
    pipeline.set_state(gst::State::Playing).unwrap();
    let bus = pipeline.bus().unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_nanos(timeout.nseconds());
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        let Some(msg) = bus.timed_pop(gst::ClockTime::from_nseconds(left.as_nanos() as u64)) else {
            pipeline.set_state(gst::State::Null).unwrap();
            panic!("pipeline did not reach EOS within {timeout}");
        };
        match msg.view() {
            gst::MessageView::Eos(_) => break,
            gst::MessageView::Error(err) => {
                pipeline.set_state(gst::State::Null).unwrap();
                panic!(
                    "error from {:?}: {} ({:?})",
                    err.src().map(|s| s.path_string()),
                    err.error(),
                    err.debug()
                );
            }
            gst::MessageView::Element(e) => {
                if let (Some(s), Some(src)) = (e.structure(), e.src())
                    && s.name() == "latency-report"
                {
                    reports.insert(src.name().to_string(), s.to_owned());
                }
            }
            _ => {}
        }
    }
    pipeline.set_state(gst::State::Null).unwrap();
    reports
}

pub fn field_u64(s: &gst::Structure, name: &str) -> u64 {
    s.get::<u64>(name).unwrap_or_else(|e| panic!("{name}: {e}"))
}

pub fn field_f64(s: &gst::Structure, name: &str) -> f64 {
    s.get::<f64>(name).unwrap_or_else(|e| panic!("{name}: {e}"))
}

pub fn tempdir(tag: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("hybridlive-latency-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

pub fn has_element(name: &str) -> bool {
    gst::ElementFactory::find(name).is_some()
}
