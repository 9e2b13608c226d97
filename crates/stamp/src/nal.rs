//! NAL unit framing for H.264 and H.265: Annex B start codes or length prefixes, and emulation
//! prevention.

/// The video codec of a bitstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Codec {
    /// H.264 / AVC.
    H264,
    /// H.265 / HEVC.
    H265,
}

impl Codec {
    /// Length of the NAL unit header in bytes.
    pub fn header_len(self) -> usize {
        match self {
            Codec::H264 => 1,
            Codec::H265 => 2,
        }
    }

    /// NAL unit type from the first header byte.
    pub fn nal_type(self, first_header_byte: u8) -> u8 {
        match self {
            Codec::H264 => first_header_byte & 0x1f,
            Codec::H265 => (first_header_byte >> 1) & 0x3f,
        }
    }

    /// Whether the NAL unit type carries slice data (a VCL NAL unit).
    pub fn is_vcl(self, nal_type: u8) -> bool {
        match self {
            Codec::H264 => (1..=5).contains(&nal_type),
            Codec::H265 => nal_type < 32,
        }
    }

    /// Whether the NAL unit type is an SEI that precedes the picture (H.264 SEI, H.265 prefix SEI).
    pub fn is_prefix_sei(self, nal_type: u8) -> bool {
        match self {
            Codec::H264 => nal_type == 6,
            Codec::H265 => nal_type == 39,
        }
    }
}

/// How NAL units are delimited in a buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// Annex B byte-stream: `00 00 01` / `00 00 00 01` start codes.
    AnnexB,
    /// avc / hvc1 style: each NAL unit preceded by its big-endian length in 1, 2 or 4 bytes.
    LengthPrefixed(u8),
}

/// One NAL unit located in a buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NalUnit<'a> {
    buf: &'a [u8],
    framing: Framing,
    /// Offset of the unit's start code or length prefix: where a new unit can be inserted before it.
    pub prefix_start: usize,
    /// Offset of the first NAL header byte.
    pub start: usize,
    end: Option<usize>,
}

impl<'a> NalUnit<'a> {
    /// The first NAL header byte.
    pub fn header(&self) -> u8 {
        self.buf[self.start]
    }

    /// The NAL unit, header included, emulation prevention bytes still in. For Annex B this scans
    /// the unit for the next start code, so callers that only need the header should not ask.
    pub fn data(&self) -> &'a [u8] {
        let end = self
            .end
            .unwrap_or_else(|| annexb_unit_end(self.buf, self.start));
        &self.buf[self.start..end]
    }

    /// The framing the unit was found in.
    pub fn framing(&self) -> Framing {
        self.framing
    }
}

/// Iterator over the NAL units of a buffer. It is lazy: the body of a unit is scanned only when
/// the next unit is asked for, so stopping at the first slice costs nothing for its payload.
#[derive(Debug, Clone)]
pub struct NalUnits<'a> {
    buf: &'a [u8],
    framing: Framing,
    next: Next,
}

#[derive(Debug, Clone, Copy)]
enum Next {
    /// Annex B: look for the next start code from this offset. Length-prefixed: a prefix
    /// starts here.
    At(usize),
    Done,
}

impl<'a> NalUnits<'a> {
    /// Iterates over the NAL units in `buf`. Bytes before the first start code are skipped;
    /// a length prefix that overruns the buffer ends the iteration.
    pub fn new(buf: &'a [u8], framing: Framing) -> Self {
        Self {
            buf,
            framing,
            next: Next::At(0),
        }
    }
}

impl<'a> Iterator for NalUnits<'a> {
    type Item = NalUnit<'a>;

    fn next(&mut self) -> Option<NalUnit<'a>> {
        let Next::At(pos) = self.next else {
            return None;
        };
        self.next = Next::Done;
        match self.framing {
            Framing::AnnexB => {
                let (_, start) = find_start_code(self.buf, pos)?;
                if start >= self.buf.len() {
                    return None;
                }
                // The unit's body is scanned for the following start code only if asked for.
                self.next = Next::At(start + 1);
                Some(NalUnit {
                    buf: self.buf,
                    framing: self.framing,
                    prefix_start: prefix_start_before(self.buf, start),
                    start,
                    end: None,
                })
            }
            Framing::LengthPrefixed(size) => {
                let size = usize::from(size);
                if !matches!(size, 1 | 2 | 4) || pos + size > self.buf.len() {
                    return None;
                }
                let len = self.buf[pos..pos + size]
                    .iter()
                    .fold(0usize, |acc, b| (acc << 8) | usize::from(*b));
                let start = pos + size;
                let end = start
                    .checked_add(len)
                    .filter(|end| len > 0 && *end <= self.buf.len())?;
                self.next = Next::At(end);
                Some(NalUnit {
                    buf: self.buf,
                    framing: self.framing,
                    prefix_start: pos,
                    start,
                    end: Some(end),
                })
            }
        }
    }
}

