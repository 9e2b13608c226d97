//! Writes a fragmented MP4 so that the file on disk is playable at every moment.
//!
//! `filesink` writes whatever the muxer pushes, when its buffer fills: after `kill -9` the file
//! ends in the middle of a fragment (ffmpeg reports "partial file") or holds no `moov` yet, and
//! a full disk leaves half a fragment behind. This writer takes the muxer's byte stream, cuts
//! it into top-level boxes and appends them only up to the end of the last complete `mdat`,
//! so the file appears with its header and first fragment together and then grows by whole
//! fragments, each in one `write`. When a write fails (disk full), the file is cut back to its
//! last whole fragment, which keeps everything recorded before playable and frees the space
//! the partial write took.
//!
//! The file is created with its first fragment, and only if no file of that name exists: a
//! take never overwrites another. A stream that ends before its first whole fragment leaves
//! no file at all (a header without media is a file no player opens).
//!
//! Durability: `kill -9` loses nothing written (the kernel has it). A power cut loses what the
//! kernel had not yet put on the disk, so the file is synced at its creation (with its folder,
//! so the name survives too) and then at least every [`SYNC_EVERY`]: a power cut costs at most
//! that plus the fragment being written, on a disk that honours flushes.

use std::fs::File;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Longest time whole fragments stay written but not synced to the disk.
pub const SYNC_EVERY: Duration = Duration::from_secs(1);

/// Appends whole fragments of a fragmented MP4 byte stream to one file.
#[derive(Debug)]
pub struct FragmentedMp4File {
    path: PathBuf,
    file: Option<File>,
    /// Bytes received and not yet written: always starts at a box boundary.
    pending: Vec<u8>,
    /// Length of the file on disk: always the end of a whole fragment.
    written: u64,
    /// When the file was last synced to the disk.
    synced_at: Option<Instant>,
}

impl FragmentedMp4File {
    /// A writer for `path`; the file is created with the first whole fragment.
    pub fn new(path: &Path) -> Self {
        FragmentedMp4File {
            path: path.to_path_buf(),
            file: None,
            pending: Vec::new(),
            written: 0,
            synced_at: None,
        }
    }

    /// Whether the file exists, i.e. holds at least one whole fragment of every track.
    pub fn created(&self) -> bool {
        self.file.is_some()
    }

    /// Takes more of the muxer's output and writes every fragment it completes.
    pub fn push(&mut self, data: &[u8]) -> std::io::Result<()> {
        self.pending.extend_from_slice(data);
        // mp4mux writes a moof + mdat per track: the file is created once every track has
        // one, so that it never exists with, say, sound and no picture.
        if self.file.is_none() && fragments(&self.pending) < tracks(&self.pending).max(1) {
            return Ok(());
        }
        match last_fragment_end(&self.pending) {
            Some(end) => self.write(end),
            None => Ok(()),
        }
    }

    /// At the end of the stream: writes whatever whole boxes remain (e.g. `mfra`) and syncs
    /// the file. A stream that never completed a fragment writes nothing.
    pub fn finish(&mut self) -> std::io::Result<()> {
        if self.file.is_none() {
            return Ok(());
        }
        let end = whole_boxes_end(&self.pending);
        if end > 0 {
            self.write(end)?;
        }
        self.sync()
    }

    fn write(&mut self, end: usize) -> std::io::Result<()> {
        if self.file.is_none() {
            // create_new: a file already there (an earlier take, another recorder) is never
            // truncated; the caller picked a free name, so this is an error, not a retry.
            let file = File::options()
                .write(true)
                .create_new(true)
                .open(&self.path)?;
            self.file = Some(file);
        }
        let Some(file) = self.file.as_mut() else {
            return Ok(());
        };
        match file.write_all(&self.pending[..end]) {
            Ok(()) => {
                let first = self.written == 0;
                self.written += end as u64;
                self.pending.drain(..end);
                if first {
                    sync_parent(&self.path)?;
                }
                if self.synced_at.is_none_or(|t| t.elapsed() >= SYNC_EVERY) {
                    self.sync()?;
                }
                Ok(())
            }
            Err(err) => {
                // Keep the file at its last whole fragment: playable, and the space the
                // partial write took is free again. A file that never got one goes.
                if self.written == 0 {
                    self.file = None;
                    let _ = std::fs::remove_file(&self.path);
                } else {
                    let _ = file.set_len(self.written);
                    let _ = std::io::Seek::seek(file, std::io::SeekFrom::Start(self.written));
                }
                Err(err)
            }
        }
    }
}

impl FragmentedMp4File {
    fn sync(&mut self) -> std::io::Result<()> {
        if let Some(file) = &self.file {
            file.sync_data()?;
            self.synced_at = Some(Instant::now());
        }
        Ok(())
    }
}

/// Syncs the folder holding `path`, so that a file created or renamed there survives a power
/// cut under its name.
pub fn sync_parent(path: &Path) -> std::io::Result<()> {
    match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => File::open(dir)?.sync_all(),
        _ => File::open(".")?.sync_all(),
    }
}

/// The boxes at the start of `data`: (type, start, end) for each complete one.
fn boxes(data: &[u8]) -> impl Iterator<Item = ([u8; 4], usize, usize)> + '_ {
    let mut at = 0usize;
    std::iter::from_fn(move || {
        let header = data.get(at..at + 8)?;
        let kind: [u8; 4] = header[4..8].try_into().ok()?;
        let size = match u32::from_be_bytes(header[..4].try_into().ok()?) {
            // A 64-bit size follows the type.
            1 => usize::try_from(u64::from_be_bytes(
                data.get(at + 8..at + 16)?.try_into().ok()?,
            ))
            .ok()?,
            // "Up to the end of the file": never complete while the stream goes on.
            0 => return None,
            size => size as usize,
        };
        if size < 8 {
            return None;
        }
        let end = at.checked_add(size)?;
        if end > data.len() {
            return None;
        }
        let item = (kind, at, end);
        at = end;
        Some(item)
    })
}

