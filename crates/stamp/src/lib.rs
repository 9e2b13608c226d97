//! Capture-time stamps carried inside H.264/H.265 bitstreams.
//!
//! A stamp names the wall-clock instant (UTC, nanoseconds since the Unix epoch) at which a frame
//! was captured. `latencystamp` writes it, `latencymeter` and the viewer page read it. It travels
//! as an SEI *user data unregistered* message (H.264 payload type 5, H.265 prefix SEI) so that it
//! survives muxers, RTP, HLS segments, recordings and remuxing by other tools.
//!
//! Wire format of the SEI payload (all integers big-endian):
//!
//! | bytes | field |
//! |---|---|
//! | 16 | [`STAMP_UUID`] |
//! | 1 | format version, [`STAMP_VERSION`] |
//! | 8 | capture time, ns since the Unix epoch (UTC) |
//! | 4 | frame counter, wraps |
//! | 1 | stream id length `n` (at most [`MAX_STREAM_ID_LEN`]) |
//! | n | stream id, UTF-8 |
//!
//! Readers accept newer versions as long as the fields above are present; a trailing extension is
//! ignored.

mod nal;
mod sei;

pub use nal::{Codec, Framing, NalUnit, NalUnits, escape_into, unescape};
pub use sei::{InsertPoint, find_insert_point, find_stamp, framed_sei_nal, sei_nal};

/// UUID identifying hybridlive stamps among other user-data-unregistered SEI messages.
pub const STAMP_UUID: [u8; 16] = [
    0x68, 0x79, 0x62, 0x72, 0x69, 0x64, 0x4c, 0x49, 0x9e, 0x5a, 0x71, 0x3c, 0xd2, 0x0b, 0x86, 0xf4,
];

/// Version byte written after the UUID.
pub const STAMP_VERSION: u8 = 1;

/// Longest stream id carried in a stamp, in bytes.
pub const MAX_STREAM_ID_LEN: usize = 32;

const FIXED_LEN: usize = 16 + 1 + 8 + 4 + 1;

/// One capture stamp.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct CaptureStamp {
    /// Capture instant, nanoseconds since the Unix epoch (UTC).
    pub capture_time_ns: u64,
    /// Frame counter of the stream at the stamping element; wraps around.
    pub frame: u32,
    /// Short identifier of the stream (truncated to [`MAX_STREAM_ID_LEN`] bytes when written).
    pub stream_id: String,
}

/// Why a buffer or a payload did not yield a stamp.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StampError {
    /// The payload is shorter than the fixed part of a stamp.
    #[error("stamp payload truncated: {0} bytes")]
    Truncated(usize),
    /// The payload's UUID is not [`STAMP_UUID`].
    #[error("not a hybridlive stamp")]
    ForeignUuid,
    /// The version byte is 0, which no writer produces.
    #[error("invalid stamp version {0}")]
    BadVersion(u8),
    /// An SEI message header claims more bytes than the NAL unit holds.
    #[error("malformed SEI message")]
    MalformedSei,
}

impl CaptureStamp {
    /// Length of the user-data-unregistered payload (UUID included) this stamp encodes to.
    pub fn payload_len(&self) -> usize {
        FIXED_LEN + self.stream_id_bytes().len()
    }

    fn stream_id_bytes(&self) -> &[u8] {
        let id = self.stream_id.as_bytes();
        if id.len() <= MAX_STREAM_ID_LEN {
            return id;
        }
        // Cut on a character boundary so that readers always get valid UTF-8.
        let mut end = MAX_STREAM_ID_LEN;
        while !self.stream_id.is_char_boundary(end) {
            end -= 1;
        }
        &id[..end]
    }

    /// Appends the user-data-unregistered payload (UUID first) to `out`.
    pub fn write_payload(&self, out: &mut Vec<u8>) {
        let id = self.stream_id_bytes();
        out.reserve(FIXED_LEN + id.len());
        out.extend_from_slice(&STAMP_UUID);
        out.push(STAMP_VERSION);
        out.extend_from_slice(&self.capture_time_ns.to_be_bytes());
        out.extend_from_slice(&self.frame.to_be_bytes());
        out.push(id.len() as u8);
        out.extend_from_slice(id);
    }

    /// Decodes a user-data-unregistered payload that starts with the UUID.
    pub fn from_payload(payload: &[u8]) -> Result<Self, StampError> {
        if payload.len() < 16 {
            return Err(StampError::Truncated(payload.len()));
        }
        let (uuid, rest) = payload.split_at(16);
        Self::from_uuid_and_data(uuid, rest)
    }

    /// Decodes a payload already split into UUID and user data, as GStreamer's
    /// `GstVideoSEIUserDataUnregisteredMeta` (attached by h264parse/h265parse) holds it.
    pub fn from_uuid_and_data(uuid: &[u8], data: &[u8]) -> Result<Self, StampError> {
        if uuid != STAMP_UUID {
            return Err(StampError::ForeignUuid);
        }
        if data.len() < FIXED_LEN - 16 {
            return Err(StampError::Truncated(16 + data.len()));
        }
        let version = data[0];
        if version == 0 {
            return Err(StampError::BadVersion(version));
        }
        let capture_time_ns = u64::from_be_bytes(data[1..9].try_into().expect("8 bytes"));
        let frame = u32::from_be_bytes(data[9..13].try_into().expect("4 bytes"));
        let id_len = usize::from(data[13]);
        let id = data
            .get(14..14 + id_len)
            .ok_or(StampError::Truncated(16 + data.len()))?;
        Ok(Self {
            capture_time_ns,
            frame,
            stream_id: String::from_utf8_lossy(id).into_owned(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stamp() -> CaptureStamp {
        CaptureStamp {
            capture_time_ns: 1_795_000_000_123_456_789,
            frame: 42,
            stream_id: "cam1".into(),
        }
    }

    #[test]
    fn payload_round_trip() {
        let mut out = Vec::new();
        stamp().write_payload(&mut out);
        assert_eq!(out.len(), stamp().payload_len());
        assert_eq!(CaptureStamp::from_payload(&out), Ok(stamp()));
    }

    #[test]
    fn long_stream_id_is_cut_on_a_char_boundary() {
        let s = CaptureStamp {
            stream_id: "é".repeat(20),
            ..stamp()
        };
        let mut out = Vec::new();
        s.write_payload(&mut out);
        let back = CaptureStamp::from_payload(&out).unwrap();
        assert_eq!(back.stream_id, "é".repeat(16));
    }

    #[test]
    fn rejects_foreign_and_truncated_payloads() {
        let mut out = Vec::new();
        stamp().write_payload(&mut out);
        for len in 0..out.len() {
            assert!(
                CaptureStamp::from_payload(&out[..len]).is_err(),
                "len {len}"
            );
        }
        out[3] ^= 1;
        assert_eq!(
            CaptureStamp::from_payload(&out),
            Err(StampError::ForeignUuid)
        );
    }

    #[test]
    fn newer_versions_with_extensions_are_read() {
        let mut out = Vec::new();
        stamp().write_payload(&mut out);
        out[16] = 7;
        out.extend_from_slice(b"future fields");
        assert_eq!(CaptureStamp::from_payload(&out), Ok(stamp()));
    }
}
