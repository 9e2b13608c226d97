//! Rewrites the `moov` of MP4 files written by `mp4mux`: what mp4mux 1.22 cannot write itself.
//!
//! - Edit lists: `mp4mux` drops buffers outside the segment instead of writing an edit list for
//!   them, so `clipextract` keeps the segment around every frame and reports the window to
//!   present; this module writes that window as each track's edit list, behind an empty edit
//!   when the track starts later than the clip.
//! - The video's display matrix (rotation): mp4mux writes identity whatever the tags say.
//! - The Opus `dOps` box: mp4mux copies Matroska's little-endian `OpusHead` fields into it
//!   unswapped; it is rebuilt from the `OpusHead`.
//!
//! Only the `moov` box is rewritten; it must come after `mdat` (mp4mux's default), so no chunk
//! offset moves.

use std::fs::OpenOptions;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::Path;

/// What a track presents, in nanoseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TrackEdit {
    /// Nothing is presented for this long at the start of the movie (an empty edit): the
    /// track starts later than the clip.
    pub empty: u64,
    /// Media time (relative to the track's first decode time) of the first presented instant.
    pub media_time: u64,
    /// How long the track presents (after the empty edit).
    pub duration: u64,
}

/// What to change in one track.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TrackPatch {
    /// A new edit list; `None` keeps the track's.
    pub edit: Option<TrackEdit>,
    /// The track header's 3x3 display matrix (`a b u c d v x y w`, 16.16 / 2.30 fixed point).
    pub matrix: Option<[i32; 9]>,
    /// The Opus `OpusHead` (RFC 7845) the track's `dOps` is rebuilt from.
    pub opus_head: Option<Vec<u8>>,
}

/// The display matrix of a GStreamer `image-orientation` tag, as qtdemux reads matrices back
/// (so a clip's orientation round-trips through GStreamer as well as ffmpeg). `None` for
/// `rotate-0` and unknown values.
pub fn orientation_matrix(tag: &str) -> Option<[i32; 9]> {
    const ONE: i32 = 0x1_0000;
    const W: i32 = 0x4000_0000;
    let (a, b, c, d) = match tag {
        "rotate-90" => (0, ONE, -ONE, 0),
        "rotate-180" => (-ONE, 0, 0, -ONE),
        "rotate-270" => (0, -ONE, ONE, 0),
        "flip-rotate-0" => (-ONE, 0, 0, ONE),
        "flip-rotate-90" => (0, ONE, ONE, 0),
        "flip-rotate-180" => (ONE, 0, 0, -ONE),
        "flip-rotate-270" => (0, -ONE, -ONE, 0),
        _ => return None,
    };
    Some([a, b, 0, c, d, 0, 0, 0, W])
}

/// The `dOps` payload (Opus in ISO BMFF, big-endian) for a clip of a stream with this
/// `OpusHead` (RFC 7845, little-endian): `None` when `head` is not an `OpusHead`.
pub fn dops_from_opus_head(head: &[u8]) -> Option<Vec<u8>> {
    if head.len() < 19 || &head[..8] != b"OpusHead" {
        return None;
    }
    let channels = head[9];
    // The source's pre-skip is the encoder's priming at the start of the recording; a clip
    // starts mid-stream and its edit list already says what to present: skipping more would
    // move the audio early.
    let pre_skip = 0u16;
    let rate = u32::from_le_bytes([head[12], head[13], head[14], head[15]]);
    let gain = i16::from_le_bytes([head[16], head[17]]);
    let family = head[18];
    let mut out = vec![0, channels];
    out.extend_from_slice(&pre_skip.to_be_bytes());
    out.extend_from_slice(&rate.to_be_bytes());
    out.extend_from_slice(&gain.to_be_bytes());
    out.push(family);
    if family != 0 {
        // Stream count, coupled count, one mapping byte per channel: same layout in both.
        out.extend_from_slice(head.get(19..21 + usize::from(channels))?);
    }
    Some(out)
}

