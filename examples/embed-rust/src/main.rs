//! A GStreamer application that links the hybridlive plugins and registers them statically: no
//! `GST_PLUGIN_PATH`, no installed `.so` needed.
//!
//!     cargo run -p hybridlive-example-embed -- [--seconds N]
//!
//! A live 1280x720 test pattern is stamped at capture (`latencystamp`), gets an offer card
//! burned in (`offeroverlay`), is encoded with x264 and stamped again inside the bitstream
//! (SEI), decoded, and measured (`latencymeter`). Every three seconds a timer shows or hides the
//! offer through the `show-offer` / `hide-offer` action signals. The bus prints the
//! `offer-shown` / `offer-hidden` and `latency-report` messages the elements post.

use std::time::{Duration, Instant};

use gst::prelude::*;

const OFFER: &str = r#"{
    "id": "kit",
    "title": "Watercolour starter kit",
    "price": "EUR 24",
    "badge": "-20 % live",
    "qr": "https://shop.example/kit"
}"#;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let seconds = match std::env::args().skip_while(|a| a != "--seconds").nth(1) {
        Some(s) => s
            .parse::<u64>()
            .map_err(|_| "--seconds takes a whole number")?,
        None => 12,
    };

    gst::init()?;
    // Register once per process, before any element of these plugins is made.
    gstlatency::plugin_register_static()?;
    gstofferoverlay::plugin_register_static()?;

    let pipeline = gst::parse::launch(
        "videotestsrc is-live=true pattern=smpte ! \
           video/x-raw,width=1280,height=720,framerate=30/1,format=I420 ! \
           latencystamp ! offeroverlay name=overlay anchor=bottom-right ! \
           x264enc tune=zerolatency speed-preset=ultrafast bitrate=2500 ! \
           latencystamp mode=sei ! h264parse ! avdec_h264 ! latencymeter ! fakesink",
    )?
    .downcast::<gst::Pipeline>()
    .map_err(|_| "the description is not a pipeline")?;
    let overlay = pipeline
        .by_name("overlay")
        .ok_or("no element named overlay")?;
    let bus = pipeline.bus().ok_or("the pipeline has no bus")?;

    pipeline.set_state(gst::State::Playing)?;
    let started = Instant::now();
    let mut next_toggle = Duration::from_secs(1);
    let mut shown = false;
    let result = loop {
        let elapsed = started.elapsed();
        if elapsed >= Duration::from_secs(seconds) {
            break Ok(());
        }
        if elapsed >= next_toggle {
            // Action signals return FALSE on bad input (a warning on the bus says why).
            let accepted = if shown {
                overlay.emit_by_name::<bool>("hide-offer", &[&"kit"])
            } else {
                overlay.emit_by_name::<bool>("show-offer", &[&OFFER])
            };
            println!(
                "{:>5.1} s  {} the offer: {}",
                elapsed.as_secs_f64(),
                if shown { "hiding" } else { "showing" },
                if accepted { "accepted" } else { "refused" }
            );
            shown = !shown;
            next_toggle += Duration::from_secs(3);
        }
        let Some(msg) = bus.timed_pop(gst::ClockTime::from_mseconds(50)) else {
            continue;
        };
        match msg.view() {
            gst::MessageView::Element(m) => {
                let Some(s) = m.structure() else { continue };
                match s.name().as_str() {
                    "offer-shown" | "offer-hidden" => println!(
                        "{:>5.1} s  {} id={} title={:?} running-time={} ms utc={}",
                        started.elapsed().as_secs_f64(),
                        s.name(),
                        s.get::<String>("id").unwrap_or_default(),
                        s.get::<String>("title").unwrap_or_default(),
                        s.get::<u64>("running-time").unwrap_or_default() / 1_000_000,
                        s.get::<String>("utc").unwrap_or_default(),
                    ),
                    "latency-report" => println!(
                        "{:>5.1} s  latency-report frames={} p50={:.1} ms p95={:.1} ms",
                        started.elapsed().as_secs_f64(),
                        s.get::<u64>("window-count").unwrap_or_default(),
                        s.get::<f64>("window-p50-ms").unwrap_or(f64::NAN),
                        s.get::<f64>("window-p95-ms").unwrap_or(f64::NAN),
                    ),
                    _ => {}
                }
            }
            gst::MessageView::Warning(w) => {
                eprintln!(
                    "warning from {:?}: {}",
                    w.src().map(|s| s.path_string()),
                    w.error()
                );
            }
            gst::MessageView::Error(e) => {
                break Err(format!(
                    "error from {:?}: {} ({:?})",
                    e.src().map(|s| s.path_string()),
                    e.error(),
                    e.debug()
                ));
            }
            _ => {}
        }
    };
    pipeline.set_state(gst::State::Null)?;
    Ok(result?)
}
