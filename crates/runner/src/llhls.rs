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
//! - `live.m3u8[?_HLS_msn=M[&_HLS_part=P]][&_HLS_skip=YES]`: the playlist (version 9) with
//!   `EXT-X-SERVER-CONTROL:CAN-BLOCK-RELOAD=YES,...,CAN-SKIP-UNTIL=<6 target durations>`,
//!   `EXT-X-PART-INF`, parts of the last segments, `EXT-X-PRELOAD-HINT` for the next part and
//!   `EXT-X-PROGRAM-DATE-TIME` from the capture stamps. As RFC 8216bis 6.2.5 has it: with
//!   `_HLS_msn` the answer waits until that segment (or part) exists, a part one past the end
//!   of a segment being part 0 of the next; a request more than two segments or more than
//!   three seconds of parts ahead is refused (400) at once; `_HLS_skip` gets a delta update,
//!   the segments older than `CAN-SKIP-UNTIL` replaced by `EXT-X-SKIP`.
//! - `init.mp4`, `seg<M>.m4s` (a complete segment) and `part<M>.<P>.m4s` (a part; asking for
//!   the hinted next part waits until it is complete, whichever segment it starts).
//!
//! Waiting takes no thread: a waiting request is a task asleep on a watch channel the store
//! bumps at every change, so thousands wait at once. For caches in front (a CDN collapsing
//! identical requests): media are `immutable`; a blocking reload, whose URL names what it
//! waited for, is cacheable for three target durations; the plain playlist is `no-cache` with
//! an `ETag` (304 on `If-None-Match`), and gzipped for a client that accepts it. Each state of
//! a playlist is rendered (and compressed) once, however many clients were waiting for it.
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

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::fmt::Write as _;
use std::hash::{DefaultHasher, Hasher as _};
use std::io::Write as _;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;

/// How many complete segments before the live edge still list their parts.
const SEGMENTS_WITH_PARTS: u64 = 3;

/// `CAN-SKIP-UNTIL` in target durations: RFC 8216bis 4.4.3.8 asks for at least six.
const SKIP_UNTIL_TARGETS: f64 = 6.0;

/// Parts, segments and initialisation segments never change once served under their name,
/// so a cache may keep them without asking again (`immutable`). Not for a year, though: a
/// runner started again numbers its segments from 0 and reuses the names, and an edge cache
/// holding the previous run's would serve them in the new playlist. Ten minutes is far
/// longer than anything stays listed, and bounds that mix-up to a runner restarted within
/// ten minutes of its start.
const MEDIA_CACHE: &str = "public, max-age=600, immutable";

/// The plain playlist changes with every part: a cache must ask again each time, and the
/// entity tag makes the answer a cheap 304 when nothing changed.
const PLAYLIST_CACHE: &str = "no-cache";

/// A response for the HTTP server: status, headers, body.
#[derive(Debug)]
pub struct Reply {
    /// HTTP status code.
    pub status: u16,
    /// `Content-Type`.
    pub content_type: &'static str,
    /// `Cache-Control`.
    pub cache: Cow<'static, str>,
    /// The body (empty for a 304).
    pub body: Arc<[u8]>,
    /// `ETag` (quoted), for playlists.
    pub etag: Option<String>,
    /// `Content-Encoding` of the body (`gzip` when the client accepted it).
    pub content_encoding: Option<&'static str>,
    /// The body depends on `Accept-Encoding`: `Vary: Accept-Encoding`.
    pub vary_encoding: bool,
    /// The playlist text and its compressed form, kept for the conditions of the request.
    rendered: Option<Arc<Rendered>>,
}

/// What the request says that changes the answer, besides its path and query.
#[derive(Debug, Default, Clone, Copy)]
pub struct Conditions<'a> {
    /// `If-None-Match`.
    pub if_none_match: Option<&'a str>,
    /// `Accept-Encoding`.
    pub accept_encoding: Option<&'a str>,
}

/// A rendered playlist, shared by every request answered from the same store state.
#[derive(Debug)]
struct Rendered {
    body: Arc<[u8]>,
    /// A hash of the text, so a restarted runner never reuses one for other contents.
    etag: String,
    /// Made on first request for it; `None` if compression failed.
    gzip: OnceLock<Option<Arc<[u8]>>>,
}