/// Finds the next `00 00 01` at or after `from`; returns (offset of the `00 00 01`, offset of the
/// byte after it).
fn find_start_code(buf: &[u8], from: usize) -> Option<(usize, usize)> {
    let mut i = from;
    while i + 3 <= buf.len() {
        // Skip ahead quickly: a start code needs buf[i + 2] == 1 and two zeros before it.
        match buf[i + 2] {
            1 if buf[i] == 0 && buf[i + 1] == 0 => return Some((i, i + 3)),
            0 => i += 1,
            1 => i += 2,
            _ => i += 3,
        }
    }
    None
}

/// Offset where the start code in front of the unit at `header` begins, including the leading
/// zero byte(s) of a four byte start code or trailing zeros of the previous unit.
fn prefix_start_before(buf: &[u8], header: usize) -> usize {
    let mut p = header - 3;
    while p > 0 && buf[p - 1] == 0 {
        p -= 1;
    }
    p
}

fn annexb_unit_end(buf: &[u8], start: usize) -> usize {
    match find_start_code(buf, start) {
        Some((sc, _)) => {
            let mut end = sc;
            while end > start && buf[end - 1] == 0 {
                end -= 1;
            }
            end
        }
        None => buf.len(),
    }
}

/// Appends `rbsp` to `out` with emulation prevention: an `03` after every two zero bytes that
/// would otherwise be followed by `00`..`03`, and after a trailing pair of zeros.
pub fn escape_into(rbsp: &[u8], out: &mut Vec<u8>) {
    let mut zeros = 0;
    for &b in rbsp {
        if zeros >= 2 && b <= 3 {
            out.push(3);
            zeros = 0;
        }
        out.push(b);
        zeros = if b == 0 { zeros + 1 } else { 0 };
    }
    if zeros >= 2 {
        out.push(3);
    }
}

/// Removes emulation prevention bytes (`00 00 03` -> `00 00`).
pub fn unescape(ebsp: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(ebsp.len());
    let mut zeros = 0;
    for &b in ebsp {
        if zeros >= 2 && b == 3 {
            zeros = 0;
            continue;
        }
        out.push(b);
        zeros = if b == 0 { zeros + 1 } else { 0 };
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escape_and_unescape_round_trip() {
        let cases: &[&[u8]] = &[
            &[],
            &[0, 0, 0],
            &[0, 0, 1, 0, 0, 2, 0, 0, 3, 0, 0, 4],
            &[1, 0, 0],
            &[0, 0, 0, 0, 0, 0, 0],
        ];
        for rbsp in cases {
            let mut esc = Vec::new();
            escape_into(rbsp, &mut esc);
            // No start code prefix may appear inside an escaped unit.
            for w in esc.windows(3) {
                assert!(!(w[0] == 0 && w[1] == 0 && w[2] <= 2), "{esc:?}");
            }
            assert_eq!(&unescape(&esc), rbsp);
        }
        let mut esc = Vec::new();
        escape_into(&[0, 0, 1], &mut esc);
        assert_eq!(esc, [0, 0, 3, 1]);
    }

    #[test]
    fn annexb_units_with_three_and_four_byte_start_codes() {
        let buf = [
            0, 0, 0, 1, 0x09, 0xf0, // AUD
            0, 0, 1, 0x67, 1, 2, 0, // SPS with a trailing zero
            0, 0, 0, 1, 0x65, 0xaa, 0xbb, // IDR slice
        ];
        let units: Vec<_> = NalUnits::new(&buf, Framing::AnnexB).collect();
        assert_eq!(units.len(), 3);
        assert_eq!(units[0].data(), &[0x09, 0xf0]);
        assert_eq!(units[1].prefix_start, 6);
        assert_eq!(units[1].data(), &[0x67, 1, 2]);
        // The SPS's trailing zero is part of the next start code.
        assert_eq!(units[2].prefix_start, 12);
        assert_eq!(units[2].data(), &[0x65, 0xaa, 0xbb]);
    }

    #[test]
    fn length_prefixed_units_and_overruns() {
        let buf = [0, 0, 0, 2, 0x09, 0xf0, 0, 0, 0, 3, 0x65, 1, 2];
        let units: Vec<_> = NalUnits::new(&buf, Framing::LengthPrefixed(4)).collect();
        assert_eq!(units.len(), 2);
        assert_eq!(units[1].prefix_start, 6);
        assert_eq!(units[1].data(), &[0x65, 1, 2]);
        // A length that overruns stops the iteration instead of panicking.
        let bad = [0, 0, 0, 9, 0x65, 1];
        assert_eq!(NalUnits::new(&bad, Framing::LengthPrefixed(4)).count(), 0);
        assert_eq!(NalUnits::new(&buf, Framing::LengthPrefixed(3)).count(), 0);
        assert_eq!(NalUnits::new(&[], Framing::AnnexB).count(), 0);
    }
}
