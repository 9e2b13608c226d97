//! Low-Latency HLS: partial segments, preload hints and blocking playlist reload, served from
//! memory; with a ladder, one rendition per rung under a multivariant playlist.
//!
//! No GStreamer sink writes LL-HLS (1.22's hlssink2 and gst-plugins-rs's hlssink3 write whole
//! segments). `isofmp4mux` does the hard part: with `fragment-duration` = the segment duration
//! and `chunk-duration` = the part duration, it pushes one buffer list per CMAF chunk: the
//! initialisation segment once (flags `HEADER | DISCONT`), then per chunk a `moof` header
//! (`HEADER`, plus `DELTA_UNIT` unless the chunk starts a fragment) followed by its samples.
//! Each chunk becomes a part, each fragment a segment (fragments start on key frames). This
//! module keeps the recent segments in memory and answers the HLS requests:
//!
//! - `live.m3u8[?_HLS_msn=M[&_HLS_part=P]]`: the playlist (version 9) with
//!   `EXT-X-SERVER-CONTROL:CAN-BLOCK-RELOAD=YES`, `EXT-X-PART-INF`, parts of the last segments,
//!   `EXT-X-PRELOAD-HINT` for the next part and `EXT-X-PROGRAM-DATE-TIME` from the capture
//!   stamps; with `_HLS_msn` the answer waits until that segment (or part) exists.
//! - `init.mp4`, `seg<M>.m4s` (a complete segment) and `part<M>.<P>.m4s` (a part; asking for
//!   the hinted next part waits until it is complete).
//!
//! Ladders: each rung has a muxer of its own feeding a track of this store. With more than one,
//! `live.m3u8` is the multivariant playlist (an `EXT-X-STREAM-INF` per rung, the middle one
//! first, where players start, then the others top first; with
//! BANDWIDTH and AVERAGE-BANDWIDTH measured from the stored segments, CODECS read from the
//! rendition's own initialisation segment) and rendition `N` answers the requests above under
//! `rN/`, its playlist naming the others' last segment and part (`EXT-X-RENDITION-REPORT`) so a
//! player switching rung asks the new one for the right part at once. The rungs' IDRs are
//! aligned and their muxers cut at the same running times, so segment `M` is the same stretch
//! of time in every rendition; a rendition whose muxer starts a segment later than the others
//! takes the media sequence number the others gave that stretch (matched by capture stamp).
//! Audio is muxed into every rendition: a player switching rung never has to line up a
//! separate audio playlist's parts with the new video's.
//!
//! Without `low_latency` (a ladder of plain HLS), the same store writes playlists without
//! parts: complete fMP4 segments only, version 7, no blocking reload.
//!
//! When the output restarts (a new muxer after a failure), the store keeps what it has: the
//! media sequence goes on, the segments of the earlier run stay listed while in the window, and
//! the first segment of the new run carries `EXT-X-DISCONTINUITY` and the new run's own
//! initialisation segment (`EXT-X-MAP:URI="init<run>.mp4"`), as RFC 8216 requires when the
//! encoding parameters or timestamps may change.

use std::collections::{BTreeMap, VecDeque};
use std::fmt::Write as _;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

/// How many complete segments before the live edge still list their parts.
const SEGMENTS_WITH_PARTS: u64 = 3;

/// A response for the HTTP server: status, content type, cache policy, body.
#[derive(Debug)]
pub struct Reply {
    /// HTTP status code.
    pub status: u16,
    /// `Content-Type`.
    pub content_type: &'static str,
    /// `Cache-Control`.
    pub cache: &'static str,
    /// The body.
    pub body: Arc<[u8]>,
}

/// What the multivariant playlist says of a rendition that its segments do not show.
#[derive(Debug, Clone, PartialEq)]
pub struct Rendition {
    /// Picture width in pixels.
    pub width: u32,
    /// Picture height in pixels.
    pub height: u32,
    /// Frames per second.
    pub fps: f64,
    /// The video bitrate it is encoded at, bits/s: its BANDWIDTH until a segment is complete.
    pub bitrate_bps: u64,
}

#[derive(Debug)]
struct Part {
    data: Arc<[u8]>,
    duration: f64,
    independent: bool,
}

#[derive(Debug)]
struct Segment {
    msn: u64,
    /// The muxer run (0, then one more per restart) that wrote it.
    run: u64,
    /// The first segment of a restarted run: `EXT-X-DISCONTINUITY` before it.
    discontinuity: bool,
    parts: Vec<Part>,
    complete: bool,
    /// Capture time of the first frame (UTC ns), from latencystamp's meta.
    utc_ns: Option<u64>,
    /// Running time of the first frame, as the muxer stamped the fragment's header.
    pts: Option<gst::ClockTime>,
}

impl Segment {
    fn duration(&self) -> f64 {
        self.parts.iter().map(|p| p.duration).sum()
    }

    fn bytes(&self) -> usize {
        self.parts.iter().map(|p| p.data.len()).sum()
    }

    /// Whether `other` (of another rendition) starts on the same frame.
    fn starts_with(&self, other: &Segment, tolerance_ns: u64) -> bool {
        match (self.utc_ns, other.utc_ns, self.pts, other.pts) {
            (Some(a), Some(b), _, _) => a.abs_diff(b) <= tolerance_ns,
            (_, _, Some(a), Some(b)) => a.nseconds().abs_diff(b.nseconds()) <= tolerance_ns,
            _ => false,
        }
    }
}

/// One rendition's segments.
#[derive(Debug, Default)]
struct Track {
    /// Initialisation segment of each run still listed (or current).
    inits: BTreeMap<u64, Arc<[u8]>>,
    /// A restart happened: the next segment starts a new run.
    pending_discontinuity: bool,
    /// Discontinuities that left the store (`EXT-X-DISCONTINUITY-SEQUENCE` counts them).
    dropped_discontinuities: u64,
    segments: VecDeque<Segment>,
    next_msn: u64,
    /// Longest part and segment seen: the playlist's targets must cover them.
    longest_part: f64,
    longest_segment: f64,
    /// Its muxer sent EOS.
    ended: bool,
}

impl Track {
    fn part(&self, msn: u64, index: usize) -> Option<&Part> {
        self.segments
            .iter()
            .find(|s| s.msn == msn)
            .and_then(|s| s.parts.get(index))
    }

    /// Whether the playlist holds part `index` of segment `msn`, or anything after it (RFC
    /// 8216bis 6.2.5.2: a blocking reload is answered once it does).
    fn has_part_or_later(&self, msn: u64, index: usize) -> bool {
        self.segments
            .back()
            .is_some_and(|last| last.msn > msn || (last.msn == msn && last.parts.len() > index))
    }

    /// Whether a complete segment `msn` or a later one is listed.
    fn has_segment_or_later(&self, msn: u64) -> bool {
        self.segments
            .iter()
            .rev()
            .any(|s| s.complete && s.msn >= msn)
    }

    /// Whether (msn, index) is the next part to come (the preload hint), so worth waiting for.
    fn is_hinted(&self, msn: u64, index: usize) -> bool {
        match self.segments.back() {
            Some(last) if !last.complete => msn == last.msn && index == last.parts.len(),
            Some(last) => msn == last.msn + 1 && index == 0,
            None => msn == self.next_msn && index == 0,
        }
    }

    /// The last segment listed and the index of its last part, for rendition reports.
    fn last_part(&self) -> Option<(u64, usize)> {
        let last = self.segments.back()?;
        Some((last.msn, last.parts.len().checked_sub(1)?))
    }

