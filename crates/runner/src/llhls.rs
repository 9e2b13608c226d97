//! Low-Latency HLS: partial segments, preload hints and blocking playlist reload, served from
//! memory.
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
}

impl Segment {
    fn duration(&self) -> f64 {
        self.parts.iter().map(|p| p.duration).sum()
    }
}

#[derive(Debug, Default)]
struct State {
    /// Initialisation segment of each run still listed (or current).
    inits: BTreeMap<u64, Arc<[u8]>>,
    /// The current muxer run.
    run: u64,
    /// A restart happened: the next segment starts a new run.
    pending_discontinuity: bool,
    /// Discontinuities that left the store (`EXT-X-DISCONTINUITY-SEQUENCE` counts them).
    dropped_discontinuities: u64,
    segments: VecDeque<Segment>,
    next_msn: u64,
    /// Longest part and segment seen: the playlist's targets must cover them.
    longest_part: f64,
    longest_segment: f64,
    ended: bool,
}

/// The LL-HLS store of one HLS output: fed by the muxer's appsink, read by the HTTP server.
#[derive(Debug)]
pub struct LlHls {
    state: Mutex<State>,
    changed: Condvar,
    segment_target: Duration,
    part_target: Duration,
    /// Complete segments listed in the playlist.
    window: usize,
}

impl LlHls {
    /// A store for segments of about `segment_target` split into parts of about `part_target`,
    /// listing `window` complete segments.
    pub fn new(segment_target: Duration, part_target: Duration, window: usize) -> Self {
        LlHls {
            state: Mutex::new(State::default()),
            changed: Condvar::new(),
            segment_target,
            part_target,
            window: window.max(2),
        }
    }

