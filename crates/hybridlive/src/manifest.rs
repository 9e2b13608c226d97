//! The manifest written next to the clips: what was cut from where, and what went wrong.

use std::path::Path;

use anyhow::Context;
use serde::{Deserialize, Serialize};

/// File name of the manifest in the output folder.
pub const MANIFEST_NAME: &str = "manifest.json";

/// The whole manifest.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Manifest {
    /// Format version.
    pub version: u32,
    /// Every clip in the output folder that this tool made, sorted by source and start.
    pub clips: Vec<ClipEntry>,
    /// What failed in the last run.
    #[serde(default)]
    pub errors: Vec<ErrorEntry>,
    /// Recordings the last run found nothing to cut in (no markers or offers): not errors.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub skipped: Vec<SkipEntry>,
}

/// A recording with nothing to cut.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SkipEntry {
    /// The recording.
    pub source: String,
    /// Why there is nothing to cut.
    pub reason: String,
}

/// One clip file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClipEntry {
    /// The recording, as given on the command line.
    pub source: String,
    /// Requested start (seconds of the recording).
    pub start: f64,
    /// Requested end, exclusive (seconds).
    pub end: f64,
    /// The range as text, `HH:MM:SS.mmm-HH:MM:SS.mmm`.
    pub range: String,
    /// Accuracy mode.
    pub mode: String,
    /// Clip file name, relative to the manifest.
    pub output: String,
    /// Presented duration (seconds).
    pub duration: f64,
    /// Stream time (seconds) of the first frame stored in the file (the key frame).
    pub first_frame: f64,
    /// Which recording this is beyond its name: canonical path, size and modification time,
    /// so a different recording with the same file name is not taken for this one.
    #[serde(default)]
    pub source_id: String,
    /// Labels of the timeline events the clip was cut for.
    #[serde(default)]
    pub markers: Vec<String>,
    /// Frames copied from the recording.
    pub frames_copied: u64,
    /// Frames re-encoded.
    pub frames_encoded: u64,
    /// What the clip does not carry as the recording had it: dropped tracks (subtitles,
    /// timecode, unsupported audio), PCM audio encoded to AAC.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<String>,
    /// The vertical 9:16 version of the clip, when one was asked for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vertical: Option<VerticalEntry>,
}

/// A vertical 9:16 version of a clip: the same range, cropped and re-encoded.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VerticalEntry {
    /// File name, relative to the manifest.
    pub output: String,
    /// Crop region as asked for (`center`, `left`, `right`, `x<pixels>`).
    pub region: String,
    /// Picture width.
    pub width: u32,
    /// Picture height.
    pub height: u32,
    /// Left edge of the crop in the source picture (pixels).
    pub crop_x: u32,
    /// Top edge of the crop in the source picture (pixels).
    pub crop_y: u32,
    /// Presented duration (seconds).
    pub duration: f64,
}

/// One failure.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ErrorEntry {
    /// The recording (or sidecar) that failed.
    pub source: String,
    /// The range, when one clip failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub range: Option<String>,
    /// Why.
    pub reason: String,
}

impl Manifest {
    /// Reads the manifest of `dir`, or an empty one.
    pub fn load(dir: &Path) -> Self {
        std::fs::read_to_string(dir.join(MANIFEST_NAME))
            .ok()
            .and_then(|t| serde_json::from_str(&t).ok())
            .unwrap_or(Manifest {
                version: 1,
                ..Default::default()
            })
    }

    /// Merges this run's clips and errors into the manifest of `dir` under an exclusive lock,
    /// so runs into the same folder at the same time keep each other's clips: an entry for
    /// the same output replaces the older one, the rest stay.
    pub fn merge_into(
        dir: &Path,
        clips: Vec<ClipEntry>,
        errors: Vec<ErrorEntry>,
        skipped: Vec<SkipEntry>,
    ) -> anyhow::Result<Self> {
        // The folder itself is the lock: a lock file would be left behind.
        let lock = std::fs::File::open(dir)
            .with_context(|| format!("cannot open the output folder {}", dir.display()))?;
        lock.lock()
            .with_context(|| format!("cannot lock the output folder {}", dir.display()))?;
        let mut manifest = Self::load(dir);
        let outputs: std::collections::HashSet<&str> =
            clips.iter().map(|c| c.output.as_str()).collect();
        manifest
            .clips
            .retain(|c| !outputs.contains(c.output.as_str()));
        manifest.clips.extend(clips);
        manifest.errors = errors;
        manifest.skipped = skipped;
        manifest.save(dir)?;
        Ok(manifest)
    }

    /// Writes the manifest into `dir` atomically (temporary file, then rename).
    pub fn save(&mut self, dir: &Path) -> anyhow::Result<()> {
        self.version = 1;
        self.clips.sort_by(|a, b| {
            (a.source.as_str(), a.start)
                .partial_cmp(&(b.source.as_str(), b.start))
                .unwrap_or(std::cmp::Ordering::Equal)
        });
        let path = dir.join(MANIFEST_NAME);
        let temp = dir.join(format!(".{MANIFEST_NAME}.{}.part", std::process::id()));
        let text = serde_json::to_string_pretty(self)?;
        std::fs::write(&temp, text).with_context(|| format!("cannot write {}", temp.display()))?;
        std::fs::rename(&temp, &path)
            .with_context(|| format!("cannot write {}", path.display()))?;
        Ok(())
    }
}