    /// Peak and average bit rate of the complete segments (RFC 8216bis 4.4.6.2's BANDWIDTH
    /// and AVERAGE-BANDWIDTH), bits/s.
    fn bitrates(&self) -> Option<(u64, u64)> {
        let complete = self
            .segments
            .iter()
            .filter(|s| s.complete && s.duration() > 0.0);
        let (mut peak, mut bytes, mut seconds) = (0f64, 0usize, 0f64);
        for segment in complete {
            peak = peak.max(segment.bytes() as f64 * 8.0 / segment.duration());
            bytes += segment.bytes();
            seconds += segment.duration();
        }
        (seconds > 0.0).then(|| {
            (
                peak.ceil() as u64,
                (bytes as f64 * 8.0 / seconds).ceil() as u64,
            )
        })
    }

    fn end_open_segment(&mut self) {
        if let Some(last) = self.segments.back_mut() {
            last.complete = true;
        }
        if let Some(d) = self.segments.back().map(Segment::duration) {
            self.longest_segment = self.longest_segment.max(d);
        }
    }
}

#[derive(Debug, Default)]
struct State {
    /// One per rendition, the top rung first.
    tracks: Vec<Track>,
    /// What the output said of each rendition ([`LlHls::set_renditions`]).
    renditions: Vec<Rendition>,
    /// The current muxer run.
    run: u64,
    ended: bool,
}

impl State {
    /// More than one rendition: `live.m3u8` is the multivariant playlist.
    fn is_ladder(&self) -> bool {
        self.tracks.len().max(self.renditions.len()) > 1
    }

    fn track_mut(&mut self, index: usize) -> &mut Track {
        if self.tracks.len() <= index {
            self.tracks.resize_with(index + 1, Track::default);
        }
        &mut self.tracks[index]
    }
}

/// The HLS store of one HLS output: fed by the muxers' appsinks, read by the HTTP server.
#[derive(Debug)]
pub struct LlHls {
    state: Mutex<State>,
    changed: Condvar,
    segment_target: Duration,
    part_target: Duration,
    /// Complete segments listed in the playlist.
    window: usize,
    /// Parts, preload hints and blocking reloads; plain HLS (whole segments) without.
    low_latency: bool,
}

/// The request a name below `/hls/` makes of one rendition.
enum Asked {
    Playlist,
    Init(u64),
    Segment(u64),
    Part(u64, usize),
}

fn asked(name: &str) -> Option<Asked> {
    if name == "live.m3u8" {
        return Some(Asked::Playlist);
    }
    if let Some(run) = name
        .strip_prefix("init")
        .and_then(|n| n.strip_suffix(".mp4"))
    {
        return if run.is_empty() {
            Some(Asked::Init(0))
        } else {
            run.parse().ok().map(Asked::Init)
        };
    }
    if let Some(msn) = name
        .strip_prefix("seg")
        .and_then(|n| n.strip_suffix(".m4s"))
    {
        return msn.parse().ok().map(Asked::Segment);
    }
    let (msn, index) = name
        .strip_prefix("part")?
        .strip_suffix(".m4s")?
        .split_once('.')?;
    Some(Asked::Part(msn.parse().ok()?, index.parse().ok()?))
}

impl LlHls {
    /// A Low-Latency HLS store for segments of about `segment_target` split into parts of
    /// about `part_target`, listing `window` complete segments.
    pub fn new(segment_target: Duration, part_target: Duration, window: usize) -> Self {
        Self::with_mode(segment_target, part_target, window, true)
    }

    /// A store writing plain HLS playlists (whole segments, no parts) for segments of about
    /// `segment_target`, listing `window` of them.
    pub fn plain(segment_target: Duration, window: usize) -> Self {
        Self::with_mode(segment_target, segment_target, window, false)
    }

    fn with_mode(
        segment_target: Duration,
        part_target: Duration,
        window: usize,
        low_latency: bool,
    ) -> Self {
        LlHls {
            state: Mutex::new(State::default()),
            changed: Condvar::new(),
            segment_target,
            part_target,
            window: window.max(2),
            low_latency,
        }
    }

    /// Says what each rendition is, the top rung first: one per muxer feeding the store.
    pub fn set_renditions(&self, renditions: Vec<Rendition>) {
        let mut state = self.state.lock().unwrap();
        let count = renditions.len();
        state.renditions = renditions;
        if state.tracks.len() < count {
            state.tracks.resize_with(count, Track::default);
        }
    }

    /// Takes one chunk (buffer list) from the `isofmp4mux` of rendition `track`.
    pub fn push_chunk(&self, track: usize, list: &gst::BufferListRef) {
        let mut data = Vec::new();
        let mut init = None;
        let mut fragment_start = false;
        let mut duration = None;
        let mut utc_ns = None;
        let mut pts = None;
        for buffer in list.iter() {
            let flags = buffer.flags();
            let Ok(map) = buffer.map_readable() else {
                continue;
            };
            if flags.contains(gst::BufferFlags::HEADER | gst::BufferFlags::DISCONT) {
                init = Some(Arc::<[u8]>::from(map.as_slice()));
                continue;
            }
            if flags.contains(gst::BufferFlags::HEADER) {
                fragment_start = !flags.contains(gst::BufferFlags::DELTA_UNIT);
                duration = buffer.duration();
                pts = buffer.pts();
            }
            // The muxer copies the first sample's metas to the header; the samples keep theirs.
            utc_ns = utc_ns.or_else(|| crate::capture::capture_utc_ns(buffer));
            data.extend_from_slice(map.as_slice());
        }
        let tolerance_ns = self.part_target.as_nanos() as u64 / 2;
        let mut state = self.state.lock().unwrap();
        let run = state.run;
        if let Some(init) = init {
            state.track_mut(track).inits.insert(run, init);
        }
        if data.is_empty() {
            drop(state);
            self.changed.notify_all();
            return;
        }
        let duration = duration.map_or(self.part_target.as_secs_f64(), |d| {
            d.nseconds() as f64 / 1e9
        });
        let open = state
            .track_mut(track)
            .segments
            .back()
            .is_some_and(|s| !s.complete);
        if fragment_start || !open {
            let segment = Segment {
                msn: 0,
                run,
                discontinuity: false,
                parts: Vec::new(),
                complete: false,
                utc_ns,
                pts,
            };
            // A rendition that starts after the others takes the number they gave this stretch.
            let aligned = if state.track_mut(track).segments.is_empty() {
                state
                    .tracks
                    .iter()
                    .enumerate()
                    .filter(|(i, _)| *i != track)
                    .flat_map(|(_, t)| t.segments.iter())
                    .find(|s| s.starts_with(&segment, tolerance_ns))
                    .map(|s| s.msn)
            } else {
                None
            };
            let window = self.window;
            let t = state.track_mut(track);
            t.end_open_segment();
            if let Some(msn) = aligned {
                t.next_msn = t.next_msn.max(msn);
            }
            let msn = t.next_msn;
            t.next_msn += 1;
            let discontinuity = std::mem::take(&mut t.pending_discontinuity);
            t.segments.push_back(Segment {
                msn,
                discontinuity,
                ..segment
            });
            // Keep what the playlist lists plus a little for clients a request behind.
            while t.segments.len() > window + 3 {
                if t.segments.pop_front().is_some_and(|s| s.discontinuity) {
                    t.dropped_discontinuities += 1;
                }
            }
            if let Some(oldest) = t.segments.front().map(|s| s.run) {
                t.inits.retain(|&run, _| run >= oldest);
            }
        }
        let t = state.track_mut(track);
        t.longest_part = t.longest_part.max(duration);
        if let Some(segment) = t.segments.back_mut() {
            segment.parts.push(Part {
                data: data.into(),
                duration,
                independent: fragment_start,
            });
        }
        drop(state);
        self.changed.notify_all();
    }

