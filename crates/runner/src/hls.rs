//! `#EXT-X-PROGRAM-DATE-TIME` for hlssink2's playlists, which (on GStreamer 1.22) have none.
//!
//! Every segment starts with a keyframe that carries its capture stamp as SEI, so the wall-clock
//! time of a segment is read from the segment itself: the first video PES of the MPEG-TS file
//! is reassembled and its stamp parsed. Segments never change once listed, so each is read once.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Mutex;

use hybridlive_stamp::{Codec, Framing, find_stamp};

const TS_PACKET: usize = 188;
/// A keyframe's SEI sits right after the AUD, SPS and PPS: the first few packets hold it.
const MAX_PES_PREFIX: usize = 64 * 1024;

/// Capture time of the first frame of each segment, by file name.
#[derive(Debug, Default)]
pub struct SegmentTimes {
    known: Mutex<BTreeMap<String, Option<u64>>>,
}

impl SegmentTimes {
    /// The playlist with a program-date-time line before each segment whose start is known.
    ///
    /// The media sequence is the index of the first segment listed: hlssink2 counts it from 0
    /// again when a failed output restarts, while the runner numbers the segments of the new
    /// sink on from the old ones, so players never see the sequence go back.
    pub fn annotate(&self, dir: &Path, playlist: &str) -> String {
        let mut out = String::with_capacity(playlist.len() + 512);
        let mut pending_extinf: Option<&str> = None;
        let first_index = playlist
            .lines()
            .find(|l| !l.is_empty() && !l.starts_with('#'))
            .and_then(segment_index);
        for line in playlist.lines() {
            if let (Some(index), true) = (first_index, line.starts_with("#EXT-X-MEDIA-SEQUENCE:")) {
                out.push_str(&format!("#EXT-X-MEDIA-SEQUENCE:{index}\n"));
                continue;
            }
            if line.starts_with("#EXTINF") {
                pending_extinf = Some(line);
                continue;
            }
            if let Some(extinf) = pending_extinf.take() {
                if !line.starts_with('#')
                    && let Some(utc_ns) = self.segment_start(dir, line)
                {
                    out.push_str("#EXT-X-PROGRAM-DATE-TIME:");
                    out.push_str(&crate::state::rfc3339(utc_ns));
                    out.push('\n');
                }
                out.push_str(extinf);
                out.push('\n');
            }
            out.push_str(line);
            out.push('\n');
        }
        out
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
}