/// End of the last complete `mdat` (the end of a fragment), if any.
fn last_fragment_end(data: &[u8]) -> Option<usize> {
    boxes(data)
        .filter(|(kind, _, _)| kind == b"mdat")
        .map(|(_, _, end)| end)
        .last()
}

/// Complete `mdat` boxes in `data`.
fn fragments(data: &[u8]) -> usize {
    boxes(data).filter(|(kind, _, _)| kind == b"mdat").count()
}

/// Tracks (`trak` boxes) in the complete `moov` of `data`; 0 before it is complete.
fn tracks(data: &[u8]) -> usize {
    boxes(data)
        .find(|(kind, _, _)| kind == b"moov")
        .map_or(0, |(_, start, end)| {
            boxes(&data[start + 8..end])
                .filter(|(kind, _, _)| kind == b"trak")
                .count()
        })
}

/// End of the last complete box.
fn whole_boxes_end(data: &[u8]) -> usize {
    boxes(data).map(|(_, _, end)| end).last().unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mp4_box(kind: &[u8; 4], payload: usize) -> Vec<u8> {
        let mut b = ((payload + 8) as u32).to_be_bytes().to_vec();
        b.extend_from_slice(kind);
        b.resize(payload + 8, 0xab);
        b
    }

    fn scratch(name: &str) -> PathBuf {
        std::env::temp_dir().join(format!("hybridlive-mp4file-{name}-{}", std::process::id()))
    }

    #[test]
    fn the_file_appears_with_a_fragment_of_every_track_and_grows_by_whole_fragments() {
        let path = scratch("grow");
        let _ = std::fs::remove_file(&path);
        let mut w = FragmentedMp4File::new(&path);
        let traks = [
            mp4_box(b"mvhd", 100),
            mp4_box(b"trak", 200),
            mp4_box(b"trak", 200),
        ]
        .concat();
        let mut moov = ((8 + traks.len()) as u32).to_be_bytes().to_vec();
        moov.extend_from_slice(b"moov");
        moov.extend_from_slice(&traks);
        let header = [mp4_box(b"ftyp", 16), moov].concat();
        // Two tracks: mp4mux writes a moof + mdat for each.
        let track = [mp4_box(b"moof", 100), mp4_box(b"mdat", 3000)].concat();
        let fragment = [track.clone(), track.clone()].concat();
        let size = || std::fs::metadata(&path).map_or(0, |m| m.len() as usize);

        w.push(&header).unwrap();
        assert!(!path.exists(), "a file without a fragment was created");
        w.push(&track).unwrap();
        assert!(!path.exists(), "a file with one track only was created");
        // The second track's fragment arrives in pieces, as the muxer pushes it.
        for piece in track.chunks(700) {
            w.push(piece).unwrap();
        }
        assert_eq!(size(), header.len() + fragment.len());
        // Half of the next fragment: not on disk yet.
        w.push(&fragment[..1500]).unwrap();
        assert_eq!(size(), header.len() + fragment.len());
        w.push(&fragment[1500..]).unwrap();
        let mfra = mp4_box(b"mfra", 40);
        w.push(&mfra).unwrap();
        w.finish().unwrap();
        assert_eq!(
            std::fs::read(&path).unwrap(),
            [header, fragment.clone(), fragment, mfra].concat()
        );
        let _ = std::fs::remove_file(&path);
    }

    #[test]
    fn a_stream_without_a_whole_fragment_leaves_no_file() {
        let path = scratch("empty");
        let _ = std::fs::remove_file(&path);
        let mut w = FragmentedMp4File::new(&path);
        // What mp4mux pushes for a start followed at once by a stop: a header, an mfra.
        w.push(&[mp4_box(b"ftyp", 16), mp4_box(b"moov", 300)].concat())
            .unwrap();
        w.push(&mp4_box(b"mfra", 40)).unwrap();
        w.finish().unwrap();
        assert!(!path.exists(), "a file without media was written");
    }

    #[test]
    fn an_existing_file_is_never_overwritten() {
        let path = scratch("existing");
        std::fs::write(&path, b"an earlier take").unwrap();
        let mut w = FragmentedMp4File::new(&path);
        let header = [mp4_box(b"ftyp", 16), mp4_box(b"moov", 300)].concat();
        let fragment = [mp4_box(b"moof", 100), mp4_box(b"mdat", 3000)].concat();
        let err = w.push(&[header, fragment].concat()).unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::AlreadyExists);
        assert_eq!(std::fs::read(&path).unwrap(), b"an earlier take");
        let _ = std::fs::remove_file(&path);
    }

    #[test]
    fn large_sizes_and_broken_sizes() {
        let mut large = 1u32.to_be_bytes().to_vec();
        large.extend_from_slice(b"mdat");
        large.extend_from_slice(&24u64.to_be_bytes());
        large.resize(24, 0);
        assert_eq!(last_fragment_end(&large), Some(24));
        assert_eq!(last_fragment_end(&large[..23]), None);
        // A size smaller than a box header, or "to the end": never a whole box.
        assert_eq!(whole_boxes_end(&[0, 0, 0, 4, b'm', b'd', b'a', b't']), 0);
        assert_eq!(whole_boxes_end(&[0, 0, 0, 0, b'm', b'd', b'a', b't']), 0);
    }
}
