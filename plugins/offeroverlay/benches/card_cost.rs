// SPDX-License-Identifier: MPL-2.0
//! Cost per 1080p I420 frame of `offeroverlay` showing one card, against GStreamer's
//! `gdkpixbufoverlay` (the same card as a PNG) plus `textoverlay` (its title and price drawn
//! over it), measured in the same run on one thread.
//!
//! `cargo bench -p gst-plugin-offeroverlay --bench card_cost`

use std::time::Instant;

use gst::prelude::*;
use gst_check::Harness;

const WIDTH: u32 = 1920;
const HEIGHT: u32 = 1080;
const WARMUP: usize = 30;
const FRAMES: usize = 600;

fn caps(features: &str) -> String {
    format!("video/x-raw{features},format=I420,width={WIDTH},height={HEIGHT},framerate=30/1")
}

/// Pushes one writable frame around in a loop (in-place elements hand it back), so that
/// neither allocation nor copies are measured. Returns microseconds per frame.
fn measure(h: &mut Harness) -> f64 {
    h.set_src_caps_str(&caps(""));
    let info = gst_video::VideoInfo::builder(gst_video::VideoFormat::I420, WIDTH, HEIGHT)
        .build()
        .unwrap();
    let mut buf = gst::Buffer::with_size(info.size()).unwrap();
    {
        let b = buf.get_mut().unwrap();
        let mut map = b.map_writable().unwrap();
        let y_size = (WIDTH * HEIGHT) as usize;
        map[..y_size].fill(110);
        map[y_size..].fill(140);
    }
    let frame_duration = gst::ClockTime::SECOND / 30;
    let mut pts = gst::ClockTime::ZERO;
    let mut run = |h: &mut Harness, mut buf: gst::Buffer, n: usize| -> gst::Buffer {
        for _ in 0..n {
            {
                let b = buf.make_mut();
                b.set_pts(pts);
                b.set_duration(frame_duration);
            }
            pts += frame_duration;
            h.push(buf).unwrap();
            buf = h.pull().unwrap();
            // Drop anything the element attached so the buffer stays the same.
            while let Some(meta) = buf
                .make_mut()
                .meta_mut::<gst_video::VideoOverlayCompositionMeta>()
            {
                meta.remove().unwrap();
            }
        }
        buf
    };
    buf = run(h, buf, WARMUP);
    let start = Instant::now();
    let _ = run(h, buf, FRAMES);
    start.elapsed().as_secs_f64() * 1e6 / FRAMES as f64
}

fn offeroverlay_harness(schedule: &str, sink_features: &str) -> Harness {
    let mut h = Harness::new("offeroverlay");
    let e = h.element().unwrap();
    e.set_property("schedule", schedule);
    e.set_property("fade-in", 0u32);
    h.set_sink_caps_str(&caps(sink_features));
    h
}