    /// The output restarts with new muxers: the segments in progress end here (their parts are
    /// whole and stay listed), and the next ones start a new run after a discontinuity.
    pub fn restart(&self) {
        let mut state = self.state.lock().unwrap();
        state.ended = false;
        if state.tracks.iter().all(|t| t.segments.is_empty()) {
            // Nothing listed yet: the new run simply is the first.
            for track in &mut state.tracks {
                track.inits.clear();
                track.ended = false;
            }
            return;
        }
        // The renditions go on from one media sequence number: a muxer that had begun a
        // segment the others had not drops it (its parts, the newest, were no segment yet).
        let common = state
            .tracks
            .iter()
            .filter_map(|t| t.segments.back())
            .map(|s| s.msn)
            .min();
        for track in &mut state.tracks {
            track.ended = false;
            while track.segments.back().is_some_and(|s| {
                s.parts.is_empty() || (!s.complete && common.is_some_and(|c| s.msn > c))
            }) {
                track.segments.pop_back();
                track.next_msn -= 1;
            }
            track.end_open_segment();
            track.pending_discontinuity = !track.segments.is_empty();
        }
        // A rendition that had nothing yet starts where the others go on.
        let next = state
            .tracks
            .iter()
            .filter(|t| !t.segments.is_empty())
            .map(|t| t.next_msn)
            .max()
            .unwrap_or(0);
        for track in state.tracks.iter_mut().filter(|t| t.segments.is_empty()) {
            track.next_msn = track.next_msn.max(next);
        }
        state.run += 1;
        drop(state);
        self.changed.notify_all();
    }

    /// The stream ended: the last segments are complete and the playlists get `EXT-X-ENDLIST`.
    #[cfg(test)]
    fn finish(&self) {
        let tracks = self.state.lock().unwrap().tracks.len();
        for track in 0..tracks.max(1) {
            self.finish_track(track);
        }
    }

    /// Rendition `track`'s stream ended: its last segment is complete; once every rendition's
    /// has, the playlists get `EXT-X-ENDLIST`.
    pub fn finish_track(&self, track: usize) {
        let mut state = self.state.lock().unwrap();
        let t = state.track_mut(track);
        t.end_open_segment();
        t.ended = true;
        state.ended = state.tracks.iter().all(|t| t.ended);
        drop(state);
        self.changed.notify_all();
    }

    /// Answers a request for `name` (the path below `/hls/`) with its query string.
    pub fn respond(&self, name: &str, query: &str) -> Reply {
        // A blocking request waits at most three target durations (RFC 8216bis 6.2.5.2).
        let deadline = Instant::now() + 3 * self.segment_target.max(Duration::from_secs(1));
        let ladder = self.state.lock().unwrap().is_ladder();
        if !ladder {
            return match asked(name) {
                Some(asked) => self.respond_track(0, asked, query, deadline),
                None => not_found(),
            };
        }
        if name == "live.m3u8" {
            return self.multivariant(deadline);
        }
        // `rN/NAME`: rendition N (digits as written by `multivariant`, so one name each).
        let rendition = name.strip_prefix('r').and_then(|n| n.split_once('/'));
        let Some((track, asked)) = rendition.and_then(|(n, rest)| {
            let track = n.parse::<usize>().ok().filter(|t| t.to_string() == n)?;
            Some((track, asked(rest)?))
        }) else {
            return not_found();
        };
        if track >= self.state.lock().unwrap().tracks.len() {
            return not_found();
        }
        self.respond_track(track, asked, query, deadline)
    }

    fn respond_track(&self, track: usize, asked: Asked, query: &str, deadline: Instant) -> Reply {
        match asked {
            Asked::Playlist => self.playlist(track, query, deadline),
            Asked::Init(run) => {
                // A run that is not there yet may start soon (a restart); one that is over never.
                let state = self.wait(deadline, |s| {
                    s.ended
                        || s.tracks
                            .get(track)
                            .is_some_and(|t| t.inits.contains_key(&run))
                        || s.run > run
                });
                match state.tracks.get(track).and_then(|t| t.inits.get(&run)) {
                    Some(init) => reply(200, "video/mp4", IMMUTABLE, init.clone()),
                    None => not_found(),
                }
            }
            Asked::Segment(msn) => {
                let state = self.state.lock().unwrap();
                let segment = state
                    .tracks
                    .get(track)
                    .and_then(|t| t.segments.iter().find(|s| s.msn == msn && s.complete));
                match segment {
                    Some(segment) => {
                        let body: Vec<u8> = segment
                            .parts
                            .iter()
                            .flat_map(|p| p.data.iter().copied())
                            .collect();
                        reply(200, "video/iso.segment", IMMUTABLE, body.into())
                    }
                    None => not_found(),
                }
            }
            Asked::Part(msn, index) => {
                // The preload hint names the next part before it exists: hold the request.
                let state = self.wait(deadline, |s| {
                    s.ended
                        || s.tracks.get(track).is_none_or(|t| {
                            t.part(msn, index).is_some() || !t.is_hinted(msn, index)
                        })
                });
                match state.tracks.get(track).and_then(|t| t.part(msn, index)) {
                    Some(p) => reply(200, "video/iso.segment", IMMUTABLE, p.data.clone()),
                    None => not_found(),
                }
            }
        }
    }

