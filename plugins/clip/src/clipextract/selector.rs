//! Which frames go into which clip, in which role, with which timestamps.
//!
//! No GStreamer here so the decisions can be tested frame by frame. Times are signed
//! nanoseconds of the source's stream time; outputs are clip-relative.
//!
//! Video decides where each clip starts (the key frame at or before the requested start: a
//! decoder needs it) and publishes the clip's timing; audio streams follow that timing so both
//! stay in sync. Without a video stream the first audio stream decides.
//!
//! Output timestamps are `t - base + offset`: `base` is the first frame of the clip (the key
//! frame), `offset` the source's decode delay at that key frame so that no decode timestamp
//! goes below zero. The clip's segment starts where the requested first frame lands, so its
//! running time starts at zero on exactly that frame (`exact`, `smart`, `reencode`) or on the
//! key frame (`keyframe`).

use std::collections::VecDeque;

/// How a clip's first frames are produced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Stream copy from the key frame at or before the start; the clip starts on that key frame.
    Keyframe,
    /// Stream copy from that key frame; the segment hides the frames before the start.
    Exact,
    /// Re-encode from the start to the next key frame, stream copy from there.
    Smart,
    /// Re-encode the whole clip.
    Reencode,
}

/// The kind of elementary stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Coded video with key frames and possibly reordered frames.
    Video,
    /// Audio: every frame is a key frame, no reordering.
    Audio,
}

/// One coded frame from the source.
#[derive(Debug, Clone)]
pub struct Frame<T> {
    /// The payload (the buffer).
    pub data: T,
    /// Presentation time (stream time, ns).
    pub pts: i64,
    /// Decode time (stream time, ns); the presentation time when the source has none.
    pub dts: i64,
    /// Duration (ns), 0 when unknown.
    pub duration: i64,
    /// Decoding can start here.
    pub key: bool,
    /// No other frame references this one, so it can be left out.
    pub disposable: bool,
    /// Copied frames can follow re-encoded ones from here: a key frame that starts a new coded
    /// sequence (H.264 IDR; H.265 IDR/CRA/BLA), or an H.264 open-GOP I frame with an exact
    /// recovery point, which the element rewrites into an IDR (with the frame numbering of the
    /// copied frames after it). Other key frames need the head to go on to the next one.
    pub splice: bool,
}

/// What to do with a selected frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Output the coded frame as it is.
    Copy,
    /// Feed it to the clip's re-encoder; it is not output as coded.
    Decode,
}

/// Where a clip sits on the source's timeline.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClipTiming {
    /// Stream time that maps to `offset` in the clip.
    pub base: i64,
    /// Output time of `base`.
    pub offset: i64,
}

impl ClipTiming {
    /// Clip-relative time of stream time `t`.
    pub fn out(&self, t: i64) -> i64 {
        t - self.base + self.offset
    }
}