    /// Takes one chunk (buffer list) from `isofmp4mux`.
    pub fn push_chunk(&self, list: &gst::BufferListRef) {
        let mut data = Vec::new();
        let mut init = None;
        let mut fragment_start = false;
        let mut duration = None;
        let mut utc_ns = None;
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
            }
            // The muxer copies the first sample's metas to the header; the samples keep theirs.
            utc_ns = utc_ns.or_else(|| crate::capture::capture_utc_ns(buffer));
            data.extend_from_slice(map.as_slice());
        }
        let mut state = self.state.lock().unwrap();
        if let Some(init) = init {
            let run = state.run;
            state.inits.insert(run, init);
        }
        if data.is_empty() {
            drop(state);
            self.changed.notify_all();
            return;
        }
        let duration = duration.map_or(self.part_target.as_secs_f64(), |d| {
            d.nseconds() as f64 / 1e9
        });
        state.longest_part = state.longest_part.max(duration);
        let open = state.segments.back().is_some_and(|s| !s.complete);
        if fragment_start || !open {
            if let Some(last) = state.segments.back_mut() {
                last.complete = true;
            }
            if let Some(d) = state.segments.back().map(Segment::duration) {
                state.longest_segment = state.longest_segment.max(d);
            }
            let msn = state.next_msn;
            state.next_msn += 1;
            let discontinuity = std::mem::take(&mut state.pending_discontinuity);
            let run = state.run;
            state.segments.push_back(Segment {
                msn,
                run,
                discontinuity,
                parts: Vec::new(),
                complete: false,
                utc_ns,
            });
            // Keep what the playlist lists plus a little for clients a request behind.
            while state.segments.len() > self.window + 3 {
                if state.segments.pop_front().is_some_and(|s| s.discontinuity) {
                    state.dropped_discontinuities += 1;
                }
            }
            if let Some(oldest) = state.segments.front().map(|s| s.run) {
                state.inits.retain(|&run, _| run >= oldest);
            }
        }
        if let Some(segment) = state.segments.back_mut() {
            segment.parts.push(Part {
                data: data.into(),
                duration,
                independent: fragment_start,
            });
        }
        drop(state);
        self.changed.notify_all();
    }

    /// The output restarts with a new muxer: the segment in progress ends here (its parts are
    /// whole and stay listed), and the next one starts a new run after a discontinuity.
    pub fn restart(&self) {
        let mut state = self.state.lock().unwrap();
        if state.segments.is_empty() {
            // Nothing listed yet: the new run simply is the first.
            state.inits.clear();
            state.ended = false;
            return;
        }
        if state.segments.back().is_some_and(|s| s.parts.is_empty()) {
            state.segments.pop_back();
            state.next_msn -= 1;
        }
        if let Some(last) = state.segments.back_mut() {
            last.complete = true;
        }
        if let Some(d) = state.segments.back().map(Segment::duration) {
            state.longest_segment = state.longest_segment.max(d);
        }
        state.run += 1;
        state.pending_discontinuity = true;
        state.ended = false;
        drop(state);
        self.changed.notify_all();
    }

    /// The stream ended: the last segment is complete and the playlist gets `EXT-X-ENDLIST`.
    pub fn finish(&self) {
        let mut state = self.state.lock().unwrap();
        if let Some(last) = state.segments.back_mut() {
            last.complete = true;
        }
        state.ended = true;
        drop(state);
        self.changed.notify_all();
    }

    /// Answers a request for `name` (the path below `/hls/`) with its query string.
    pub fn respond(&self, name: &str, query: &str) -> Reply {
        // A blocking request waits at most three target durations (RFC 8216bis 6.2.5.2).
        let deadline = Instant::now() + 3 * self.segment_target.max(Duration::from_secs(1));
        if name == "live.m3u8" {
            return self.playlist(query, deadline);
        }
        if let Some(run) = name
            .strip_prefix("init")
            .and_then(|n| n.strip_suffix(".mp4"))
            .and_then(|n| {
                if n.is_empty() {
                    Some(0)
                } else {
                    n.parse::<u64>().ok()
                }
            })
        {
            let state = self.wait(deadline, |s| s.inits.contains_key(&run) || s.run > run);
            return match state.inits.get(&run) {
                Some(init) => reply(200, "video/mp4", IMMUTABLE, init.clone()),
                None => not_found(),
            };
        }
        if let Some(msn) = name
            .strip_prefix("seg")
            .and_then(|n| n.strip_suffix(".m4s"))
            .and_then(|n| n.parse::<u64>().ok())
        {
            let state = self.state.lock().unwrap();
            return match state.segments.iter().find(|s| s.msn == msn && s.complete) {
                Some(segment) => {
                    let body: Vec<u8> = segment
                        .parts
                        .iter()
                        .flat_map(|p| p.data.iter().copied())
                        .collect();
                    reply(200, "video/iso.segment", IMMUTABLE, body.into())
                }
                None => not_found(),
            };
        }
        if let Some((msn, index)) = name
            .strip_prefix("part")
            .and_then(|n| n.strip_suffix(".m4s"))
            .and_then(|n| n.split_once('.'))
            .and_then(|(m, p)| Some((m.parse::<u64>().ok()?, p.parse::<usize>().ok()?)))
        {
            // The preload hint names the next part before it exists: hold the request.
            let state = self.wait(deadline, |s| {
                s.ended || part(s, msn, index).is_some() || !is_hinted_or_past(s, msn, index)
            });
            return match part(&state, msn, index) {
                Some(p) => reply(200, "video/iso.segment", IMMUTABLE, p.data.clone()),
                None => not_found(),
            };
        }
        not_found()
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

    fn playlist(&self, query: &str, deadline: Instant) -> Reply {
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
        let state = match msn {
            Some(msn) => {
                {
                    // Further ahead than the next two segments can never be answered in time.
                    let state = self.state.lock().unwrap();
                    if msn > state.next_msn + 1 {
                        return bad_request("_HLS_msn is too far in the future");
                    }
                }
                self.wait(deadline, |s| {
                    s.ended
                        || match part_index {
                            Some(p) => part(s, msn, p as usize).is_some(),
                            None => s.segments.iter().any(|seg| seg.msn == msn && seg.complete),
                        }
                })
            }
            None => self.wait(deadline, |s| !s.segments.is_empty()),
        };
        if state.segments.is_empty() {
            return Reply {
                status: 503,
                content_type: "text/plain; charset=utf-8",
                cache: "no-store",
                body: Arc::from(&b"the HLS output has no segment yet"[..]),
            };
        }
        let text = self.render(&state);
        reply(
            200,
            "application/vnd.apple.mpegurl",
            "no-cache, no-store",
            text.into_bytes().into(),
        )
    }

    fn render(&self, state: &State) -> String {
        let part_target = state.longest_part.max(self.part_target.as_secs_f64());
        let target = state
            .longest_segment
            .max(self.segment_target.as_secs_f64())
            .round()
            .max(1.0) as u64;
        let complete = state.segments.iter().filter(|s| s.complete).count();
        let skip = complete.saturating_sub(self.window);
        let listed: Vec<&Segment> = state.segments.iter().skip(skip).collect();
        let newest = listed.last().map_or(0, |s| s.msn);
        // Every tag that left the playlist counts, and the first listed segment's own (the
        // playlist starts with its run's EXT-X-MAP, so no tag is written before it).
        let discontinuity_sequence = state.dropped_discontinuities
            + state
                .segments
                .iter()
                .take(skip + 1)
                .filter(|s| s.discontinuity)
                .count() as u64;
        let mut out = String::with_capacity(2048);
        let _ = write!(
            out,
            "#EXTM3U\n#EXT-X-VERSION:9\n#EXT-X-TARGETDURATION:{target}\n\
             #EXT-X-SERVER-CONTROL:CAN-BLOCK-RELOAD=YES,PART-HOLD-BACK={:.3}\n\
             #EXT-X-PART-INF:PART-TARGET={part_target:.3}\n#EXT-X-INDEPENDENT-SEGMENTS\n\
             #EXT-X-MEDIA-SEQUENCE:{}\n#EXT-X-DISCONTINUITY-SEQUENCE:{discontinuity_sequence}\n\
             #EXT-X-MAP:URI=\"{}\"\n",
            3.0 * part_target,
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
            if segment.msn + SEGMENTS_WITH_PARTS > newest {
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
        } else if let Some(last) = listed.last() {
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

fn part(state: &State, msn: u64, index: usize) -> Option<&Part> {
    state
        .segments
        .iter()
        .find(|s| s.msn == msn)
        .and_then(|s| s.parts.get(index))
}

/// Whether (msn, index) is the next part to come (the preload hint), so worth waiting for.
fn is_hinted_or_past(state: &State, msn: u64, index: usize) -> bool {
    match state.segments.back() {
        Some(last) if !last.complete => msn == last.msn && index == last.parts.len(),
        Some(last) => msn == last.msn + 1 && index == 0,
        None => msn == 0 && index == 0,
    }
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
                hls.push_chunk(&chunk(p == 0, 250, utc, seg == 0 && p == 0));
            }
        }
        hls.push_chunk(&chunk(true, 250, None, false));

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
        hls.push_chunk(&chunk(false, 250, None, false));
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
                hls.push_chunk(&chunk(p == 0, 500, None, seg == 0 && p == 0));
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
        hls.push_chunk(&first);
        hls.push_chunk(&chunk(false, 500, None, false));
        hls.push_chunk(&chunk(true, 500, None, false));

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
            hls.push_chunk(&chunk(true, 500, None, false));
            hls.push_chunk(&chunk(false, 500, None, false));
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
}