    fn wait(
        &self,
        deadline: Instant,
        mut ready: impl FnMut(&State) -> bool,
    ) -> std::sync::MutexGuard<'_, State> {
        let mut state = self.state.lock().unwrap();
        while !ready(&state) {
            let now = Instant::now();
            if now >= deadline {
                break;
            }
            state = self.changed.wait_timeout(state, deadline - now).unwrap().0;
        }
        state
    }

    /// The multivariant playlist: a variant stream per rendition, the top rung first.
    fn multivariant(&self, deadline: Instant) -> Reply {
        // BANDWIDTH is measured: wait for a complete segment of every rendition.
        let state = self.wait(deadline, |s| {
            s.ended
                || s.tracks
                    .iter()
                    .all(|t| t.segments.iter().any(|seg| seg.complete))
        });
        // A rendition whose muxer has written nothing yet (or failed) is left out for now.
        let ready: Vec<(usize, &Track)> = state
            .tracks
            .iter()
            .enumerate()
            .filter(|(_, t)| !t.inits.is_empty() && !t.segments.is_empty())
            .collect();
        if ready.is_empty() {
            return no_segment_yet();
        }
        // Players start on the first variant listed (hls.js does, unless told otherwise): the
        // middle rung, which a constrained viewer can carry from the first part on and from
        // which an unconstrained one climbs within a few segments. Then the rest, top first.
        let mut ready = ready;
        let start = ready.remove(ready.len() / 2);
        ready.insert(0, start);
        let mut out = String::from("#EXTM3U\n#EXT-X-VERSION:7\n#EXT-X-INDEPENDENT-SEGMENTS\n");
        for (i, track) in ready {
            let rendition = state.renditions.get(i);
            let nominal = rendition.map_or(0, |r| r.bitrate_bps);
            let (peak, average) = track.bitrates().unwrap_or((nominal, nominal));
            let codecs = track
                .inits
                .values()
                .next_back()
                .map(|init| codecs(init).join(","))
                .unwrap_or_default();
            let _ = write!(
                out,
                "#EXT-X-STREAM-INF:BANDWIDTH={},AVERAGE-BANDWIDTH={}",
                peak.max(1),
                average.max(1)
            );
            if !codecs.is_empty() {
                let _ = write!(out, ",CODECS=\"{codecs}\"");
            }
            if let Some(r) = rendition {
                let _ = write!(
                    out,
                    ",RESOLUTION={}x{},FRAME-RATE={:.3}",
                    r.width, r.height, r.fps
                );
            }
            let _ = write!(out, "\nr{i}/live.m3u8\n");
        }
        playlist_reply(out)
    }

    fn playlist(&self, track: usize, query: &str, deadline: Instant) -> Reply {
        let param = |key: &str| {
            query
                .split('&')
                .filter_map(|kv| kv.split_once('='))
                .find(|(k, _)| *k == key)
                .map(|(_, v)| v.parse::<u64>())
        };
        let msn = match param("_HLS_msn").transpose() {
            Ok(m) => m,
            Err(_) => return bad_request("_HLS_msn must be a number"),
        };
        let part_index = match param("_HLS_part").transpose() {
            Ok(p) => p,
            Err(_) => return bad_request("_HLS_part must be a number"),
        };
        if part_index.is_some() && msn.is_none() {
            return bad_request("_HLS_part needs _HLS_msn");
        }
        if msn.is_some() && !self.low_latency {
            return bad_request("this HLS output does not block playlist reloads");
        }
        let state = match msn {
            Some(msn) => {
                {
                    // Further ahead than the next two segments can never be answered in time.
                    let state = self.state.lock().unwrap();
                    if state
                        .tracks
                        .get(track)
                        .is_some_and(|t| msn > t.next_msn + 1)
                    {
                        return bad_request("_HLS_msn is too far in the future");
                    }
                }
                self.wait(deadline, |s| {
                    s.ended
                        || s.tracks.get(track).is_none_or(|t| match part_index {
                            Some(p) => t.has_part_or_later(msn, p as usize),
                            None => t.has_segment_or_later(msn),
                        })
                })
            }
            None => self.wait(deadline, |s| {
                s.tracks.get(track).is_some_and(|t| {
                    t.segments
                        .iter()
                        .any(|seg| self.low_latency || seg.complete)
                })
            }),
        };
        let listable = state.tracks.get(track).is_some_and(|t| {
            t.segments
                .iter()
                .any(|seg| self.low_latency || seg.complete)
        });
        if !listable {
            return no_segment_yet();
        }
        playlist_reply(self.render(&state, track))
    }

    fn render(&self, state: &State, index: usize) -> String {
        let track = &state.tracks[index];
        // The same targets in every rendition: a player switching rung keeps its timing.
        let longest_part = state
            .tracks
            .iter()
            .map(|t| t.longest_part)
            .fold(0.0, f64::max);
        let longest_segment = state
            .tracks
            .iter()
            .map(|t| t.longest_segment)
            .fold(0.0, f64::max);
        // Written in milliseconds: rounded up, or the longest part would be above it.
        let part_target =
            (longest_part.max(self.part_target.as_secs_f64()) * 1000.0).ceil() / 1000.0;
        let target = longest_segment
            .max(self.segment_target.as_secs_f64())
            .round()
            .max(1.0) as u64;
        let complete = track.segments.iter().filter(|s| s.complete).count();
        let skip = complete.saturating_sub(self.window);
        let listed: Vec<&Segment> = track
            .segments
            .iter()
            .skip(skip)
            // Plain HLS lists whole segments only.
            .filter(|s| self.low_latency || s.complete)
            .collect();
        let newest = listed.last().map_or(0, |s| s.msn);
        // Every tag that left the playlist counts, and the first listed segment's own (the
        // playlist starts with its run's EXT-X-MAP, so no tag is written before it).
        let discontinuity_sequence = track.dropped_discontinuities
            + track
                .segments
                .iter()
                .take(skip + 1)
                .filter(|s| s.discontinuity)
                .count() as u64;
        let mut out = String::with_capacity(2048);
        let version = if self.low_latency { 9 } else { 7 };
        let _ = write!(
            out,
            "#EXTM3U\n#EXT-X-VERSION:{version}\n#EXT-X-TARGETDURATION:{target}\n"
        );
        if self.low_latency {
            let _ = write!(
                out,
                "#EXT-X-SERVER-CONTROL:CAN-BLOCK-RELOAD=YES,PART-HOLD-BACK={:.3}\n\
                 #EXT-X-PART-INF:PART-TARGET={part_target:.3}\n",
                3.0 * part_target,
            );
        }
        let _ = write!(
            out,
            "#EXT-X-INDEPENDENT-SEGMENTS\n#EXT-X-MEDIA-SEQUENCE:{}\n\
             #EXT-X-DISCONTINUITY-SEQUENCE:{discontinuity_sequence}\n#EXT-X-MAP:URI=\"{}\"\n",
            listed.first().map_or(0, |s| s.msn),
            init_uri(listed.first().map_or(state.run, |s| s.run)),
        );
        for (i, segment) in listed.iter().enumerate() {
            if segment.discontinuity && i > 0 {
                let _ = write!(
                    out,
                    "#EXT-X-DISCONTINUITY\n#EXT-X-MAP:URI=\"{}\"\n",
                    init_uri(segment.run)
                );
            }
            if let Some(utc) = segment.utc_ns {
                let _ = writeln!(
                    out,
                    "#EXT-X-PROGRAM-DATE-TIME:{}",
                    crate::state::rfc3339(utc)
                );
            }
            if self.low_latency && segment.msn + SEGMENTS_WITH_PARTS > newest {
                for (i, p) in segment.parts.iter().enumerate() {
                    let _ = writeln!(
                        out,
                        "#EXT-X-PART:DURATION={:.5},URI=\"part{}.{i}.m4s\"{}",
                        p.duration,
                        segment.msn,
                        if p.independent {
                            ",INDEPENDENT=YES"
                        } else {
                            ""
                        }
                    );
                }
            }
            if segment.complete {
                let _ = writeln!(
                    out,
                    "#EXTINF:{:.5},\nseg{}.m4s",
                    segment.duration(),
                    segment.msn
                );
            }
        }
        if state.ended {
            out.push_str("#EXT-X-ENDLIST\n");
            return out;
        }
        if !self.low_latency {
            return out;
        }
        if let Some(last) = listed.last() {
            let (msn, index) = if last.complete {
                (last.msn + 1, 0)
            } else {
                (last.msn, last.parts.len())
            };
            let _ = writeln!(
                out,
                "#EXT-X-PRELOAD-HINT:TYPE=PART,URI=\"part{msn}.{index}.m4s\""
            );
        }
        if state.is_ladder() {
            for (other, t) in state.tracks.iter().enumerate() {
                if other == index {
                    continue;
                }
                if let Some((msn, part)) = t.last_part() {
                    let _ = writeln!(
                        out,
                        "#EXT-X-RENDITION-REPORT:URI=\"../r{other}/live.m3u8\",\
                         LAST-MSN={msn},LAST-PART={part}"
                    );
                }
            }
        }
        out
    }
}

const IMMUTABLE: &str = "public, max-age=60, immutable";

/// The initialisation segment of a run: `init.mp4` for the first, as before any restart.
fn init_uri(run: u64) -> String {
    if run == 0 {
        "init.mp4".into()
    } else {
        format!("init{run}.mp4")
    }
}

