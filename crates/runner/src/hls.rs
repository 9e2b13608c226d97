//! The served HLS playlist, made from hlssink2's: program date-times and one live window
//! across output restarts.
//!
//! `#EXT-X-PROGRAM-DATE-TIME`: hlssink2's playlists (on GStreamer 1.22) have none. Every
//! segment starts with a keyframe that carries its capture stamp as SEI, so the wall-clock
//! time of a segment is read from the segment itself: the first video PES of the MPEG-TS file
//! is reassembled and its stamp parsed. Segments never change once listed, so each is read once.
//!
//! Restarts: a restarted HLS output is a new hlssink2 that knows nothing of the old one's
//! segments; its playlist lists its own only and counts its media sequence from 0 again. The
//! runner numbers the new segment files on from the old ones, and this module keeps the window
//! players see: the old run's segments stay listed until they slide out, the media sequence
//! goes on, and the first segment of the new run carries `#EXT-X-DISCONTINUITY` (timestamps and
//! encoder state may jump there), counted by `#EXT-X-DISCONTINUITY-SEQUENCE` once it left. The
//! old run's files, which its hlssink2 is no longer there to delete, are deleted here a few
//! segments after they leave the window (hlssink2's own `max-files` margin).

use std::collections::{BTreeMap, VecDeque};
use std::path::Path;
use std::sync::Mutex;

use hybridlive_stamp::{Codec, Framing, find_stamp};

/// Segments kept on disk after they left the playlist, for players a reload behind.
const KEPT_AFTER_WINDOW: usize = 3;

const TS_PACKET: usize = 188;
/// A keyframe's SEI sits right after the AUD, SPS and PPS: the first few packets hold it.
const MAX_PES_PREFIX: usize = 64 * 1024;

/// The live window of the served playlist, and the capture time of each segment's first frame.
#[derive(Debug, Default)]
pub struct SegmentTimes {
    known: Mutex<BTreeMap<String, Option<u64>>>,
    window: Mutex<Window>,
}

impl SegmentTimes {
    /// For an output listing `length` segments (its `playlist_length`).
    pub fn new(length: usize) -> Self {
        let times = SegmentTimes::default();
        times.window.lock().unwrap().length = length;
        times
    }
}

/// One segment as players see it.
#[derive(Debug, Clone)]
struct Listed {
    name: String,
    /// `N` of `segmentN.ts`.
    index: u64,
    /// Index of the first segment of the hlssink2 run that wrote it.
    run: u64,
    /// Media sequence number.
    sequence: u64,
    /// The first segment of a restarted run.
    discontinuity: bool,
    extinf: String,
}

#[derive(Debug, Default)]
struct Window {
    listed: VecDeque<Listed>,
    /// Segments listed (hlssink2's `playlist-length`; at least as many as it lists).
    length: usize,
    /// Discontinuity tags that left the window.
    discontinuity_sequence: u64,
    /// Files of earlier runs out of the window, with the media sequence the window started at
    /// when they left it: deleted [`KEPT_AFTER_WINDOW`] segments later.
    retired: VecDeque<(String, u64)>,
}

/// What hlssink2 wrote: header tags, segments (`#EXTINF` line and name), trailing tags.
struct Parsed<'a> {
    header: Vec<&'a str>,
    media_sequence: u64,
    segments: Vec<(&'a str, &'a str)>,
    trailer: Vec<&'a str>,
}

fn parse(playlist: &str) -> Parsed<'_> {
    let mut parsed = Parsed {
        header: Vec::new(),
        media_sequence: 0,
        segments: Vec::new(),
        trailer: Vec::new(),
    };
    let mut extinf = None;
    for line in playlist.lines().filter(|l| !l.trim().is_empty()) {
        if let Some(n) = line.strip_prefix("#EXT-X-MEDIA-SEQUENCE:") {
            parsed.media_sequence = n.trim().parse().unwrap_or(0);
        } else if line.starts_with("#EXTINF") {
            extinf = Some(line);
        } else if !line.starts_with('#') {
            parsed
                .segments
                .push((extinf.take().unwrap_or("#EXTINF:1,"), line));
        } else if parsed.segments.is_empty() {
            parsed.header.push(line);
        } else {
            parsed.trailer.push(line);
        }
    }
    parsed
}

