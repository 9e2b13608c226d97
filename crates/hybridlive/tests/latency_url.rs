//! `hybridlive latency-test --url`: a running `hybridlive run` watched from outside with the
//! built-in WebRTC receiver; budgets, a skewed viewer clock, wrong addresses and `merge`.
//! Runs in a private network namespace: only 127.0.0.1 exists.
//!
//! `cargo nextest run -p hybridlive --test latency_url`

use hybridlive_testkit::faults::{ENCODERS, HLS, TEST_SOURCE, WEBRTC, write_config};
use hybridlive_testkit::runner_child::RunnerCommand;
use hybridlive_testkit::{TempDir, eventually, in_private_netns};
use std::io::{Read as _, Write as _};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::Path;
use std::process::{Command, Output};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// The `hybridlive` binary under test.
const HYBRIDLIVE: &str = env!("CARGO_BIN_EXE_hybridlive");

fn latency_test(args: &[&str]) -> Output {
    let out = Command::new(HYBRIDLIVE)
        .arg("latency-test")
        .args(args)
        .output()
        .expect("hybridlive runs");
    println!(
        "latency-test {}: {}\n{}{}",
        args.join(" "),
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

#[test]
fn url_mode_measures_a_running_server_checks_budgets_and_merges() {
    if !in_private_netns("url_mode_measures_a_running_server_checks_budgets_and_merges") {
        return;
    }
    let dir = TempDir::new("latency-url");
    let config = write_config(
        Path::new(HYBRIDLIVE),
        &dir.0,
        &[TEST_SOURCE, ENCODERS, WEBRTC],
    );
    let runner = RunnerCommand::binary(Path::new(HYBRIDLIVE), &config, &dir.0)
        .quiet()
        .start();
    // The WebRTC output starts after the server answers.
    eventually(Duration::from_secs(60), "the WHEP endpoint", || {
        (runner.request("OPTIONS", "/whep", &[], b"").status == 204).then_some(())
    });
    let url = format!("http://{}/", runner.addr());
    let loose = dir.path("loose.json");
    let strict = dir.path("strict.json");

    // A viewer whose clock is 5 s behind the server's, within loose budgets.
    let out = latency_test(&[
        "--url",
        &url,
        "--duration",
        "3",
        "--name",
        "skewed-viewer",
        "--json-out",
        loose.to_str().unwrap(),
        "--budget-g2g-ms",
        "60000",
        "--budget-first-frame-ms",
        "60000",
        "--clock-skew-ms",
        "-5000",
    ]);
    assert_eq!(out.status.code(), Some(0));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("glass-to-glass (WebRTC)     p50"), "{text}");
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&loose).unwrap()).unwrap();
    assert_eq!(report["vantage"], "skewed-viewer");
    assert!(report["frames"].as_u64().unwrap() > 0, "{report}");
    let clock = &report["clock"];
    let (offset, uncertainty) = (
        clock["offset_ms"].as_f64().unwrap(),
        clock["uncertainty_ms"].as_f64().unwrap(),
    );
    // Both ends share this machine's clock: the estimate finds the injected skew, within its
    // own uncertainty (and a margin for the time between the clock reads).
    assert!(
        (offset - 5000.0).abs() <= uncertainty + 50.0,
        "offset {offset} ± {uncertainty} ms"
    );
    let g2g = report["g2g_ms"]["p50"].as_f64().unwrap();
    // Uncorrected, every figure would be about 5 s below the truth, so negative.
    assert!(
        g2g > 0.0 && g2g < 5000.0,
        "g2g p50 {g2g} ms: skew not corrected"
    );
    assert!(report["first_frame_ms"].as_f64().unwrap() > 0.0);
    assert!(report["http_rtt_ms"]["count"].as_u64().unwrap() >= 1);

    // No first frame comes 1 ms after the offer: over budget, named.
    let out = latency_test(&[
        "--url",
        &url,
        "--duration",
        "1",
        "--name",
        "strict-viewer",
        "--json-out",
        strict.to_str().unwrap(),
        "--budget-first-frame-ms",
        "1",
        // No clock is known to 1 µs: the figure is refused rather than printed wrong.
        "--budget-g2g-ms",
        "0.01",
        "--max-clock-uncertainty",
        "0.1",
    ]);
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("over budget: first_frame_ms = 1 ms, measured"),
        "{stderr}"
    );
    assert!(
        stderr.contains("over budget: g2g_p95_ms = 0.01 ms, not measured"),
        "{stderr}"
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("EXCEEDED"), "{text}");
    assert!(
        text.contains("glass-to-glass (WebRTC)     not trustworthy, not printed"),
        "{text}"
    );
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&strict).unwrap()).unwrap();
    assert!(report["g2g_ms"].is_null() && report["frames"].as_u64().unwrap() > 0);

    // One table of both vantage points; exit code 2 because one is over budget.
    let out = latency_test(&["merge", loose.to_str().unwrap(), strict.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    let table = String::from_utf8_lossy(&out.stdout);
    let rows: Vec<&str> = table.lines().collect();
    assert_eq!(rows.len(), 4, "{table}");
    assert!(rows[1].starts_with("skewed-viewer") && rows[1].ends_with("ok"));
    assert!(
        rows[2].starts_with("strict-viewer")
            && rows[2].ends_with("OVER: g2g_p95_ms, first_frame_ms")
    );
    assert!(rows[3].ends_with("1 of 2 over budget"), "{table}");

    // A WHEP address the server does not serve: a clear error, not "over budget".
    let wrong = format!("http://{}/nowhere", runner.addr());
    let out = latency_test(&["--whep", &wrong, "--duration", "1"]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&wrong) && stderr.contains("answered 404"),
        "{stderr}"
    );
}

