//! Stamps written by latencystamp survive real encoders, muxers, network hops, HLS segments,
//! files and other tools' remuxing, and latencymeter reads back exactly what was written.

mod common;

use common::*;
use gst::prelude::*;
use std::process::Command;

const SECONDS_30: gst::ClockTime = gst::ClockTime::from_seconds(30);
const ENCODE: &str = "x264enc tune=zerolatency speed-preset=ultrafast key-int-max=15 bitrate=800";

/// The meter saw every frame exactly as stamped: same capture times in the same order, nothing
/// missing, no frame counter gap.
fn assert_read_back(written: &[u64], read: &[u64], report: &gst::Structure, frames: u64) {
    assert_eq!(written.len() as u64, frames, "frames stamped");
    assert_eq!(
        read, written,
        "capture times read back differ from those written"
    );
    assert_eq!(field_u64(report, "count"), frames);
    assert_eq!(field_u64(report, "missing"), 0);
    assert_eq!(field_u64(report, "malformed"), 0);
    assert_eq!(field_u64(report, "frames-lost"), 0);
}

#[test]
fn h264_through_mpegts_mux_demux_and_decoder() {
    init();
    let p = parse(&format!(
        "videotestsrc num-buffers=45 ! video/x-raw,width=320,height=240,format=I420,framerate=30/1 ! \
         latencystamp name=raw ! {ENCODE} ! latencystamp name=s mode=sei stream-id=ts ! \
         mpegtsmux ! tsdemux ! h264parse ! avdec_h264 ! \
         latencymeter name=m attach-meta=true ! fakesink"
    ));
    let written = record_stamps(&p, "raw");
    let read = record_stamps(&p, "m");
    let report = run_to_eos(&p, "m", SECONDS_30).expect("a report at EOS");
    assert_read_back(&written.get(), &read.get(), &report, 45);
    assert_eq!(report.get::<String>("stream-id").unwrap(), "ts");
}

#[test]
fn h264_mp4_file_round_trip_avc_framing() {
    init();
    let dir = tempdir("mp4");
    for (caps, name) in [
        // Stamped as byte-stream, converted to avc by h264parse for mp4mux.
        ("video/x-h264,stream-format=byte-stream", "bytestream.mp4"),
        // Stamped directly in avc (length-prefixed) framing.
        ("video/x-h264,stream-format=avc,alignment=au", "avc.mp4"),
    ] {
        let file = dir.join(name);
        let w = parse(&format!(
            "videotestsrc num-buffers=30 ! video/x-raw,width=320,height=240,format=I420 ! {ENCODE} ! \
             {caps} ! latencystamp name=s ! h264parse ! mp4mux ! filesink location={}",
            file.display()
        ));
        let written = record_stamps(&w, "s");
        run_to_eos(&w, "m", SECONDS_30);
        // No parser on the way back: latencymeter reads the avc access units itself.
        let r = parse(&format!(
            "filesrc location={} ! qtdemux ! latencymeter name=m attach-meta=true ! fakesink",
            file.display()
        ));
        let read = record_stamps(&r, "m");
        let report = run_to_eos(&r, "m", SECONDS_30).unwrap();
        assert_read_back(&written.get(), &read.get(), &report, 30);
    }
}

#[test]
fn h264_over_rtp_on_loopback() {
    init();
    let port = std::net::UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let receiver = parse(&format!(
        "udpsrc address=127.0.0.1 port={port} \
         caps=\"application/x-rtp,media=video,clock-rate=90000,encoding-name=H264,payload=96\" ! \
         rtpjitterbuffer latency=50 ! rtph264depay ! h264parse ! \
         latencymeter name=m attach-meta=true ! fakesink"
    ));
    let read = record_stamps(&receiver, "m");
    receiver.set_state(gst::State::Playing).unwrap();
    let sender = parse(&format!(
        "videotestsrc is-live=true num-buffers=45 ! video/x-raw,width=320,height=240,format=I420,framerate=30/1 ! \
         {ENCODE} ! latencystamp name=s ! rtph264pay config-interval=-1 pt=96 ! \
         udpsink host=127.0.0.1 port={port}"
    ));
    let written = record_stamps(&sender, "s");
    run_to_eos(&sender, "none", SECONDS_30);
    // Let the jitterbuffer deliver the tail, then stop the receiver.
    std::thread::sleep(std::time::Duration::from_millis(300));
    let report = receiver
        .by_name("m")
        .unwrap()
        .property::<gst::Structure>("stats");
    receiver.set_state(gst::State::Null).unwrap();

    let (written, read) = (written.get(), read.get());
    // Loopback UDP may drop nothing here, but the receiver may start a frame late: require
    // that what arrived is exactly the stamps written, in order, and nearly all of them.
    assert!(
        read.len() >= written.len() - 2,
        "{} of {}",
        read.len(),
        written.len()
    );
    let start = written
        .iter()
        .position(|t| *t == read[0])
        .expect("first stamp was written");
    assert_eq!(read, written[start..start + read.len()]);
    assert_eq!(field_u64(&report, "missing"), 0);
    // Measured on arrival after a real network hop and a 50 ms jitterbuffer: positive, sane.
    let p50 = field_f64(&report, "total-p50-ms");
    assert!(p50 > 0.0 && p50 < 1000.0, "p50 {p50} ms");
}

