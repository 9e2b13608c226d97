//! WHEP viewer churn: viewers join and leave the runner in every way a real viewer leaves, and
//! what the runner holds is counted before and after.
//!
//! Cycle kinds, in turn:
//! - `delete`: joins, receives video, ends with `DELETE` (a page that closes cleanly);
//! - `vanish`: joins, receives video, disappears without a word (a closed laptop lid);
//! - `abort-before-ice`: posts its offer and disappears before applying the answer;
//! - `abort-mid-ice`: applies the answer and disappears while ICE is still checking.
//!
//! The runner must end every session (DELETE at once, the others by RTCP silence or ICE
//! failure), remove every `webrtcbin` and tee pad from its pipeline, and give back the file
//! descriptors, threads and memory the sessions took.

use crate::process::Sample;
use crate::runner::Runner;
use crate::viewer::{Viewer, ViewerOptions};
use anyhow::{Context as _, bail};
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// How a viewer leaves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Joins, receives video, sends DELETE.
    Delete,
    /// Joins, receives video, vanishes.
    Vanish,
    /// Posts its offer, vanishes before applying the answer.
    AbortBeforeIce,
    /// Applies the answer, vanishes before ICE connects.
    AbortMidIce,
}

impl Kind {
    /// Every kind, in the order cycles take them.
    pub const ALL: [Kind; 4] = [
        Kind::Delete,
        Kind::Vanish,
        Kind::AbortBeforeIce,
        Kind::AbortMidIce,
    ];

    /// Name in reports.
    pub fn name(self) -> &'static str {
        match self {
            Kind::Delete => "delete",
            Kind::Vanish => "vanish",
            Kind::AbortBeforeIce => "abort-before-ice",
            Kind::AbortMidIce => "abort-mid-ice",
        }
    }
}

/// What to run.
#[derive(Debug, Clone)]
pub struct ChurnConfig {
    /// Join/leave cycles after the warm-up.
    pub cycles: usize,
    /// Cycles before the baseline is taken (first sessions allocate pools, caches, codecs).
    pub warmup: usize,
    /// Viewers joining and leaving at the same time.
    pub parallel: usize,
    /// Video access units a joining viewer must receive before it leaves.
    pub units: u64,
    /// Longest wait for the runner to end every session after the last cycle (its RTCP
    /// silence timeout is 15 s).
    pub settle_timeout: Duration,
}

impl Default for ChurnConfig {
    fn default() -> Self {
        Self {
            cycles: 200,
            warmup: 100,
            parallel: 4,
            units: 10,
            settle_timeout: Duration::from_secs(60),
        }
    }
}

/// Counts of one churn run.
#[derive(Debug, Clone)]
pub struct ChurnReport {
    /// Cycles run after the warm-up, per kind.
    pub cycles: Vec<(Kind, usize)>,
    /// Sessions answered (`201`) over the whole run, warm-up included.
    pub answered: usize,
    /// Viewers that received the required video before leaving.
    pub received: usize,
    /// Viewers that should have received video but did not.
    pub starved: usize,
    /// Most sessions the runner reported at once (sampled).
    pub peak_sessions: f64,
    /// Time the measured cycles took, from the baseline to the last viewer leaving.
    pub churn_time: Duration,
    /// Time the runner took after that to end the remaining sessions.
    pub settle_time: Duration,
    /// The runner after the warm-up, with no viewer.
    pub baseline: Sample,
    /// The runner after the measured cycles, with no viewer, once settled.
    pub after: Sample,
    /// Sessions, webrtcbins and viewer tee pads left after the run (`/metrics`).
    pub left_sessions: f64,
    /// See `left_sessions`.
    pub left_webrtcbins: f64,
    /// See `left_sessions`.
    pub left_tee_pads: f64,
    /// Sessions left by `/api/status`.
    pub left_status_viewers: i64,
}

impl ChurnReport {
    /// RSS growth from the baseline, MB.
    pub fn rss_growth_mb(&self) -> f64 {
        self.after.rss_mb() - self.baseline.rss_mb()
    }

