//! The example keeps working: it runs for a few seconds and prints what a user of it expects.

use std::process::Command;

#[test]
fn example_shows_and_hides_the_offer_and_reports_latency() {
    let out = Command::new(env!("CARGO_BIN_EXE_embed"))
        .args(["--seconds", "6"])
        .output()
        .expect("the example runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "exit {:?}\n{stdout}\n{stderr}",
        out.status
    );
    assert!(!stderr.contains("warning"), "{stderr}");

    let lines: Vec<&str> = stdout.lines().collect();
    let shown = lines.iter().position(|l| l.contains("offer-shown id=kit"));
    let hidden = lines.iter().position(|l| l.contains("offer-hidden id=kit"));
    assert!(
        matches!((shown, hidden), (Some(s), Some(h)) if s < h),
        "expected offer-shown then offer-hidden for the kit:\n{stdout}"
    );
    assert!(
        stdout.contains("title=\"Watercolour starter kit\""),
        "{stdout}"
    );

    // Latency reports with a measured figure: stamps made it through x264 and the decoder.
    let p95: Vec<f64> = lines
        .iter()
        .filter(|l| l.contains("latency-report frames="))
        .filter_map(|l| l.split("p95=").nth(1)?.split(' ').next()?.parse().ok())
        .collect();
    assert!(p95.len() >= 3, "expected a report per second:\n{stdout}");
    assert!(p95.iter().all(|ms| ms.is_finite() && *ms > 0.0), "{stdout}");
}
