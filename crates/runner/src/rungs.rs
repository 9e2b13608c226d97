//! Key frames of a ladder encoder, aligned across its rungs.
//!
//! Every rung is its own x264, fed the same raw frames (scaled). A viewer switches rungs only
//! at a key frame of the rung it moves to, and HLS renditions must cut segments and parts at
//! the same instants, so key frames must fall on the same frames on every rung. Counting
//! frames inside each encoder does not ensure that (a request for a key frame from one viewer
//! restarts one encoder's count), so the key frames are decided outside the encoders, from the
//! frames' timestamps, which every rung shares:
//!
//! - **Cadence**: the first frame of every `interval` of running time is a key frame on every
//!   rung (each encoder's own interval is set longer, as a safety net only).
//! - **Requests**: a key frame asked of any rung (a viewer joining or switching, a PLI, a
//!   recording starting) becomes "the first frame after the newest one any rung has seen",
//!   on every rung.
//!
//! [`KeySchedule`] is that decision, free of GStreamer; [`LadderKeys`] applies it with a
//! probe in front of each rung's encoder.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use gst::prelude::*;

/// No request pending.
const NONE: u64 = u64::MAX;

/// What one rung has decided so far.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct RungKeys {
    /// The cadence slot of the last frame seen.
    slot: Option<u64>,
    /// The last request served (its first frame's time, ns).
    served: Option<u64>,
}

/// The ladder's key-frame decisions, shared by its rungs.
#[derive(Debug)]
pub(crate) struct KeySchedule {
    interval_ns: u64,
    /// Newest frame time any rung has seen, ns.
    newest: AtomicU64,
    /// Frames at or after this time are key frames on every rung ([`NONE`]: no request).
    requested: AtomicU64,
}

impl KeySchedule {
    /// Key frames every `interval_ns` of running time (at least 1 ns).
    pub(crate) fn new(interval_ns: u64) -> Self {
        KeySchedule {
            interval_ns: interval_ns.max(1),
            newest: AtomicU64::new(0),
            requested: AtomicU64::new(NONE),
        }
    }

    /// A key frame was asked of a rung: the next frame, on every rung.
    pub(crate) fn request(&self) {
        let after = self.newest.load(Ordering::SeqCst).saturating_add(1);
        // A request already pending for an earlier frame covers this one.
        let _ = self
            .requested
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |current| {
                (current == NONE || current < after).then_some(after)
            });
    }

    /// Whether the frame at `time_ns` must be a key frame on the rung whose decisions are
    /// `rung`.
    pub(crate) fn is_key(&self, rung: &mut RungKeys, time_ns: u64) -> bool {
        self.newest.fetch_max(time_ns, Ordering::SeqCst);
        let slot = time_ns / self.interval_ns;
        let mut key = rung.slot.is_some_and(|last| last != slot);
        rung.slot = Some(slot);
        let requested = self.requested.load(Ordering::SeqCst);
        if requested != NONE && time_ns >= requested && rung.served != Some(requested) {
            rung.served = Some(requested);
            key = true;
        }
        key
    }
}

/// The aligned key frames of one ladder encoder in the ingest pipeline.
pub(crate) struct LadderKeys {
    schedule: Arc<KeySchedule>,
}

impl LadderKeys {
    /// Key frames every `interval` on each rung given to [`LadderKeys::add_rung`].
    pub(crate) fn new(interval: std::time::Duration) -> Self {
        LadderKeys {
            schedule: Arc::new(KeySchedule::new(interval.as_nanos() as u64)),
        }
    }

