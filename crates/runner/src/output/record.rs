//! `type = "record"`: crash-safe fragmented MP4 plus a sidecar timeline, one take per start.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use anyhow::Context as _;
use gst::prelude::*;

use serde::Serialize;

use super::{Context, InputLink, Kind, OutputFactory, Sink, Take, make, refuse_vp8, settings};
use crate::config::reader::Fields;
use crate::config::{Diagnostic, EncoderKind, OutputSpec, Refusal};
use crate::events::Events;
use crate::mp4file::FragmentedMp4File;
use crate::state::{self, Marker, Recording, Shared};

/// mp4mux fragment length: at most this much media is lost on `kill -9`.
const FRAGMENT_MS: u32 = 500;

const TYPE: &str = "record";

/// `type = "record"`: crash-safe fragmented MP4 plus a sidecar timeline JSON.
#[derive(Debug, Clone, Serialize)]
pub struct RecordOutput {
    /// `directory`: folder the recordings go to.
    pub directory: PathBuf,
    /// `autostart`: record from the start (otherwise `POST /api/recording`).
    pub autostart: bool,
}

output_spec!(RecordOutput, TYPE, {
    fn refuses_input(&self, input: &str, encoder: &EncoderKind) -> Option<Refusal> {
        refuse_vp8(input, encoder)
    }
});

/// The record kind in the registry.
pub(super) struct Factory;

impl OutputFactory for Factory {
    fn type_name(&self) -> &'static str {
        TYPE
    }

    fn parse(&self, diags: &mut Vec<Diagnostic>, f: &mut Fields) -> Option<Box<dyn OutputSpec>> {
        Some(Box::new(RecordOutput {
            directory: f
                .path(diags, "directory")
                .map_or_else(|| f.base.join("recordings"), |(path, _, _)| path),
            autostart: f.bool(diags, "autostart", true),
        }))
    }

    fn prepare(&self, spec: &dyn OutputSpec, cx: &Context<'_>) -> anyhow::Result<Box<dyn Kind>> {
        let settings = settings::<RecordOutput>(spec)?;
        Ok(Box::new(Record::new(
            cx,
            &settings.directory,
            settings.autostart,
        )?))
    }
}

/// A record output: where its takes go.
struct Record {
    name: String,
    /// Absolute: events and the API show it, and the runner's working folder is not the
    /// user's.
    directory: PathBuf,
    autostart: bool,
    shared: Arc<Shared>,
    events: Events,
}

impl Record {
    /// Creates the folder.
    fn new(cx: &Context<'_>, directory: &Path, autostart: bool) -> anyhow::Result<Record> {
        std::fs::create_dir_all(directory)
            .with_context(|| format!("cannot create {}", directory.display()))?;
        Ok(Record {
            name: cx.name.to_string(),
            directory: std::path::absolute(directory).unwrap_or_else(|_| directory.to_path_buf()),
            autostart,
            shared: cx.shared.clone(),
            events: cx.events.clone(),
        })
    }
}

impl Kind for Record {
    fn build_sink(&self, pipeline: &gst::Pipeline) -> anyhow::Result<Sink> {
        let mux = make("mp4mux", "mux")?;
        // Fragments make the file playable up to the last one written after a crash.
        mux.set_property("fragment-duration", FRAGMENT_MS);
        mux.set_property("streamable", true);
        let file = free_take_path(&self.directory, &self.name, state::utc_now_ns());
        let take = TakeFiles::new(file, self.shared.clone(), self.events.clone(), &self.name);
        // Not filesink: it leaves half a fragment (or no header at all) behind when
        // the process is killed or the disk fills; this writes whole fragments only.
        let writer = recording_writer(take.clone());
        pipeline.add_many([&mux, writer.upcast_ref()])?;
        mux.link(&writer)?;
        Ok(Sink {
            element: mux,
            take: Some(take),
        })
    }

    fn input_pad(&self, link: &InputLink<'_>) -> anyhow::Result<gst::Pad> {
        link.request_pad(&format!("{}_%u", link.medium))
    }

    fn autostart(&self) -> bool {
        self.autostart
    }

    fn is_record(&self) -> bool {
        true
    }
}

/// The sidecar timeline next to a recording (the format `hybridlive repurpose` reads, defined
/// in `hybridlive-timeline`), rewritten whole and atomically on every change.
#[derive(Debug, Clone)]
struct Timeline {
    sidecar: hybridlive_timeline::Timeline,
    /// Offers on screen: id -> (seconds from the start, title).
    showing: BTreeMap<String, (f64, String)>,
    /// Capture time of the recording's first frame, ns since the Unix epoch.
    utc_start_ns: u64,
    path: PathBuf,
}