impl SegmentTimes {
    /// The playlist players get from hlssink2's `playlist`: the window kept across restarts,
    /// a program-date-time line before each segment whose start is known.
    ///
    /// The media sequence follows the segments: the first one ever listed keeps its file
    /// number, each later one is the next number, also across a restart.
    pub fn annotate(&self, dir: &Path, playlist: &str) -> String {
        let parsed = parse(playlist);
        let (listed, discontinuity_sequence) = self.update(dir, &parsed);
        let mut out = String::with_capacity(playlist.len() + 512);
        for line in &parsed.header {
            out.push_str(line);
            out.push('\n');
        }
        if let Some(first) = listed.first() {
            out.push_str(&format!("#EXT-X-MEDIA-SEQUENCE:{}\n", first.sequence));
            // Counted from the first segment's own tag on: it is not written (nothing before
            // it to be discontinuous with).
            let sequence = discontinuity_sequence + u64::from(first.discontinuity);
            if sequence > 0 {
                out.push_str(&format!("#EXT-X-DISCONTINUITY-SEQUENCE:{sequence}\n"));
            }
        }
        for (i, segment) in listed.iter().enumerate() {
            if segment.discontinuity && i > 0 {
                out.push_str("#EXT-X-DISCONTINUITY\n");
            }
            if let Some(utc_ns) = self.segment_start(dir, &segment.name) {
                out.push_str("#EXT-X-PROGRAM-DATE-TIME:");
                out.push_str(&crate::state::rfc3339(utc_ns));
                out.push('\n');
            }
            out.push_str(&segment.extinf);
            out.push('\n');
            out.push_str(&segment.name);
            out.push('\n');
        }
        for line in &parsed.trailer {
            out.push_str(line);
            out.push('\n');
        }
        out
    }

    /// Merges what hlssink2 lists now into the window; returns the window and its
    /// discontinuity sequence.
    fn update(&self, dir: &Path, parsed: &Parsed) -> (Vec<Listed>, u64) {
        let entries: Vec<(u64, &str, &str)> = parsed
            .segments
            .iter()
            .filter_map(|(extinf, name)| Some((segment_index(name)?, *extinf, *name)))
            .collect();
        let mut window = self.window.lock().unwrap();
        let Some(&(first, _, _)) = entries.first() else {
            return (
                window.listed.iter().cloned().collect(),
                window.discontinuity_sequence,
            );
        };
        // hlssink2 counts its media sequence from 0 at the segment it started with.
        let run = first.saturating_sub(parsed.media_sequence);
        window.length = window.length.max(entries.len());
        let mut retired = Vec::new();
        for (index, extinf, name) in entries {
            let (sequence, discontinuity) = match window.listed.back() {
                Some(last) if index <= last.index => continue,
                Some(last) if last.run == run => (last.sequence + (index - last.index), false),
                Some(last) => (last.sequence + 1 + index.saturating_sub(run), true),
                None => (index, false),
            };
            if window
                .listed
                .back()
                .is_some_and(|last| sequence != last.sequence + 1)
            {
                // Segments went by unseen (no request for longer than the window): what is
                // listed can no longer be numbered on; start the window afresh.
                while let Some(gone) = window.listed.pop_front() {
                    window.discontinuity_sequence += u64::from(gone.discontinuity);
                    if gone.run != run {
                        retired.push(gone.name);
                    }
                }
            }
            if discontinuity {
                // The old run's files beyond its last listed one were its own margin: its
                // hlssink2 would have deleted them; nobody will now.
                retired.extend(old_run_files(dir, run, &window.listed));
            }
            window.listed.push_back(Listed {
                name: name.to_string(),
                index,
                run,
                sequence,
                discontinuity,
                extinf: extinf.to_string(),
            });
        }
        while window.listed.len() > window.length {
            let Some(gone) = window.listed.pop_front() else {
                break;
            };
            window.discontinuity_sequence += u64::from(gone.discontinuity);
            if gone.run != run {
                retired.push(gone.name);
            }
        }
        let start = window.listed.front().map_or(0, |l| l.sequence);
        window
            .retired
            .extend(retired.into_iter().map(|name| (name, start)));
        let mut delete = Vec::new();
        while window
            .retired
            .front()
            .is_some_and(|(_, left_at)| start >= left_at + KEPT_AFTER_WINDOW as u64)
        {
            delete.extend(window.retired.pop_front().map(|(name, _)| name));
        }
        let result = (
            window.listed.iter().cloned().collect(),
            window.discontinuity_sequence,
        );
        drop(window);
        for name in delete {
            let _ = std::fs::remove_file(dir.join(name));
        }
        result
    }