/// What a stream emits, in order.
#[derive(Debug, Clone, PartialEq)]
pub enum Output<T> {
    /// A clip begins.
    Start {
        /// Index of the clip in the sorted range list.
        clip: usize,
        /// Clip-relative time of the first frame that is to be shown.
        present_start: i64,
        /// Clip-relative end of what is to be shown (exclusive), when cut exactly.
        present_stop: Option<i64>,
        /// Clip-relative time of the first output frame (the key frame).
        first_out: i64,
        /// Stream time of the clip's first frame.
        first: i64,
    },
    /// A frame of the current clip.
    Frame {
        /// The payload.
        data: T,
        /// Clip-relative presentation time.
        pts: i64,
        /// Clip-relative decode time.
        dts: i64,
        /// Duration (ns), 0 when unknown.
        duration: i64,
        /// What to do with it.
        role: Role,
    },
    /// `smart`: the re-encoded head ends before clip-relative time `at` (the next key frame).
    HeadEnd {
        /// Clip-relative presentation time of the first copied frame.
        at: i64,
        /// Clip-relative decode time of the first copied frame.
        dts: i64,
    },
    /// `smart`: the re-encoded head is complete; copied frames follow.
    Junction,
    /// The current clip ends.
    End {
        /// Index of the clip.
        clip: usize,
    },
    /// No data for a while inside the current clip (a GAP event).
    Gap {
        /// Clip-relative start.
        pts: i64,
        /// Length (ns), 0 when unknown.
        duration: i64,
    },
    /// No more clips for this stream.
    Done,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Decision {
    Pending,
    Started(ClipTiming),
    Skipped,
}

#[derive(Debug, Clone, Copy)]
struct Active {
    clip: usize,
    timing: ClipTiming,
    /// Presentation time of the clip's first key frame: frames shown before it (open GOP
    /// leading frames) reference frames the clip does not have.
    first_key: i64,
    /// `smart`: still re-encoding the head.
    head: bool,
}

#[derive(Debug)]
struct Stream<T> {
    kind: Option<Kind>,
    eos: bool,
    done: bool,
    next_clip: usize,
    active: Option<Active>,
    /// Video: the frames since the last key frame (decode order). Audio: frames waiting for a
    /// clip's timing.
    held: VecDeque<Frame<T>>,
    /// `smart`: the first key frame after the head and its followers, waiting for the head's
    /// leading frames to be decoded.
    copy_pending: Vec<Frame<T>>,
    out: VecDeque<Output<T>>,
}

/// The clip selector for all streams of one element.
#[derive(Debug)]
pub struct Selector<T> {
    mode: Mode,
    ranges: Vec<(i64, i64)>,
    decisions: Vec<Decision>,
    streams: Vec<Stream<T>>,
}

impl<T: Clone> Selector<T> {
    /// A selector for `ranges` (`[start, end)`, stream time ns, sorted, not overlapping).
    pub fn new(mode: Mode, ranges: Vec<(i64, i64)>) -> Self {
        let decisions = vec![Decision::Pending; ranges.len()];
        Self {
            mode,
            ranges,
            decisions,
            streams: Vec::new(),
        }
    }

    /// Adds a stream and returns its index.
    pub fn add_stream(&mut self) -> usize {
        self.streams.push(Stream {
            kind: None,
            eos: false,
            done: false,
            next_clip: 0,
            active: None,
            held: VecDeque::new(),
            copy_pending: Vec::new(),
            out: VecDeque::new(),
        });
        self.streams.len() - 1
    }

    /// Sets the kind of a stream once its caps are known.
    pub fn set_kind(&mut self, stream: usize, kind: Kind) {
        self.streams[stream].kind = Some(kind);
        self.pump_followers();
    }

    /// Whether the stream has finished all its clips.
    pub fn is_done(&self, stream: usize) -> bool {
        self.streams[stream].done
    }

    /// Takes what the stream has to emit.
    pub fn take_output(&mut self, stream: usize) -> Vec<Output<T>> {
        self.streams[stream].out.drain(..).collect()
    }

    /// Forgets all frames in flight (after a flush); clips already finished stay finished.
    pub fn flush(&mut self) {
        for s in &mut self.streams {
            s.held.clear();
            s.copy_pending.clear();
            s.active = None;
            s.eos = false;
        }
        for (i, d) in self.decisions.iter_mut().enumerate() {
            let finished = self.streams.iter().all(|s| s.next_clip > i);
            if !finished {
                *d = Decision::Pending;
            }
        }
    }

    fn leader(&self) -> Option<usize> {
        self.streams
            .iter()
            .position(|s| s.kind == Some(Kind::Video) && !s.eos && !s.done)
    }

    /// Whether a stream that could still become the leader has not shown its kind yet.
    fn leader_unknown(&self) -> bool {
        self.streams.iter().any(|s| s.kind.is_none() && !s.eos)
    }

