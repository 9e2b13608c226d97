//! What the runner knows about itself, shared by the pipelines, the status line and the HTTP
//! server: latency per path, encoder rates, output states, recordings and markers.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Mutex;

use serde::Serialize;
use serde::ser::SerializeStruct as _;

/// Latency figures of one measured path, from the latest `latency-report`.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Latency {
    /// Median over the meter's window, milliseconds.
    pub p50_ms: f64,
    /// 95th percentile over the meter's window, milliseconds.
    pub p95_ms: f64,
    /// Frames measured since the meter started.
    pub count: u64,
}

/// Throughput of one encoder, updated once a second.
#[derive(Debug, Clone, Default, Serialize)]
pub struct EncoderStats {
    /// Bytes produced since start.
    pub bytes: u64,
    /// Buffers (frames) produced since start.
    pub buffers: u64,
    /// Output rate over the last second, kbit/s (0 until a second has passed).
    pub kbps: f64,
    /// Frames per second over the last second: video encoders only.
    pub fps: Option<f64>,
}

/// The current recording of a `record` output.
#[derive(Debug, Clone, Serialize)]
pub struct Recording {
    /// The MP4 file.
    pub path: PathBuf,
    /// The sidecar timeline JSON.
    pub timeline: PathBuf,
    /// UTC capture time of the first frame, nanoseconds since the Unix epoch.
    pub start_utc_ns: u64,
    /// Seconds of media written so far.
    pub duration_s: f64,
    /// Bytes on disk.
    pub bytes: u64,
}

/// State of one output.
#[derive(Debug, Clone, Serialize)]
pub struct OutputStatus {
    /// `hls` or `record`.
    pub kind: &'static str,
    /// `starting`, `running`, `connected` (WHIP/Janus egress: the link to the SFU is up),
    /// `failed` (until the restart after back-off), `stopping`, `stopped`.
    pub state: String,
    /// Restarts after failures since the runner started.
    pub restarts: u32,
    /// While `failed` and a restart is due: the back-off it waits, seconds.
    pub retry_in_s: Option<f64>,
    /// The last failure, if any.
    pub last_error: Option<String>,
    /// The recording in progress or last finished (record outputs).
    pub recording: Option<Recording>,
}

/// What the abrcontroller steering one output decided last.
#[derive(Debug, Clone, Default, Serialize)]
pub struct AbrStatus {
    /// The abrcontroller transform.
    pub controller: String,
    /// The encoder it steers.
    pub encoder: String,
    /// Bitrate given to the encoder, kbit/s.
    pub bitrate_kbps: u64,
    /// Rate the controller believes the link carries, kbit/s.
    pub target_kbps: u64,
    /// Explicit estimate the controller followed (rtpgccbwe, TWCC, an event), kbit/s.
    pub estimate_kbps: Option<u64>,
    /// Rung index, 0 the highest; `None` for bitrate-only control.
    pub rung: Option<u32>,
    /// Picture size of the rung, when there is a ladder.
    pub width: Option<u32>,
    /// Picture height of the rung.
    pub height: Option<u32>,
    /// `decrease`, `hold` or `increase`.
    pub direction: String,
    /// Why (`loss`, `rtt`, `backlog`, `probe`, ...).
    pub reason: String,
    /// Decisions that changed something since the start.
    pub decisions: u64,
}

/// A moment marked for repurposing.
#[derive(Debug, Clone, Serialize)]
pub struct Marker {
    /// UTC time of the mark, nanoseconds since the Unix epoch.
    pub utc_ns: u64,
    /// Free text from the request.
    pub label: String,
}

/// The markers set through the API, in the order they were set.
///
/// All of them are served by `GET /api/markers` (and are in each recording's sidecar). The
/// status, sent every second with `--json`, carries only how many there are and the latest:
/// a list there made every status line grow with each marker (240 markers, ~10 KB a line).
#[derive(Debug, Clone, Default)]
pub struct Markers(Vec<Marker>);

impl Markers {
    /// Adds the newest marker.
    pub fn push(&mut self, marker: Marker) {
        self.0.push(marker);
    }

    /// How many markers were set.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Every marker, oldest first.
    pub fn all(&self) -> &[Marker] {
        &self.0
    }
}