/// One recording: an MP4 and its sidecar, from a start to its stop (or failure).
///
/// Lock order: `timeline` before `writer`; the recorder's streaming thread takes `writer`
/// alone and lets it go before it takes `timeline`. The sidecar is written while `timeline`
/// is held, so concurrent changes (markers from several API threads, offers, the finish) land
/// on disk one after the other, each write holding every change made before it.
struct TakeFiles {
    /// The MP4 file; it exists from its first whole fragment on.
    mp4: PathBuf,
    /// Fed by the recorder appsink's streaming thread.
    writer: Mutex<FragmentedMp4File>,
    /// Set at the first key frame.
    timeline: Mutex<Option<Timeline>>,
    /// Whether the MP4 exists. The sidecar is written from then on only: never a sidecar
    /// beside a missing recording (a crash or a stop before the first fragment leaves
    /// neither file).
    mp4_created: AtomicBool,
    /// Where a failed sidecar write is reported (`last_error` of the output) and the
    /// recording's figures go.
    shared: Arc<Shared>,
    events: Events,
    output: String,
}

impl TakeFiles {
    fn new(mp4: PathBuf, shared: Arc<Shared>, events: Events, output: &str) -> Arc<Self> {
        Arc::new(TakeFiles {
            writer: Mutex::new(FragmentedMp4File::new(&mp4)),
            mp4,
            timeline: Mutex::new(None),
            mp4_created: AtomicBool::new(false),
            shared,
            events,
            output: output.to_string(),
        })
    }

    /// Applies `change` to the timeline (if the first key frame has set it up) and, when it
    /// says it changed something and the MP4 exists, writes the sidecar.
    fn update(&self, change: impl FnOnce(&mut Timeline) -> bool) {
        let mut guard = self.timeline.lock().unwrap();
        let Some(timeline) = guard.as_mut() else {
            return;
        };
        if change(timeline) && self.mp4_created.load(Ordering::SeqCst) {
            self.write(timeline);
        }
    }

    /// The first key frame: the timeline starts (and is written if the MP4 already exists).
    fn begin_timeline(&self, timeline: Timeline) {
        let mut guard = self.timeline.lock().unwrap();
        if self.mp4_created.load(Ordering::SeqCst) {
            self.write(&timeline);
        }
        *guard = Some(timeline);
    }

    /// The recorder wrote the MP4's first fragment: the sidecar follows.
    fn on_mp4_created(&self) {
        self.mp4_created.store(true, Ordering::SeqCst);
        self.update(|_| true);
    }

    fn write(&self, timeline: &Timeline) {
        if let Err(err) = timeline.sidecar.write_atomic(&timeline.path) {
            let error = format!("cannot write {}: {err}", timeline.path.display());
            self.shared.with(|s| {
                if let Some(o) = s.outputs.get_mut(&self.output) {
                    o.last_error = Some(error);
                }
            });
        }
    }
}

impl Take for TakeFiles {
    fn begin(&self, utc_start_ns: u64) {
        let path = self.mp4.clone();
        let mut sidecar = hybridlive_timeline::Timeline::new();
        sidecar.recording = path.file_name().map(|n| n.to_string_lossy().into_owned());
        sidecar.started_at = Some(state::rfc3339(utc_start_ns));
        sidecar.started_at_ns = Some(utc_start_ns);
        let timeline_path = hybridlive_timeline::sidecar_path(&path);
        let utc_start = sidecar.started_at.clone();
        self.begin_timeline(Timeline {
            sidecar,
            showing: BTreeMap::new(),
            utc_start_ns,
            path: timeline_path.clone(),
        });
        self.shared.with(|s| {
            if let Some(o) = s.outputs.get_mut(&self.output) {
                o.recording = Some(Recording {
                    path: path.clone(),
                    timeline: timeline_path.clone(),
                    start_utc_ns: utc_start_ns,
                    duration_s: 0.0,
                    bytes: 0,
                });
            }
        });
        self.events.emit(
            "recording-started",
            serde_json::json!({"output": self.output, "path": path, "timeline": timeline_path, "utc_start": utc_start}),
        );
    }

    fn refresh(&self, recorded_s: f64) {
        let mp4 = &self.mp4;
        self.shared.with(|s| {
            if let Some(rec) = s
                .outputs
                .get_mut(&self.output)
                .and_then(|o| o.recording.as_mut())
                && rec.path == *mp4
            {
                rec.duration_s = recorded_s;
                rec.bytes = std::fs::metadata(&rec.path).map_or(0, |m| m.len());
            }
        });
    }