    /// Makes the rung whose encoder is `encoder` and whose encoded stream leaves through
    /// `tee` follow the schedule: a probe in front of the encoder forces the scheduled key
    /// frames, and a key-frame request reaching the tee from downstream is turned into one
    /// for every rung instead of reaching this encoder alone.
    pub(crate) fn add_rung(&self, encoder: &gst::Element, tee: &gst::Element) {
        let (Some(sink), Some(tee_sink)) = (encoder.static_pad("sink"), tee.static_pad("sink"))
        else {
            return;
        };
        let schedule = self.schedule.clone();
        let state = Mutex::new(RungKeys::default());
        sink.add_probe(gst::PadProbeType::BUFFER, move |pad, info| {
            let Some(time) = info.buffer().and_then(|b| b.pts()) else {
                return gst::PadProbeReturn::Ok;
            };
            let key = schedule.is_key(&mut state.lock().unwrap(), time.nseconds());
            if key {
                // Serialized: it reaches x264 before this frame, which becomes the key frame.
                let event = gst_video::DownstreamForceKeyUnitEvent::builder()
                    .all_headers(true)
                    .build();
                let _ = pad.send_event(event);
            }
            gst::PadProbeReturn::Ok
        });
        let schedule = self.schedule.clone();
        tee_sink.add_probe(
            gst::PadProbeType::EVENT_UPSTREAM,
            move |_, info| match info.event() {
                Some(event) if gst_video::UpstreamForceKeyUnitEvent::parse(event).is_ok() => {
                    schedule.request();
                    // Taken and handled here: returning Drop for an upstream event made
                    // GStreamer 1.22 unref it twice (a CRITICAL per request).
                    let _ = info.data.take();
                    gst::PadProbeReturn::Handled
                }
                _ => gst::PadProbeReturn::Ok,
            },
        );
    }
}

#[cfg(test)]
mod tests {
    use super::{KeySchedule, RungKeys};

    const FRAME: u64 = 40_000_000;
    const SECOND: u64 = 1_000_000_000;

    /// The frames of `frames` (times, ns) that are key frames on one rung.
    fn keys(schedule: &KeySchedule, rung: &mut RungKeys, frames: &[u64]) -> Vec<u64> {
        frames
            .iter()
            .copied()
            .filter(|t| schedule.is_key(rung, *t))
            .collect()
    }

    #[test]
    fn the_cadence_puts_key_frames_on_the_same_frames_of_every_rung() {
        let schedule = KeySchedule::new(SECOND);
        let frames: Vec<u64> = (0..80).map(|i| 500_000_000 + i * FRAME).collect();
        let (mut top, mut low) = (RungKeys::default(), RungKeys::default());
        // The rungs run at their own pace: one is a few frames behind the other.
        let mut top_keys = keys(&schedule, &mut top, &frames[..10]);
        let mut low_keys = keys(&schedule, &mut low, &frames[..4]);
        top_keys.extend(keys(&schedule, &mut top, &frames[10..]));
        low_keys.extend(keys(&schedule, &mut low, &frames[4..]));
        assert_eq!(top_keys, low_keys);
        // The first frame of each second after the first frame seen: 1.02 s, 2.02 s, 3.02 s.
        assert_eq!(top_keys, [frames[13], frames[38], frames[63]]);
    }

    #[test]
    fn a_request_to_one_rung_is_the_next_frame_on_all() {
        let schedule = KeySchedule::new(10 * SECOND);
        let (mut top, mut low) = (RungKeys::default(), RungKeys::default());
        let frames: Vec<u64> = (0..20).map(|i| SECOND + i * FRAME).collect();
        assert!(keys(&schedule, &mut top, &frames[..8]).is_empty());
        assert!(keys(&schedule, &mut low, &frames[..5]).is_empty());
        // Asked while the top rung has seen frame 7: frame 8 is the key frame on both, also
        // on the rung that is behind (its frames 5-7 are not).
        schedule.request();
        assert_eq!(keys(&schedule, &mut low, &frames[5..12]), [frames[8]]);
        assert_eq!(keys(&schedule, &mut top, &frames[8..12]), [frames[8]]);
        // Served once: no more key frames until the next request.
        assert!(keys(&schedule, &mut top, &frames[12..]).is_empty());
    }

    #[test]
    fn requests_while_one_is_pending_make_one_key_frame() {
        let schedule = KeySchedule::new(10 * SECOND);
        let mut rung = RungKeys::default();
        let frames: Vec<u64> = (0..10).map(|i| SECOND + i * FRAME).collect();
        assert!(keys(&schedule, &mut rung, &frames[..3]).is_empty());
        for _ in 0..5 {
            schedule.request();
        }
        assert_eq!(keys(&schedule, &mut rung, &frames[3..]), [frames[3]]);
    }