/// `{"count": N, "latest": {"utc_ns": ..., "label": "..."}}` (`latest` null before the first).
impl Serialize for Markers {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut summary = serializer.serialize_struct("Markers", 2)?;
        summary.serialize_field("count", &self.0.len())?;
        summary.serialize_field("latest", &self.0.last())?;
        summary.end()
    }
}

/// Everything the status line, `/metrics` and `/api/status` show.
#[derive(Debug, Default, Serialize)]
pub struct Snapshot {
    /// UTC start of the runner, nanoseconds since the Unix epoch.
    pub started_utc_ns: u64,
    /// Per measured path (output or encoder name).
    pub latency: BTreeMap<String, Latency>,
    /// Per file or network source: `primary` or `fallback` (slate or backup on air).
    pub sources: BTreeMap<String, String>,
    /// Per encoder.
    pub encoders: BTreeMap<String, EncoderStats>,
    /// Per output.
    pub outputs: BTreeMap<String, OutputStatus>,
    /// Per uplink output steered by an abrcontroller.
    pub abr: BTreeMap<String, AbrStatus>,
    /// WebRTC viewers connected (WHEP sessions).
    pub viewers: usize,
    /// Offers on screen now: id -> title.
    pub offers_on_screen: BTreeMap<String, String>,
    /// Markers set through the API (their count and the latest in the status).
    pub markers: Markers,
    /// URL of the viewer page.
    pub viewer_url: String,
}

/// The shared state, behind one mutex; nothing holds it while calling into GStreamer.
#[derive(Debug, Default)]
pub struct Shared {
    /// The figures.
    pub snapshot: Mutex<Snapshot>,
}

impl Shared {
    /// Runs `f` on the snapshot.
    pub fn with<R>(&self, f: impl FnOnce(&mut Snapshot) -> R) -> R {
        let mut guard = self.snapshot.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut guard)
    }
}

/// Now, UTC, in nanoseconds since the Unix epoch.
pub fn utc_now_ns() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

/// RFC 3339 UTC with milliseconds, e.g. `2026-11-27T11:15:00.123Z`.
pub fn rfc3339(utc_ns: u64) -> String {
    let secs = (utc_ns / 1_000_000_000) as i64;
    let millis = (utc_ns / 1_000_000) % 1000;
    let (y, mo, d, h, mi, s) = civil(secs);
    format!("{y:04}-{mo:02}-{d:02}T{h:02}:{mi:02}:{s:02}.{millis:03}Z")
}

/// Compact UTC for file names, e.g. `20261127T111500Z`.
pub fn compact_utc(utc_ns: u64) -> String {
    let (y, mo, d, h, mi, s) = civil((utc_ns / 1_000_000_000) as i64);
    format!("{y:04}{mo:02}{d:02}T{h:02}{mi:02}{s:02}Z")
}

/// Seconds since the epoch to (year, month, day, hour, minute, second), proleptic Gregorian.
fn civil(secs: i64) -> (i64, u32, u32, u32, u32, u32) {
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    // Howard Hinnant's days-from-civil inverse.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (
        y,
        m,
        d,
        (rem / 3600) as u32,
        ((rem % 3600) / 60) as u32,
        (rem % 60) as u32,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_status_carries_the_marker_count_and_the_latest_only() {
        let mut markers = Markers::default();
        assert_eq!(
            serde_json::to_value(&markers).unwrap(),
            serde_json::json!({"count": 0, "latest": null})
        );
        for i in 0..240u64 {
            markers.push(Marker {
                utc_ns: i,
                label: format!("marker {i}"),
            });
        }
        assert_eq!(
            serde_json::to_value(&markers).unwrap(),
            serde_json::json!({"count": 240, "latest": {"utc_ns": 239, "label": "marker 239"}})
        );
        assert_eq!(markers.all().len(), 240);
    }

    #[test]
    fn formats_utc() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00.000Z");
        // 2024-02-29T12:34:56.789Z (leap day).
        assert_eq!(
            rfc3339(1_709_210_096_789_000_000),
            "2024-02-29T12:34:56.789Z"
        );
        assert_eq!(compact_utc(1_709_210_096_789_000_000), "20240229T123456Z");
    }
}