    /// One JSON object with every count.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "cycles": self.cycles.iter().map(|(k, n)| (k.name().to_string(), serde_json::json!(n))).collect::<serde_json::Map<_, _>>(),
            "answered": self.answered,
            "received_video": self.received,
            "starved": self.starved,
            "peak_sessions": self.peak_sessions,
            "churn_s": self.churn_time.as_secs_f64(),
            "settle_s": self.settle_time.as_secs_f64(),
            "left": {
                "sessions_metrics": self.left_sessions,
                "sessions_status": self.left_status_viewers,
                "webrtcbins": self.left_webrtcbins,
                "tee_pads": self.left_tee_pads,
            },
            "fds": {"baseline": self.baseline.fds, "after": self.after.fds},
            "threads": {"baseline": self.baseline.threads, "after": self.after.threads},
            "rss_mb": {"baseline": self.baseline.rss_mb(), "after": self.after.rss_mb(), "growth": self.rss_growth_mb()},
        })
    }
}

/// Runs `config.warmup` cycles, takes the baseline, runs `config.cycles` more, waits for the
/// runner to end every session and counts what is left. Errors are failures of the harness
/// (the runner died, refused an offer); leaks are in the report for the caller to judge.
pub fn churn(runner: &Runner, config: &ChurnConfig) -> anyhow::Result<ChurnReport> {
    let totals = Totals::default();
    run_cycles(runner, config.warmup, config, &totals, &mut 0.0)?;
    settle(runner, config.settle_timeout)?;
    let baseline = quiet_sample(runner.pid())?;

    let totals_measured = Totals::default();
    let started = Instant::now();
    let mut peak = 0.0;
    run_cycles(runner, config.cycles, config, &totals_measured, &mut peak)?;
    let churn_time = started.elapsed();
    let settled = Instant::now();
    settle(runner, config.settle_timeout)?;
    let settle_time = settled.elapsed();
    let after = sample_back_to(runner.pid(), &baseline, config.settle_timeout)?;

    let metrics = runner.request("GET", "/metrics", None, b"")?.text();
    let series = |name: &str| crate::runner::metric(&metrics, name).unwrap_or(f64::NAN);
    let status: serde_json::Value =
        serde_json::from_str(&runner.request("GET", "/api/status", None, b"")?.text())
            .context("/api/status is not JSON")?;
    let per_kind = *totals_measured.per_kind.lock().unwrap();
    Ok(ChurnReport {
        cycles: Kind::ALL.iter().copied().zip(per_kind).collect(),
        answered: totals.answered.load(Ordering::Relaxed)
            + totals_measured.answered.load(Ordering::Relaxed),
        received: totals.received.load(Ordering::Relaxed)
            + totals_measured.received.load(Ordering::Relaxed),
        starved: totals.starved.load(Ordering::Relaxed)
            + totals_measured.starved.load(Ordering::Relaxed),
        peak_sessions: peak,
        churn_time,
        settle_time,
        baseline,
        after,
        left_sessions: series("hybridlive_webrtc_viewers"),
        left_webrtcbins: series("hybridlive_webrtc_branches"),
        left_tee_pads: series("hybridlive_webrtc_tee_pads"),
        left_status_viewers: status["webrtc"]["viewers"].as_i64().unwrap_or(-1),
    })
}

#[derive(Default)]
struct Totals {
    answered: AtomicUsize,
    received: AtomicUsize,
    starved: AtomicUsize,
    per_kind: Mutex<[usize; 4]>,
}