    /// Offers still on screen close at the take's end, `ended_at` is set and the sidecar
    /// written a last time. A take that never wrote a fragment has no files and is reported
    /// as `empty`.
    fn finish(&self, recorded_s: f64) {
        self.refresh(recorded_s);
        let mut begun = false;
        self.update(|timeline| {
            begun = true;
            let end_ns = state::utc_now_ns();
            let end = end_ns.saturating_sub(timeline.utc_start_ns) as f64 / 1e9;
            for (id, (start, title)) in std::mem::take(&mut timeline.showing) {
                timeline
                    .sidecar
                    .events
                    .push(offer_event(&id, start, end, title));
            }
            timeline.sidecar.ended_at = Some(state::rfc3339(end_ns));
            true
        });
        if !begun {
            // Stopped before its first key frame: no recording-started, nothing to finish.
            return;
        }
        let empty = !self.mp4_created.load(Ordering::SeqCst);
        if empty {
            // Its status would name files that do not exist.
            self.shared.with(|s| {
                if let Some(o) = s.outputs.get_mut(&self.output)
                    && o.recording.as_ref().is_some_and(|r| r.path == self.mp4)
                {
                    o.recording = None;
                }
            });
        }
        self.events.emit(
            "recording-finished",
            serde_json::json!({"output": self.output, "path": self.mp4, "timeline": hybridlive_timeline::sidecar_path(&self.mp4), "empty": empty}),
        );
    }

    fn add_marker(&self, marker: &Marker) {
        self.update(|t| {
            t.sidecar
                .events
                .push(hybridlive_timeline::TimelineEvent::Marker {
                    at: marker.utc_ns.saturating_sub(t.utc_start_ns) as f64 / 1e9,
                    duration: 0.0,
                    label: marker.label.clone(),
                    kind: None,
                });
            true
        });
    }

    /// An `offer-shown` event with its duration goes into the timeline once the offer leaves
    /// (or when the recording ends).
    fn add_offer(&self, entry: &hybridlive_offer_timeline::TimelineEntry, utc_ns: u64) {
        self.update(|t| {
            let at = utc_ns.saturating_sub(t.utc_start_ns) as f64 / 1e9;
            match entry.action {
                hybridlive_offer_timeline::Action::Shown => {
                    t.showing
                        .insert(entry.id.clone(), (at, entry.title.clone()));
                    false
                }
                hybridlive_offer_timeline::Action::Hidden => {
                    let Some((start, title)) = t.showing.remove(&entry.id) else {
                        return false;
                    };
                    t.sidecar
                        .events
                        .push(offer_event(&entry.id, start, at, title));
                    true
                }
            }
        });
    }
}

/// A name for a new take in `directory`: `<output>-<UTC second>.mp4`, or with `-2`, `-3`...
/// when that MP4 or its sidecar already exists (a second take started within the same
/// second, an earlier run's file).
fn free_take_path(directory: &Path, output: &str, utc_ns: u64) -> PathBuf {
    let stem = format!("{output}-{}", state::compact_utc(utc_ns));
    (1u32..)
        .map(|n| match n {
            1 => directory.join(format!("{stem}.mp4")),
            n => directory.join(format!("{stem}-{n}.mp4")),
        })
        .find(|mp4| !mp4.exists() && !hybridlive_timeline::sidecar_path(mp4).exists())
        .unwrap_or_else(|| directory.join(format!("{stem}.mp4")))
}

fn offer_event(
    id: &str,
    start: f64,
    end: f64,
    title: String,
) -> hybridlive_timeline::TimelineEvent {
    hybridlive_timeline::TimelineEvent::OfferShown {
        at: start,
        duration: (end - start).max(0.0),
        offer_id: id.to_string(),
        title: Some(title),
    }
}

/// An appsink named `recorder` that appends mp4mux's output to the take's MP4 whole
/// fragments at a time ([`FragmentedMp4File`]) and has the sidecar written once the MP4
/// exists; a failed write is an element error (the output restarts).
fn recording_writer(take: Arc<TakeFiles>) -> gst_app::AppSink {
    let at_eos = take.clone();
    let path = take.mp4.clone();
    let sink = gst_app::AppSink::builder()
        .name("recorder")
        .sync(false)
        .build();
    sink.set_property("async", false);
    sink.set_callbacks(
        gst_app::AppSinkCallbacks::builder()
            .new_sample(move |sink| {
                let sample = sink.pull_sample().map_err(|_| gst::FlowError::Eos)?;
                let Some(buffer) = sample.buffer() else {
                    return Ok(gst::FlowSuccess::Ok);
                };
                let map = buffer.map_readable().map_err(|_| gst::FlowError::Error)?;
                let pushed = {
                    let mut writer = take.writer.lock().unwrap();
                    let before = writer.created();
                    writer.push(&map).map(|()| !before && writer.created())
                };
                if let Ok(true) = pushed {
                    take.on_mp4_created();
                }
                if let Err(err) = pushed {
                    let kind = if err.raw_os_error() == Some(libc::ENOSPC) {
                        gst::ResourceError::NoSpaceLeft
                    } else {
                        gst::ResourceError::Write
                    };
                    gst::element_error!(sink, kind, ["cannot write {}: {err}", path.display()]);
                    return Err(gst::FlowError::Error);
                }
                Ok(gst::FlowSuccess::Ok)
            })
            .eos(move |sink| {
                if let Err(err) = at_eos.writer.lock().unwrap().finish() {
                    gst::element_error!(
                        sink,
                        gst::ResourceError::Write,
                        ["cannot finish the recording: {err}"]
                    );
                }
            })
            .build(),
    );
    sink
}