/// A track mp4mux wrote without any media (timescale 0): no player opens such a file.
#[derive(Debug)]
pub struct EmptyTrack;

impl std::fmt::Display for EmptyTrack {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("the muxer wrote a track with no timescale (no media reached it)")
    }
}

impl std::error::Error for EmptyTrack {}

impl EmptyTrack {
    /// Whether `err` (or what it wraps) is this.
    pub fn is_cause_of(err: &anyhow::Error) -> bool {
        err.chain().any(|cause| {
            cause.is::<EmptyTrack>()
                || cause
                    .downcast_ref::<io::Error>()
                    .and_then(|e| e.get_ref())
                    .is_some_and(|inner| inner.is::<EmptyTrack>())
        })
    }
}

fn invalid(msg: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg.into())
}

struct Mp4Box {
    kind: [u8; 4],
    payload: Vec<u8>,
}

fn parse_boxes(mut data: &[u8]) -> io::Result<Vec<Mp4Box>> {
    let mut out = Vec::new();
    while !data.is_empty() {
        if data.len() < 8 {
            return Err(invalid("truncated box header"));
        }
        let size32 = u32::from_be_bytes([data[0], data[1], data[2], data[3]]) as u64;
        let kind = [data[4], data[5], data[6], data[7]];
        let (size, header) = match size32 {
            0 => (data.len() as u64, 8),
            1 => {
                let b = data
                    .get(8..16)
                    .ok_or_else(|| invalid("truncated box size"))?;
                (
                    u64::from_be_bytes(b.try_into().map_err(|_| invalid("box size"))?),
                    16,
                )
            }
            s => (s, 8),
        };
        let size = usize::try_from(size).map_err(|_| invalid("box too large"))?;
        if size < header || size > data.len() {
            return Err(invalid(format!(
                "box {} has an invalid size",
                String::from_utf8_lossy(&kind)
            )));
        }
        out.push(Mp4Box {
            kind,
            payload: data[header..size].to_vec(),
        });
        data = &data[size..];
    }
    Ok(out)
}

fn write_box(kind: &[u8; 4], payload: &[u8], out: &mut Vec<u8>) {
    let size = payload.len() as u64 + 8;
    if size > u32::MAX as u64 {
        out.extend_from_slice(&1u32.to_be_bytes());
        out.extend_from_slice(kind);
        out.extend_from_slice(&(size + 8).to_be_bytes());
    } else {
        out.extend_from_slice(&(size as u32).to_be_bytes());
        out.extend_from_slice(kind);
    }
    out.extend_from_slice(payload);
}

fn serialize(boxes: &[Mp4Box]) -> Vec<u8> {
    let mut out = Vec::new();
    for b in boxes {
        write_box(&b.kind, &b.payload, &mut out);
    }
    out
}

fn be32(d: &[u8], at: usize) -> io::Result<u32> {
    d.get(at..at + 4)
        .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
        .ok_or_else(|| invalid("truncated full box"))
}

/// Timescale of an `mvhd` or `mdhd` payload.
fn timescale(payload: &[u8]) -> io::Result<u32> {
    let version = *payload.first().ok_or_else(|| invalid("empty header box"))?;
    be32(payload, if version == 1 { 20 } else { 12 })
}

/// Sets the duration field of an `mvhd`/`mdhd` (`offset_v0`/`offset_v1` differ for `tkhd`).
fn set_duration(payload: &mut [u8], value: u64, offset_v0: usize, offset_v1: usize) {
    if payload.first() == Some(&1) {
        if let Some(b) = payload.get_mut(offset_v1..offset_v1 + 8) {
            b.copy_from_slice(&value.to_be_bytes());
        }
    } else if let Some(b) = payload.get_mut(offset_v0..offset_v0 + 4) {
        b.copy_from_slice(&(value.min(u32::MAX as u64) as u32).to_be_bytes());
    }
}

fn scale(ns: u64, timescale: u32) -> u64 {
    ((ns as u128 * timescale as u128 + 500_000_000) / 1_000_000_000) as u64
}