impl Rendered {
    fn new(body: Vec<u8>) -> Rendered {
        let mut hasher = DefaultHasher::new();
        hasher.write(&body);
        Rendered {
            etag: format!("\"{:016x}-{:x}\"", hasher.finish(), body.len()),
            body: body.into(),
            gzip: OnceLock::new(),
        }
    }

    fn gzip(&self) -> Option<Arc<[u8]>> {
        self.gzip
            .get_or_init(|| {
                let mut encoder =
                    flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
                encoder.write_all(&self.body).ok()?;
                encoder.finish().ok().map(Arc::from)
            })
            .clone()
    }

    /// The tag of the compressed form: another representation, another tag (RFC 9110 8.8.3).
    fn gzip_etag(&self) -> String {
        format!("{}-gz\"", self.etag.trim_end_matches('"'))
    }
}

/// What a playlist request's query string asks for (RFC 8216bis 6.2.5).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct PlaylistQuery {
    /// `_HLS_msn`: answer once the playlist holds this media sequence number.
    pub msn: Option<u64>,
    /// `_HLS_part`: ... and this part of it.
    pub part: Option<u64>,
    /// `_HLS_skip=YES` or `v2`: a delta update.
    pub skip: bool,
}

/// Reads the `_HLS_` directives of a playlist request; parameters of other names (a cache
/// buster) are ignored. A directive given twice, a number written otherwise than in plain
/// digits, `_HLS_part` without `_HLS_msn` or an unknown `_HLS_skip` value is refused with the
/// reason, for a 400.
pub fn parse_playlist_query(query: &str) -> Result<PlaylistQuery, &'static str> {
    fn number(value: &str, what: &'static str) -> Result<u64, &'static str> {
        if value.is_empty() || !value.bytes().all(|b| b.is_ascii_digit()) {
            return Err(what);
        }
        value.parse().map_err(|_| what)
    }
    let mut asked = PlaylistQuery::default();
    let mut skip_seen = false;
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        match key {
            "_HLS_msn" => {
                if asked.msn.is_some() {
                    return Err("_HLS_msn is given twice");
                }
                asked.msn = Some(number(value, "_HLS_msn must be a number")?);
            }
            "_HLS_part" => {
                if asked.part.is_some() {
                    return Err("_HLS_part is given twice");
                }
                asked.part = Some(number(value, "_HLS_part must be a number")?);
            }
            "_HLS_skip" => {
                if skip_seen {
                    return Err("_HLS_skip is given twice");
                }
                skip_seen = true;
                // v2 also skips EXT-X-DATERANGE tags; these playlists have none.
                asked.skip = match value {
                    "YES" | "v2" => true,
                    _ => return Err("_HLS_skip must be YES or v2"),
                };
            }
            _ => {}
        }
    }
    if asked.part.is_some() && asked.msn.is_none() {
        return Err("_HLS_part needs _HLS_msn");
    }
    Ok(asked)
}

/// Whether an `Accept-Encoding` value accepts gzip (with a q-value above 0).
fn accepts_gzip(accept_encoding: &str) -> bool {
    accept_encoding.split(',').any(|coding| {
        let mut params = coding.split(';').map(str::trim);
        let name = params.next().unwrap_or_default();
        let zero = params.any(|p| {
            p.strip_prefix("q=")
                .and_then(|q| q.trim().parse::<f32>().ok())
                .is_some_and(|q| q <= 0.0)
        });
        (name.eq_ignore_ascii_case("gzip") || name.eq_ignore_ascii_case("x-gzip")) && !zero
    })
}