fn main() {
    gst::init().unwrap();
    gstofferoverlay::plugin_register_static().unwrap();

    let dir = std::env::temp_dir().join(format!("offeroverlay-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let title = "Watercolour starter kit";
    let price = "€29.00";
    let schedule = dir.join("s.toml");
    std::fs::write(
        &schedule,
        format!(
            "[[offers]]\nid = \"kit\"\ntitle = \"{title}\"\nsubtitle = \"Everything used in today's class\"\n\
             price = \"{price}\"\nbadge = \"12 kits left\"\nqr = \"https://shop.example.com/kit\"\n"
        ),
    )
    .unwrap();
    let schedule = schedule.to_str().unwrap().to_string();

    // The card as offeroverlay draws it: size and pixels, for the baseline's PNG.
    let (x, y, w, hgt, png) = {
        let mut h = offeroverlay_harness(&schedule, "(meta:GstVideoOverlayComposition)");
        h.set_src_caps_str(&caps(""));
        let info = gst_video::VideoInfo::builder(gst_video::VideoFormat::I420, WIDTH, HEIGHT)
            .build()
            .unwrap();
        let mut buf = gst::Buffer::with_size(info.size()).unwrap();
        buf.get_mut().unwrap().set_pts(gst::ClockTime::ZERO);
        h.push(buf).unwrap();
        let out = h.pull().unwrap();
        let meta = out
            .meta::<gst_video::VideoOverlayCompositionMeta>()
            .expect("card attached");
        let rect = meta.overlay().rectangle(0).unwrap();
        let (x, y, w, hgt) = rect.render_rectangle();
        let pixels = rect.pixels_unscaled_argb(gst_video::VideoOverlayFormatFlags::empty());
        let map = pixels.map_readable().unwrap();
        // BGRA in memory on little endian, straight alpha: swap to RGBA for the PNG.
        let mut rgba = map.to_vec();
        for px in rgba.chunks_exact_mut(4) {
            px.swap(0, 2);
        }
        let png = dir.join("card.png");
        image::RgbaImage::from_raw(w, hgt, rgba)
            .unwrap()
            .save(&png)
            .unwrap();
        (x, y, w, hgt, png)
    };

    // Drawing a card happens once, on the first frame that shows it.
    let first_frame = || {
        let mut h = offeroverlay_harness(&schedule, "");
        h.set_src_caps_str(&caps(""));
        let info = gst_video::VideoInfo::builder(gst_video::VideoFormat::I420, WIDTH, HEIGHT)
            .build()
            .unwrap();
        let mut buf = gst::Buffer::with_size(info.size()).unwrap();
        buf.get_mut().unwrap().set_pts(gst::ClockTime::ZERO);
        let start = Instant::now();
        h.push(buf).unwrap();
        let _ = h.pull().unwrap();
        start.elapsed().as_secs_f64() * 1e6
    };
    // The first card of the process also loads fonts.
    let first_card = first_frame();
    let first_frame = first_frame();
    let ours = measure(&mut offeroverlay_harness(&schedule, ""));
    let fading = {
        let mut h = offeroverlay_harness(&schedule, "");
        // A fade-in longer than the run: opacity changes on every frame.
        h.element().unwrap().set_property("fade-in", 60_000u32);
        measure(&mut h)
    };
    let ours_meta = measure(&mut offeroverlay_harness(
        &schedule,
        "(meta:GstVideoOverlayComposition)",
    ));
    let empty = dir.join("empty.toml");
    std::fs::write(&empty, "").unwrap();
    let idle = measure(&mut offeroverlay_harness(empty.to_str().unwrap(), ""));

    let bin = gst::parse::bin_from_description(
        &format!(
            "gdkpixbufoverlay name=image location=\"{}\" offset-x={x} offset-y={y} ! \
             textoverlay name=text text=\"{title}\n{price}\" font-desc=\"Sans Bold 28\" \
             halignment=left valignment=top xpad={} ypad={}",
            png.display(),
            x + 30,
            y + 30
        ),
        false,
    )
    .unwrap();
    let ghost = |element: &str, pad: &str, name: &str| {
        let target = bin.by_name(element).unwrap().static_pad(pad).unwrap();
        let ghost = gst::GhostPad::builder_with_target(&target)
            .unwrap()
            .name(name)
            .build();
        bin.add_pad(&ghost).unwrap();
    };
    ghost("image", "sink", "sink");
    ghost("text", "src", "src");
    let mut baseline = Harness::with_element(&bin, Some("sink"), Some("src"));
    baseline.set_sink_caps_str(&caps(""));
    let theirs = measure(&mut baseline);

    let mut identity = Harness::new("identity");
    identity.set_sink_caps_str(&caps(""));
    let harness_only = measure(&mut identity);

    let _ = std::fs::remove_dir_all(&dir);
    println!("card {w}x{hgt} at ({x},{y}) on {WIDTH}x{HEIGHT} I420, {FRAMES} frames, one thread");
    println!("offeroverlay, first card ever      {first_card:8.1} us (loads fonts)");
    println!("offeroverlay, first frame (draws)  {first_frame:8.1} us");
    println!("offeroverlay, blended              {ours:8.1} us/frame");
    println!("offeroverlay, blended while fading {fading:8.1} us/frame");
    println!("offeroverlay, attached as meta     {ours_meta:8.1} us/frame");
    println!("offeroverlay, no card visible      {idle:8.1} us/frame");
    println!("gdkpixbufoverlay + textoverlay     {theirs:8.1} us/frame");
    println!("harness alone (identity)           {harness_only:8.1} us/frame");
    let baseline = Some(("gdkpixbufoverlay + textoverlay", theirs));
    for (case, value) in [
        ("offeroverlay, card blended", ours),
        ("offeroverlay, card blended while fading", fading),
        ("offeroverlay, card attached as meta", ours_meta),
        ("offeroverlay, no card visible", idle),
    ] {
        hybridlive_bench::record(&hybridlive_bench::Figure {
            benchmark: "offer card per 1080p frame",
            case,
            value,
            unit: "us/frame",
            baseline,
            better: hybridlive_bench::Better::Lower,
        });
    }
    println!(
        "ratio offeroverlay / baseline: {:.3} (net of harness: {:.3})",
        ours / theirs,
        (ours - harness_only).max(0.0) / (theirs - harness_only).max(1e-9)
    );
}
