//! Viewers of one ladder, each behind a link of its own (`tc tbf` on a veth pair to a network
//! namespace per viewer, `hybridlive_testkit::netns`): headless Chromium and a webrtcbin
//! viewer play `hybridlive run`'s WHEP endpoint, and each should get the rung its link
//! carries, read from what it decodes and from `/api/status`.
//!
//! `cargo nextest run -p hybridlive-runner --test ladder --run-ignored all` (the ignored tests
//! run in `in_private_namespaces`, which selects ignored tests in the child: `in_private_netns`
//! would pass them without running them).

use std::path::Path;
use std::time::Duration;

use hybridlive_testkit::netns::{BrowserViewer, GstViewer, ViewerHost, ViewerReports};
use hybridlive_testkit::runner_child::{RunnerChild, test_runner};
use hybridlive_testkit::{
    eventually_explained, free_tcp_port, in_private_namespaces, in_private_netns, scratch_dir,
};

hybridlive_testkit::runner_child_entry!();
hybridlive_testkit::whep_viewer_child_entry!();

/// Why the ladder tests wait. The ladder encoder and per-viewer switching have landed; on
/// 2026-12-07 (21:40 UTC, load 16) the viewers' bandwidth estimates (rtpgccbwe from TWCC)
/// stayed near the rate each received (176 and 246 kbit/s on 180-line rungs, none for the
/// webrtcbin viewer), so nobody climbed: the 5000 kbit/s viewer went 360 → 180 lines and stayed.
/// A 720p30 camera, its video encoded once (`rungs`: the default ladder, or none) and
/// Opus, served over WHEP to viewers on other hosts.
fn pipeline(dir: &Path, ladder: bool) -> std::path::PathBuf {
    let rungs = match ladder {
        true => "rungs = [\"1280x720@30:2500\", \"640x360@30:700\", \"320x180@30:200\"]\n",
        false => "bitrate = 2500\n",
    };
    let file = dir.join("ladder.toml");
    std::fs::write(
        &file,
        format!(
            "[sources.cam]\ntype = \"test\"\nwidth = 1280\nheight = 720\nframerate = 30\n\n\
             [encoders.video]\ntype = \"h264\"\ninputs = [\"cam\"]\npreset = \"zerolatency\"\n\
             keyframe_interval = 1\n{rungs}\n\
             [encoders.voice]\ntype = \"opus\"\ninputs = [\"cam\"]\nbitrate = 32\n\n\
             [outputs.webrtc]\ntype = \"webrtc\"\ninputs = [\"video\", \"voice\"]\n\
             loopback_only = false\n"
        ),
    )
    .expect("write the pipeline file");
    file
}

/// The runner listening on every address of the test's namespace (the viewer hosts' links).
fn start_runner(file: &Path, dir: &Path) -> (RunnerChild, u16) {
    let port = free_tcp_port();
    let runner = test_runner(file, dir)
        .http(&format!("0.0.0.0:{port}"))
        .start_within(Duration::from_secs(90));
    (runner, port)
}

/// A viewer's reports so far.
type ReportsOf<'a> = &'a dyn Fn() -> Vec<serde_json::Value>;

/// The decoded picture height in one of a viewer's reports.
type HeightOf = fn(&serde_json::Value) -> u64;

/// The decoded picture height of a Chromium report (0 before the first frame).
fn browser_height(report: &serde_json::Value) -> u64 {
    report["frameHeight"].as_u64().unwrap_or(0)
}

/// The decoded picture height of a webrtcbin viewer's report.
fn gst_height(report: &serde_json::Value) -> u64 {
    report["height"].as_u64().unwrap_or(0)
}

/// Reports in a row on one rung that count as settled there.
const SETTLED: usize = 3;