#[test]
fn h264_hls_segments_read_back() {
    init();
    let dir = tempdir("hls");
    let w = parse(&format!(
        "videotestsrc num-buffers=90 ! video/x-raw,width=320,height=240,format=I420,framerate=30/1 ! \
         {ENCODE} ! latencystamp name=s ! h264parse ! \
         hlssink2 target-duration=1 max-files=0 playlist-length=0 \
         location={0}/seg%05d.ts playlist-location={0}/live.m3u8",
        dir.display()
    ));
    let written = record_stamps(&w, "s");
    run_to_eos(&w, "none", SECONDS_30);

    let playlist = std::fs::read_to_string(dir.join("live.m3u8")).unwrap();
    let segments: Vec<&str> = playlist.lines().filter(|l| l.ends_with(".ts")).collect();
    assert!(segments.len() >= 3, "{playlist}");
    // MPEG-TS segments concatenate into one stream, as a player reads them in order.
    let mut joined = Vec::new();
    for seg in &segments {
        joined.extend(std::fs::read(dir.join(seg)).unwrap());
    }
    let file = dir.join("joined.ts");
    std::fs::write(&file, joined).unwrap();
    let r = parse(&format!(
        "filesrc location={} ! tsdemux ! h264parse ! latencymeter name=m attach-meta=true ! fakesink",
        file.display()
    ));
    let read = record_stamps(&r, "m");
    let report = run_to_eos(&r, "m", SECONDS_30).unwrap();
    assert_read_back(&written.get(), &read.get(), &report, 90);
}

#[test]
fn h265_through_decoder_and_matroska() {
    init();
    if !has_element("x265enc") {
        eprintln!("x265enc not installed: skipping");
        return;
    }
    let dir = tempdir("h265");
    let ts = dir.join("h265.ts");
    let mkv = dir.join("h265.mkv");
    let w = parse(&format!(
        "videotestsrc num-buffers=20 ! video/x-raw,width=320,height=240,format=I420,framerate=30/1 ! \
         x265enc speed-preset=ultrafast tune=zerolatency key-int-max=10 ! \
         latencystamp name=s stream-id=hevc ! tee name=t \
         t. ! queue ! h265parse ! mpegtsmux ! filesink location={} \
         t. ! queue ! h265parse ! matroskamux ! filesink location={}",
        ts.display(),
        mkv.display()
    ));
    let written = record_stamps(&w, "s");
    run_to_eos(&w, "none", SECONDS_30);
    let readers = [
        // Annex B, read after a decoder. h265parse (1.22) does not expose SEI as meta, so a
        // latencystamp before the decoder turns the SEI stamp into meta the decoder carries;
        // that meta holds the capture time only, the stream id stays in the SEI.
        (
            format!(
                "filesrc location={} ! tsdemux ! h265parse ! latencystamp mode=meta ! \
                 avdec_h265 ! latencymeter name=m attach-meta=true ! fakesink",
                ts.display()
            ),
            "",
        ),
        // hvc1 length-prefixed, read straight from the demuxer.
        (
            format!(
                "filesrc location={} ! matroskademux ! \
                 latencymeter name=m attach-meta=true ! fakesink",
                mkv.display()
            ),
            "hevc",
        ),
    ];
    for (reader, stream_id) in readers {
        let r = parse(&reader);
        let read = record_stamps(&r, "m");
        let report = run_to_eos(&r, "m", SECONDS_30).unwrap();
        assert_read_back(&written.get(), &read.get(), &report, 20);
        assert_eq!(report.get::<String>("stream-id").unwrap(), stream_id);
    }
}

#[test]
fn ffmpeg_remux_keeps_stamps_and_decodes_cleanly() {
    init();
    let dir = tempdir("ffmpeg");
    let ts = dir.join("stamped.ts");
    let mp4 = dir.join("remuxed.mp4");
    let w = parse(&format!(
        "videotestsrc num-buffers=30 ! video/x-raw,width=320,height=240,format=I420,framerate=30/1 ! \
         {ENCODE} ! latencystamp name=s ! h264parse ! mpegtsmux ! filesink location={}",
        ts.display()
    ));
    let written = record_stamps(&w, "s");
    run_to_eos(&w, "none", SECONDS_30);

    let out = Command::new("ffmpeg")
        .args(["-v", "error", "-y", "-i"])
        .arg(&ts)
        .args(["-c", "copy"])
        .arg(&mp4)
        .output()
        .expect("ffmpeg runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // An independent decoder decodes every frame without a complaint...
    let out = Command::new("ffmpeg")
        .args(["-v", "error", "-i"])
        .arg(&mp4)
        .args(["-f", "null", "-"])
        .output()
        .unwrap();
    assert!(
        out.status.success() && out.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // ...and sees the SEI on every frame.
    let out = Command::new("ffprobe")
        .args([
            "-v",
            "error",
            "-show_entries",
            "frame_side_data=side_data_type",
        ])
        .arg(&mp4)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let frames: Vec<&str> = text.split("[FRAME]").skip(1).collect();
    assert_eq!(frames.len(), 30, "{text}");
    assert!(
        frames
            .iter()
            .all(|f| f.contains("User Data Unregistered SEI message")),
        "{text}"
    );

    let r = parse(&format!(
        "filesrc location={} ! qtdemux ! latencymeter name=m attach-meta=true ! fakesink",
        mp4.display()
    ));
    let read = record_stamps(&r, "m");
    let report = run_to_eos(&r, "m", SECONDS_30).unwrap();
    assert_read_back(&written.get(), &read.get(), &report, 30);
}