/// The RFC 6381 codec names of the tracks of an fMP4 initialisation segment, video first:
/// `avc1.PPCCLL` from the `avcC` box (the SPS's profile, constraint flags and level),
/// `mp4a.OO.A` from the `esds` box (object type and audio object type), `opus`.
pub fn codecs(init: &[u8]) -> Vec<String> {
    let mut found = Vec::new();
    if let Some(avcc) = box_body(init, b"avcC").filter(|b| b.len() >= 4) {
        let entry = if find(init, b"avc3").is_some() {
            "avc3"
        } else {
            "avc1"
        };
        found.push(format!(
            "{entry}.{:02x}{:02x}{:02x}",
            avcc[1], avcc[2], avcc[3]
        ));
    }
    if find(init, b"mp4a").is_some() {
        // AAC-LC unless the decoder configuration says otherwise.
        let (object_type, audio_object_type) = box_body(init, b"esds")
            .and_then(|esds| esds.get(4..))
            .and_then(aac_types)
            .unwrap_or((0x40, 2));
        found.push(format!("mp4a.{object_type:02x}.{audio_object_type}"));
    }
    if find(init, b"Opus").is_some() {
        found.push("opus".into());
    }
    found
}

fn find(data: &[u8], fourcc: &[u8; 4]) -> Option<usize> {
    data.windows(4).position(|w| w == fourcc)
}

/// The body of the first box of type `fourcc` (its size read from the 4 bytes before).
fn box_body<'a>(data: &'a [u8], fourcc: &[u8; 4]) -> Option<&'a [u8]> {
    let at = find(data, fourcc)?;
    let size_bytes: [u8; 4] = data.get(at.checked_sub(4)?..at)?.try_into().ok()?;
    let size = u32::from_be_bytes(size_bytes) as usize;
    data.get(at + 4..(at - 4).checked_add(size)?)
}

/// One MPEG-4 descriptor: its tag, body and what follows it.
fn descriptor(data: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let tag = *data.first()?;
    let mut length = 0usize;
    let mut at = 1;
    loop {
        let byte = *data.get(at)?;
        at += 1;
        length = (length << 7) | usize::from(byte & 0x7f);
        if byte & 0x80 == 0 || at > 4 {
            break;
        }
    }
    let body = data.get(at..at.checked_add(length)?)?;
    Some((tag, body, &data[at + length..]))
}

/// Object type indication and audio object type from an `esds` body (after version/flags).
fn aac_types(esds: &[u8]) -> Option<(u8, u8)> {
    let (0x03, es, _) = descriptor(esds)? else {
        return None;
    };
    let flags = *es.get(2)?;
    let mut at = 3;
    if flags & 0x80 != 0 {
        at += 2;
    }
    if flags & 0x40 != 0 {
        at += 1 + usize::from(*es.get(at)?);
    }
    if flags & 0x20 != 0 {
        at += 2;
    }
    let (0x04, config, _) = descriptor(es.get(at..)?)? else {
        return None;
    };
    let object_type = *config.first()?;
    let (0x05, specific, _) = descriptor(config.get(13..)?)? else {
        return Some((object_type, 2));
    };
    let first = *specific.first()?;
    let audio_object_type = match first >> 3 {
        31 => 32 + (((first & 0x07) << 3) | (specific.get(1)? >> 5)),
        aot => aot,
    };
    Some((object_type, audio_object_type))
}

fn playlist_reply(text: String) -> Reply {
    reply(
        200,
        "application/vnd.apple.mpegurl",
        "no-cache, no-store",
        text.into_bytes().into(),
    )
}

fn no_segment_yet() -> Reply {
    reply(
        503,
        "text/plain; charset=utf-8",
        "no-store",
        Arc::from(&b"the HLS output has no segment yet"[..]),
    )
}

fn reply(status: u16, content_type: &'static str, cache: &'static str, body: Arc<[u8]>) -> Reply {
    Reply {
        status,
        content_type,
        cache,
        body,
    }
}

fn not_found() -> Reply {
    reply(
        404,
        "text/plain; charset=utf-8",
        "no-store",
        Arc::from(&b"not found"[..]),
    )
}

