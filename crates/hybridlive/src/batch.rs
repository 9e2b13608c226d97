//! Runs clip jobs for many recordings in parallel, skipping clips already cut, and keeps the
//! manifest. Shared by `clip` and `repurpose`.

use std::collections::{HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Mutex;
use std::time::Instant;

use anyhow::Context;
use gstclip::ClipMode;
use hybridlive_timeline::{ClipRange, ProposedClip, format_time, merge_clips};

use crate::cutter;
use crate::manifest::{ClipEntry, ErrorEntry, Manifest, SkipEntry, VerticalEntry};
use crate::peaks::{self, PeakOptions};
use crate::progress::Progress;
use crate::vertical::Vertical;

/// A clip to cut.
#[derive(Debug, Clone)]
pub struct PlannedClip {
    /// The range in the recording.
    pub range: ClipRange,
    /// Why it is cut (timeline labels).
    pub markers: Vec<String>,
}

/// One recording and its clips, or why it cannot be cut.
#[derive(Debug, Clone)]
pub enum Job {
    /// Ready to cut.
    Ready {
        /// The recording.
        source: PathBuf,
        /// Its clips.
        clips: Vec<PlannedClip>,
        /// Also cut around the loudest moments of the audio (found when the file's turn comes).
        peaks: Option<PeakOptions>,
    },
    /// Nothing to cut (a sidecar with no markers or offers): reported, not an error.
    Skipped {
        /// The recording.
        source: PathBuf,
        /// Why, and how to cut it anyway.
        reason: String,
    },
    /// Failed before cutting (e.g. a missing sidecar).
    Failed {
        /// The file concerned.
        source: PathBuf,
        /// Why.
        reason: String,
    },
}

/// Options shared by the batch subcommands.
#[derive(Debug, Clone)]
pub struct Options {
    /// Accuracy mode.
    pub mode: ClipMode,
    /// Output folder.
    pub out: PathBuf,
    /// Recordings cut at the same time.
    pub jobs: usize,
    /// Also write a vertical 9:16 version of every clip.
    pub vertical: Option<Vertical>,
}

fn mode_name(mode: ClipMode) -> &'static str {
    match mode {
        ClipMode::Keyframe => "keyframe",
        ClipMode::Exact => "exact",
        ClipMode::Smart => "smart",
        ClipMode::Reencode => "reencode",
    }
}

/// `HH-MM-SS.mmm`: a time that sorts and is safe in file names.
fn file_time(ns: u64) -> String {
    format_time(ns).replace(':', "-")
}

/// The clip's file name: source stem, range and mode, so a rerun finds it again.
fn clip_name(stem: &str, range: ClipRange, mode: ClipMode) -> String {
    format!(
        "{stem}_{}_{}_{}.mp4",
        file_time(range.start),
        file_time(range.end),
        mode_name(mode)
    )
}

struct Work {
    source: PathBuf,
    stem: String,
    clips: Vec<PlannedClip>,
    peaks: Option<PeakOptions>,
}

