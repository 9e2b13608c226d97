//! Writing and finding stamp SEI messages in access units.

use crate::nal::{Codec, Framing, NalUnits, escape_into, unescape};
use crate::{CaptureStamp, StampError};

/// SEI payload type of user data unregistered, in both H.264 and H.265.
const USER_DATA_UNREGISTERED: u32 = 5;

/// Where to insert an SEI NAL unit into an access unit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InsertPoint {
    /// Byte offset of the first slice's start code or length prefix.
    pub offset: usize,
    /// H.265 `nuh_temporal_id_plus1` of that slice: a prefix SEI must carry the access unit's
    /// temporal id. Always 1 for H.264.
    pub temporal_id_plus1: u8,
}

/// Finds the place for a prefix SEI in an access unit: right before its first slice, which is
/// after any access unit delimiter, parameter sets and SEI already present, as both standards
/// require. `None` when the buffer holds no slice (codec data only, or garbage).
pub fn find_insert_point(codec: Codec, framing: Framing, au: &[u8]) -> Option<InsertPoint> {
    NalUnits::new(au, framing).find_map(|unit| {
        let header = unit.header();
        if !codec.is_vcl(codec.nal_type(header)) {
            return None;
        }
        let temporal_id_plus1 = match codec {
            Codec::H264 => 1,
            Codec::H265 => au.get(unit.start + 1).map_or(1, |b| (b & 0x07).max(1)),
        };
        Some(InsertPoint {
            offset: unit.prefix_start,
            temporal_id_plus1,
        })
    })
}

/// Appends to `out` a complete SEI NAL unit (header, escaped payload, trailing bits) carrying
/// `stamp` as user data unregistered, without start code or length prefix.
pub fn sei_nal(codec: Codec, stamp: &CaptureStamp, temporal_id_plus1: u8, out: &mut Vec<u8>) {
    match codec {
        Codec::H264 => out.push(0x06),
        // forbidden_zero_bit 0, nal_unit_type 39 (PREFIX_SEI), nuh_layer_id 0.
        Codec::H265 => out.extend_from_slice(&[39 << 1, temporal_id_plus1.clamp(1, 7)]),
    }
    let payload_len = stamp.payload_len();
    let mut rbsp = Vec::with_capacity(payload_len + 4);
    write_sei_varint(USER_DATA_UNREGISTERED as usize, &mut rbsp);
    write_sei_varint(payload_len, &mut rbsp);
    stamp.write_payload(&mut rbsp);
    rbsp.push(0x80); // rbsp_stop_one_bit + alignment
    escape_into(&rbsp, out);
}

/// A stamp SEI NAL unit framed for `framing`: with a four byte start code, or with a big-endian
/// length prefix of the stream's size. `None` if the unit does not fit a 1 or 2 byte prefix.
pub fn framed_sei_nal(
    codec: Codec,
    framing: Framing,
    stamp: &CaptureStamp,
    temporal_id_plus1: u8,
) -> Option<Vec<u8>> {
    let mut nal = Vec::with_capacity(stamp.payload_len() + 16);
    sei_nal(codec, stamp, temporal_id_plus1, &mut nal);
    match framing {
        Framing::AnnexB => {
            let mut out = Vec::with_capacity(nal.len() + 4);
            out.extend_from_slice(&[0, 0, 0, 1]);
            out.extend_from_slice(&nal);
            Some(out)
        }
        Framing::LengthPrefixed(size) => {
            let size = usize::from(size);
            if !matches!(size, 1 | 2 | 4) || nal.len() >= 1usize << (8 * size.min(3)) {
                return None;
            }
            let len = (nal.len() as u32).to_be_bytes();
            let mut out = Vec::with_capacity(nal.len() + size);
            out.extend_from_slice(&len[4 - size..]);
            out.extend_from_slice(&nal);
            Some(out)
        }
    }
}

fn write_sei_varint(mut value: usize, out: &mut Vec<u8>) {
    while value >= 255 {
        out.push(0xff);
        value -= 255;
    }
    out.push(value as u8);
}

fn read_sei_varint(rbsp: &[u8], pos: &mut usize) -> Option<usize> {
    let mut value = 0usize;
    loop {
        let b = *rbsp.get(*pos)?;
        *pos += 1;
        value = value.checked_add(usize::from(b))?;
        if b != 0xff {
            return Some(value);
        }
    }
}

