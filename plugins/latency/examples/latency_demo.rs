//! Glass-to-glass latency on this machine, per path, printed once a second.
//!
//!     cargo run --release -p gst-plugin-latency --example latency_demo -- [--seconds N]
//!
//! A live 1280x720@30 test pattern is stamped at capture, encoded once with x264 (zerolatency,
//! constrained baseline, the WebRTC profile) and stamped again in the bitstream (SEI). Three
//! latencymeters read the stamps: right after the encoder, after an RTP round trip over UDP on
//! loopback plus decoding (the WebRTC path without ICE/DTLS), and after MPEG-TS muxing,
//! demuxing and decoding (the HLS/recording path, before segmenting).

use gst::prelude::*;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut seconds = 15u64;
    let args: Vec<String> = std::env::args().collect();
    if let Some(i) = args.iter().position(|a| a == "--seconds") {
        seconds = args
            .get(i + 1)
            .and_then(|s| s.parse().ok())
            .ok_or("--seconds takes a whole number")?;
    }

    gst::init()?;
    gstlatency::plugin_register_static()?;

    let port = std::net::UdpSocket::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    // The RTP receiver runs as its own pipeline, as it would in another process.
    let receiver = gst::parse::launch(&format!(
        "udpsrc address=127.0.0.1 port={port} \
           caps=\"application/x-rtp,media=video,clock-rate=90000,encoding-name=H264,payload=96\" ! \
           rtpjitterbuffer latency=20 ! rtph264depay ! h264parse ! avdec_h264 ! \
           latencymeter name=rtp-decoded ! fakesink sync=false"
    ))?;
    let pipeline = gst::parse::launch(&format!(
        "videotestsrc is-live=true pattern=ball ! \
           video/x-raw,width=1280,height=720,framerate=30/1,format=I420 ! timeoverlay ! \
           latencystamp ! \
           x264enc tune=zerolatency speed-preset=ultrafast key-int-max=60 bitrate=2500 ! \
           latencystamp mode=sei stream-id=demo ! latencymeter name=encoded ! tee name=t \
         t. ! queue ! rtph264pay config-interval=-1 pt=96 ! \
           udpsink host=127.0.0.1 port={port} sync=false async=false \
         t. ! queue ! mpegtsmux ! tsdemux ! h264parse ! avdec_h264 ! \
           latencymeter name=mpegts-decoded ! fakesink sync=false"
    ))?
    .downcast::<gst::Pipeline>()
    .map_err(|_| "not a pipeline")?;

    receiver.set_state(gst::State::Playing)?;
    // Reports of both pipelines come out on one bus.
    let receiver_bus = receiver.bus().ok_or("no bus")?;
    let bus = pipeline.bus().ok_or("no bus")?;
    let forward = bus.clone();
    receiver_bus.set_sync_handler(move |_, msg| {
        let _ = forward.post(msg.clone());
        gst::BusSyncReply::Drop
    });
    pipeline.set_state(gst::State::Playing)?;
    println!("measuring for {seconds} s: capture -> each point, milliseconds (window of 10 s)");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(seconds);
    let mut eos_sent = false;
    loop {
        let msg = bus.timed_pop(gst::ClockTime::from_mseconds(200));
        match msg.as_ref().map(|m| m.view()) {
            None => {}
            Some(gst::MessageView::Element(e)) => {
                if let (Some(s), Some(src)) = (e.structure(), e.src())
                    && s.name() == "latency-report"
                {
                    print_report(&src.name(), s);
                }
            }
            Some(gst::MessageView::Error(err)) => {
                pipeline.set_state(gst::State::Null)?;
                return Err(format!("{}: {:?}", err.error(), err.debug()).into());
            }
            Some(gst::MessageView::Eos(_)) => break,
            _ => {}
        }
        if !eos_sent && std::time::Instant::now() >= deadline {
            eos_sent = true;
            pipeline.send_event(gst::event::Eos::new());
        }
        if eos_sent && std::time::Instant::now() >= deadline + std::time::Duration::from_secs(5) {
            return Err("the pipeline did not drain within 5 s of EOS".into());
        }
    }
    // Final reports of the receiver: it never sees EOS over UDP.
    if let Some(meter) = receiver
        .downcast_ref::<gst::Bin>()
        .and_then(|b| b.by_name("rtp-decoded"))
    {
        let s = meter.property::<gst::Structure>("stats");
        print_report("rtp-decoded", &s);
    }
    receiver.set_state(gst::State::Null)?;
    pipeline.set_state(gst::State::Null)?;
    Ok(())
}

fn print_report(name: &str, s: &gst::StructureRef) {
    let f = |field: &str| s.get::<f64>(field).unwrap_or(f64::NAN);
    let n = |field: &str| s.get::<u64>(field).unwrap_or(0);
    println!(
        "{name:>15}: p50 {:6.1}  p95 {:6.1}  p99 {:6.1}  max {:6.1}  frames {:5}  missing {}  lost {}",
        f("window-p50-ms"),
        f("window-p95-ms"),
        f("window-p99-ms"),
        f("window-max-ms"),
        n("count"),
        n("missing"),
        n("frames-lost"),
    );
}