    fn segment_start(&self, dir: &Path, name: &str) -> Option<u64> {
        if let Some(known) = self.known.lock().unwrap().get(name) {
            return *known;
        }
        let data = std::fs::read(dir.join(name)).ok()?;
        let found = first_video_stamp(&data);
        let mut known = self.known.lock().unwrap();
        // Forget segments that left the playlist long ago.
        if known.len() > 256
            && let Some(oldest) = known.keys().next().cloned()
        {
            known.remove(&oldest);
        }
        known.insert(name.to_string(), found);
        found
    }
}

/// Segment files of runs before `run` that `listed` does not hold (oldest first).
fn old_run_files(dir: &Path, run: u64, listed: &VecDeque<Listed>) -> Vec<String> {
    let mut files: Vec<(u64, String)> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let name = entry.file_name().into_string().ok()?;
            let index = segment_index(&name)?;
            (index < run && !listed.iter().any(|l| l.index == index)).then_some((index, name))
        })
        .collect();
    files.sort();
    files.into_iter().map(|(_, name)| name).collect()
}

/// `N` of a `segmentN.ts` name (the runner's segment names).
pub fn segment_index(name: &str) -> Option<u64> {
    name.strip_prefix("segment")?
        .strip_suffix(".ts")?
        .parse()
        .ok()
}