    /// The clip stream `si` goes on to, or `None` past the last one: the stream is then done
    /// (what it held is dropped and `Done` queued).
    fn next_clip_or_finish(&mut self, si: usize) -> Option<usize> {
        let s = &mut self.streams[si];
        if s.next_clip < self.ranges.len() {
            return Some(s.next_clip);
        }
        s.done = true;
        s.held.clear();
        s.out.push_back(Output::Done);
        None
    }

    /// Feeds one frame in decode order.
    pub fn push(&mut self, stream: usize, frame: Frame<T>) {
        match self.streams[stream].kind {
            Some(Kind::Video) if self.leader() == Some(stream) => self.push_leader(stream, frame),
            Some(Kind::Video) => {
                // A second video stream cannot follow another stream's key frames; its frames
                // are dropped. The element refuses to link it.
            }
            _ => {
                self.streams[stream].held.push_back(frame);
                self.pump_audio(stream);
            }
        }
    }

    /// The stream has no data from `pts` for `duration` (stream time; 0: unknown). Passed on
    /// in clip time, cut to the clip, when it falls in the stream's current clip and nothing
    /// of the stream is still waiting to go out before it; outside clips there is nothing to
    /// fill.
    pub fn gap(&mut self, stream: usize, pts: i64, duration: i64) {
        let s = &self.streams[stream];
        let Some(a) = s.active else {
            return;
        };
        let waiting = s.kind != Some(Kind::Video) && !s.held.is_empty();
        if waiting || !s.copy_pending.is_empty() {
            return;
        }
        let (start, end) = self.ranges[a.clip];
        let first = match self.mode {
            Mode::Keyframe => a.timing.base,
            _ => start,
        };
        let from = pts.max(first);
        let to = if duration > 0 {
            (pts + duration).min(end)
        } else {
            end
        };
        if from >= end || (duration > 0 && to <= from) {
            return;
        }
        self.streams[stream].out.push_back(Output::Gap {
            pts: a.timing.out(from),
            duration: if duration > 0 { to - from } else { 0 },
        });
    }

    /// The stream ended: close its clip, skip the clips it never reached.
    pub fn eos(&mut self, stream: usize) {
        let was_leader = self.leader() == Some(stream);
        let s = &mut self.streams[stream];
        s.eos = true;
        if s.kind == Some(Kind::Video) && was_leader {
            let pending: Vec<Frame<T>> = std::mem::take(&mut s.copy_pending);
            if !pending.is_empty() {
                self.flush_copy_pending(stream, pending);
            }
            let s = &mut self.streams[stream];
            if let Some(a) = s.active.take() {
                s.out.push_back(Output::End { clip: a.clip });
            }
            for c in s.next_clip..self.ranges.len() {
                if self.decisions[c] == Decision::Pending {
                    self.decisions[c] = Decision::Skipped;
                }
            }
            s.next_clip = self.ranges.len();
        } else {
            self.pump_audio(stream);
            let s = &mut self.streams[stream];
            if let Some(a) = s.active.take() {
                s.out.push_back(Output::End { clip: a.clip });
            }
            s.next_clip = self.ranges.len();
            s.held.clear();
        }
        let s = &mut self.streams[stream];
        if !s.done {
            s.done = true;
            s.out.push_back(Output::Done);
        }
        self.pump_followers();
    }

    fn pump_followers(&mut self) {
        for i in 0..self.streams.len() {
            if self.streams[i].kind == Some(Kind::Audio) {
                self.pump_audio(i);
            }
        }
    }

    fn emit(&mut self, stream: usize, f: Frame<T>, timing: ClipTiming, role: Role) {
        let pts = timing.out(f.pts);
        let dts = timing.out(f.dts).max(0);
        self.streams[stream].out.push_back(Output::Frame {
            data: f.data,
            pts,
            dts,
            duration: f.duration,
            role,
        });
    }