/// Cuts every job; returns failure when anything failed.
pub fn run(jobs: Vec<Job>, opts: &Options) -> anyhow::Result<ExitCode> {
    crate::init_gstreamer()?;
    std::fs::create_dir_all(&opts.out)
        .with_context(|| format!("cannot create output folder {}", opts.out.display()))?;
    let manifest = Manifest::load(&opts.out);
    let mut errors = Vec::new();
    let mut skipped = Vec::new();
    let mut work = VecDeque::new();
    let mut stems: HashMap<String, usize> = HashMap::new();
    for job in jobs {
        match job {
            Job::Skipped { source, reason } => skipped.push(SkipEntry {
                source: source.display().to_string(),
                reason,
            }),
            Job::Failed { source, reason } => errors.push(ErrorEntry {
                source: source.display().to_string(),
                range: None,
                reason,
            }),
            Job::Ready {
                source,
                clips,
                peaks,
            } => {
                let base = source
                    .file_stem()
                    .map(|s| s.to_string_lossy().into_owned())
                    .unwrap_or_else(|| "clip".to_owned());
                // Two recordings with the same name in different folders get distinct names.
                let n = stems.entry(base.clone()).or_default();
                *n += 1;
                let stem = if *n == 1 { base } else { format!("{base}-{n}") };
                work.push_back(Work {
                    source,
                    stem,
                    clips,
                    peaks,
                });
            }
        }
    }
    let total: usize = work.iter().map(|w| w.clips.len()).sum();
    let progress = Progress::new(total);
    for s in &skipped {
        progress.line(&format!("skipped: {}: {}", s.source, s.reason));
    }
    for e in &errors {
        progress.line(&format!("error: {}: {}", e.source, e.reason));
    }
    let queue = Mutex::new(work);
    let entries: Mutex<Vec<ClipEntry>> = Mutex::new(Vec::new());
    let errors = Mutex::new(errors);
    let old: HashMap<String, ClipEntry> = manifest
        .clips
        .iter()
        .map(|c| (c.output.clone(), c.clone()))
        .collect();
    let workers = opts.jobs.max(1);
    std::thread::scope(|scope| {
        for _ in 0..workers {
            scope.spawn(|| {
                loop {
                    let next = queue.lock().unwrap_or_else(|e| e.into_inner()).pop_front();
                    let Some(w) = next else {
                        break;
                    };
                    let (done, failed) = match with_peaks(w, &progress) {
                        Ok(w) => cut_file(&w, opts, &progress, &old),
                        Err(e) => (Vec::new(), vec![e]),
                    };
                    entries
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .extend(done);
                    errors
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .extend(failed);
                }
            });
        }
    });
    progress.finish();
    let entries = entries.into_inner().unwrap_or_else(|e| e.into_inner());
    let errors = errors.into_inner().unwrap_or_else(|e| e.into_inner());
    // Replace entries for the same output, keep the rest (also another run's, made meanwhile).
    let manifest = Manifest::merge_into(&opts.out, entries, errors, skipped)?;
    if !manifest.skipped.is_empty() {
        eprintln!(
            "{} recording(s) with nothing to cut, skipped (see {})",
            manifest.skipped.len(),
            opts.out.join(crate::manifest::MANIFEST_NAME).display()
        );
    }
    let failed = manifest.errors.len();
    if failed > 0 {
        eprintln!(
            "{failed} error(s); see {}",
            opts.out.join(crate::manifest::MANIFEST_NAME).display()
        );
        for e in &manifest.errors {
            match &e.range {
                Some(r) => eprintln!("error: {} [{r}]: {}", e.source, e.reason),
                None => eprintln!("error: {}: {}", e.source, e.reason),
            }
        }
        return Ok(ExitCode::FAILURE);
    }
    Ok(ExitCode::SUCCESS)
}

/// Adds the clips around the job's loudness peaks to its timeline clips, merged so no two
/// overlap.
fn with_peaks(mut w: Work, progress: &Progress) -> Result<Work, ErrorEntry> {
    let Some(opts) = w.peaks.take() else {
        return Ok(w);
    };
    let source = w.source.display().to_string();
    let fail = |reason: String| {
        progress.line(&format!("error: {source}: {reason}"));
        ErrorEntry {
            source: source.clone(),
            range: None,
            reason,
        }
    };
    let profile = peaks::analyse(&w.source).map_err(|e| fail(format!("{e:#}")))?;
    let found = peaks::peak_clips(&profile, &opts);
    progress.line(&format!(
        "{source}: programme loudness {:.1} LUFS, {} loudness peak(s) {:.1} LU above it",
        profile.programme,
        found.len(),
        opts.threshold
    ));
    let before = w.clips.len();
    let all: Vec<ProposedClip> = w
        .clips
        .drain(..)
        .map(|c| ProposedClip {
            range: c.range,
            markers: c.markers,
        })
        .chain(found)
        .collect();
    w.clips = merge_clips(all)
        .into_iter()
        .map(|c| PlannedClip {
            range: c.range,
            markers: c.markers,
        })
        .collect();
    if w.clips.is_empty() {
        return Err(fail(
            "no offers, markers or loudness peaks to cut clips around".to_owned(),
        ));
    }
    progress.add_clips(w.clips.len() as i64 - before as i64);
    Ok(w)
}