/// An `edts` with an optional empty edit (`empty`, movie timescale) then one edit.
fn edts_payload(empty: u64, duration: u64, media_time: u64) -> Vec<u8> {
    let mut entries = Vec::new();
    if empty > 0 {
        // media_time -1: nothing is presented.
        entries.push((empty, -1i64));
    }
    if duration > 0 || entries.is_empty() {
        entries.push((duration, media_time.min(i64::MAX as u64) as i64));
    }
    let wide = entries
        .iter()
        .any(|&(d, m)| d > u32::MAX as u64 || m > i32::MAX as i64);
    let mut elst = Vec::new();
    elst.push(u8::from(wide));
    elst.extend_from_slice(&[0, 0, 0]);
    elst.extend_from_slice(&(entries.len() as u32).to_be_bytes());
    for (duration, media_time) in entries {
        if wide {
            elst.extend_from_slice(&duration.to_be_bytes());
            elst.extend_from_slice(&media_time.to_be_bytes());
        } else {
            elst.extend_from_slice(&(duration as u32).to_be_bytes());
            elst.extend_from_slice(&(media_time as i32).to_be_bytes());
        }
        // media_rate 1.0
        elst.extend_from_slice(&[0, 1, 0, 0]);
    }
    let mut edts = Vec::new();
    write_box(b"elst", &elst, &mut edts);
    edts
}

/// Offset of the matrix in a `tkhd` payload.
fn matrix_offset(tkhd: &[u8]) -> usize {
    if tkhd.first() == Some(&1) { 48 } else { 40 }
}

fn set_matrix(tkhd: &mut [u8], matrix: &[i32; 9]) -> io::Result<()> {
    let at = matrix_offset(tkhd);
    let slot = tkhd
        .get_mut(at..at + 36)
        .ok_or_else(|| invalid("truncated tkhd"))?;
    for (chunk, v) in slot.chunks_exact_mut(4).zip(matrix) {
        chunk.copy_from_slice(&v.to_be_bytes());
    }
    Ok(())
}

/// Replaces the `dOps` of the `Opus` sample entry in a `minf` payload.
fn replace_dops(minf: &[u8], dops: &[u8]) -> io::Result<Vec<u8>> {
    // Fields of an audio sample entry before its child boxes.
    const AUDIO_ENTRY_HEADER: usize = 28;
    let mut minf_children = parse_boxes(minf)?;
    for stbl in minf_children.iter_mut().filter(|b| &b.kind == b"stbl") {
        let mut stbl_children = parse_boxes(&stbl.payload)?;
        for stsd in stbl_children.iter_mut().filter(|b| &b.kind == b"stsd") {
            let head = stsd
                .payload
                .get(..8)
                .ok_or_else(|| invalid("truncated stsd"))?
                .to_vec();
            let mut entries = parse_boxes(&stsd.payload[8..])?;
            for entry in entries.iter_mut().filter(|b| &b.kind == b"Opus") {
                let fields = entry
                    .payload
                    .get(..AUDIO_ENTRY_HEADER)
                    .ok_or_else(|| invalid("truncated Opus sample entry"))?
                    .to_vec();
                let mut children = parse_boxes(&entry.payload[AUDIO_ENTRY_HEADER..])?;
                children.retain(|b| &b.kind != b"dOps");
                children.insert(
                    0,
                    Mp4Box {
                        kind: *b"dOps",
                        payload: dops.to_vec(),
                    },
                );
                entry.payload = [fields, serialize(&children)].concat();
            }
            stsd.payload = [head, serialize(&entries)].concat();
        }
        stbl.payload = serialize(&stbl_children);
    }
    Ok(serialize(&minf_children))
}

