//! The socket of an SRT listener source, open for the whole run.
//!
//! fallbacksrc restarts a source that delivers nothing, and restarting an `srtsrc` listener
//! closes its socket: a sender dialling in at that moment was accepted and cut off a moment
//! later (ffmpeg then gives up with "Input/output error" and the class stays on the slate).
//! So the listener lives in a small pipeline of its own that nothing restarts, with
//! `keep-listening` so that it takes the next sender when one leaves, and what it receives is
//! handed to the `appsrc` of fallbacksrc's current main source, which demuxes and decodes it.
//! That decoding side may be restarted at will: no sender notices.
//!
//! Each sender's stream starts with a fresh demuxer and decoders: when the bytes stop for the
//! stall timeout (the sender left or died), the current `appsrc` reports it and fallbacksrc
//! restarts its main source, ready for whoever dials in next. Nothing else restarts it, so a
//! sender is on air as soon as its first key frame is decoded. (An error rather than an EOS:
//! fallbacksrc drops the EOS of a source it restarts from a pad probe, which trips a
//! GStreamer-CRITICAL in the Rust bindings on 1.22.)

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::events::Events;
use anyhow::{Context as _, anyhow};
use gst::prelude::*;

/// The URI fallbacksrc gets for a listener source: its main source is an `appsrc` fed here.
pub const BRIDGE_URI: &str = "appsrc://";
/// What the `appsrc` holds at most when its consumer is slow or restarting (the oldest goes).
const APPSRC_MAX_BYTES: u64 = 4 * 1024 * 1024;
/// How often the stall and the listener's health are checked.
const POLL: Duration = Duration::from_millis(100);
/// How long srtsrc waits for data at a time, in milliseconds.
const POLL_SLICE_MS: i32 = 100;
/// How long after a failure the listener is opened again.
const REOPEN_AFTER: Duration = Duration::from_secs(1);

/// Whether `uri` makes the runner an SRT listener (the sender dials in).
pub fn is_listener(uri: &str) -> bool {
    uri.starts_with("srt://") && uri.contains("mode=listener")
}

/// What the listener's thread and fallbacksrc's `appsrc` share.
#[derive(Default)]
struct Bridge {
    /// The `appsrc` of fallbacksrc's current main source, once it has started.
    appsrc: Mutex<glib::WeakRef<gst_app::AppSrc>>,
    /// When the last bytes arrived, while a sender is streaming (`None` in between).
    last_arrival: Mutex<Option<Instant>>,
}

/// An open SRT listener; dropping it closes the socket.
pub struct Listener {
    pipeline: gst::Pipeline,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for Listener {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
        let _ = self.pipeline.set_state(gst::State::Null);
    }
}