    fn segment_for(&self, clip: usize, timing: ClipTiming) -> (i64, Option<i64>) {
        let (start, end) = self.ranges[clip];
        match self.mode {
            Mode::Keyframe => (timing.offset, None),
            _ => (timing.out(start), Some(timing.out(end))),
        }
    }

    fn push_leader(&mut self, si: usize, f: Frame<T>) {
        loop {
            let s = &self.streams[si];
            if let Some(a) = s.active {
                let (_, end) = self.ranges[a.clip];
                if f.dts >= end {
                    self.finish_leader_clip(si);
                    continue;
                }
                self.leader_frame_in_clip(si, a, f.clone());
                break;
            }
            if s.done {
                break;
            }
            let Some(c) = self.next_clip_or_finish(si) else {
                break;
            };
            let (start, _) = self.ranges[c];
            if f.pts < start {
                break;
            }
            // The first frame at or after the start: the clip begins with the key frame at or
            // before the start. When `f` is a key frame after the start, the previous group
            // still holds the frames before it in display order (open GOP leading frames).
            let from_held = !(f.key && f.pts <= start);
            let first_key = if from_held {
                self.streams[si].held.front().filter(|h| h.key).cloned()
            } else {
                Some(f.clone())
            };
            let Some(first_key) = first_key.or_else(|| f.key.then(|| f.clone())) else {
                // No key frame yet to start decoding from: wait for one.
                break;
            };
            let use_held = from_held && self.streams[si].held.front().is_some_and(|h| h.key);
            // A video that only begins after the start (its first frame comes later than the
            // audio's) keeps its place: the clip starts at the start, not at the video.
            let base = first_key.pts.min(start);
            let offset = (first_key.pts - first_key.dts).max(0);
            let timing = ClipTiming { base, offset };
            self.decisions[c] = Decision::Started(timing);
            let (seg_start, seg_stop) = self.segment_for(c, timing);
            // A key frame exactly on the start needs no re-encoded head.
            let active = Active {
                clip: c,
                timing,
                first_key: first_key.pts,
                head: self.mode == Mode::Smart && base < start,
            };
            let s = &mut self.streams[si];
            s.active = Some(active);
            s.out.push_back(Output::Start {
                clip: c,
                present_start: seg_start,
                present_stop: seg_stop,
                first_out: offset,
                first: base,
            });
            if use_held {
                let held: Vec<Frame<T>> = self.streams[si].held.iter().cloned().collect();
                for h in held {
                    let a = self.streams[si].active.unwrap_or(active);
                    self.leader_frame_in_clip(si, a, h);
                }
            }
            // `f` itself is handled as a frame of the now active clip.
        }
        let s = &mut self.streams[si];
        if f.key {
            s.held.clear();
        }
        if f.key || !s.held.is_empty() {
            s.held.push_back(f);
        }
        self.pump_followers();
    }

    fn leader_frame_in_clip(&mut self, si: usize, a: Active, f: Frame<T>) {
        let (start, end) = self.ranges[a.clip];
        // Leading frames of an open GOP's first key frame reference frames we do not have.
        if f.pts < a.first_key {
            return;
        }
        if f.disposable && (f.pts >= end || (self.mode != Mode::Keyframe && f.pts < start)) {
            return;
        }
        match self.mode {
            Mode::Keyframe | Mode::Exact => self.emit(si, f, a.timing, Role::Copy),
            Mode::Reencode => self.emit(si, f, a.timing, Role::Decode),
            Mode::Smart => self.smart_frame(si, a, f, start),
        }
    }