/// The top-level `moov` of `file`: its offset, its bytes, and whether an `mdat` came before
/// it (only then can it be rewritten in place at the end).
fn read_moov(file: &mut std::fs::File) -> io::Result<(u64, Vec<u8>, bool)> {
    let len = file.metadata()?.len();
    let mut pos = 0u64;
    let mut moov: Option<(u64, u64, bool)> = None;
    let mut seen_mdat = false;
    while pos + 8 <= len {
        file.seek(SeekFrom::Start(pos))?;
        let mut h = [0u8; 16];
        file.read_exact(&mut h[..8])?;
        let mut size = u32::from_be_bytes([h[0], h[1], h[2], h[3]]) as u64;
        if size == 1 {
            file.read_exact(&mut h[8..16])?;
            size = u64::from_be_bytes(h[8..16].try_into().map_err(|_| invalid("size"))?);
        } else if size == 0 {
            size = len - pos;
        }
        if size < 8 || pos + size > len {
            return Err(invalid("truncated top-level box"));
        }
        match &h[4..8] {
            b"mdat" => seen_mdat = true,
            b"moov" => moov = Some((pos, size, seen_mdat)),
            _ => {}
        }
        pos += size;
    }
    let (moov_pos, moov_size, after_mdat) = moov.ok_or_else(|| invalid("no moov box"))?;
    let mut moov_bytes = vec![0u8; moov_size as usize];
    file.seek(SeekFrom::Start(moov_pos))?;
    file.read_exact(&mut moov_bytes)?;
    Ok((moov_pos, moov_bytes, after_mdat))
}

/// The boxes inside a `moov` box (its own header skipped).
fn moov_children(moov_bytes: &[u8]) -> io::Result<Vec<Mp4Box>> {
    let size32 = moov_bytes
        .get(..4)
        .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
        .ok_or_else(|| invalid("truncated moov"))?;
    let header = if size32 == 1 { 16 } else { 8 };
    parse_boxes(
        moov_bytes
            .get(header..)
            .ok_or_else(|| invalid("truncated moov"))?,
    )
}

/// The handler type of a `trak` (`vide`, `soun`, `tmcd`...).
fn handler_of(trak: &Mp4Box) -> io::Result<String> {
    let mdia = parse_boxes(&trak.payload)?
        .into_iter()
        .find(|b| &b.kind == b"mdia")
        .ok_or_else(|| invalid("trak without mdia"))?;
    parse_boxes(&mdia.payload)?
        .iter()
        .find(|b| &b.kind == b"hdlr")
        .and_then(|b| b.payload.get(8..12))
        .map(|h| String::from_utf8_lossy(h).into_owned())
        .ok_or_else(|| invalid("mdia without hdlr"))
}

/// The handler types of an MP4/MOV file's tracks, in file order (`vide`, `soun`, `tmcd`...).
pub fn track_handlers(path: &Path) -> io::Result<Vec<String>> {
    let mut file = std::fs::File::open(path)?;
    let (_, moov_bytes, _) = read_moov(&mut file)?;
    moov_children(&moov_bytes)?
        .iter()
        .filter(|b| &b.kind == b"trak")
        .map(handler_of)
        .collect()
}