fn run_cycles(
    runner: &Runner,
    cycles: usize,
    config: &ChurnConfig,
    totals: &Totals,
    peak: &mut f64,
) -> anyhow::Result<()> {
    let next = AtomicUsize::new(0);
    let failure: Mutex<Option<anyhow::Error>> = Mutex::new(None);
    let running = AtomicUsize::new(config.parallel);
    std::thread::scope(|scope| {
        for _ in 0..config.parallel {
            scope.spawn(|| {
                loop {
                    let n = next.fetch_add(1, Ordering::Relaxed);
                    if n >= cycles || failure.lock().unwrap().is_some() {
                        break;
                    }
                    let kind = Kind::ALL[n % Kind::ALL.len()];
                    if let Err(err) = cycle(runner, kind, config, totals) {
                        *failure.lock().unwrap() =
                            Some(err.context(format!("cycle {n} ({})", kind.name())));
                        break;
                    }
                    totals.per_kind.lock().unwrap()[n % Kind::ALL.len()] += 1;
                }
                running.fetch_sub(1, Ordering::Relaxed);
            });
        }
        // Sample the session count while the viewers come and go.
        while running.load(Ordering::Relaxed) > 0 {
            if let Ok(Some(sessions)) = runner.metric("hybridlive_webrtc_viewers") {
                *peak = peak.max(sessions);
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    });
    match failure.into_inner().unwrap() {
        Some(err) => Err(err),
        None => Ok(()),
    }
}

fn cycle(runner: &Runner, kind: Kind, config: &ChurnConfig, totals: &Totals) -> anyhow::Result<()> {
    let viewer = Viewer::new(&ViewerOptions::default())?;
    let offer = viewer.offer(Duration::from_secs(5))?;
    let created = runner.request("POST", "/whep", Some("application/sdp"), offer.as_bytes())?;
    if created.status != 201 {
        bail!("offer refused: {} {}", created.status, created.text());
    }
    totals.answered.fetch_add(1, Ordering::Relaxed);
    let location = created
        .header("location")
        .context("201 without a Location")?
        .to_string();
    match kind {
        Kind::AbortBeforeIce => return Ok(()),
        Kind::AbortMidIce => {
            viewer.accept(&created.text())?;
            return Ok(());
        }
        Kind::Delete | Kind::Vanish => viewer.accept(&created.text())?,
    }
    // Generous: the machine may be busy; a viewer that gets nothing is counted, not fatal.
    if viewer.wait_video(config.units, Duration::from_secs(20)) {
        totals.received.fetch_add(1, Ordering::Relaxed);
    } else {
        totals.starved.fetch_add(1, Ordering::Relaxed);
    }
    if kind == Kind::Delete {
        let deleted = runner.request("DELETE", &location, None, b"")?;
        if deleted.status != 200 {
            bail!("DELETE {location}: {} {}", deleted.status, deleted.text());
        }
    }
    Ok(())
}

/// Waits until the runner reports no session, no webrtcbin and no viewer tee pad.
fn settle(runner: &Runner, timeout: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        let metrics = runner.request("GET", "/metrics", None, b"")?.text();
        let zero = [
            "hybridlive_webrtc_viewers",
            "hybridlive_webrtc_branches",
            "hybridlive_webrtc_tee_pads",
        ]
        .iter()
        .all(|s| crate::runner::metric(&metrics, s) == Some(0.0));
        if zero || Instant::now() >= deadline {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// A sample once the runner holds no more descriptors and threads than `baseline` (GLib's
/// shared pool may keep one worker more), or the last one after `timeout`. A session leaves
/// the pipeline before its elements reach NULL and close their sockets, from a thread of
/// their own: on a loaded machine that can come well after the counts are quiet for a
/// moment, so a fixed quiet window would take a late close for a leak. A real leak stays and
/// shows in the sample taken at the timeout.
fn sample_back_to(pid: u32, baseline: &Sample, timeout: Duration) -> anyhow::Result<Sample> {
    let deadline = Instant::now() + timeout;
    loop {
        let now = quiet_sample(pid)?;
        let back = now.fds <= baseline.fds && now.threads <= baseline.threads + 1;
        if back || Instant::now() >= deadline {
            return Ok(now);
        }
    }
}

/// A sample once threads stopped exiting: a torn-down session's threads (GStreamer tasks,
/// libnice) end shortly after its state change returns.
fn quiet_sample(pid: u32) -> anyhow::Result<Sample> {
    let read = || Sample::read(pid).context("the runner is gone");
    let mut last = read()?;
    for _ in 0..20 {
        std::thread::sleep(Duration::from_millis(500));
        let now = read()?;
        if now.threads == last.threads && now.fds == last.fds {
            return Ok(now);
        }
        last = now;
    }
    Ok(last)
}