#[test]
fn a_server_that_is_not_there_is_a_clear_error() {
    if !in_private_netns("a_server_that_is_not_there_is_a_clear_error") {
        return;
    }
    // Nothing listens on port 1 in a fresh namespace.
    let out = latency_test(&["--url", "http://127.0.0.1:1/", "--duration", "1"]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("http://127.0.0.1:1/") && stderr.contains("cannot connect"),
        "{stderr}"
    );
    let out = latency_test(&["merge", "/nonexistent/report.json"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot read /nonexistent/report.json"));
}

#[test]
fn url_mode_plays_hls_through_the_viewer_page_in_chromium() {
    if !in_private_netns("url_mode_plays_hls_through_the_viewer_page_in_chromium") {
        return;
    }
    let dir = TempDir::new("latency-url-hls");
    let config = write_config(
        Path::new(HYBRIDLIVE),
        &dir.0,
        &[TEST_SOURCE, ENCODERS, WEBRTC, HLS],
    );
    let runner = RunnerCommand::binary(Path::new(HYBRIDLIVE), &config, &dir.0)
        .quiet()
        .start();
    // A viewer joins a running stream: wait for its first segments and for WHEP.
    eventually(Duration::from_secs(60), "two HLS segments", || {
        let playlist = runner.get("/hls/live.m3u8");
        (playlist.status == 200 && playlist.text().matches("#EXTINF").count() >= 2).then_some(())
    });
    eventually(Duration::from_secs(60), "the WHEP endpoint", || {
        (runner.request("OPTIONS", "/whep", &[], b"").status == 204).then_some(())
    });
    let report_file = dir.path("hls.json");
    let out = latency_test(&[
        "--url",
        &format!("http://{}/", runner.addr()),
        "--duration",
        "3",
        "--chromium",
        "hls",
        "--hls-p95-ms",
        "60000",
        "--json-out",
        report_file.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(0));
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&report_file).unwrap()).unwrap();
    let hls = &report["chromium"][0];
    assert_eq!(hls["path"], "hls", "{report}");
    assert_eq!(hls["played"], "hls", "{report}");
    assert!(hls["frames"].as_u64().unwrap() > 0, "{report}");
    assert!(hls["g2g_ms"]["p50"].as_f64().unwrap() > 0.0, "{report}");
    let budget = report["budgets"]
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["name"] == "hls_p95_ms")
        .expect("the HLS budget is checked");
    assert_eq!(budget["measured_ms"], hls["g2g_ms"]["p95"]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("Chromium, HLS"));
}

