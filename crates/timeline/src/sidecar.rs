//! The sidecar timeline: what happened during a recorded event, written next to the recording.
//!
//! The recorder writes it; `hybridlive repurpose` reads it to find the moments worth a clip.
//!
//! # File name
//! For a recording `class.mp4` the sidecar is `class.timeline.json` in the same folder (the
//! recording's extension replaced by [`SIDECAR_SUFFIX`]); see [`sidecar_path`].
//!
//! # Format (version 1)
//! ```json
//! {
//!   "version": 1,
//!   "recording": "class.mp4",
//!   "started_at": "2026-11-27T10:00:00Z",
//!   "started_at_ns": 1795773600000000000,
//!   "ended_at": "2026-11-27T11:00:00Z",
//!   "events": [
//!     { "type": "offer-shown", "at": 125.0, "duration": 20.0,
//!       "offer_id": "spring-sale", "title": "Spring sale: 20 % off" },
//!     { "type": "marker", "at": 300.5, "label": "sourdough fold", "kind": "demo" },
//!     { "type": "marker", "at": 410.0, "duration": 35.0, "label": "Q: proofing time?",
//!       "kind": "question" }
//!   ]
//! }
//! ```
//! - `at` and `duration` are seconds of the recording's own timeline (stream time: 0 is the
//!   first frame of the file), as JSON numbers.
//! - `recording` (file name relative to the sidecar), `started_at` (RFC 3339 wall-clock time
//!   of stream time 0, the capture time of the first frame), `started_at_ns` (the same in ns
//!   since the Unix epoch) and `ended_at` (set when the recording was finalised; absent after a
//!   crash) are informative.
//! - `offer-shown`: an offer was on screen from `at` for `duration` seconds.
//! - `marker`: a moment flagged during the event (`duration` optional, default 0); `kind` is
//!   free text (`demo`, `question`, `highlight`...).
//! - Unknown event types and fields are ignored so newer recorders stay readable.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::range::ClipRange;

/// What replaces a recording's extension to name its sidecar.
pub const SIDECAR_SUFFIX: &str = ".timeline.json";

/// The current format version.
pub const VERSION: u32 = 1;

/// The sidecar of `recording`: same folder, extension replaced by [`SIDECAR_SUFFIX`].
pub fn sidecar_path(recording: &Path) -> PathBuf {
    let stem = recording
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    recording.with_file_name(format!("{stem}{SIDECAR_SUFFIX}"))
}

/// The sidecar timeline of one recording.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Timeline {
    /// Format version; readers refuse versions newer than [`VERSION`].
    pub version: u32,
    /// File name of the recording, relative to the sidecar.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recording: Option<String>,
    /// RFC 3339 wall-clock time of stream time 0.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<String>,
    /// The same instant in nanoseconds since the Unix epoch (UTC).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at_ns: Option<u64>,
    /// RFC 3339 wall-clock time the recording was finalised; absent after a crash.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ended_at: Option<String>,
    /// What happened, in any order.
    #[serde(default)]
    pub events: Vec<TimelineEvent>,
}

/// One event on the timeline.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "kebab-case")]
pub enum TimelineEvent {
    /// An offer was shown on screen.
    OfferShown {
        /// Seconds from the start of the recording.
        at: f64,
        /// Seconds it stayed on screen.
        duration: f64,
        /// The offer's identifier.
        offer_id: String,
        /// The offer's title as shown.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        title: Option<String>,
    },
    /// A moment flagged during the event.
    Marker {
        /// Seconds from the start of the recording.
        at: f64,
        /// Seconds the moment lasts (0: an instant).
        #[serde(default)]
        duration: f64,
        /// What the moment is.
        label: String,
        /// Free-form category (`demo`, `question`, `highlight`...).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        kind: Option<String>,
    },
    /// An event type this version does not know.
    #[serde(other)]
    Unknown,
}

impl TimelineEvent {
    /// A short label for manifests and progress lines.
    pub fn label(&self) -> Option<String> {
        match self {
            TimelineEvent::OfferShown {
                offer_id, title, ..
            } => Some(format!(
                "offer {offer_id}{}",
                title.as_ref().map(|t| format!(": {t}")).unwrap_or_default()
            )),
            TimelineEvent::Marker { label, kind, .. } => Some(match kind {
                Some(k) => format!("{k}: {label}"),
                None => label.clone(),
            }),
            TimelineEvent::Unknown => None,
        }
    }