/// Waits until `viewer` (behind `host`) shows `height` in [`SETTLED`] reports in a row (from
/// decoded frames), and returns the index of the first of them.
fn settles_on(
    runner: &RunnerChild,
    host: &ViewerHost,
    name: &str,
    viewer: ReportsOf,
    height_of: HeightOf,
    height: u64,
    timeout: Duration,
) -> usize {
    eventually_explained(
        timeout,
        || {
            let heights: Vec<u64> = viewer().iter().map(height_of).collect();
            heights
                .windows(SETTLED)
                .position(|w| w.iter().all(|h| *h == height))
        },
        || {
            let heights: Vec<u64> = viewer().iter().map(height_of).collect();
            format!(
                "{name} never settled on {height} lines; heights each second: {heights:?}; \
                 sessions in /api/status: {}; its link: {}",
                runner.status()["webrtc"]["sessions"],
                host.link_stats()
            )
        },
    )
}

/// The rung heights the runner reports for its WHEP sessions in `/api/status`, sorted.
fn status_heights(runner: &RunnerChild) -> Vec<u64> {
    let status = runner.status();
    let mut heights: Vec<u64> = status["webrtc"]["sessions"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|s| {
            s["height"]
                .as_u64()
                .or_else(|| s["rung"]["height"].as_u64())
        })
        .collect();
    heights.sort_unstable();
    heights
}

/// A Chromium report's counter `key` (0 before the statistics exist).
fn counter(report: &serde_json::Value, key: &str) -> f64 {
    report[key].as_f64().unwrap_or(0.0)
}

/// What a Chromium viewer lost between reports `from` and `to`: frames dropped, freezes, and
/// seconds frozen.
fn browser_damage(reports: &[serde_json::Value], from: usize, to: usize) -> (f64, f64, f64) {
    let (a, b) = (&reports[from], &reports[to]);
    let delta = |k: &str| counter(b, k) - counter(a, k);
    (
        delta("framesDropped"),
        delta("freezeCount"),
        delta("totalFreezesDuration"),
    )
}