/// Patches every track with what `patch_for(handler, n)` returns, where `handler` is the
/// track's handler type (`vide`, `soun`...) and `n` counts tracks of that handler in file
/// order. A new edit list replaces the track's; movie and track durations follow the edits.
pub fn patch_tracks(
    path: &Path,
    mut patch_for: impl FnMut(&str, usize) -> TrackPatch,
) -> io::Result<()> {
    let mut file = OpenOptions::new().read(true).write(true).open(path)?;
    let (moov_pos, moov_bytes, after_mdat) = read_moov(&mut file)?;
    if !after_mdat {
        return Err(invalid("moov before mdat: cannot rewrite it in place"));
    }
    file.seek(SeekFrom::Start(moov_pos + moov_bytes.len() as u64))?;
    let mut rest = Vec::new();
    file.read_to_end(&mut rest)?;

    let mut children = moov_children(&moov_bytes)?;
    let movie_ts = children
        .iter()
        .find(|b| &b.kind == b"mvhd")
        .map(|b| timescale(&b.payload))
        .transpose()?
        .ok_or_else(|| invalid("no mvhd"))?;
    let mut counts: std::collections::HashMap<String, usize> = Default::default();
    let mut movie_duration = 0u64;
    for trak in children.iter_mut().filter(|b| &b.kind == b"trak") {
        let mut tchildren = parse_boxes(&trak.payload)?;
        let mdia = tchildren
            .iter()
            .find(|b| &b.kind == b"mdia")
            .ok_or_else(|| invalid("trak without mdia"))?;
        let mchildren = parse_boxes(&mdia.payload)?;
        let handler = handler_of(trak)?;
        let track_ts = mchildren
            .iter()
            .find(|b| &b.kind == b"mdhd")
            .map(|b| timescale(&b.payload))
            .transpose()?
            .ok_or_else(|| invalid("mdia without mdhd"))?;
        // mp4mux writes a track that never got caps with timescale 0: no player opens the
        // file. Seen rarely under heavy load; fail the cut loudly rather than leave it.
        if track_ts == 0 {
            return Err(io::Error::new(io::ErrorKind::InvalidData, EmptyTrack));
        }
        let n = counts.entry(handler.clone()).or_default();
        let patch = patch_for(&handler, *n);
        *n += 1;
        let at = tchildren
            .iter()
            .position(|b| &b.kind == b"tkhd")
            .ok_or_else(|| invalid("trak without tkhd"))?;
        if let Some(matrix) = &patch.matrix {
            set_matrix(&mut tchildren[at].payload, matrix)?;
        }
        if let Some(head) = &patch.opus_head {
            let dops = dops_from_opus_head(head).ok_or_else(|| invalid("not an OpusHead"))?;
            for mdia in tchildren.iter_mut().filter(|b| &b.kind == b"mdia") {
                let mut mchildren = parse_boxes(&mdia.payload)?;
                for minf in mchildren.iter_mut().filter(|b| &b.kind == b"minf") {
                    minf.payload = replace_dops(&minf.payload, &dops)?;
                }
                mdia.payload = serialize(&mchildren);
            }
        }
        if let Some(edit) = patch.edit {
            let empty = scale(edit.empty, movie_ts);
            let duration = scale(edit.duration, movie_ts);
            let media_time = scale(edit.media_time, track_ts);
            let total = empty + duration;
            movie_duration = movie_duration.max(total);
            tchildren.retain(|b| &b.kind != b"edts");
            set_duration(&mut tchildren[at].payload, total, 20, 28);
            tchildren.insert(
                at + 1,
                Mp4Box {
                    kind: *b"edts",
                    payload: edts_payload(empty, duration, media_time),
                },
            );
        }
        trak.payload = serialize(&tchildren);
    }
    if movie_duration > 0
        && let Some(mvhd) = children.iter_mut().find(|b| &b.kind == b"mvhd")
    {
        set_duration(&mut mvhd.payload, movie_duration, 16, 24);
    }
    let mut new_moov = Vec::new();
    write_box(b"moov", &serialize(&children), &mut new_moov);
    file.seek(SeekFrom::Start(moov_pos))?;
    file.write_all(&new_moov)?;
    file.write_all(&rest)?;
    file.set_len(moov_pos + new_moov.len() as u64 + rest.len() as u64)?;
    file.sync_all()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A file whose one track has an `mdhd` with `track_timescale`.
    fn one_track_file(track_timescale: u32) -> std::path::PathBuf {
        let full = |version_flags: u32, fields: &[u32]| {
            let mut p = version_flags.to_be_bytes().to_vec();
            for f in fields {
                p.extend_from_slice(&f.to_be_bytes());
            }
            p
        };
        let mut hdlr = full(0, &[0]);
        hdlr.extend_from_slice(b"vide");
        hdlr.extend_from_slice(&[0; 13]);
        let mut mdia = Vec::new();
        write_box(b"mdhd", &full(0, &[0, 0, track_timescale, 0, 0]), &mut mdia);
        write_box(b"hdlr", &hdlr, &mut mdia);
        let mut trak = Vec::new();
        write_box(b"tkhd", &full(3, &[0; 20]), &mut trak);
        write_box(b"mdia", &mdia, &mut trak);
        let mut moov = Vec::new();
        write_box(b"mvhd", &full(0, &[0, 0, 1000, 0, 0]), &mut moov);
        write_box(b"trak", &trak, &mut moov);
        let mut file = Vec::new();
        write_box(b"ftyp", b"isom\0\0\0\0isom", &mut file);
        write_box(b"mdat", &[], &mut file);
        write_box(b"moov", &moov, &mut file);
        let path = std::env::temp_dir().join(format!(
            "hybridlive-mp4edit-{}-{track_timescale}.mp4",
            std::process::id()
        ));
        std::fs::write(&path, file).unwrap();
        path
    }

    #[test]
    fn a_track_without_a_timescale_fails_the_rewrite() {
        let good = one_track_file(12800);
        let bad = one_track_file(0);
        let result = (
            patch_tracks(&good, |_, _| TrackPatch::default()),
            patch_tracks(&bad, |_, _| TrackPatch::default()),
        );
        let _ = (std::fs::remove_file(&good), std::fs::remove_file(&bad));
        assert!(result.0.is_ok(), "{:?}", result.0);
        let err = result.1.expect_err("a track with timescale 0 is refused");
        assert!(err.to_string().contains("no timescale"), "{err}");
    }

    #[test]
    fn dops_is_big_endian_from_a_little_endian_opus_head() {
        // Matroska's OpusHead from ffmpeg: 1 channel, pre-skip 312, 48 kHz, family 0.
        let head = [
            b'O', b'p', b'u', b's', b'H', b'e', b'a', b'd', 1, 1, 0x38, 0x01, 0x80, 0xbb, 0, 0, 0,
            0, 0,
        ];
        let dops = dops_from_opus_head(&head).expect("an OpusHead");
        assert_eq!(dops, [0, 1, 0, 0, 0, 0, 0xbb, 0x80, 0, 0, 0]);
        assert!(dops_from_opus_head(b"OpusTags").is_none());
        // Family 1 carries its mapping table.
        let mut six = head.to_vec();
        six[9] = 6;
        six[18] = 1;
        six.extend_from_slice(&[4, 2, 0, 4, 1, 2, 3, 5]);
        let dops = dops_from_opus_head(&six).expect("an OpusHead");
        assert_eq!(&dops[11..], &[4, 2, 0, 4, 1, 2, 3, 5]);
    }

    #[test]
    fn empty_edit_comes_first() {
        let edts = edts_payload(1500, 3000, 20);
        let boxes = parse_boxes(&edts).expect("boxes");
        let elst = &boxes[0].payload;
        assert_eq!(be32(elst, 4).ok(), Some(2), "two entries");
        assert_eq!(be32(elst, 8).ok(), Some(1500));
        assert_eq!(be32(elst, 12).ok(), Some(u32::MAX), "media_time -1");
        assert_eq!(be32(elst, 20).ok(), Some(3000));
        assert_eq!(be32(elst, 24).ok(), Some(20));
    }

    #[test]
    fn orientation_matrices_read_back_as_qtdemux_reads_them() {
        // qtdemux: (0, 1, -1, 0) is rotate-90; ffmpeg's rotate=90 metadata writes (0, -1, 1, 0),
        // which qtdemux calls rotate-270.
        let m = orientation_matrix("rotate-90").expect("matrix");
        assert_eq!((m[0], m[1], m[3], m[4]), (0, 0x1_0000, -0x1_0000, 0));
        let m = orientation_matrix("rotate-270").expect("matrix");
        assert_eq!((m[0], m[1], m[3], m[4]), (0, -0x1_0000, 0x1_0000, 0));
        assert!(orientation_matrix("rotate-0").is_none());
    }
}