    /// The event's span in seconds, when it has one.
    fn span(&self) -> Option<(f64, f64)> {
        match self {
            TimelineEvent::OfferShown { at, duration, .. }
            | TimelineEvent::Marker { at, duration, .. } => Some((*at, at + duration.max(0.0))),
            TimelineEvent::Unknown => None,
        }
    }
}

/// Why a sidecar could not be used.
#[derive(Debug, thiserror::Error)]
pub enum SidecarError {
    /// The file could not be read.
    #[error("cannot read sidecar {path}: {source}")]
    Io {
        /// The sidecar path.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The file is not a valid timeline.
    #[error("invalid sidecar {path}: {source}")]
    Json {
        /// The sidecar path.
        path: PathBuf,
        /// Where and why parsing failed.
        source: serde_json::Error,
    },
    /// The file is from a newer recorder.
    #[error("sidecar {path} has version {version}; this build reads up to {VERSION}")]
    Version {
        /// The sidecar path.
        path: PathBuf,
        /// The version found.
        version: u32,
    },
    /// An event has a negative, infinite or NaN time.
    #[error("sidecar {path}: event {index} has an invalid time")]
    BadTime {
        /// The sidecar path.
        path: PathBuf,
        /// Index of the event in `events`.
        index: usize,
    },
}

/// A clip proposed from the timeline.
#[derive(Debug, Clone, PartialEq)]
pub struct ProposedClip {
    /// The range to cut, lead-in and lead-out included, clamped at 0.
    pub range: ClipRange,
    /// Labels of the events that produced it (several when overlapping clips were merged).
    pub markers: Vec<String>,
}

impl Timeline {
    /// A new, empty timeline of the current version.
    pub fn new() -> Self {
        Self {
            version: VERSION,
            recording: None,
            started_at: None,
            started_at_ns: None,
            ended_at: None,
            events: Vec::new(),
        }
    }