/// The infrastructure the ladder tests stand on, against today's single encode: Chromium and
/// the webrtcbin viewer, each in a namespace of its own behind a 5000 kbit/s link, decode the
/// 720p stream through the server's veth addresses, frames flowing, no error.
#[test]
fn shaped_viewers_decode_the_single_encode() {
    if !in_private_netns("shaped_viewers_decode_the_single_encode") {
        return;
    }
    let dir = scratch_dir("runner-test", "shaped-single");
    let (runner, port) = start_runner(&pipeline(&dir, false), &dir);
    let (browser_host, gst_host) = (ViewerHost::new(0, 5000), ViewerHost::new(1, 5000));
    let browser = BrowserViewer::start(
        &browser_host,
        &format!("http://{}:{port}", browser_host.server_ip()),
        90,
    );
    let gst = GstViewer::start(&gst_host, &format!("{}:{port}", gst_host.server_ip()), 90);
    let timeout = Duration::from_secs(60);
    let first = browser.wait_report("Chromium decoding 720p", timeout, |r| {
        browser_height(r) == 720 && counter(r, "framesDecoded") > 0.0
    });
    let later = browser.wait_report("Chromium decoding on", timeout, |r| {
        counter(r, "framesDecoded") >= counter(&first, "framesDecoded") + 60.0
    });
    assert_eq!(later["errors"], 0, "page errors: {later}");
    let first = gst.wait_report("webrtcbin decoding 720p", timeout, |r| {
        gst_height(r) == 720 && r["units"].as_u64() > Some(0)
    });
    let later = gst.wait_report("webrtcbin decoding on", timeout, |r| {
        r["units"].as_u64().unwrap_or(0) >= first["units"].as_u64().unwrap_or(0) + 60
    });
    assert_eq!(later["errors"], 0, "decoder errors: {later}");
    assert_eq!(
        runner.status()["webrtc"]["viewers"],
        2,
        "{}",
        runner.status()
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// Three viewers at once behind 5000, 1500 and 600 kbit/s: each settles on the rung its link
/// carries (720, 360, 180 lines) within seconds and stays there, without freezes, dropped
/// frames or decoder errors; the unconstrained one never leaves the top rung once on it. The
/// runner's `/api/status` names the same rungs.
#[test]
#[ignore = "viewers settle on 720/360/180, but under load Chromium drops 3-6 % of frames (1 % allowed; the single encode drops as many)"]
fn three_viewers_settle_on_the_rung_their_link_carries() {
    if !in_private_namespaces("three_viewers_settle_on_the_rung_their_link_carries") {
        return;
    }
    let dir = scratch_dir("runner-test", "ladder-three");
    let (runner, port) = start_runner(&pipeline(&dir, true), &dir);
    let hosts = [
        ViewerHost::new(0, 5000),
        ViewerHost::new(1, 1500),
        ViewerHost::new(2, 600),
    ];
    let base = |h: &ViewerHost| format!("http://{}:{port}", h.server_ip());
    let fast = BrowserViewer::start(&hosts[0], &base(&hosts[0]), 120);
    let middle = GstViewer::start(&hosts[1], &format!("{}:{port}", hosts[1].server_ip()), 120);
    let slow = BrowserViewer::start(&hosts[2], &base(&hosts[2]), 120);

    // "Within a few seconds" on an idle machine; the deadline allows for a loaded one.
    let settle = Duration::from_secs(60);
    let fast_at = settles_on(
        &runner,
        &hosts[0],
        "5000 kbit/s Chromium",
        &|| fast.reports(),
        browser_height,
        720,
        settle,
    );
    let middle_at = settles_on(
        &runner,
        &hosts[1],
        "1500 kbit/s webrtcbin",
        &|| middle.reports(),
        gst_height,
        360,
        settle,
    );
    let slow_at = settles_on(
        &runner,
        &hosts[2],
        "600 kbit/s Chromium",
        &|| slow.reports(),
        browser_height,
        180,
        settle,
    );

    // They stay: 15 more reports each, all on their rung.
    let stay = 15;
    let fast_reports = || fast.reports();
    let middle_reports = || middle.reports();
    let slow_reports = || slow.reports();
    let viewers: [(&str, ReportsOf, HeightOf, usize, u64); 3] = [
        ("5000", &fast_reports, browser_height, fast_at, 720),
        ("1500", &middle_reports, gst_height, middle_at, 360),
        ("600", &slow_reports, browser_height, slow_at, 180),
    ];
    for (name, reports, height_of, at, height) in viewers {
        eventually_explained(
            settle,
            || (reports().len() > at + stay).then_some(()),
            || format!("the {name} kbit/s viewer stopped reporting"),
        );
        let heights: Vec<u64> = reports()[at..=at + stay].iter().map(height_of).collect();
        assert!(
            heights.iter().all(|h| *h == height),
            "the {name} kbit/s viewer left {height} lines: {heights:?}"
        );
    }
    // /api/status names the same rungs (no addresses: compared as a set of heights).
    eventually_explained(
        Duration::from_secs(10),
        || (status_heights(&runner) == [180, 360, 720]).then_some(()),
        || format!("rungs in /api/status: {}", runner.status()["webrtc"]),
    );

    // Once settled, no damage: at most one short freeze, a few dropped frames, no errors.
    for (name, viewer, at) in [("5000", &fast, fast_at), ("600", &slow, slow_at)] {
        let reports = viewer.reports();
        let last = reports.len() - 1;
        let (dropped, freezes, frozen) = browser_damage(&reports, at, last);
        let decoded =
            counter(&reports[last], "framesDecoded") - counter(&reports[at], "framesDecoded");
        assert!(
            dropped <= decoded * 0.01 && freezes <= 1.0 && frozen <= 0.5,
            "the {name} kbit/s viewer after settling: {dropped} frames dropped of {decoded}, \
             {freezes} freezes, {frozen:.2} s frozen; rung switches: {:?}; last report: {}",
            runner.logged("viewer-rung"),
            reports[last]
        );
        assert_eq!(reports[last]["errors"], 0, "page errors: {}", reports[last]);
    }
    let reports = middle.reports();
    let after: Vec<&serde_json::Value> = reports[middle_at..].iter().collect();
    assert!(
        after
            .iter()
            .all(|r| r["longest_gap_ms"].as_u64() < Some(500)),
        "the 1500 kbit/s webrtcbin viewer froze: {after:?}"
    );
    assert_eq!(reports[reports.len() - 1]["errors"], 0, "decoder errors");

    // The unconstrained viewer never left the top rung once it reached it.
    let reports = fast.reports();
    let top = reports
        .iter()
        .position(|r| browser_height(r) == 720)
        .unwrap_or(0);
    let heights: Vec<u64> = reports[top..].iter().map(browser_height).collect();
    assert!(
        heights.iter().all(|h| *h == 720),
        "the 5000 kbit/s viewer: {heights:?}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// One viewer's link steps 5000 → 600 → 5000 kbit/s mid-stream: it moves down to 180 lines
/// without a freeze longer than 500 ms, and back up to 720 later; another viewer at 5000 kbit/s
/// stays on the top rung, without a gap, throughout.
#[test]
#[ignore = "a 5000 -> 600 step froze 1.8-4.1 s in three runs on a loaded machine (0.5 s allowed): loss is read from TWCC feedback, but a drop during a climb trial takes two switches (back, then down) and the link's queue drains first"]
fn a_viewer_whose_link_drops_moves_down_and_back_up_alone() {
    if !in_private_namespaces("a_viewer_whose_link_drops_moves_down_and_back_up_alone") {
        return;
    }
    let dir = scratch_dir("runner-test", "ladder-step");
    let (runner, port) = start_runner(&pipeline(&dir, true), &dir);
    let (stepped_host, steady_host) = (ViewerHost::new(0, 5000), ViewerHost::new(1, 5000));
    let stepped = BrowserViewer::start(
        &stepped_host,
        &format!("http://{}:{port}", stepped_host.server_ip()),
        180,
    );
    let steady = GstViewer::start(
        &steady_host,
        &format!("{}:{port}", steady_host.server_ip()),
        180,
    );
    let timeout = Duration::from_secs(60);
    let on_top = settles_on(
        &runner,
        &stepped_host,
        "stepped Chromium",
        &|| stepped.reports(),
        browser_height,
        720,
        timeout,
    );
    let steady_from = settles_on(
        &runner,
        &steady_host,
        "steady webrtcbin",
        &|| steady.reports(),
        gst_height,
        720,
        timeout,
    );

    let before_drop = stepped.reports().len() - 1;
    stepped_host.set_rate_kbit(600);
    let down_at = settles_on(
        &runner,
        &stepped_host,
        "Chromium at 600 kbit/s",
        &|| stepped.reports()[before_drop..].to_vec(),
        browser_height,
        180,
        timeout,
    ) + before_drop;
    let reports = stepped.reports();
    let (_, freezes, frozen) = browser_damage(&reports, before_drop, down_at + 2);
    // Each freeze of the step was shorter than 500 ms: together they were.
    assert!(
        frozen <= 0.5,
        "the step down froze the picture {freezes} times for {frozen:.2} s in all; \
         rung switches: {:?}; reports: {:?}",
        runner.logged("viewer-rung"),
        &reports[before_drop..]
    );
    assert!(on_top < before_drop);

    let before_rise = stepped.reports().len() - 1;
    stepped_host.set_rate_kbit(5000);
    settles_on(
        &runner,
        &stepped_host,
        "Chromium back at 5000 kbit/s",
        &|| stepped.reports()[before_rise..].to_vec(),
        browser_height,
        720,
        Duration::from_secs(90),
    );
    let last = stepped.reports().len() - 1;
    assert_eq!(stepped.reports()[last]["errors"], 0, "page errors");

    // The other viewer saw none of it.
    let reports = steady.reports();
    let during = &reports[steady_from..];
    assert!(
        during
            .iter()
            .all(|r| gst_height(r) == 720 && r["longest_gap_ms"].as_u64() < Some(500)),
        "the steady viewer was disturbed: {during:?}"
    );
    assert_eq!(during[during.len() - 1]["errors"], 0, "decoder errors");
    assert_eq!(
        status_heights(&runner),
        [720, 720],
        "{}",
        runner.status()["webrtc"]
    );
    let _ = std::fs::remove_dir_all(&dir);
}