/// Opens `uri` (an SRT listener) for the source `name` and feeds what arrives to the `appsrc`
/// that `fallbacksrc` (given [`BRIDGE_URI`]) creates. `stall` is how long without bytes ends a
/// sender's stream.
pub fn open(
    name: &str,
    uri: &str,
    stall: Duration,
    fallbacksrc: &gst::Element,
    events: Events,
) -> anyhow::Result<Listener> {
    let bridge = Arc::new(Bridge::default());
    let pipeline = gst::Pipeline::with_name(&format!("{name}-srt-listener"));
    let src = gst::ElementFactory::make("srtsrc")
        .name(format!("{name}-srtsrc"))
        .property("uri", uri)
        .property("keep-listening", true)
        // Waits for data in slices, so that closing it (to drop a dead sender) does not wait
        // for SRT's 5 s peer timeout: srtsrc checks for a stop only between waits.
        .property("poll-timeout", POLL_SLICE_MS)
        .build()
        .context("srtsrc (gst-plugins-bad) is not installed")?;
    let sink = gst_app::AppSink::builder()
        .name(format!("{name}-srt-received"))
        .sync(false)
        .build();
    sink.set_property("async", false);
    pipeline.add_many([&src, sink.upcast_ref()])?;
    src.link(&sink)?;

    let received = bridge.clone();
    sink.set_callbacks(
        gst_app::AppSinkCallbacks::builder()
            .new_sample(move |sink| {
                let sample = sink.pull_sample().map_err(|_| gst::FlowError::Eos)?;
                *received.last_arrival.lock().unwrap() = Some(Instant::now());
                let appsrc = received.appsrc.lock().unwrap().upgrade();
                if let (Some(appsrc), Some(mut buffer)) = (appsrc, sample.buffer_owned()) {
                    // Stamped again on arrival in the ingest pipeline, by its clock.
                    let b = buffer.make_mut();
                    b.set_pts(gst::ClockTime::NONE);
                    b.set_dts(gst::ClockTime::NONE);
                    // Refused while fallbacksrc restarts it: those bytes are not wanted.
                    let _ = appsrc.push_buffer(buffer);
                }
                Ok(gst::FlowSuccess::Ok)
            })
            .build(),
    );

    let adopted = bridge.clone();
    fallbacksrc.connect("deep-element-added", false, move |args| {
        let element = args.get(2).and_then(|v| v.get::<gst::Element>().ok())?;
        let appsrc = element.downcast::<gst_app::AppSrc>().ok()?;
        appsrc.set_is_live(true);
        appsrc.set_format(gst::Format::Time);
        appsrc.set_do_timestamp(true);
        appsrc.set_max_bytes(APPSRC_MAX_BYTES);
        appsrc.set_property_from_str("leaky-type", "downstream");
        appsrc.set_caps(Some(
            &gst::Caps::builder("video/mpegts")
                .field("systemstream", true)
                .field("packetsize", 188i32)
                .build(),
        ));
        *adopted.appsrc.lock().unwrap() = appsrc.downgrade();
        None
    });

    pipeline.set_state(gst::State::Playing).map_err(|_| {
        let reason = pipeline
            .bus()
            .and_then(|bus| bus.pop_filtered(&[gst::MessageType::Error]))
            .and_then(|msg| match msg.view() {
                gst::MessageView::Error(err) => Some(err.error().to_string()),
                _ => None,
            })
            .unwrap_or_else(|| "the listener did not start".into());
        let _ = pipeline.set_state(gst::State::Null);
        anyhow!("source `{name}`: cannot listen on {uri}: {reason}")
    })?;

    let stop = Arc::new(AtomicBool::new(false));
    let thread = {
        let (name, pipeline, stop) = (name.to_string(), pipeline.clone(), stop.clone());
        std::thread::Builder::new()
            .name(format!("{name}-srt"))
            .spawn(move || watch(&name, &pipeline, &bridge, stall, &stop, &events))
            .context("cannot start the SRT listener's thread")?
    };
    Ok(Listener {
        pipeline,
        stop,
        thread: Some(thread),
    })
}

/// Until `stop`: ends the current sender's stream when its bytes stop for `stall` (and drops
/// its connection), and opens the listener again if it fails.
fn watch(
    name: &str,
    pipeline: &gst::Pipeline,
    bridge: &Bridge,
    stall: Duration,
    stop: &AtomicBool,
    events: &Events,
) {
    let Some(bus) = pipeline.bus() else {
        return;
    };
    while !stop.load(Ordering::SeqCst) {
        let stalled = {
            let mut last = bridge.last_arrival.lock().unwrap();
            let gone = last.is_some_and(|t| t.elapsed() >= stall);
            if gone {
                *last = None;
            }
            gone
        };
        if stalled {
            if let Some(appsrc) = bridge.appsrc.lock().unwrap().upgrade() {
                appsrc.post_error_message(gst::error_msg!(
                    gst::ResourceError::Read,
                    ["the SRT sender stopped sending: decoding starts afresh for the next one"]
                ));
            }
            // A sender that died without a goodbye stays "connected" until SRT's 5 s peer
            // timeout, and srtsrc takes nobody else meanwhile: one that dials in then is
            // dropped when srtsrc finally reopens. Reopened now, the listener is free at once
            // for a sender coming back (this cuts only a connection that has been silent for
            // the whole stall timeout).
            let _ = pipeline.set_state(gst::State::Null);
            let _ = pipeline.set_state(gst::State::Playing);
        }
        let Some(msg) = bus.timed_pop_filtered(
            gst::ClockTime::from_nseconds(POLL.as_nanos() as u64),
            &[gst::MessageType::Error, gst::MessageType::Eos],
        ) else {
            continue;
        };
        if stop.load(Ordering::SeqCst) {
            break;
        }
        let reason = match msg.view() {
            gst::MessageView::Error(err) => err.error().to_string(),
            _ => "end of stream".to_string(),
        };
        events.emit(
            "warning",
            serde_json::json!({
                "source": name,
                "message": format!("SRT listener: {reason}; listening again"),
            }),
        );
        let _ = pipeline.set_state(gst::State::Null);
        std::thread::sleep(REOPEN_AFTER);
        let _ = pipeline.set_state(gst::State::Playing);
    }
}
