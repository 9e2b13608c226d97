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
//! so the name survives too), then every [`SYNC_EVERY`] and at the end: a power cut costs about
//! that plus the fragment being written, on a disk that honours flushes. The syncs run on a
//! thread of their own: on a busy disk one can take seconds, and the muxer's thread waiting
//! for it would leave whole fragments unwritten, lost on `kill -9`.

use std::fs::File;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, mpsc};
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
    /// When a sync of the file was last asked for.
    synced_at: Option<Instant>,
    /// Syncs the file (and, the first time, its folder) away from the muxer's thread.
    syncer: Option<Syncer>,
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
            syncer: None,
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
        // Not waited for: the sync thread carries it out after the writer is gone.
        self.request_sync();
        Ok(())
    }

    fn write(&mut self, end: usize) -> std::io::Result<()> {
        if self.file.is_none() {
            // create_new: a file already there (an earlier take, another recorder) is never
            // truncated; the caller picked a free name, so this is an error, not a retry.
            let file = File::options()
                .write(true)
                .create_new(true)
                .open(&self.path)?;
            self.syncer = Some(Syncer::start(&file, &self.path)?);
            self.file = Some(file);
        }
        if let Some(err) = self.syncer.as_ref().and_then(Syncer::failure) {
            return Err(err);
        }
        let Some(file) = self.file.as_mut() else {
            return Ok(());
        };
        match file.write_all(&self.pending[..end]) {
            Ok(()) => {
                self.written += end as u64;
                self.pending.drain(..end);
                if self.synced_at.is_none_or(|t| t.elapsed() >= SYNC_EVERY) {
                    self.request_sync();
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
    fn request_sync(&mut self) {
        if let Some(syncer) = &self.syncer {
            syncer.request();
            self.synced_at = Some(Instant::now());
        }
    }
}

/// A thread syncing one file to the disk when asked; it ends once its [`Syncer`] is dropped
/// and the last request is carried out.
#[derive(Debug)]
struct Syncer {
    /// One pending request at most: asking again while one waits adds nothing.
    requests: mpsc::SyncSender<()>,
    /// The first sync that failed, reported by the next write.
    failed: Arc<Mutex<Option<std::io::Error>>>,
}

impl Syncer {
    fn start(file: &File, path: &Path) -> std::io::Result<Self> {
        let file = file.try_clone()?;
        let path = path.to_path_buf();
        let (requests, pending) = mpsc::sync_channel::<()>(1);
        let failed = Arc::new(Mutex::new(None));
        let report = failed.clone();
        std::thread::Builder::new()
            .name("mp4-sync".into())
            .spawn(move || {
                let mut named = false;
                while pending.recv().is_ok() {
                    let mut synced = file.sync_data();
                    if synced.is_ok() && !named {
                        // The first time, the folder too: the file's name must survive as well.
                        synced = sync_parent(&path);
                        named = synced.is_ok();
                    }
                    if let Err(err) = synced {
                        report
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .get_or_insert(err);
                    }
                }
            })?;
        Ok(Syncer { requests, failed })
    }

    fn request(&self) {
        // Full: a request is already waiting, and it will cover what was written since.
        let _ = self.requests.try_send(());
    }

    fn failure(&self) -> Option<std::io::Error> {
        self.failed.lock().unwrap_or_else(|p| p.into_inner()).take()
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