    /// Two real x264 rungs (1280x720 and 320x180) off one test source: their key frames
    /// fall on the same frames, by cadence and when one rung is asked for one.
    #[test]
    fn x264_rungs_make_their_key_frames_on_the_same_frames() {
        use gst::prelude::*;
        use std::sync::{Arc, Mutex};

        crate::init().expect("GStreamer");
        let pipeline = gst::parse::launch(
            "videotestsrc num-buffers=150 ! video/x-raw,width=1280,height=720,framerate=30/1 ! \
             tee name=raw \
             raw. ! queue ! videoscale ! video/x-raw,width=1280,height=720 ! \
               x264enc name=enc0 tune=zerolatency speed-preset=ultrafast key-int-max=120 \
               option-string=scenecut=0 ! tee name=out0 ! queue ! appsink name=sink0 sync=false \
             raw. ! queue ! videoscale ! video/x-raw,width=320,height=180 ! \
               x264enc name=enc1 tune=zerolatency speed-preset=ultrafast key-int-max=120 \
               option-string=scenecut=0 ! tee name=out1 ! queue ! appsink name=sink1 sync=false",
        )
        .expect("pipeline")
        .downcast::<gst::Pipeline>()
        .expect("a pipeline");
        let keys = super::LadderKeys::new(std::time::Duration::from_secs(1));
        let mut key_frames = Vec::new();
        for rung in 0..2 {
            let by = |name: String| pipeline.by_name(&name).expect("element");
            keys.add_rung(&by(format!("enc{rung}")), &by(format!("out{rung}")));
            let found: Arc<Mutex<Vec<u64>>> = Arc::default();
            let sink = by(format!("sink{rung}"))
                .downcast::<gst_app::AppSink>()
                .expect("appsink");
            let seen = found.clone();
            let out = by(format!("out{rung}"));
            let frames = Arc::new(std::sync::atomic::AtomicU32::new(0));
            sink.set_callbacks(
                gst_app::AppSinkCallbacks::builder()
                    .new_sample(move |sink| {
                        let sample = sink.pull_sample().map_err(|_| gst::FlowError::Eos)?;
                        let buffer = sample.buffer().ok_or(gst::FlowError::Error)?;
                        if !buffer.flags().contains(gst::BufferFlags::DELTA_UNIT) {
                            seen.lock()
                                .unwrap()
                                .push(buffer.pts().map_or(0, |t| t.nseconds()));
                        }
                        // Frame 45 of the low rung asks for a key frame, as a viewer would.
                        let n = frames.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                        if rung == 1 && n == 45 {
                            let pad = out.static_pad("src_0").expect("tee pad");
                            pad.send_event(
                                gst_video::UpstreamForceKeyUnitEvent::builder()
                                    .all_headers(true)
                                    .build(),
                            );
                        }
                        Ok(gst::FlowSuccess::Ok)
                    })
                    .build(),
            );
            key_frames.push(found);
        }
        pipeline.set_state(gst::State::Playing).expect("plays");
        let bus = pipeline.bus().expect("bus");
        let msg = bus
            .timed_pop_filtered(
                gst::ClockTime::from_seconds(120),
                &[gst::MessageType::Eos, gst::MessageType::Error],
            )
            .expect("the pipeline finishes");
        pipeline.set_state(gst::State::Null).expect("stops");
        assert!(matches!(msg.view(), gst::MessageView::Eos(_)), "{msg:?}");
        let top = key_frames[0].lock().unwrap().clone();
        let low = key_frames[1].lock().unwrap().clone();
        assert_eq!(top, low, "key frames differ between the rungs");
        // 5 s of video: the first frame, one per second after it, and the one asked for (the
        // frame after 45 frames out of the low rung, plus what the encoders held).
        // (x264 starts its timestamps 1000 hours in, to have room for B-frames.)
        let start = top.first().copied().unwrap_or_default();
        let top: Vec<u64> = top.iter().map(|t| t - start).collect();
        let second = 1_000_000_000;
        let cadence: Vec<u64> = top.iter().copied().filter(|t| t % second == 0).collect();
        assert_eq!(
            cadence,
            [0, second, 2 * second, 3 * second, 4 * second],
            "{top:?}"
        );
        let asked: Vec<u64> = top.iter().copied().filter(|t| t % second != 0).collect();
        assert_eq!(asked.len(), 1, "{top:?}");
        assert!(asked[0] > second && asked[0] < 2 * second, "{top:?}");
    }
}