fn bad_request(message: &'static str) -> Reply {
    reply(
        400,
        "text/plain; charset=utf-8",
        "no-store",
        Arc::from(message.as_bytes()),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunk(start: bool, ms: u64, utc: Option<u64>, with_init: bool) -> gst::BufferList {
        let mut list = gst::BufferList::new();
        let l = list.get_mut().unwrap();
        if with_init {
            let mut init = gst::Buffer::from_slice(b"ftypmoov".to_vec());
            init.get_mut()
                .unwrap()
                .set_flags(gst::BufferFlags::HEADER | gst::BufferFlags::DISCONT);
            l.add(init);
        }
        let mut header = gst::Buffer::from_slice(b"moof".to_vec());
        {
            let h = header.get_mut().unwrap();
            h.set_flags(gst::BufferFlags::HEADER);
            if !start {
                h.set_flags(gst::BufferFlags::DELTA_UNIT);
            }
            h.set_duration(gst::ClockTime::from_mseconds(ms));
            if let Some(utc) = utc {
                gst::ReferenceTimestampMeta::add(
                    h,
                    &gst::Caps::builder("timestamp/x-unix").build(),
                    gst::ClockTime::from_nseconds(utc),
                    gst::ClockTime::NONE,
                );
            }
        }
        l.add(header);
        l.add(gst::Buffer::from_slice(b"mdat".to_vec()));
        list
    }

    fn text(reply: Reply) -> String {
        String::from_utf8(reply.body.to_vec()).unwrap()
    }

    #[test]
    fn parts_segments_hints_and_blocking_reload() {
        gst::init().unwrap();
        let hls = Arc::new(LlHls::new(
            Duration::from_secs(1),
            Duration::from_millis(250),
            3,
        ));
        // Two segments of four parts, then the first part of a third.
        for seg in 0..2u64 {
            for p in 0..4 {
                let utc = (p == 0).then_some(1_700_000_000_000_000_000 + seg * 1_000_000_000);
                hls.push_chunk(0, &chunk(p == 0, 250, utc, seg == 0 && p == 0));
            }
        }
        hls.push_chunk(0, &chunk(true, 250, None, false));

        let playlist = text(hls.respond("live.m3u8", ""));
        assert!(
            playlist.contains("#EXT-X-SERVER-CONTROL:CAN-BLOCK-RELOAD=YES"),
            "{playlist}"
        );
        assert!(playlist.contains("#EXT-X-MAP:URI=\"init.mp4\""));
        assert!(
            playlist.contains("#EXTINF:1.00000,\nseg0.m4s"),
            "{playlist}"
        );
        assert!(playlist.contains("#EXTINF:1.00000,\nseg1.m4s"));
        assert!(!playlist.contains("seg2.m4s"), "segment 2 is not complete");
        assert!(
            playlist.contains("#EXT-X-PART:DURATION=0.25000,URI=\"part2.0.m4s\",INDEPENDENT=YES")
        );
        assert!(playlist.contains("URI=\"part1.3.m4s\"\n"));
        assert!(playlist.ends_with("#EXT-X-PRELOAD-HINT:TYPE=PART,URI=\"part2.1.m4s\"\n"));
        assert!(
            playlist.contains("#EXT-X-PROGRAM-DATE-TIME:2023-11-14T22:13:21"),
            "{playlist}"
        );

        assert_eq!(&*hls.respond("init.mp4", "").body, b"ftypmoov");
        assert_eq!(
            &*hls.respond("seg1.m4s", "").body,
            b"moofmdat".repeat(4).as_slice()
        );
        assert_eq!(hls.respond("seg2.m4s", "").status, 404);
        assert_eq!(
            hls.respond("part9.0.m4s", "").status,
            404,
            "not hinted: no wait"
        );
        assert_eq!(hls.respond("live.m3u8", "_HLS_msn=x").status, 400);
        assert_eq!(hls.respond("live.m3u8", "_HLS_msn=9").status, 400);
        assert_eq!(hls.respond("live.m3u8", "_HLS_part=1").status, 400);

        // The hinted part and a blocking reload for it are answered once it arrives.
        let waiter = {
            let hls = hls.clone();
            std::thread::spawn(move || {
                (
                    hls.respond("part2.1.m4s", ""),
                    text(hls.respond("live.m3u8", "_HLS_msn=2&_HLS_part=1")),
                )
            })
        };
        std::thread::sleep(Duration::from_millis(200));
        hls.push_chunk(0, &chunk(false, 250, None, false));
        let (part, playlist) = waiter.join().unwrap();
        assert_eq!(part.status, 200);
        assert!(playlist.contains("URI=\"part2.1.m4s\"\n"), "{playlist}");
        assert!(playlist.ends_with("URI=\"part2.2.m4s\"\n"), "{playlist}");

        hls.finish();
        let playlist = text(hls.respond("live.m3u8", ""));
        assert!(
            playlist.ends_with("seg2.m4s\n#EXT-X-ENDLIST\n"),
            "{playlist}"
        );
    }

    #[test]
    fn a_restart_is_a_discontinuity_with_its_own_init_and_the_sequence_goes_on() {
        gst::init().unwrap();
        let hls = LlHls::new(Duration::from_secs(1), Duration::from_millis(500), 3);
        // The first run: two whole segments and half of a third, then the output fails.
        for seg in 0..3u64 {
            for p in 0..2 {
                if seg == 2 && p == 1 {
                    break;
                }
                hls.push_chunk(0, &chunk(p == 0, 500, None, seg == 0 && p == 0));
            }
        }
        hls.restart();
        // The new muxer starts over with its own init segment.
        let mut first = chunk(true, 500, None, true);
        first
            .get_mut()
            .unwrap()
            .get_mut(0)
            .unwrap()
            .copy_from_slice(0, b"FTYPMOOV")
            .unwrap();
        hls.push_chunk(0, &first);
        hls.push_chunk(0, &chunk(false, 500, None, false));
        hls.push_chunk(0, &chunk(true, 500, None, false));

        let playlist = text(hls.respond("live.m3u8", ""));
        // The interrupted segment is complete with what it had; the new run follows it.
        assert!(
            playlist.contains(
                "#EXTINF:0.50000,\nseg2.m4s\n#EXT-X-DISCONTINUITY\n#EXT-X-MAP:URI=\"init1.mp4\"\n"
            ),
            "{playlist}"
        );
        assert!(
            playlist.contains("#EXTINF:1.00000,\nseg3.m4s"),
            "{playlist}"
        );
        assert!(playlist.contains("#EXT-X-MEDIA-SEQUENCE:1\n"), "{playlist}");
        assert!(
            playlist.contains("#EXT-X-DISCONTINUITY-SEQUENCE:0\n"),
            "{playlist}"
        );
        assert!(
            playlist.contains("#EXT-X-MAP:URI=\"init.mp4\"\n"),
            "{playlist}"
        );
        assert_eq!(&*hls.respond("init.mp4", "").body, b"ftypmoov");
        assert_eq!(&*hls.respond("init1.mp4", "").body, b"FTYPMOOV");
        // Segments of the old run are still served while listed.
        assert_eq!(hls.respond("seg1.m4s", "").status, 200);

        // Once the old run has left the window, the playlist starts with the new run's map
        // and counts the discontinuity that left.
        for _ in 0..4 {
            hls.push_chunk(0, &chunk(true, 500, None, false));
            hls.push_chunk(0, &chunk(false, 500, None, false));
        }
        let playlist = text(hls.respond("live.m3u8", ""));
        assert!(!playlist.contains("#EXT-X-DISCONTINUITY\n"), "{playlist}");
        assert!(
            playlist.contains("#EXT-X-DISCONTINUITY-SEQUENCE:1\n"),
            "{playlist}"
        );
        assert!(
            playlist.contains("#EXT-X-MAP:URI=\"init1.mp4\"\n"),
            "{playlist}"
        );
        assert!(!playlist.contains("init.mp4"), "{playlist}");
    }

    /// An fMP4 box.
    fn mp4_box(fourcc: &[u8; 4], body: &[u8]) -> Vec<u8> {
        let mut out = ((body.len() + 8) as u32).to_be_bytes().to_vec();
        out.extend_from_slice(fourcc);
        out.extend_from_slice(body);
        out
    }

    /// An initialisation segment with an H.264 track (constrained baseline 3.1, as x264's
    /// zerolatency writes it) and an AAC-LC track, the boxes nested as isofmp4mux nests them.
    fn init_segment(tag: u8) -> Vec<u8> {
        let avcc = mp4_box(b"avcC", &[1, 0x42, 0xc0, 0x1f, 0xff, 0xe1, 0, 0]);
        let avc1 = mp4_box(b"avc1", &[[0u8; 78].as_slice(), &avcc].concat());
        // ES_Descriptor(ES_ID 1) > DecoderConfigDescriptor(0x40, audio) > AudioSpecificConfig
        // (AAC-LC, 48 kHz, stereo), then the SLConfigDescriptor.
        let esds_body = [
            0, 0, 0, 0, 0x03, 0x19, 0, 1, 0, 0x04, 0x11, 0x40, 0x15, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
            0, 0x05, 0x02, 0x11, 0x90, 0x06, 0x01, 0x02,
        ];
        let mp4a = mp4_box(
            b"mp4a",
            &[[0u8; 28].as_slice(), &mp4_box(b"esds", &esds_body)].concat(),
        );
        let stsd = mp4_box(
            b"stsd",
            &[[0u8, 0, 0, 0, 0, 0, 0, 2].as_slice(), &avc1, &mp4a].concat(),
        );
        [
            mp4_box(b"ftyp", &[b'i', b's', b'o', tag]),
            mp4_box(b"moov", &stsd),
        ]
        .concat()
    }

    /// A chunk of `bytes` bytes for rendition tests: a fragment start carries the init
    /// segment when `init` is given and the capture stamp `utc`.
    fn rung_chunk(
        start: bool,
        bytes: usize,
        utc: Option<u64>,
        init: Option<&[u8]>,
    ) -> gst::BufferList {
        let mut list = chunk(start, 250, utc, false);
        let l = list.get_mut().unwrap();
        if let Some(init) = init {
            let mut buffer = gst::Buffer::from_slice(init.to_vec());
            buffer
                .get_mut()
                .unwrap()
                .set_flags(gst::BufferFlags::HEADER | gst::BufferFlags::DISCONT);
            l.insert(0, buffer);
        }
        l.add(gst::Buffer::from_slice(vec![0u8; bytes]));
        list
    }

    const T0: u64 = 1_700_000_000_000_000_000;

    /// Segment `seg` (four parts of 250 ms, `bytes` each) of a rendition.
    fn push_segment(hls: &LlHls, track: usize, seg: u64, bytes: usize, init: Option<&[u8]>) {
        for p in 0..4u64 {
            let utc = T0 + seg * 1_000_000_000 + p * 250_000_000;
            hls.push_chunk(
                track,
                &rung_chunk(p == 0, bytes, Some(utc), init.filter(|_| p == 0)),
            );
        }
    }

    fn attribute<'a>(line: &'a str, name: &str) -> Option<&'a str> {
        let (_, attributes) = line.split_once(':')?;
        attributes
            .split(',')
            .find_map(|kv| kv.strip_prefix(name)?.strip_prefix('='))
    }

    #[test]
    fn codec_names_come_from_the_initialisation_segment() {
        assert_eq!(codecs(&init_segment(b'5')), ["avc1.42c01f", "mp4a.40.2"]);
        // Truncated or unrelated data names nothing it cannot read.
        let init = init_segment(b'5');
        let cut = init.windows(4).position(|w| w == b"avcC").unwrap() + 6;
        assert_eq!(codecs(&init[..cut]), Vec::<String>::new());
        assert_eq!(codecs(b"mdat avcC"), Vec::<String>::new());
        assert_eq!(codecs(b""), Vec::<String>::new());
    }

    fn ladder() -> Vec<Rendition> {
        [
            (1280, 720, 2_500_000),
            (640, 360, 700_000),
            (320, 180, 200_000),
        ]
        .into_iter()
        .map(|(width, height, bitrate_bps)| Rendition {
            width,
            height,
            fps: 30.0,
            bitrate_bps,
        })
        .collect()
    }

    #[test]
    fn a_ladder_is_a_multivariant_playlist_of_renditions_that_report_each_other() {
        gst::init().unwrap();
        let hls = Arc::new(LlHls::new(
            Duration::from_secs(1),
            Duration::from_millis(250),
            3,
        ));
        hls.set_renditions(ladder());
        let init = init_segment(b'5');
        // Renditions 0 and 1 start with the first key frame; the muxer of rendition 2 starts
        // one segment later: its first segment is the others' second.
        let sizes = [10_000usize, 3_000, 1_000];
        for seg in 0..3u64 {
            for (track, bytes) in sizes.iter().enumerate() {
                if track == 2 && seg == 0 {
                    continue;
                }
                let first = seg == 0 || (track == 2 && seg == 1);
                push_segment(&hls, track, seg, *bytes, first.then_some(init.as_slice()));
            }
        }
        // The fourth segment is one part in on renditions 0 and 2, two on rendition 1.
        for (track, bytes) in sizes.iter().enumerate() {
            hls.push_chunk(
                track,
                &rung_chunk(true, *bytes, Some(T0 + 3_000_000_000), None),
            );
        }
        hls.push_chunk(
            1,
            &rung_chunk(false, sizes[1], Some(T0 + 3_250_000_000), None),
        );

        let multivariant = text(hls.respond("live.m3u8", ""));
        let lines: Vec<&str> = multivariant.lines().collect();
        assert_eq!(lines[0], "#EXTM3U", "{multivariant}");
        let variants: Vec<(&str, &str)> = lines
            .windows(2)
            .filter(|w| w[0].starts_with("#EXT-X-STREAM-INF:"))
            .map(|w| (w[0], w[1]))
            .collect();
        assert_eq!(variants.len(), 3, "{multivariant}");
        let uris: Vec<&str> = variants.iter().map(|(_, uri)| *uri).collect();
        assert_eq!(
            uris,
            ["r1/live.m3u8", "r0/live.m3u8", "r2/live.m3u8"],
            "players start on the first: the middle rung"
        );
        let mut variants = variants;
        variants.sort_by_key(|(_, uri)| *uri);
        for (i, (inf, uri)) in variants.iter().enumerate() {
            assert_eq!(*uri, format!("r{i}/live.m3u8"));
            assert!(inf.contains("CODECS=\"avc1.42c01f,mp4a.40.2\""), "{inf}");
            assert_eq!(attribute(inf, "FRAME-RATE"), Some("30.000"), "{inf}");
            let peak: u64 = attribute(inf, "BANDWIDTH").unwrap().parse().unwrap();
            let average: u64 = attribute(inf, "AVERAGE-BANDWIDTH")
                .unwrap()
                .parse()
                .unwrap();
            // What was stored: four parts of (moof, mdat, payload) per second.
            let per_second = (4 * (8 + sizes[i]) * 8) as u64;
            assert!(peak >= average && average >= per_second, "{inf}");
            assert!(peak <= per_second * 2, "{inf}");
        }
        assert!(
            variants[0].0.contains("RESOLUTION=1280x720"),
            "{multivariant}"
        );
        assert!(
            variants[2].0.contains("RESOLUTION=320x180"),
            "{multivariant}"
        );

        // Each rendition: the same stretch of time under the same media sequence number, and
        // reports of the other two's last part.
        let playlists: Vec<String> = (0..3)
            .map(|i| text(hls.respond(&format!("r{i}/live.m3u8"), "")))
            .collect();
        let pdt = |playlist: &str, msn: u64| {
            let at = playlist
                .find(&format!("seg{msn}.m4s"))
                .or_else(|| playlist.find(&format!("part{msn}.0.m4s")))?;
            playlist[..at]
                .rfind("#EXT-X-PROGRAM-DATE-TIME:")
                .map(|p| playlist[p..].lines().next().unwrap().to_string())
        };
        for msn in 1..=3 {
            let dates: Vec<_> = playlists.iter().map(|p| pdt(p, msn)).collect();
            assert!(
                dates[0].is_some() && dates.iter().all(|d| *d == dates[0]),
                "segment {msn}: {dates:?}"
            );
        }
        let reports = |playlist: &str| -> Vec<String> {
            playlist
                .lines()
                .filter(|l| l.starts_with("#EXT-X-RENDITION-REPORT:"))
                .map(str::to_string)
                .collect()
        };
        assert_eq!(
            reports(&playlists[0]),
            [
                "#EXT-X-RENDITION-REPORT:URI=\"../r1/live.m3u8\",LAST-MSN=3,LAST-PART=1",
                "#EXT-X-RENDITION-REPORT:URI=\"../r2/live.m3u8\",LAST-MSN=3,LAST-PART=0",
            ],
            "{}",
            playlists[0]
        );
        assert_eq!(
            reports(&playlists[1]),
            [
                "#EXT-X-RENDITION-REPORT:URI=\"../r0/live.m3u8\",LAST-MSN=3,LAST-PART=0",
                "#EXT-X-RENDITION-REPORT:URI=\"../r2/live.m3u8\",LAST-MSN=3,LAST-PART=0",
            ]
        );
        assert!(
            playlists[2].contains("#EXT-X-MEDIA-SEQUENCE:1\n"),
            "{}",
            playlists[2]
        );
        for playlist in &playlists {
            assert!(
                playlist.contains("#EXT-X-PART-INF:PART-TARGET=0.250\n"),
                "{playlist}"
            );
            assert!(playlist.contains("#EXT-X-TARGETDURATION:1\n"), "{playlist}");
            assert!(
                playlist.contains("#EXT-X-MAP:URI=\"init.mp4\"\n"),
                "{playlist}"
            );
        }
        assert!(playlists[1].contains("#EXT-X-PRELOAD-HINT:TYPE=PART,URI=\"part3.2.m4s\""));

        // Every rendition's files under its own folder; the old names are no longer there.
        assert_eq!(&*hls.respond("r2/init.mp4", "").body, init.as_slice());
        assert_eq!(hls.respond("r1/seg2.m4s", "").status, 200);
        assert_eq!(
            hls.respond("r2/seg0.m4s", "").status,
            404,
            "rendition 2 has no segment 0"
        );
        for name in [
            "init.mp4",
            "seg1.m4s",
            "r3/live.m3u8",
            "r01/live.m3u8",
            "r/live.m3u8",
            "r0/",
            "r0/x",
        ] {
            assert_eq!(hls.respond(name, "").status, 404, "{name}");
        }

        // A blocking reload waits for the part of its own rendition.
        let waiter = {
            let hls = hls.clone();
            std::thread::spawn(move || text(hls.respond("r2/live.m3u8", "_HLS_msn=3&_HLS_part=1")))
        };
        hls.push_chunk(0, &rung_chunk(false, sizes[0], None, None));
        std::thread::sleep(Duration::from_millis(100));
        assert!(
            !waiter.is_finished(),
            "answered before rendition 2 had the part"
        );
        hls.push_chunk(2, &rung_chunk(false, sizes[2], None, None));
        let playlist = waiter.join().unwrap();
        assert!(playlist.contains("URI=\"part3.1.m4s\"\n"), "{playlist}");
        assert!(
            playlist.contains("URI=\"../r0/live.m3u8\",LAST-MSN=3,LAST-PART=1"),
            "{playlist}"
        );
        // An old segment is "or later" already: answered at once.
        assert_eq!(hls.respond("r0/live.m3u8", "_HLS_msn=0").status, 200);
    }

    #[test]
    fn a_plain_hls_ladder_lists_whole_segments_without_parts() {
        gst::init().unwrap();
        let hls = LlHls::plain(Duration::from_secs(1), 3);
        hls.set_renditions(ladder()[..2].to_vec());
        let init = init_segment(b'5');
        for seg in 0..2u64 {
            for track in 0..2 {
                push_segment(&hls, track, seg, 500, (seg == 0).then_some(init.as_slice()));
            }
        }
        let multivariant = text(hls.respond("live.m3u8", ""));
        assert_eq!(
            multivariant.matches("#EXT-X-STREAM-INF:").count(),
            2,
            "{multivariant}"
        );
        let playlist = text(hls.respond("r1/live.m3u8", ""));
        assert!(
            playlist.contains("#EXTINF:1.00000,\nseg0.m4s\n"),
            "{playlist}"
        );
        assert!(
            !playlist.contains("seg1.m4s"),
            "segment 1 is not complete: {playlist}"
        );
        for tag in [
            "#EXT-X-PART",
            "#EXT-X-PRELOAD-HINT",
            "#EXT-X-SERVER-CONTROL",
            "#EXT-X-RENDITION-REPORT",
        ] {
            assert!(!playlist.contains(tag), "{tag} in {playlist}");
        }
        assert!(
            playlist.starts_with("#EXTM3U\n#EXT-X-VERSION:7\n"),
            "{playlist}"
        );
        assert_eq!(hls.respond("r1/live.m3u8", "_HLS_msn=1").status, 400);
        hls.finish();
        assert!(text(hls.respond("r0/live.m3u8", "")).ends_with("seg1.m4s\n#EXT-X-ENDLIST\n"));
    }

    #[test]
    fn the_part_target_covers_a_part_a_fraction_of_a_millisecond_longer() {
        gst::init().unwrap();
        let hls = LlHls::new(Duration::from_secs(1), Duration::from_millis(200), 3);
        let mut first = chunk(true, 200, None, true);
        first
            .get_mut()
            .unwrap()
            .get_mut(1)
            .unwrap()
            .set_duration(gst::ClockTime::from_nseconds(203_090_000));
        hls.push_chunk(0, &first);
        let playlist = text(hls.respond("live.m3u8", ""));
        assert!(
            playlist.contains("#EXT-X-PART-INF:PART-TARGET=0.204\n"),
            "{playlist}"
        );
        assert!(playlist.contains("DURATION=0.20309,"), "{playlist}");
    }

    #[test]
    fn odd_names_and_queries_get_a_4xx_at_once() {
        gst::init().unwrap();
        // Segments of 20 s: a request that waits, waits a minute (three target durations).
        let hls = LlHls::new(Duration::from_secs(20), Duration::from_millis(250), 3);
        hls.set_renditions(ladder()[..2].to_vec());
        let init = init_segment(b'5');
        for track in 0..2 {
            push_segment(&hls, track, 0, 100, Some(&init));
        }
        // An ended stream waits for nothing: every answer below comes at once.
        hls.finish();
        let started = Instant::now();
        for (name, query) in [
            ("", ""),
            ("/", ""),
            ("r", ""),
            ("r0", ""),
            ("r0/", ""),
            ("r-1/live.m3u8", ""),
            ("r+1/live.m3u8", ""),
            ("r18446744073709551616/live.m3u8", ""),
            ("r0/../live.m3u8", ""),
            ("r0/r0/live.m3u8", ""),
            ("r0/init99.mp4", ""),
            ("r0/init-1.mp4", ""),
            ("r0/seg.m4s", ""),
            ("r0/seg99999999999999999999.m4s", ""),
            ("r0/part0.m4s", ""),
            ("r0/part0.99999999999999999999.m4s", ""),
            ("r0/part.0.m4s", ""),
            ("r1/part18446744073709551615.0.m4s", ""),
            ("r0/live.m3u8", "_HLS_msn=18446744073709551615"),
            ("r0/live.m3u8", "_HLS_msn=-1"),
            ("r0/live.m3u8", "_HLS_part=0"),
            ("r0/live.m3u8", "_HLS_msn=0&_HLS_part=x"),
        ] {
            let status = hls.respond(name, query).status;
            assert!((400..500).contains(&status), "{name}?{query}: {status}");
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "a request waited out its deadline"
        );
        // What is there is still served after the odd ones.
        assert_eq!(hls.respond("r1/seg0.m4s", "").status, 200);
        assert_eq!(
            hls.respond("r0/live.m3u8", "_HLS_msn=0&_HLS_part=0").status,
            200
        );
    }

    #[test]
    fn after_a_restart_every_rendition_goes_on_from_one_sequence_number() {
        gst::init().unwrap();
        let hls = LlHls::new(Duration::from_secs(1), Duration::from_millis(250), 3);
        hls.set_renditions(ladder());
        let init = init_segment(b'5');
        // The output fails while rendition 0 is half-way through segment 1 and rendition 1 has
        // just begun segment 2; rendition 2's muxer had written nothing yet.
        push_segment(&hls, 0, 0, 100, Some(&init));
        push_segment(&hls, 1, 0, 100, Some(&init));
        push_segment(&hls, 1, 1, 100, None);
        for p in 0..2u64 {
            let utc = T0 + 1_000_000_000 + p * 250_000_000;
            hls.push_chunk(0, &rung_chunk(p == 0, 100, Some(utc), None));
        }
        hls.push_chunk(1, &rung_chunk(true, 100, Some(T0 + 2_000_000_000), None));
        hls.restart();
        // The new muxers start together at 5 s.
        for track in 0..3 {
            push_segment(&hls, track, 5, 100, Some(&init));
            hls.push_chunk(
                track,
                &rung_chunk(true, 100, Some(T0 + 6_000_000_000), None),
            );
        }
        let playlists: Vec<String> = (0..3)
            .map(|i| text(hls.respond(&format!("r{i}/live.m3u8"), "")))
            .collect();
        for (i, playlist) in playlists.iter().enumerate() {
            assert!(
                playlist.contains(
                    "#EXT-X-DISCONTINUITY\n#EXT-X-MAP:URI=\"init1.mp4\"\n\
                     #EXT-X-PROGRAM-DATE-TIME:2023-11-14T22:13:25.000Z\n\
                     #EXT-X-PART:DURATION=0.25000,URI=\"part2.0.m4s\",INDEPENDENT=YES\n"
                ) || (i == 2 && playlist.contains("#EXT-X-MEDIA-SEQUENCE:2\n")),
                "rendition {i}: the new run is not segment 2:\n{playlist}"
            );
            assert!(playlist.contains("seg2.m4s\n"), "{playlist}");
            assert!(playlist.contains("part3.0.m4s"), "{playlist}");
        }
        // Rendition 0's interrupted segment 1 is complete with what it had; rendition 1's
        // lone part of the old segment 2 is gone.
        assert!(
            playlists[0].contains("#EXTINF:0.50000,\nseg1.m4s\n"),
            "{}",
            playlists[0]
        );
        assert!(
            playlists[1].contains("#EXTINF:1.00000,\nseg1.m4s\n"),
            "{}",
            playlists[1]
        );
        assert_eq!(hls.respond("r2/seg2.m4s", "").status, 200);
        assert_eq!(hls.respond("r2/init1.mp4", "").status, 200);
    }
}