    fn smart_frame(&mut self, si: usize, a: Active, f: Frame<T>, start: i64) {
        if !a.head {
            let s = &mut self.streams[si];
            if !s.copy_pending.is_empty() {
                // Frames after the next key frame in decode order but before it in display order
                // belong to the head; the first frame after it in display order ends the head.
                if f.pts < s.copy_pending[0].pts {
                    self.emit(si, f, a.timing, Role::Decode);
                    return;
                }
                let pending = std::mem::take(&mut self.streams[si].copy_pending);
                self.flush_copy_pending(si, pending);
            }
            self.emit(si, f, a.timing, Role::Copy);
            return;
        }
        if f.key && f.splice && f.pts > start {
            // The next key frame: the head ends here. It is decoded too (open GOP leading frames
            // reference it) and copied once the head's last frames are in.
            let s = &mut self.streams[si];
            if let Some(act) = s.active.as_mut() {
                act.head = false;
            }
            s.out.push_back(Output::HeadEnd {
                at: a.timing.out(f.pts),
                dts: a.timing.out(f.dts).max(0),
            });
            self.emit(si, f.clone(), a.timing, Role::Decode);
            self.streams[si].copy_pending.push(f);
            return;
        }
        self.emit(si, f, a.timing, Role::Decode);
    }

    fn flush_copy_pending(&mut self, si: usize, pending: Vec<Frame<T>>) {
        let Some(a) = self.streams[si].active else {
            return;
        };
        self.streams[si].out.push_back(Output::Junction);
        for p in pending {
            self.emit(si, p, a.timing, Role::Copy);
        }
    }

    fn finish_leader_clip(&mut self, si: usize) {
        let pending = std::mem::take(&mut self.streams[si].copy_pending);
        if !pending.is_empty() {
            self.flush_copy_pending(si, pending);
        }
        let s = &mut self.streams[si];
        if let Some(a) = s.active.take() {
            s.out.push_back(Output::End { clip: a.clip });
            s.next_clip = a.clip + 1;
        }
    }