/// Whether `If-None-Match` names `etag` (weak comparison, RFC 9110 13.1.2) or is `*`.
fn none_match(if_none_match: &str, etag: &str) -> bool {
    if_none_match
        .split(',')
        .map(str::trim)
        .any(|tag| tag == "*" || tag.strip_prefix("W/").unwrap_or(tag) == etag)
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

    /// Part `index` of segment `msn`; one past the last part of a segment that is over (the
    /// next one began) is part 0 of the next (RFC 8216bis 6.2.5.2), which is how the preload
    /// hint named it.
    fn resolve_part(&self, msn: u64, index: usize) -> Option<&Part> {
        self.part(msn, index).or_else(|| {
            let segment = self.segments.iter().find(|s| s.msn == msn)?;
            let next = self
                .segments
                .iter()
                .find(|s| Some(s.msn) == msn.checked_add(1))?;
            // Not across a restart: that part needs another initialisation segment, which
            // only the playlist's EXT-X-MAP after the discontinuity tells a player.
            if index == segment.parts.len() && !next.discontinuity {
                next.parts.first()
            } else {
                None
            }
        })
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
    /// One more at every change: what a rendered playlist is of.
    version: u64,
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

/// A rendered media playlist: its rendition, and whether it is a delta update.
type PlaylistKey = (usize, bool);

/// The HLS store of one HLS output: fed by the muxers' appsinks, read by the HTTP server.
///
/// Requests that wait (a blocking playlist reload, the hinted next part) wait on a watch
/// channel bumped at every change, not on a thread: thousands can wait at once.
///
/// Lock order: `state`, then `rendered`.
#[derive(Debug)]
pub struct LlHls {
    state: Mutex<State>,
    /// Carries [`State::version`] after every change.
    changed: watch::Sender<u64>,
    /// The last playlist rendered per (rendition, delta update), with the version it is of:
    /// every client waiting for the same part gets the same text, rendered once.
    rendered: Mutex<HashMap<PlaylistKey, (u64, Arc<Rendered>)>>,
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
            changed: watch::Sender::new(0),
            rendered: Mutex::new(HashMap::new()),
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
        self.publish(state);
    }

    /// Marks a change of `state` and wakes the requests waiting for one.
    fn publish(&self, mut state: std::sync::MutexGuard<'_, State>) {
        state.version += 1;
        let version = state.version;
        drop(state);
        self.changed.send_replace(version);
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
            self.publish(state);
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
        self.publish(state);
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
            self.publish(state);
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
        self.publish(state);
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
        self.publish(state);
    }

    /// Answers a request for `name` (the path below `/hls/`) with its query string, as
    /// [`LlHls::answer`] does for a request without conditions, blocking the calling thread
    /// while the request waits.
    #[cfg(test)]
    fn respond(&self, name: &str, query: &str) -> Reply {
        match tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
        {
            Ok(runtime) => runtime.block_on(self.answer(name, query, Conditions::default())),
            Err(_) => reply(
                503,
                "text/plain; charset=utf-8",
                "no-store",
                Arc::from(&b"cannot wait for the HLS output"[..]),
            ),
        }
    }

    /// Answers a request for `name` (the path below `/hls/`) with its query string. A request
    /// for what is not there yet (blocking playlist reload, the hinted next part) waits for it
    /// asynchronously, at most three target durations. A playlist comes with an entity tag:
    /// 304 when `If-None-Match` names it, gzip when `Accept-Encoding` allows.
    pub async fn answer(&self, name: &str, query: &str, conditions: Conditions<'_>) -> Reply {
        let mut reply = self.respond_to(name, query).await;
        let Some(rendered) = reply.rendered.clone() else {
            return reply;
        };
        if reply.status != 200 {
            return reply;
        }
        reply.vary_encoding = true;
        let gzip = conditions
            .accept_encoding
            .is_some_and(accepts_gzip)
            .then(|| rendered.gzip())
            .flatten();
        let etag = if gzip.is_some() {
            rendered.gzip_etag()
        } else {
            rendered.etag.clone()
        };
        if conditions
            .if_none_match
            .is_some_and(|tags| none_match(tags, &etag))
        {
            reply.status = 304;
            reply.body = Arc::from(&[][..]);
        } else if let Some(gzip) = gzip {
            reply.body = gzip;
            reply.content_encoding = Some("gzip");
        }
        reply.etag = Some(etag);
        reply
    }

    async fn respond_to(&self, name: &str, query: &str) -> Reply {
        // A blocking request waits at most three target durations (RFC 8216bis 6.2.5.2).
        let deadline = Instant::now() + 3 * self.segment_target.max(Duration::from_secs(1));
        let ladder = self.state.lock().unwrap().is_ladder();
        if !ladder {
            return match asked(name) {
                Some(asked) => self.respond_track(0, asked, query, deadline).await,
                None => not_found(),
            };
        }
        if name == "live.m3u8" {
            return self.multivariant(deadline).await;
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
        self.respond_track(track, asked, query, deadline).await
    }

    async fn respond_track(
        &self,
        track: usize,
        asked: Asked,
        query: &str,
        deadline: Instant,
    ) -> Reply {
        match asked {
            Asked::Playlist => self.playlist(track, query, deadline).await,
            Asked::Init(run) => {
                // A run that is not there yet may start soon (a restart); one that is over never.
                self.wait(deadline, |s| {
                    s.ended
                        || s.tracks
                            .get(track)
                            .is_some_and(|t| t.inits.contains_key(&run))
                        || s.run > run
                })
                .await;
                let state = self.state.lock().unwrap();
                match state.tracks.get(track).and_then(|t| t.inits.get(&run)) {
                    Some(init) => reply(200, "video/mp4", MEDIA_CACHE, init.clone()),
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
                        reply(200, "video/iso.segment", MEDIA_CACHE, body.into())
                    }
                    None => not_found(),
                }
            }
            Asked::Part(msn, index) => {
                // The preload hint names the next part before it exists: hold the request
                // until it is complete, whichever segment it turns out to start.
                self.wait(deadline, |s| {
                    s.ended
                        || s.tracks.get(track).is_none_or(|t| {
                            t.resolve_part(msn, index).is_some() || !t.is_hinted(msn, index)
                        })
                })
                .await;
                let state = self.state.lock().unwrap();
                match state
                    .tracks
                    .get(track)
                    .and_then(|t| t.resolve_part(msn, index))
                {
                    Some(p) => reply(200, "video/iso.segment", MEDIA_CACHE, p.data.clone()),
                    None => not_found(),
                }
            }
        }
    }

    /// Waits until `ready` holds of the state or `deadline` passes; whether it holds. No
    /// thread waits: the task sleeps on the change channel.
    async fn wait(&self, deadline: Instant, mut ready: impl FnMut(&State) -> bool) -> bool {
        let mut changes = self.changed.subscribe();
        loop {
            // Seen before the state is read: a change after this read wakes the wait below.
            changes.borrow_and_update();
            let holds = {
                let state = self.state.lock().unwrap();
                ready(&state)
            };
            if holds {
                return true;
            }
            match tokio::time::timeout_at(deadline, changes.changed()).await {
                Ok(Ok(())) => {}
                // The deadline passed (or the store is gone, which it cannot while borrowed).
                _ => return false,
            }
        }
    }

    /// The multivariant playlist: a variant stream per rendition, the top rung first.
    async fn multivariant(&self, deadline: Instant) -> Reply {
        // BANDWIDTH is measured: wait for a complete segment of every rendition.
        self.wait(deadline, |s| {
            s.ended
                || s.tracks
                    .iter()
                    .all(|t| t.segments.iter().any(|seg| seg.complete))
        })
        .await;
        let state = self.state.lock().unwrap();
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
        playlist_reply(
            Arc::new(Rendered::new(out.into_bytes())),
            PLAYLIST_CACHE.into(),
        )
    }

    /// RFC 8216bis 6.2.5.2: a blocking reload for a segment more than two past the last one,
    /// or for a part further past the last part than the Advance Part Limit (three seconds of
    /// parts), is answered 400 at once instead of waiting out its deadline.
    fn too_far_ahead(&self, track: usize, msn: u64, part: Option<u64>) -> Option<&'static str> {
        let state = self.state.lock().unwrap();
        let t = state.tracks.get(track)?;
        // "The last Media Segment": the last one listed whole (with its EXTINF); before the
        // first is, the one in progress.
        let last_segment = t
            .segments
            .iter()
            .rev()
            .find(|s| s.complete)
            .map_or(t.next_msn.saturating_sub(1), |s| s.msn);
        if msn > last_segment.saturating_add(2) {
            return Some("_HLS_msn is too far in the future");
        }
        let part = part?;
        let (last_msn, last_part) = t.last_part()?;
        let part_target = self.part_target.as_secs_f64().max(0.001);
        let limit = if part_target < 1.0 {
            (3.0 / part_target).ceil() as u64
        } else {
            3
        };
        // Parts counted across segments at the nominal number per segment: the real count of
        // a segment is only known once it is over.
        let per_segment = (self.segment_target.as_secs_f64() / part_target)
            .round()
            .max(1.0) as u64;
        let asked = msn.saturating_mul(per_segment).saturating_add(part);
        let last = last_msn
            .saturating_mul(per_segment)
            .saturating_add(last_part as u64);
        (asked > last.saturating_add(limit)).then_some("_HLS_part is too far in the future")
    }

    async fn playlist(&self, track: usize, query: &str, deadline: Instant) -> Reply {
        let asked = match parse_playlist_query(query) {
            Ok(asked) => asked,
            Err(reason) => return bad_request(reason),
        };
        if asked.msn.is_some() && !self.low_latency {
            return bad_request("this HLS output does not block playlist reloads");
        }
        let listable = |s: &State| {
            s.tracks.get(track).is_some_and(|t| {
                t.segments
                    .iter()
                    .any(|seg| self.low_latency || seg.complete)
            })
        };
        let ready = match asked.msn {
            Some(msn) => {
                if let Some(reason) = self.too_far_ahead(track, msn, asked.part) {
                    return bad_request(reason);
                }
                let part = asked.part.map(|p| usize::try_from(p).unwrap_or(usize::MAX));
                self.wait(deadline, |s| {
                    s.ended
                        || s.tracks.get(track).is_none_or(|t| match part {
                            Some(p) => t.has_part_or_later(msn, p),
                            None => t.has_segment_or_later(msn),
                        })
                })
                .await
            }
            None => self.wait(deadline, listable).await,
        };
        let state = self.state.lock().unwrap();
        if !listable(&state) {
            return no_segment_yet();
        }
        // Plain HLS offers no delta updates (no CAN-SKIP-UNTIL): a full playlist answers all.
        let rendered = self.rendered(&state, track, asked.skip && self.low_latency);
        drop(state);
        let cache = match (asked.msn, ready) {
            (None, _) => Cow::Borrowed(PLAYLIST_CACHE),
            // Its URL names the part it waited for, so the answer serves every client asking
            // it: a cache in front collapses them into one request to the origin.
            (Some(_), true) => Cow::Owned(format!(
                "public, max-age={}",
                3 * self.segment_target.as_secs().max(1)
            )),
            // Timed out without what it asked for: no cache may hand this out for that URL.
            (Some(_), false) => Cow::Borrowed("no-store"),
        };
        playlist_reply(rendered, cache)
    }

    /// The playlist of rendition `track` as `state` has it, rendered once per change.
    fn rendered(&self, state: &State, track: usize, delta: bool) -> Arc<Rendered> {
        let mut cache = self.rendered.lock().unwrap();
        if let Some((version, rendered)) = cache.get(&(track, delta))
            && *version == state.version
        {
            return rendered.clone();
        }
        let rendered = Arc::new(Rendered::new(self.render(state, track, delta).into_bytes()));
        cache.insert((track, delta), (state.version, rendered.clone()));
        rendered
    }

    /// The media playlist of rendition `index`; with `skip`, a delta update (RFC 8216bis
    /// 6.2.5.1): the segments before the skip boundary replaced by `EXT-X-SKIP`.
    fn render(&self, state: &State, index: usize, delta: bool) -> String {
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
        let skip_until = SKIP_UNTIL_TARGETS * target as f64;
        let skipped = if delta {
            // Whole segments that end before the boundary, CAN-SKIP-UNTIL before the end.
            let boundary = listed.iter().map(|s| s.duration()).sum::<f64>() - skip_until;
            let mut end = 0.0;
            listed
                .iter()
                .take_while(|s| {
                    end += s.duration();
                    s.complete && s.msn + SEGMENTS_WITH_PARTS <= newest && end <= boundary + 1e-6
                })
                .count()
        } else {
            0
        };
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
                "#EXT-X-SERVER-CONTROL:CAN-BLOCK-RELOAD=YES,PART-HOLD-BACK={:.3},\
                 CAN-SKIP-UNTIL={skip_until:.1}\n\
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
        if skipped > 0 {
            let _ = writeln!(out, "#EXT-X-SKIP:SKIPPED-SEGMENTS={skipped}");
        }
        for (i, segment) in listed.iter().enumerate().skip(skipped) {
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

fn playlist_reply(rendered: Arc<Rendered>, cache: Cow<'static, str>) -> Reply {
    Reply {
        body: rendered.body.clone(),
        rendered: Some(rendered),
        ..reply(
            200,
            "application/vnd.apple.mpegurl",
            cache,
            Arc::from(&[][..]),
        )
    }
}

fn no_segment_yet() -> Reply {
    reply(
        503,
        "text/plain; charset=utf-8",
        "no-store",
        Arc::from(&b"the HLS output has no segment yet"[..]),
    )
}

fn reply(
    status: u16,
    content_type: &'static str,
    cache: impl Into<Cow<'static, str>>,
    body: Arc<[u8]>,
) -> Reply {
    Reply {
        status,
        content_type,
        cache: cache.into(),
        body,
        etag: None,
        content_encoding: None,
        vary_encoding: false,
        rendered: None,
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

    /// Blocks on `respond` on a thread of its own.
    fn ask(hls: &Arc<LlHls>, name: &str, query: &str) -> std::thread::JoinHandle<Reply> {
        let (hls, name, query) = (hls.clone(), name.to_string(), query.to_string());
        std::thread::spawn(move || hls.respond(&name, &query))
    }

    #[test]
    fn one_part_past_the_end_of_a_segment_is_part_0_of_the_next() {
        gst::init().unwrap();
        // Segments of 20 s: a request that waited out its deadline would take a minute and
        // come back without the part; these come back with it.
        let hls = Arc::new(LlHls::new(
            Duration::from_secs(20),
            Duration::from_millis(250),
            3,
        ));
        push_segment(&hls, 0, 0, 100, Some(&init_segment(b'5')));
        // Segment 0 has four parts; the hint names part 0.4, which may start segment 1.
        let playlist = text(hls.respond("live.m3u8", ""));
        assert!(
            playlist.ends_with("#EXT-X-PRELOAD-HINT:TYPE=PART,URI=\"part0.4.m4s\"\n"),
            "{playlist}"
        );
        let hinted = ask(&hls, "part0.4.m4s", "");
        let reload = ask(&hls, "live.m3u8", "_HLS_msn=0&_HLS_part=4");
        // It does: a key frame starts segment 1 (its first part 777 bytes of payload).
        hls.push_chunk(0, &rung_chunk(true, 777, Some(T0 + 1_000_000_000), None));
        let part = hinted.join().unwrap();
        assert_eq!(part.status, 200);
        assert_eq!(part.body.len(), 8 + 777, "not part 1.0");
        assert_eq!(part.body, hls.respond("part1.0.m4s", "").body);
        let reload = reload.join().unwrap();
        assert_eq!(reload.status, 200);
        assert_eq!(reload.cache, "public, max-age=60");
        let playlist = text(reload);
        assert!(
            playlist.contains("#EXT-X-PART:DURATION=0.25000,URI=\"part1.0.m4s\",INDEPENDENT=YES\n"),
            "{playlist}"
        );
        assert!(
            playlist.contains("#EXTINF:1.00000,\nseg0.m4s\n"),
            "{playlist}"
        );
        // Segment 0 is over: its part 5 never comes, and is no hint (no wait either).
        assert_eq!(hls.respond("part0.5.m4s", "").status, 404);
    }

    #[test]
    fn a_request_too_far_ahead_is_refused_at_once() {
        gst::init().unwrap();
        let hls = LlHls::new(Duration::from_secs(20), Duration::from_millis(250), 3);
        push_segment(&hls, 0, 0, 100, Some(&init_segment(b'5')));
        hls.push_chunk(0, &rung_chunk(true, 100, None, None));
        // The last part is 1.0; with 250 ms parts the Advance Part Limit is 12 parts, and
        // segments are 80 parts (20 s) long nominally.
        for query in [
            "_HLS_msn=1&_HLS_part=13",
            "_HLS_msn=1&_HLS_part=999999",
            "_HLS_msn=2&_HLS_part=0",
            "_HLS_msn=3",
            "_HLS_msn=0&_HLS_part=18446744073709551615",
        ] {
            let reply = hls.respond("live.m3u8", query);
            let status = reply.status;
            assert_eq!(status, 400, "{query}: {}", text(reply));
        }
        // What exists is answered at once, however it is asked for.
        for query in [
            "_HLS_msn=1&_HLS_part=0",
            "_HLS_msn=0&_HLS_part=3",
            "_HLS_msn=0",
        ] {
            assert_eq!(hls.respond("live.m3u8", query).status, 200, "{query}");
        }
    }

    #[test]
    fn a_delta_update_skips_what_is_older_than_six_target_durations() {
        gst::init().unwrap();
        let hls = LlHls::new(Duration::from_secs(1), Duration::from_millis(250), 10);
        let init = init_segment(b'5');
        for seg in 0..12u64 {
            push_segment(&hls, 0, seg, 100, (seg == 0).then_some(init.as_slice()));
        }
        hls.push_chunk(0, &rung_chunk(true, 100, Some(T0 + 12_000_000_000), None));
        let full = text(hls.respond("live.m3u8", ""));
        assert!(full.contains(",CAN-SKIP-UNTIL=6.0\n"), "{full}");
        assert!(full.contains("#EXT-X-MEDIA-SEQUENCE:2\n"), "{full}");
        let delta = text(hls.respond("live.m3u8", "_HLS_skip=YES"));
        // Listed: segments 2..=11 (10 s) and 0.25 s of segment 12; the boundary is 6 s before
        // that end, 4.25 s in: segments 2, 3, 4 and 5 end before it.
        assert!(
            delta.contains("#EXT-X-SKIP:SKIPPED-SEGMENTS=4\n"),
            "{delta}"
        );
        assert!(delta.contains("#EXT-X-MEDIA-SEQUENCE:2\n"), "{delta}");
        for msn in 2..=5 {
            assert!(!delta.contains(&format!("seg{msn}.m4s")), "{delta}");
        }
        // Everything from the first segment kept on is the full playlist's text.
        let kept = |p: &str| {
            p[p.find("#EXT-X-PROGRAM-DATE-TIME:2023-11-14T22:13:26")
                .unwrap()..]
                .to_string()
        };
        assert_eq!(kept(&delta), kept(&full));
        assert_eq!(text(hls.respond("live.m3u8", "_HLS_skip=v2")), delta);
        assert_eq!(hls.respond("live.m3u8", "_HLS_skip=NO").status, 400);
    }

    #[test]
    fn playlists_carry_an_entity_tag_and_come_gzipped_when_asked() {
        gst::init().unwrap();
        let hls = LlHls::new(Duration::from_secs(1), Duration::from_millis(250), 3);
        push_segment(&hls, 0, 0, 100, Some(&init_segment(b'5')));
        let answer = |query: &str, conditions: Conditions<'_>| {
            tokio::runtime::Builder::new_current_thread()
                .enable_time()
                .build()
                .unwrap()
                .block_on(hls.answer("live.m3u8", query, conditions))
        };
        let plain = answer("", Conditions::default());
        assert_eq!(plain.cache, "no-cache");
        assert!(plain.vary_encoding);
        let etag = plain.etag.clone().expect("an ETag");
        let same = answer(
            "",
            Conditions {
                if_none_match: Some(&format!("\"other\", W/{etag}")),
                ..Default::default()
            },
        );
        assert_eq!((same.status, same.body.len()), (304, 0));
        let gzip = answer(
            "",
            Conditions {
                accept_encoding: Some("br;q=1, gzip;q=0.5"),
                ..Default::default()
            },
        );
        assert_eq!(gzip.content_encoding, Some("gzip"));
        let gz_etag = gzip.etag.clone().unwrap();
        assert_ne!(gz_etag, etag, "one tag per representation");
        let mut unzipped = Vec::new();
        std::io::Read::read_to_end(
            &mut flate2::read::GzDecoder::new(&gzip.body[..]),
            &mut unzipped,
        )
        .unwrap();
        assert_eq!(unzipped, &plain.body[..]);
        for refused in ["gzip;q=0", "identity", "br"] {
            let reply = answer(
                "",
                Conditions {
                    accept_encoding: Some(refused),
                    ..Default::default()
                },
            );
            assert_eq!(reply.content_encoding, None, "{refused}");
            assert_eq!(reply.body, plain.body);
        }
        // A new part: the old tag no longer matches.
        hls.push_chunk(0, &rung_chunk(true, 100, None, None));
        let changed = answer(
            "",
            Conditions {
                if_none_match: Some(&etag),
                ..Default::default()
            },
        );
        assert_eq!(changed.status, 200);
        assert_ne!(changed.etag.as_deref(), Some(etag.as_str()));
        // Media are immutable; errors are never stored.
        assert!(hls.respond("part0.0.m4s", "").cache.contains("immutable"));
        assert!(hls.respond("seg0.m4s", "").cache.contains("immutable"));
        assert!(hls.respond("init.mp4", "").cache.contains("immutable"));
        assert_eq!(hls.respond("seg9.m4s", "").cache, "no-store");
    }

    #[test]
    fn a_blocking_reload_that_times_out_is_not_cacheable() {
        gst::init().unwrap();
        // 1 s segments: a blocking request waits at most 3 s.
        let hls = LlHls::new(Duration::from_secs(1), Duration::from_millis(250), 3);
        push_segment(&hls, 0, 0, 100, Some(&init_segment(b'5')));
        // The hinted part never comes (the encoder stalled).
        let reply = hls.respond("live.m3u8", "_HLS_msn=0&_HLS_part=4");
        assert_eq!(reply.status, 200);
        assert_eq!(
            reply.cache, "no-store",
            "a cache would serve it for that part"
        );
        assert!(!text(reply).contains("part1.0.m4s"));
    }

    #[test]
    fn playlist_queries_are_read_strictly() {
        let ok = |msn, part, skip| Ok(PlaylistQuery { msn, part, skip });
        for (query, expected) in [
            ("", ok(None, None, false)),
            ("_HLS_msn=7", ok(Some(7), None, false)),
            ("_HLS_msn=7&_HLS_part=2", ok(Some(7), Some(2), false)),
            (
                "_HLS_part=2&_HLS_msn=7&_HLS_skip=YES",
                ok(Some(7), Some(2), true),
            ),
            ("_HLS_skip=v2&t=123&&x", ok(None, None, true)),
            ("_HLS_msn=+7", Err("_HLS_msn must be a number")),
            ("_HLS_msn=", Err("_HLS_msn must be a number")),
            ("_HLS_msn", Err("_HLS_msn must be a number")),
            (
                "_HLS_msn=18446744073709551616",
                Err("_HLS_msn must be a number"),
            ),
            ("_HLS_msn=1&_HLS_msn=2", Err("_HLS_msn is given twice")),
            ("_HLS_msn=1&_HLS_part=-1", Err("_HLS_part must be a number")),
            ("_HLS_part=1", Err("_HLS_part needs _HLS_msn")),
            ("_HLS_skip=yes", Err("_HLS_skip must be YES or v2")),
            (
                "_HLS_skip=YES&_HLS_skip=YES",
                Err("_HLS_skip is given twice"),
            ),
        ] {
            assert_eq!(parse_playlist_query(query), expected, "{query}");
        }
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
        // The part the old run's hint named (one past its last) is not the new run's first:
        // that one needs the new initialisation segment.
        assert_eq!(hls.respond("part2.1.m4s", "").status, 404);
        assert_eq!(hls.respond("part3.0.m4s", "").status, 200);

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