fn cut_file(
    w: &Work,
    opts: &Options,
    progress: &Progress,
    old: &HashMap<String, ClipEntry>,
) -> (Vec<ClipEntry>, Vec<ErrorEntry>) {
    let source = w.source.display().to_string();
    let fp = progress.file(&source, w.clips.len());
    let mut done = Vec::new();
    let mut failed = Vec::new();
    let source_id = source_identity(&w.source);
    for (i, clip) in w.clips.iter().enumerate() {
        let mut name = clip_name(&w.stem, clip.range, opts.mode);
        // A clip of another recording with the same name is there: this one gets the
        // recording's identity in its name.
        if old
            .get(&name)
            .is_some_and(|e| !e.source_id.is_empty() && e.source_id != source_id)
        {
            name = clip_name(
                &format!("{}-{}", w.stem, short_hash(&source_id)),
                clip.range,
                opts.mode,
            );
        }
        let output = opts.out.join(&name);
        let fail = |what: &str, e: anyhow::Error| {
            let reason = format!("{what}{e:#}");
            fp.clip_done(i, &format!("{} failed: {reason}", clip.range));
            ErrorEntry {
                source: source.clone(),
                range: Some(clip.range.to_string()),
                reason,
            }
        };
        // Only a clip the manifest knows, of this recording, is skipped; a file without an
        // entry (a run that was interrupted, or another one still writing its manifest) is
        // cut again.
        let known = old
            .get(&name)
            .filter(|e| e.source_id.is_empty() || e.source_id == source_id)
            .cloned();
        let mut entry = if output.exists() && known.is_some() {
            if opts.vertical.is_none() {
                fp.clip_done(i, &format!("{name} exists, skipped"));
            }
            known
        } else {
            let started = Instant::now();
            match cutter::cut(&w.source, clip.range, opts.mode, None, &output, &|f| {
                fp.clip(i, f)
            }) {
                Ok(r) => {
                    let outcome = format!(
                        "{} -> {name} ({:.1} s in {:.1} s)",
                        clip.range,
                        r.duration as f64 / 1e9,
                        started.elapsed().as_secs_f64()
                    );
                    for note in &r.notes {
                        progress.line(&format!("{source}: note: {note}"));
                    }
                    if opts.vertical.is_some() {
                        progress.line(&format!(
                            "{source} clip {}/{}: {outcome}",
                            i + 1,
                            w.clips.len()
                        ));
                    } else {
                        fp.clip_done(i, &outcome);
                    }
                    Some(ClipEntry {
                        source: source.clone(),
                        start: clip.range.start as f64 / 1e9,
                        end: clip.range.end as f64 / 1e9,
                        range: clip.range.to_string(),
                        mode: mode_name(opts.mode).to_owned(),
                        output: name,
                        source_id: source_id.clone(),
                        duration: r.duration as f64 / 1e9,
                        first_frame: r.first_frame as f64 / 1e9,
                        markers: clip.markers.clone(),
                        frames_copied: r.frames_copied,
                        frames_encoded: r.frames_encoded,
                        notes: r.notes.clone(),
                        vertical: None,
                    })
                }
                Err(e) => {
                    failed.push(fail("", e));
                    None
                }
            }
        };
        if let (Some(v), Some(e)) = (&opts.vertical, entry.as_mut()) {
            let vname = vertical_name(&w.stem, clip.range, v);
            let voutput = opts.out.join(&vname);
            let known = e.vertical.as_ref().is_some_and(|x| x.output == vname);
            if voutput.exists() && known {
                fp.clip_done(i, &format!("{vname} exists, skipped"));
            } else {
                let started = Instant::now();
                match cutter::cut(&w.source, clip.range, opts.mode, Some(v), &voutput, &|f| {
                    fp.clip(i, f)
                }) {
                    Ok(r) => {
                        fp.clip_done(
                            i,
                            &format!(
                                "{} -> {vname} ({:.1} s in {:.1} s)",
                                clip.range,
                                r.duration as f64 / 1e9,
                                started.elapsed().as_secs_f64()
                            ),
                        );
                        e.vertical = r.crop.map(|c| VerticalEntry {
                            output: vname,
                            region: v.region.to_string(),
                            width: c.width,
                            height: c.height,
                            crop_x: c.left,
                            crop_y: c.top,
                            duration: r.duration as f64 / 1e9,
                        });
                    }
                    Err(err) => failed.push(fail("vertical clip: ", err)),
                }
            }
        }
        done.extend(entry);
    }
    fp.finish();
    (done, failed)
}

/// The vertical clip's file name: like the clip's, with the crop region instead of the mode
/// (it is always re-encoded).
fn vertical_name(stem: &str, range: ClipRange, v: &Vertical) -> String {
    let size = v.height.map(|h| format!("-{h}")).unwrap_or_default();
    format!(
        "{stem}_{}_{}_vertical-{}{size}.mp4",
        file_time(range.start),
        file_time(range.end),
        v.region
    )
}

/// The recording's identity: canonical path, size and modification time.
fn source_identity(source: &Path) -> String {
    let path = std::fs::canonicalize(source).unwrap_or_else(|_| source.to_owned());
    let meta = std::fs::metadata(source).ok();
    let size = meta.as_ref().map_or(0, |m| m.len());
    let mtime = meta
        .and_then(|m| m.modified().ok())
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_nanos());
    format!("{}|{size}|{mtime}", path.display())
}

/// Eight hex digits of FNV-1a: a short, stable tag for file names.
fn short_hash(s: &str) -> String {
    let h = s.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    });
    format!("{:08x}", h as u32)
}

/// Default parallelism: the machine's cores.
pub fn default_jobs() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// Whether `path` looks like a recording (by extension).
pub fn is_recording(path: &Path) -> bool {
    matches!(
        path.extension()
            .map(|e| e.to_string_lossy().to_ascii_lowercase())
            .as_deref(),
        Some("mp4" | "m4v" | "mov" | "mkv" | "webm" | "ts" | "m2ts" | "mts")
    )
}