/// A TCP relay to `target` that holds what the client sends for `up` and what the server sends
/// back for `down`: a slow, asymmetric path to the origin. Returns its address.
fn delaying_relay(target: String, up: Duration, down: Duration) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").expect("a relay port");
    let addr = listener
        .local_addr()
        .expect("the relay's address")
        .to_string();
    std::thread::spawn(move || {
        for client in listener.incoming() {
            let (Ok(client), Ok(server)) = (client, TcpStream::connect(&target)) else {
                continue;
            };
            let (Ok(client_out), Ok(server_out)) = (client.try_clone(), server.try_clone()) else {
                continue;
            };
            hold(client, server_out, up);
            hold(server, client_out, down);
        }
    });
    addr
}

/// Copies `from` to `to`, each chunk `delay` after it arrived.
fn hold(mut from: TcpStream, mut to: TcpStream, delay: Duration) {
    let (tx, rx) = mpsc::channel::<(Instant, Vec<u8>)>();
    std::thread::spawn(move || {
        let mut buf = [0u8; 16384];
        while let Ok(n @ 1..) = from.read(&mut buf) {
            if tx
                .send((Instant::now() + delay, buf[..n].to_vec()))
                .is_err()
            {
                break;
            }
        }
    });
    std::thread::spawn(move || {
        for (due, chunk) in rx {
            std::thread::sleep(due.saturating_duration_since(Instant::now()));
            if to.write_all(&chunk).is_err() {
                break;
            }
        }
        let _ = to.shutdown(Shutdown::Write);
    });
}

#[test]
fn a_slow_asymmetric_path_widens_the_clock_bound_and_the_figure_is_refused() {
    if !in_private_netns("a_slow_asymmetric_path_widens_the_clock_bound_and_the_figure_is_refused")
    {
        return;
    }
    let dir = TempDir::new("latency-url-slow");
    let config = write_config(
        Path::new(HYBRIDLIVE),
        &dir.0,
        &[TEST_SOURCE, ENCODERS, WEBRTC],
    );
    let runner = RunnerCommand::binary(Path::new(HYBRIDLIVE), &config, &dir.0)
        .quiet()
        .start();
    eventually(Duration::from_secs(60), "the WHEP endpoint", || {
        (runner.request("OPTIONS", "/whep", &[], b"").status == 204).then_some(())
    });
    // 60 ms towards the origin, nothing back: the worst case for an NTP-style estimate.
    let relay = delaying_relay(runner.addr(), Duration::from_millis(60), Duration::ZERO);
    let url = format!("http://{relay}/");
    let skew_ms = 3000.0;
    let report_file = dir.path("slow.json");
    let run = |extra: &[&str]| {
        let mut args = vec![
            "--url",
            &url,
            "--duration",
            "2",
            "--clock-skew-ms",
            "3000",
            "--json-out",
            report_file.to_str().unwrap(),
        ];
        args.extend_from_slice(extra);
        let out = latency_test(&args);
        let report: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&report_file).unwrap()).unwrap();
        (out, report)
    };

    // A 100 ms budget cannot be checked with a clock known to ±30 ms or worse.
    let (out, report) = run(&["--budget-g2g-ms", "100"]);
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("glass-to-glass not trustworthy"),
        "{stderr}"
    );
    assert!(report["g2g_ms"].is_null() && report["frames"].as_u64().unwrap() > 0);
    let rtt = report["http_rtt_ms"]["min"].as_f64().unwrap();
    assert!(
        rtt >= 60.0,
        "every round trip crosses the relay's 60 ms: {rtt}"
    );
    let clock = &report["clock"];
    let (offset, uncertainty) = (
        clock["offset_ms"].as_f64().unwrap(),
        clock["uncertainty_ms"].as_f64().unwrap(),
    );
    assert!(uncertainty >= 30.0, "±{uncertainty} ms");
    // Both ends read this machine's clock: the true offset is minus the injected skew, and
    // the reported bound holds it whatever the asymmetry (1 ms for the rounding of reads).
    assert!(
        (offset + skew_ms).abs() <= uncertainty + 1.0,
        "offset {offset} ± {uncertainty} ms, true {}",
        -skew_ms
    );

    // With a bound the producer accepts, the figure is printed, skew corrected.
    let (out, report) = run(&["--budget-g2g-ms", "60000", "--max-clock-uncertainty", "1"]);
    assert_eq!(out.status.code(), Some(0));
    let g2g = report["g2g_ms"]["p50"].as_f64().unwrap();
    assert!(g2g > 0.0 && g2g < skew_ms, "g2g p50 {g2g} ms");
}