/// Finds the first hybridlive stamp in the prefix SEI of an access unit. Only the units before
/// the first slice are read, so the cost does not depend on the size of the picture.
///
/// Returns `Ok(None)` when the access unit carries no stamp, and an error when an SEI that could
/// hold one is malformed (and no valid stamp was found elsewhere in the unit).
pub fn find_stamp(
    codec: Codec,
    framing: Framing,
    au: &[u8],
) -> Result<Option<CaptureStamp>, StampError> {
    let mut first_error = None;
    for unit in NalUnits::new(au, framing) {
        let nal_type = codec.nal_type(unit.header());
        if codec.is_vcl(nal_type) {
            break;
        }
        if !codec.is_prefix_sei(nal_type) {
            continue;
        }
        let data = unit.data();
        let rbsp = unescape(data.get(codec.header_len()..).unwrap_or_default());
        match stamp_in_sei_rbsp(&rbsp) {
            Ok(Some(stamp)) => return Ok(Some(stamp)),
            Ok(None) => {}
            Err(err) => {
                first_error.get_or_insert(err);
            }
        }
    }
    match first_error {
        Some(err) => Err(err),
        None => Ok(None),
    }
}

fn stamp_in_sei_rbsp(rbsp: &[u8]) -> Result<Option<CaptureStamp>, StampError> {
    let mut pos = 0;
    let mut first_error = None;
    // sei_rbsp: messages until only the rbsp trailing bits (0x80) are left.
    while pos < rbsp.len() && !(rbsp.len() - pos == 1 && rbsp[pos] == 0x80) {
        let payload_type = read_sei_varint(rbsp, &mut pos).ok_or(StampError::MalformedSei)?;
        let size = read_sei_varint(rbsp, &mut pos).ok_or(StampError::MalformedSei)?;
        let end = pos
            .checked_add(size)
            .filter(|end| *end <= rbsp.len())
            .ok_or(StampError::MalformedSei)?;
        if payload_type == USER_DATA_UNREGISTERED as usize {
            match CaptureStamp::from_payload(&rbsp[pos..end]) {
                Ok(stamp) => return Ok(Some(stamp)),
                Err(StampError::ForeignUuid) => {}
                Err(err) => {
                    first_error.get_or_insert(err);
                }
            }
        }
        pos = end;
    }
    match first_error {
        Some(err) => Err(err),
        None => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stamp(t: u64) -> CaptureStamp {
        CaptureStamp {
            capture_time_ns: t,
            frame: 7,
            stream_id: "main".into(),
        }
    }

    fn insert(codec: Codec, framing: Framing, au: &[u8], s: &CaptureStamp) -> Vec<u8> {
        let point = find_insert_point(codec, framing, au).expect("a slice");
        let sei = framed_sei_nal(codec, framing, s, point.temporal_id_plus1).unwrap();
        [&au[..point.offset], &sei[..], &au[point.offset..]].concat()
    }

    // AUD, SPS, PPS, an SEI that is not ours, IDR slice.
    fn h264_annexb_au() -> Vec<u8> {
        let mut au = vec![0, 0, 0, 1, 0x09, 0x10];
        au.extend_from_slice(&[0, 0, 0, 1, 0x67, 0x42, 0xc0, 0x1e]);
        au.extend_from_slice(&[0, 0, 0, 1, 0x68, 0xce, 0x3c, 0x80]);
        // SEI: payload type 1 (pic timing), size 2.
        au.extend_from_slice(&[0, 0, 1, 0x06, 0x01, 0x02, 0xaa, 0xbb, 0x80]);
        au.extend_from_slice(&[0, 0, 0, 1, 0x65, 0x88, 0x84, 0x00, 0x33]);
        au
    }

    fn to_length_prefixed(annexb: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        for unit in NalUnits::new(annexb, Framing::AnnexB) {
            out.extend_from_slice(&(unit.data().len() as u32).to_be_bytes());
            out.extend_from_slice(unit.data());
        }
        out
    }

    #[test]
    fn sei_lands_right_before_the_first_slice() {
        let au = h264_annexb_au();
        let out = insert(Codec::H264, Framing::AnnexB, &au, &stamp(1));
        let types: Vec<u8> = NalUnits::new(&out, Framing::AnnexB)
            .map(|u| u.header() & 0x1f)
            .collect();
        assert_eq!(types, [9, 7, 8, 6, 6, 5]);
        // The original units are untouched.
        assert!(out.ends_with(&au[au.len() - 9..]));
    }

    #[test]
    fn round_trip_annexb_and_avc_with_emulation_prevention() {
        // Times whose bytes contain 00 00 0x sequences need emulation prevention.
        for t in [
            0u64,
            1,
            0x0000_0001_0000_0003,
            u64::MAX,
            1_795_000_000_000_000_000,
        ] {
            let au = h264_annexb_au();
            let out = insert(Codec::H264, Framing::AnnexB, &au, &stamp(t));
            assert_eq!(
                find_stamp(Codec::H264, Framing::AnnexB, &out),
                Ok(Some(stamp(t)))
            );
            let avc = to_length_prefixed(&au);
            let framing = Framing::LengthPrefixed(4);
            let out = insert(Codec::H264, framing, &avc, &stamp(t));
            assert_eq!(find_stamp(Codec::H264, framing, &out), Ok(Some(stamp(t))));
        }
    }

    #[test]
    fn h265_prefix_sei_keeps_the_temporal_id() {
        // AUD (35), VPS (32), then a TRAIL_R slice (1) with temporal id 2 (tid_plus1 = 3).
        let au = [
            0, 0, 0, 1, 0x46, 0x01, 0x50, 0, 0, 0, 1, 0x40, 0x01, 0x0c, 0, 0, 0, 1, 0x02, 0x03,
            0xaf, 0x12,
        ];
        let point = find_insert_point(Codec::H265, Framing::AnnexB, &au).unwrap();
        assert_eq!(point.temporal_id_plus1, 3);
        let out = insert(Codec::H265, Framing::AnnexB, &au, &stamp(99));
        let sei = NalUnits::new(&out, Framing::AnnexB)
            .find(|u| Codec::H265.nal_type(u.header()) == 39)
            .unwrap();
        assert_eq!(sei.data()[1], 3);
        assert_eq!(
            find_stamp(Codec::H265, Framing::AnnexB, &out),
            Ok(Some(stamp(99)))
        );
    }

    #[test]
    fn several_messages_in_one_sei_and_several_seis() {
        // One SEI NAL with a foreign user-data message followed by ours.
        let mut rbsp = vec![5, 20];
        rbsp.extend_from_slice(&[0x11; 16]);
        rbsp.extend_from_slice(b"abcd");
        rbsp.push(5);
        rbsp.push(stamp(5).payload_len() as u8);
        stamp(5).write_payload(&mut rbsp);
        rbsp.push(0x80);
        let mut au = vec![0, 0, 0, 1, 0x06];
        escape_into(&rbsp, &mut au);
        au.extend_from_slice(&[0, 0, 0, 1, 0x41, 0x9a]);
        assert_eq!(
            find_stamp(Codec::H264, Framing::AnnexB, &au),
            Ok(Some(stamp(5)))
        );
        // Two stamp SEI NALs: the first wins.
        let out = insert(Codec::H264, Framing::AnnexB, &au, &stamp(6));
        assert_eq!(
            find_stamp(Codec::H264, Framing::AnnexB, &out),
            Ok(Some(stamp(5)))
        );
    }

    #[test]
    fn sei_after_the_first_slice_is_not_read() {
        let mut au = vec![0, 0, 0, 1, 0x41, 0x9a];
        au.extend_from_slice(&framed_sei_nal(Codec::H264, Framing::AnnexB, &stamp(1), 1).unwrap());
        assert_eq!(find_stamp(Codec::H264, Framing::AnnexB, &au), Ok(None));
    }

    #[test]
    fn garbage_and_truncation_never_panic() {
        let au = h264_annexb_au();
        let out = insert(Codec::H264, Framing::AnnexB, &au, &stamp(12345));
        for len in 0..out.len() {
            let _ = find_stamp(Codec::H264, Framing::AnnexB, &out[..len]);
            let _ = find_stamp(Codec::H265, Framing::LengthPrefixed(4), &out[..len]);
            let _ = find_insert_point(Codec::H264, Framing::AnnexB, &out[..len]);
        }
        // A truncated stamp SEI is reported as malformed, not as a stamp.
        let sei_end = out.len() - 9;
        let mut cut = out[..sei_end - 6].to_vec();
        cut.extend_from_slice(&[0, 0, 0, 1, 0x65, 0x88]);
        assert!(find_stamp(Codec::H264, Framing::AnnexB, &cut).is_err());
        // Pseudo-random bytes.
        let mut x = 0x1234_5678u32;
        let noise: Vec<u8> = (0..4096)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                (x % 7) as u8
            })
            .collect();
        for framing in [Framing::AnnexB, Framing::LengthPrefixed(2)] {
            for codec in [Codec::H264, Codec::H265] {
                let _ = find_stamp(codec, framing, &noise);
                let _ = find_insert_point(codec, framing, &noise);
            }
        }
    }

    #[test]
    fn framed_unit_fits_small_length_prefixes_or_is_refused() {
        let s = stamp(3);
        let two = framed_sei_nal(Codec::H264, Framing::LengthPrefixed(2), &s, 1).unwrap();
        assert_eq!(
            usize::from(u16::from_be_bytes([two[0], two[1]])),
            two.len() - 2
        );
        assert!(framed_sei_nal(Codec::H264, Framing::LengthPrefixed(1), &s, 1).is_some());
        assert!(framed_sei_nal(Codec::H264, Framing::LengthPrefixed(3), &s, 1).is_none());
    }
}