/// The capture stamp of the first video access unit in an MPEG-TS file.
pub fn first_video_stamp(ts: &[u8]) -> Option<u64> {
    let mut video_pid = None;
    let mut pes = Vec::new();
    for packet in ts.chunks_exact(TS_PACKET) {
        if packet[0] != 0x47 {
            return None;
        }
        let pid = (u16::from(packet[1] & 0x1f) << 8) | u16::from(packet[2]);
        let unit_start = packet[1] & 0x40 != 0;
        let adaptation = (packet[3] >> 4) & 0x3;
        let mut offset = 4;
        if adaptation & 0x2 != 0 {
            offset += 1 + usize::from(packet[4]);
        }
        if adaptation & 0x1 == 0 || offset >= TS_PACKET {
            continue;
        }
        let payload = &packet[offset..];
        match video_pid {
            None if unit_start
                && payload.len() > 9
                && payload.starts_with(&[0, 0, 1])
                && (payload[3] & 0xf0) == 0xe0 =>
            {
                video_pid = Some(pid);
                let header_len = 9 + usize::from(payload[8]);
                pes.extend_from_slice(payload.get(header_len..)?);
            }
            Some(p) if p == pid => {
                if unit_start || pes.len() > MAX_PES_PREFIX {
                    break;
                }
                pes.extend_from_slice(payload);
            }
            _ => {}
        }
    }
    find_stamp(Codec::H264, Framing::AnnexB, &pes)
        .ok()
        .flatten()
        .map(|s| s.capture_time_ns)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_media_sequence_follows_the_first_segment_listed() {
        // What hlssink2 writes after the output restarted with segments numbered on from 41.
        let playlist = "#EXTM3U\n#EXT-X-VERSION:3\n#EXT-X-MEDIA-SEQUENCE:0\n\
                        #EXT-X-TARGETDURATION:1\n\n#EXTINF:1,\nsegment00041.ts\n\
                        #EXTINF:1,\nsegment00042.ts\n";
        let out = SegmentTimes::default().annotate(Path::new("/nonexistent"), playlist);
        assert!(out.contains("#EXT-X-MEDIA-SEQUENCE:41\n"), "{out}");
        assert!(!out.contains("#EXT-X-MEDIA-SEQUENCE:0"), "{out}");
        assert!(
            out.contains("segment00041.ts\n#EXTINF:1,\nsegment00042.ts"),
            "{out}"
        );
    }

    /// hlssink2's playlist of one run: `segments` (file numbers), its own media sequence.
    fn written(media_sequence: u64, segments: std::ops::Range<u64>) -> String {
        let mut playlist = format!(
            "#EXTM3U\n#EXT-X-VERSION:3\n#EXT-X-MEDIA-SEQUENCE:{media_sequence}\n\
             #EXT-X-TARGETDURATION:1\n\n"
        );
        for i in segments {
            playlist.push_str(&format!("#EXTINF:1,\nsegment{i:05}.ts\n"));
        }
        playlist
    }

    #[test]
    fn a_restart_keeps_the_window_and_marks_the_discontinuity() {
        let dir =
            std::env::temp_dir().join(format!("hybridlive-hls-window-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        // The old run wrote 0..=5 and listed 3..=5 (playlist length 3, 3 more kept on disk).
        for i in 2..=5 {
            std::fs::write(dir.join(format!("segment{i:05}.ts")), b"").unwrap();
        }
        let times = SegmentTimes::new(3);
        let out = times.annotate(&dir, &written(3, 3..6));
        assert!(out.contains("#EXT-X-MEDIA-SEQUENCE:3\n"), "{out}");
        assert!(!out.contains("DISCONTINUITY"), "{out}");

        // The output failed while writing segment 6 (half a file, never listed); the new
        // hlssink2 starts at 7 and counts its media sequence from 0.
        std::fs::write(dir.join("segment00006.ts"), b"").unwrap();
        std::fs::write(dir.join("segment00007.ts"), b"").unwrap();
        let out = times.annotate(&dir, &written(0, 7..8));
        assert!(
            out.contains(
                "#EXT-X-MEDIA-SEQUENCE:4\n#EXTINF:1,\nsegment00004.ts\n#EXTINF:1,\n\
                 segment00005.ts\n#EXT-X-DISCONTINUITY\n#EXTINF:1,\nsegment00007.ts\n"
            ),
            "the old run stays listed, the new one follows a discontinuity, numbered on: {out}"
        );
        assert!(!out.contains("DISCONTINUITY-SEQUENCE"), "{out}");

        // Two segments later the old run has left the window; its tag is counted.
        let out = times.annotate(&dir, &written(0, 7..10));
        assert!(
            out.contains(
                "#EXT-X-MEDIA-SEQUENCE:6\n#EXT-X-DISCONTINUITY-SEQUENCE:1\n#EXTINF:1,\n\
                 segment00007.ts\n"
            ),
            "{out}"
        );
        assert!(!out.contains("#EXT-X-DISCONTINUITY\n"), "{out}");
        // Three segments after they left the window, the old run's files are deleted (its
        // hlssink2, which would have, is no more): the unlisted ones and the oldest listed.
        let out = times.annotate(&dir, &written(1, 8..11));
        assert!(out.contains("#EXT-X-MEDIA-SEQUENCE:7\n"), "{out}");
        let left: Vec<bool> = (2..=7)
            .map(|i| dir.join(format!("segment{i:05}.ts")).exists())
            .collect();
        assert_eq!(left, [false, false, true, true, false, true], "{out}");
        // And those too, three segments after they left.
        times.annotate(&dir, &written(3, 10..13));
        assert!(!dir.join("segment00004.ts").exists());
        assert!(!dir.join("segment00005.ts").exists());
        assert!(
            dir.join("segment00007.ts").exists(),
            "the new run's files are hlssink2's"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
