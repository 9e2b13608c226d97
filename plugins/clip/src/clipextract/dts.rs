//! Decode timestamps for video that arrives without them (Matroska, some MPEG-TS).
//!
//! Frames come in decode order with presentation times only. The `i`-th decode time is the
//! `i`-th presentation time in display order, moved back by the largest reorder distance
//! (`depth` frames). That slot is only known once `depth` more frames have arrived, so frames
//! wait in a short queue.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};

/// Reorder distance assumed: deeper than any H.264/H.265 encoder setting seen in recordings.
pub const DEFAULT_DEPTH: usize = 4;

/// Assigns decode times to frames that lack them.
#[derive(Debug)]
pub struct DtsSynth<T> {
    depth: usize,
    frame_duration: i64,
    waiting: VecDeque<(T, i64)>,
    slots: BinaryHeap<Reverse<i64>>,
}

impl<T> DtsSynth<T> {
    /// `frame_duration` in ns (from the framerate, or an estimate).
    pub fn new(depth: usize, frame_duration: i64) -> Self {
        Self {
            depth,
            frame_duration: frame_duration.max(1),
            waiting: VecDeque::new(),
            slots: BinaryHeap::new(),
        }
    }

    /// Adds a frame with presentation time `pts`; returns the frames whose decode time is now
    /// known, in decode order, with that time.
    pub fn push(&mut self, frame: T, pts: i64) -> Vec<(T, i64, i64)> {
        self.waiting.push_back((frame, pts));
        self.slots.push(Reverse(pts));
        let mut out = Vec::new();
        while self.waiting.len() > self.depth {
            out.extend(self.pop());
        }
        out
    }

    /// Releases every waiting frame (end of stream).
    pub fn drain(&mut self) -> Vec<(T, i64, i64)> {
        let mut out = Vec::new();
        while !self.waiting.is_empty() {
            out.extend(self.pop());
        }
        out
    }

    /// Forgets the waiting frames (flush).
    pub fn clear(&mut self) {
        self.waiting.clear();
        self.slots.clear();
    }

    fn pop(&mut self) -> Option<(T, i64, i64)> {
        let (frame, pts) = self.waiting.pop_front()?;
        let Reverse(slot) = self.slots.pop()?;
        let dts = (slot - self.depth as i64 * self.frame_duration).min(pts);
        Some((frame, pts, dts))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decode_times_are_monotonic_and_not_after_presentation() {
        // x264 with B-pyramid: display 0..12, decode order I0 P4 B2 b1 b3 P8 B6 b5 b7 P12 ...
        let order = [0, 4, 2, 1, 3, 8, 6, 5, 7, 12, 10, 9, 11];
        let mut s = DtsSynth::new(DEFAULT_DEPTH, 40);
        let mut out = Vec::new();
        for &i in &order {
            out.extend(s.push(i, i * 40));
        }
        out.extend(s.drain());
        assert_eq!(out.len(), order.len());
        for w in out.windows(2) {
            assert!(w[0].2 < w[1].2, "decode times not increasing: {out:?}");
        }
        for (i, (frame, pts, dts)) in out.iter().enumerate() {
            assert_eq!(*frame, order[i], "decode order changed");
            assert!(dts <= pts, "frame {frame}: dts {dts} after pts {pts}");
        }
    }
}