    fn pump_audio(&mut self, si: usize) {
        loop {
            let leader = self.leader();
            let leader_unknown = self.leader_unknown();
            let s = &self.streams[si];
            if s.done {
                return;
            }
            let Some(f) = s.held.front() else {
                return;
            };
            let (fpts, fdur) = (f.pts, f.duration);
            if let Some(a) = s.active {
                let (_, end) = self.ranges[a.clip];
                if fpts >= end {
                    let s = &mut self.streams[si];
                    s.out.push_back(Output::End { clip: a.clip });
                    s.active = None;
                    s.next_clip = a.clip + 1;
                    continue;
                }
                let Some(f) = self.streams[si].held.pop_front() else {
                    return;
                };
                if a.timing.out(f.pts) >= 0 {
                    self.emit(si, f, a.timing, Role::Copy);
                }
                continue;
            }
            let Some(c) = self.next_clip_or_finish(si) else {
                return;
            };
            let (start, _) = self.ranges[c];
            match self.decisions[c] {
                Decision::Skipped => {
                    self.streams[si].next_clip += 1;
                }
                Decision::Pending => {
                    if leader.is_some() || leader_unknown {
                        // Keep what the clip may still need: from the leader's current key frame.
                        let floor = leader
                            .and_then(|l| self.streams[l].held.front())
                            .filter(|h| h.key)
                            .map(|h| h.pts);
                        let s = &mut self.streams[si];
                        if let Some(floor) = floor {
                            while s.held.front().is_some_and(|h| h.pts + h.duration <= floor) {
                                s.held.pop_front();
                            }
                        }
                        return;
                    }
                    // No video: the audio decides, starting with the frame that contains the
                    // start.
                    if fpts + fdur.max(1) <= start {
                        self.streams[si].held.pop_front();
                        continue;
                    }
                    self.decisions[c] = Decision::Started(ClipTiming {
                        base: fpts,
                        offset: 0,
                    });
                }
                Decision::Started(timing) => {
                    let cut = match self.mode {
                        Mode::Keyframe => timing.base,
                        _ => start,
                    };
                    // Without durations (Matroska without BlockDuration) a frame ends where the
                    // next begins: wait for it rather than drop the frame holding the start.
                    let s = &self.streams[si];
                    let fend = match (fdur, s.held.get(1)) {
                        (d, _) if d > 0 => fpts + d,
                        (_, Some(next)) => next.pts.max(fpts + 1),
                        (_, None) if s.eos => fpts + 1,
                        (_, None) => return,
                    };
                    // Nothing before the video's first frame: muxers drop what starts before it.
                    if fend <= cut || fpts < timing.base {
                        self.streams[si].held.pop_front();
                        continue;
                    }
                    let (seg_start, seg_stop) = self.segment_for(c, timing);
                    let s = &mut self.streams[si];
                    s.out.push_back(Output::Start {
                        clip: c,
                        present_start: seg_start,
                        present_stop: seg_stop,
                        first_out: timing.offset,
                        first: fpts,
                    });
                    s.active = Some(Active {
                        clip: c,
                        timing,
                        first_key: timing.base,
                        head: false,
                    });
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const F: i64 = 40; // frame duration, "ns" for readability

    fn video(pts: i64, dts: i64, key: bool, disposable: bool) -> Frame<i64> {
        Frame {
            data: pts,
            pts,
            dts,
            duration: F,
            key,
            disposable,
            splice: key,
        }
    }

    fn audio(pts: i64) -> Frame<i64> {
        Frame {
            data: pts,
            pts,
            dts: pts,
            duration: 21,
            key: true,
            disposable: false,
            splice: true,
        }
    }

    fn frames(out: &[Output<i64>]) -> Vec<(i64, i64, Role)> {
        out.iter()
            .filter_map(|o| match o {
                Output::Frame {
                    data, pts, role, ..
                } => Some((*data, *pts, *role)),
                _ => None,
            })
            .collect()
    }

    /// Closed GOPs of 10 frames with one B frame: decode order I0 P2 B1 P4 B3 ...
    fn closed_gops(n: i64) -> Vec<Frame<i64>> {
        let mut v = Vec::new();
        for i in 0..n {
            let base = i * 10 * F;
            v.push(video(base, base - F, true, false));
            for k in (1..10).step_by(2) {
                let p = base + (k + 1).min(9) * F;
                let b = base + k * F;
                v.push(video(p, b - F, false, false));
                if k < 9 {
                    v.push(video(b, b, false, true));
                }
            }
        }
        v
    }

    /// What one video stream of three closed GOPs gives out for the clip `range` in `mode`.
    fn cut_closed_gops(mode: Mode, range: (i64, i64)) -> Vec<Output<i64>> {
        let mut s = Selector::new(mode, vec![range]);
        let v = s.add_stream();
        s.set_kind(v, Kind::Video);
        for f in closed_gops(3) {
            s.push(v, f);
        }
        s.take_output(v)
    }

    #[test]
    fn exact_starts_from_the_key_frame_before_and_stops_at_the_end() {
        let out = cut_closed_gops(Mode::Exact, (13 * F, 17 * F));
        let Output::Start {
            present_start,
            present_stop,
            first,
            ..
        } = out[0]
        else {
            panic!("{out:?}")
        };
        assert_eq!(first, 10 * F, "starts at the key frame at or before 13");
        let offset = F; // the key frame's decode delay
        assert_eq!(present_start, 3 * F + offset);
        assert_eq!(present_stop, Some(7 * F + offset));
        let got: Vec<i64> = frames(&out).iter().map(|f| f.0 / F).collect();
        // Disposable B frames before the start are left out; everything else up to the
        // last frame before 17 and the reference frame it needs.
        assert!(got.contains(&10) && got.contains(&16) && !got.contains(&11));
        assert!(got.iter().all(|&f| f < 19), "{got:?}");
        assert!(matches!(out.last(), Some(Output::Done)));
    }

    #[test]
    fn keyframe_mode_presents_from_the_key_frame() {
        let out = cut_closed_gops(Mode::Keyframe, (13 * F, 17 * F));
        let Output::Start {
            present_start,
            present_stop,
            first_out,
            ..
        } = out[0]
        else {
            panic!()
        };
        assert_eq!(present_start, first_out);
        assert_eq!(present_stop, None);
        assert!(
            frames(&out).iter().any(|f| f.0 == 11 * F),
            "keeps every frame"
        );
    }

    #[test]
    fn open_gop_leading_frames_of_the_first_key_frame_are_dropped() {
        // Decode order: I10 B8 B9 P12 B11 ... (B8, B9 reference the previous GOP).
        let mut s = Selector::new(Mode::Keyframe, vec![(10 * F, 14 * F)]);
        let v = s.add_stream();
        s.set_kind(v, Kind::Video);
        for (pts, dts, key) in [
            (10, 7, true),
            (8, 8, false),
            (9, 9, false),
            (12, 10, false),
            (11, 11, false),
            (13, 12, false),
            (14, 13, false),
            (15, 14, false),
        ] {
            s.push(v, video(pts * F, dts * F, key, false));
        }
        let got: Vec<i64> = frames(&s.take_output(v)).iter().map(|f| f.0 / F).collect();
        assert_eq!(&got[..2], &[10, 12], "{got:?}");
        assert!(!got.contains(&8) && !got.contains(&9));
    }

    #[test]
    fn smart_reencodes_up_to_the_next_key_frame() {
        let out = cut_closed_gops(Mode::Smart, (13 * F, 25 * F));
        let junction = out
            .iter()
            .position(|o| matches!(o, Output::Junction))
            .expect("junction");
        let head_end = out
            .iter()
            .position(|o| matches!(o, Output::HeadEnd { .. }))
            .expect("head end");
        assert!(head_end < junction);
        let before: Vec<_> = frames(&out[..junction]);
        let after: Vec<_> = frames(&out[junction..]);
        assert!(before.iter().all(|f| f.2 == Role::Decode));
        assert!(after.iter().all(|f| f.2 == Role::Copy));
        assert_eq!(after[0].0, 20 * F, "copy resumes on the next key frame");
    }

    #[test]
    fn audio_follows_the_video_clip_start() {
        let mut s = Selector::new(Mode::Exact, vec![(13 * F, 17 * F)]);
        let v = s.add_stream();
        let a = s.add_stream();
        s.set_kind(v, Kind::Video);
        s.set_kind(a, Kind::Audio);
        // Audio runs ahead of video, as demuxers interleave it.
        for t in (0..40).map(|i| i * 21) {
            s.push(a, audio(t));
        }
        assert!(
            frames(&s.take_output(a)).is_empty(),
            "audio waits for the video's decision"
        );
        for f in closed_gops(2) {
            s.push(v, f);
        }
        s.push(a, audio(40 * 21));
        let out = s.take_output(a);
        let Output::Start { present_start, .. } = out[0] else {
            panic!("{out:?}")
        };
        let first = frames(&out)[0];
        // The first audio frame contains the first presented video instant.
        assert!(first.0 <= 13 * F && first.0 + 21 > 13 * F, "{first:?}");
        assert_eq!(first.1, present_start - (13 * F - first.0));
    }

    #[test]
    fn ranges_past_the_end_are_skipped() {
        let mut s = Selector::new(Mode::Exact, vec![(2 * F, 4 * F), (100 * F, 110 * F)]);
        let v = s.add_stream();
        let a = s.add_stream();
        s.set_kind(v, Kind::Video);
        s.set_kind(a, Kind::Audio);
        for f in closed_gops(1) {
            s.push(v, f);
        }
        s.eos(v);
        for t in (0..20).map(|i| i * 21) {
            s.push(a, audio(t));
        }
        s.eos(a);
        for st in [v, a] {
            let out = s.take_output(st);
            let starts = out
                .iter()
                .filter(|o| matches!(o, Output::Start { .. }))
                .count();
            assert_eq!(starts, 1, "{out:?}");
            assert!(matches!(out.last(), Some(Output::Done)));
        }
    }
}