    /// Reads and validates a sidecar file.
    pub fn read(path: &Path) -> Result<Self, SidecarError> {
        let text = std::fs::read_to_string(path).map_err(|source| SidecarError::Io {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(&text, path)
    }

    /// Parses and validates sidecar text; `path` is only used in errors.
    pub fn parse(text: &str, path: &Path) -> Result<Self, SidecarError> {
        let timeline: Timeline =
            serde_json::from_str(text).map_err(|source| SidecarError::Json {
                path: path.to_owned(),
                source,
            })?;
        if timeline.version > VERSION {
            return Err(SidecarError::Version {
                path: path.to_owned(),
                version: timeline.version,
            });
        }
        for (index, event) in timeline.events.iter().enumerate() {
            if let Some((a, b)) = event.span()
                && !(a.is_finite() && b.is_finite() && a >= 0.0)
            {
                return Err(SidecarError::BadTime {
                    path: path.to_owned(),
                    index,
                });
            }
        }
        Ok(timeline)
    }

    /// Writes the timeline as pretty JSON.
    pub fn to_json(&self) -> String {
        // Serializing plain data with string keys cannot fail.
        serde_json::to_string_pretty(self).unwrap_or_default()
    }

    /// Replaces the sidecar at `path` with this timeline, atomically and durably.
    ///
    /// Readers (and a crash at any moment) see either the previous file or this one, whole:
    /// the JSON goes to a temporary file of its own in the same folder (a name no other writer
    /// uses, so concurrent writers never mix their bytes), is synced, renamed over `path`, and
    /// the folder is synced so the rename survives a power cut. Writers of the same sidecar
    /// must still be serialised by the caller, or an older state may land last.
    pub fn write_atomic(&self, path: &Path) -> std::io::Result<()> {
        use std::io::Write as _;
        use std::sync::atomic::{AtomicU64, Ordering};
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let tmp = path.with_file_name(format!(
            ".{name}.{}.{}.tmp",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        let written = (|| {
            let mut file = std::fs::File::options()
                .write(true)
                .create_new(true)
                .open(&tmp)?;
            file.write_all(self.to_json().as_bytes())?;
            file.sync_all()?;
            std::fs::rename(&tmp, path)
        })();
        if written.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        written?;
        let dir = match path.parent() {
            Some(dir) if !dir.as_os_str().is_empty() => dir,
            _ => Path::new("."),
        };
        std::fs::File::open(dir)?.sync_all()
    }

    /// The clips worth cutting: each event widened by `lead_in` before and `lead_out` after
    /// (nanoseconds), clamped at 0; overlapping clips are merged into one, keeping every label.
    /// Sorted by start.
    pub fn clips(&self, lead_in: u64, lead_out: u64) -> Vec<ProposedClip> {
        let clips: Vec<ProposedClip> = self
            .events
            .iter()
            .filter_map(|e| {
                let (a, b) = e.span()?;
                let start = seconds_to_ns(a).saturating_sub(lead_in);
                let end = seconds_to_ns(b).saturating_add(lead_out);
                let range = ClipRange::new(start, end.max(start + 1)).ok()?;
                Some(ProposedClip {
                    range,
                    markers: e.label().into_iter().collect(),
                })
            })
            .collect();
        merge_clips(clips)
    }
}

/// Sorts clips by start and merges overlapping ones into one, keeping every label, so no two
/// clips share an instant. Clips from several sources (timeline events, loudness peaks) go
/// through here together.
pub fn merge_clips(mut clips: Vec<ProposedClip>) -> Vec<ProposedClip> {
    clips.sort_by_key(|c| c.range);
    let mut merged: Vec<ProposedClip> = Vec::new();
    for clip in clips {
        match merged.last_mut() {
            Some(last) if last.range.overlaps(&clip.range) => {
                last.range.end = last.range.end.max(clip.range.end);
                last.markers.extend(clip.markers);
            }
            _ => merged.push(clip),
        }
    }
    merged
}

impl Default for Timeline {
    fn default() -> Self {
        Self::new()
    }
}

fn seconds_to_ns(s: f64) -> u64 {
    // Times were validated finite and non-negative; `as` saturates on overflow.
    (s * 1e9).round() as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: u64 = 1_000_000_000;

    #[test]
    fn reads_and_proposes_clips() {
        let text = r#"{
          "version": 1, "recording": "class.mp4",
          "events": [
            {"type": "offer-shown", "at": 125.0, "duration": 20.0, "offer_id": "spring"},
            {"type": "marker", "at": 300.5, "label": "fold", "kind": "demo"},
            {"type": "marker", "at": 150.0, "label": "question"},
            {"type": "poll-opened", "at": 5.0},
            {"type": "marker", "at": 1.0, "label": "hello"}
          ]}"#;
        let t = Timeline::parse(text, Path::new("x.timeline.json")).unwrap();
        let clips = t.clips(5 * S, 10 * S);
        let ranges: Vec<_> = clips.iter().map(|c| (c.range.start, c.range.end)).collect();
        assert_eq!(
            ranges,
            vec![
                (0, 11 * S),
                (120 * S, 160 * S),
                (295_500_000_000, 310_500_000_000)
            ]
        );
        assert_eq!(clips[1].markers, vec!["offer spring", "question"]);
        let back = Timeline::parse(&t.to_json(), Path::new("y")).unwrap();
        assert_eq!(back.events.len(), 5);
    }

    #[test]
    fn rejects_bad_files() {
        let p = Path::new("bad.timeline.json");
        assert!(matches!(
            Timeline::parse("{", p),
            Err(SidecarError::Json { .. })
        ));
        assert!(matches!(
            Timeline::parse(r#"{"version": 9}"#, p),
            Err(SidecarError::Version { version: 9, .. })
        ));
        assert!(matches!(
            Timeline::parse(
                r#"{"version":1,"events":[{"type":"marker","at":-3,"label":"x"}]}"#,
                p
            ),
            Err(SidecarError::BadTime { index: 0, .. })
        ));
    }

    #[test]
    fn concurrent_atomic_writes_leave_one_whole_file_and_no_temporaries() {
        let dir = std::env::temp_dir().join(format!("hybridlive-sidecar-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("take.timeline.json");
        std::thread::scope(|scope| {
            for n in 0..8 {
                let path = &path;
                scope.spawn(move || {
                    let mut t = Timeline::new();
                    for i in 0..=n {
                        t.events.push(TimelineEvent::Marker {
                            at: f64::from(i),
                            duration: 0.0,
                            label: format!("m{i}"),
                            kind: None,
                        });
                    }
                    for _ in 0..20 {
                        t.write_atomic(path).unwrap();
                    }
                });
            }
        });
        // Whichever writer came last, its file is whole.
        let read = Timeline::read(&path).unwrap();
        assert!(!read.events.is_empty());
        let names: Vec<String> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, vec!["take.timeline.json".to_string()]);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn sidecar_next_to_recording() {
        assert_eq!(
            sidecar_path(Path::new("/rec/class.mp4")),
            PathBuf::from("/rec/class.timeline.json")
        );
    }
}
