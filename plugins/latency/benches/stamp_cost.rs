//! Cost per buffer of stamping and reading, against `identity` measured in the same run.
//!
//!     cargo bench -p gst-plugin-latency --bench stamp_cost [-- --buffers N]
//!
//! Each case pushes N freshly wrapped buffers (sharing one payload memory, as an encoder's
//! output would be writable and single-owned) through one element in a gst_check::Harness and
//! pulls them out again; the harness overhead is the same for every case, so the difference to
//! `identity` is the element's own cost. Reported: ns per buffer, the difference to identity,
//! and the ratio.

use std::time::Instant;

const RAW_CAPS: &str = "video/x-raw,format=I420,width=1280,height=720,framerate=30/1";
const H264_CAPS: &str = "video/x-h264,stream-format=byte-stream,alignment=au";

fn h264_access_unit(slice_len: usize) -> Vec<u8> {
    let mut au = vec![0, 0, 0, 1, 0x09, 0x10];
    au.extend_from_slice(&[0, 0, 0, 1, 0x67, 0x42, 0xc0, 0x1e, 0xda]);
    au.extend_from_slice(&[0, 0, 0, 1, 0x68, 0xce, 0x3c, 0x80]);
    au.extend_from_slice(&[0, 0, 0, 1, 0x65]);
    au.extend((0..slice_len).map(|i| (i % 251) as u8 | 0x10));
    au
}

struct Case {
    name: &'static str,
    element: &'static str,
    caps: &'static str,
    payload: gst::Memory,
    /// Attach an x-unix meta to the input (a stamp from upstream).
    with_meta: bool,
}

fn run(case: &Case, buffers: u64) -> f64 {
    let element = gst::parse::launch(case.element).unwrap();
    let mut h = gst_check::Harness::with_element(&element, Some("sink"), Some("src"));
    h.set_src_caps_str(case.caps);
    h.play();
    let unix = gst::Caps::new_empty_simple("timestamp/x-unix");
    let make = |i: u64| {
        let mut buf = gst::Buffer::new();
        {
            let b = buf.get_mut().unwrap();
            b.append_memory(case.payload.clone());
            b.set_pts(gst::ClockTime::from_mseconds(i * 33));
            if case.with_meta {
                gst::ReferenceTimestampMeta::add(
                    b,
                    &unix,
                    gst::ClockTime::from_nseconds(1_795_000_000_000_000_000 + i),
                    gst::ClockTime::NONE,
                );
            }
        }
        buf
    };
    // Warm up caches, the clock mapping and the allocator.
    for i in 0..2000 {
        h.push(make(i)).unwrap();
        let _ = h.pull().unwrap();
    }
    let start = Instant::now();
    for i in 0..buffers {
        h.push(make(i)).unwrap();
        let _ = h.pull().unwrap();
    }
    start.elapsed().as_nanos() as f64 / buffers as f64
}

fn main() {
    gst::init().unwrap();
    gstlatency::plugin_register_static().unwrap();
    let mut buffers = 200_000u64;
    let args: Vec<String> = std::env::args().collect();
    if let Some(i) = args.iter().position(|a| a == "--buffers") {
        buffers = args[i + 1].parse().expect("--buffers N");
    }

    let raw = gst::Memory::from_slice(vec![0u8; 1280 * 720 * 3 / 2]);
    let au = gst::Memory::from_slice(h264_access_unit(100_000));
    // What a demuxer hands over: one memory holding the access unit with its stamp SEI.
    let stamped_au = {
        let element = gst::parse::launch("latencystamp mode=sei").unwrap();
        let mut h = gst_check::Harness::with_element(&element, Some("sink"), Some("src"));
        h.set_src_caps_str(H264_CAPS);
        h.play();
        let out = h
            .push_and_pull(gst::Buffer::from_slice(h264_access_unit(100_000)))
            .unwrap();
        gst::Memory::from_slice(out.map_readable().unwrap().to_vec())
    };

    let cases = [
        Case {
            name: "identity (baseline), raw 720p",
            element: "identity",
            caps: RAW_CAPS,
            payload: raw.clone(),
            with_meta: false,
        },
        Case {
            name: "latencystamp mode=meta, raw 720p",
            element: "latencystamp mode=meta",
            caps: RAW_CAPS,
            payload: raw.clone(),
            with_meta: false,
        },
        Case {
            name: "identity (baseline), 100 kB H.264",
            element: "identity",
            caps: H264_CAPS,
            payload: au.clone(),
            with_meta: false,
        },
        Case {
            name: "latencystamp mode=sei, 100 kB H.264",
            element: "latencystamp mode=sei",
            caps: H264_CAPS,
            payload: au.clone(),
            with_meta: false,
        },
        Case {
            name: "latencystamp mode=both, 100 kB H.264",
            element: "latencystamp mode=both",
            caps: H264_CAPS,
            payload: au.clone(),
            with_meta: false,
        },
        Case {
            name: "latencymeter, meta on raw 720p",
            element: "latencymeter interval=0",
            caps: RAW_CAPS,
            payload: raw.clone(),
            with_meta: true,
        },
        Case {
            name: "latencymeter, SEI in 100 kB H.264",
            element: "latencymeter interval=0",
            caps: H264_CAPS,
            payload: stamped_au,
            with_meta: false,
        },
    ];

    // Interleave rounds so that machine noise hits every case alike; keep the best round.
    let rounds = 3;
    let mut best = vec![f64::MAX; cases.len()];
    for _ in 0..rounds {
        for (i, case) in cases.iter().enumerate() {
            best[i] = best[i].min(run(case, buffers / rounds));
        }
    }
    let raw_base = best[0];
    let h264_base = best[2];
    println!("| case | ns/buffer | vs identity (ns) | ratio to identity |");
    println!("|---|---:|---:|---:|");
    for (i, case) in cases.iter().enumerate() {
        let base = if case.caps == RAW_CAPS {
            raw_base
        } else {
            h264_base
        };
        println!(
            "| {} | {:.0} | {:+.0} | {:.2} |",
            case.name,
            best[i],
            best[i] - base,
            best[i] / base
        );
        if !case.name.starts_with("identity") {
            hybridlive_bench::record(&hybridlive_bench::Figure {
                benchmark: "stamp cost per buffer",
                case: case.name,
                value: best[i],
                unit: "ns/buffer",
                baseline: Some(("identity", base)),
                better: hybridlive_bench::Better::Lower,
            });
        }
    }
}
