//! The latest parameter sets (H.265 VPS, SPS, PPS) of a video stream as NAL units.
//!
//! A byte-stream source often sends its parameter sets once, in band, in front of its first
//! key frame, and has no `codec_data` in its caps. A clip that starts at a later key frame
//! would then reach its decoder (or the re-encoder) without them. The element keeps the latest
//! unit of each kind and id, from the caps and from every access unit, and puts the ones an
//! access unit does not carry itself in front of each clip's first frame.

use std::collections::BTreeMap;

use hybridlive_stamp::{Codec, Framing, NalUnits, unescape};

use super::avc::BitReader;

/// What a parameter set is, in the order a decoder needs them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum SetKind {
    Vps,
    Sps,
    Pps,
}

/// A parameter set's kind and id: a later unit with the same key replaces the earlier one.
type Key = (SetKind, u32);

/// The latest parameter set NAL units of one stream (header first, emulation prevention in).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LatestParamSets {
    codec: Option<Codec>,
    units: BTreeMap<Key, Vec<u8>>,
}

fn set_kind(codec: Codec, header: u8) -> Option<SetKind> {
    match (codec, codec.nal_type(header)) {
        (Codec::H264, 7) => Some(SetKind::Sps),
        (Codec::H264, 8) => Some(SetKind::Pps),
        (Codec::H265, 32) => Some(SetKind::Vps),
        (Codec::H265, 33) => Some(SetKind::Sps),
        (Codec::H265, 34) => Some(SetKind::Pps),
        _ => None,
    }
}

/// Skips `n` bits.
fn skip(r: &mut BitReader<'_>, mut n: u32) -> Option<()> {
    while n > 0 {
        let step = n.min(32);
        r.bits(step).ok()?;
        n -= step;
    }
    Some(())
}

/// The id of a parameter set NAL unit, from the start of its RBSP.
fn set_id(codec: Codec, kind: SetKind, nal: &[u8]) -> Option<u32> {
    // Only the first bytes are needed; an H.265 SPS id sits after at most 2 + 1 + 12 + 8 * 12
    // bytes of profile, tier and level.
    let rbsp = unescape(&nal[..nal.len().min(128)]);
    let header_bits = codec.header_len() * 8;
    match (codec, kind) {
        // profile_idc, constraint flags, level_idc, then seq_parameter_set_id.
        (Codec::H264, SetKind::Sps) => BitReader::new(&rbsp, header_bits + 24).ue().ok(),
        (_, SetKind::Pps) => BitReader::new(&rbsp, header_bits).ue().ok(),
        (Codec::H265, SetKind::Vps) => BitReader::new(&rbsp, header_bits).bits(4).ok(),
        (Codec::H265, SetKind::Sps) => {
            let mut r = BitReader::new(&rbsp, header_bits);
            r.bits(4).ok()?;
            let sub_layers = r.bits(3).ok()?;
            r.bits(1).ok()?;
            // general profile (88 bits) and level (8 bits).
            skip(&mut r, 96)?;
            let mut present = Vec::new();
            for _ in 0..sub_layers {
                present.push((r.bits(1).ok()? == 1, r.bits(1).ok()? == 1));
            }
            if sub_layers > 0 {
                skip(&mut r, 2 * (8 - sub_layers))?;
            }
            for (profile, level) in present {
                skip(
                    &mut r,
                    if profile { 88 } else { 0 } + if level { 8 } else { 0 },
                )?;
            }
            r.ue().ok()
        }
        (Codec::H264, SetKind::Vps) => None,
    }
}

/// The key of a parameter set NAL unit of `codec`, `None` for other units. A unit whose id
/// does not parse counts as id 0, so the latest such unit still wins.
fn key(codec: Codec, nal: &[u8]) -> Option<Key> {
    let kind = set_kind(codec, *nal.first()?)?;
    Some((kind, set_id(codec, kind, nal).unwrap_or(0)))
}

/// The parameter set units in front of an access unit's first slice, where they belong.
fn leading_sets(codec: Codec, au: &[u8], framing: Framing) -> impl Iterator<Item = &[u8]> {
    NalUnits::new(au, framing)
        .take_while(move |n| !codec.is_vcl(codec.nal_type(n.header())))
        .filter(move |n| set_kind(codec, n.header()).is_some())
        .map(|n| n.data())
}

impl LatestParamSets {
    /// Forgets everything when the stream's codec changes.
    pub fn set_codec(&mut self, codec: Codec) {
        if self.codec != Some(codec) {
            self.codec = Some(codec);
            self.units.clear();
        }
    }

    /// Keeps a parameter set NAL unit (header first); other units are ignored. Returns whether
    /// anything changed.
    pub fn add(&mut self, nal: &[u8]) -> bool {
        let Some(codec) = self.codec else {
            return false;
        };
        let Some(key) = key(codec, nal) else {
            return false;
        };
        if self.units.get(&key).is_some_and(|u| u == nal) {
            return false;
        }
        self.units.insert(key, nal.to_vec());
        true
    }

    /// Keeps the parameter sets an access unit carries in front of its first slice. Returns
    /// whether anything changed.
    pub fn add_in_band(&mut self, au: &[u8], framing: Framing) -> bool {
        let Some(codec) = self.codec else {
            return false;
        };
        let mut changed = false;
        for nal in leading_sets(codec, au, framing) {
            changed |= self.add(nal);
        }
        changed
    }

    /// H.265: the highest TemporalId the kept SPSs allow (`sps_max_sub_layers_minus1`);
    /// `None` for H.264 or before an SPS.
    pub fn max_temporal_id(&self) -> Option<u8> {
        if self.codec != Some(Codec::H265) {
            return None;
        }
        self.units
            .iter()
            .filter(|((kind, _), _)| *kind == SetKind::Sps)
            .filter_map(|(_, nal)| nal.get(2).map(|b| (b >> 1) & 0x07))
            .max()
    }

    /// The units to put in front of `au` so a decoder starting there has every parameter set:
    /// all kept ones except those `au` carries itself (same kind and id) and those in `known`
    /// (already given to the decoder, e.g. in the caps' `codec_data`).
    pub fn missing_from(&self, au: &[u8], framing: Framing, known: &[Vec<u8>]) -> Vec<Vec<u8>> {
        let Some(codec) = self.codec else {
            return Vec::new();
        };
        let carried: Vec<Key> = leading_sets(codec, au, framing)
            .filter_map(|n| key(codec, n))
            .collect();
        self.units
            .iter()
            .filter(|(k, u)| !carried.contains(k) && !known.contains(u))
            .map(|(_, u)| u.clone())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // x264 baseline 320x240: SPS id 0, PPS id 0.
    const SPS: &[u8] = &[
        0x67, 0x42, 0xc0, 0x0d, 0xda, 0x05, 0x07, 0xec, 0x04, 0x40, 0x00, 0x00, 0x03, 0x00, 0x40,
        0x00, 0x00, 0x0c, 0x83, 0xc5, 0x0a, 0xa8,
    ];
    const PPS: &[u8] = &[0x68, 0xce, 0x0f, 0xc8];
    // PPS id 1 (ue "010"), SPS id 0.
    const PPS1: &[u8] = &[0x68, 0x5e, 0x0f, 0xc8];
    const IDR: &[u8] = &[0x65, 0x88, 0x84, 0x00];
    const P: &[u8] = &[0x41, 0x9a, 0x02, 0x00];

    fn annexb(units: &[&[u8]]) -> Vec<u8> {
        let mut out = Vec::new();
        for u in units {
            out.extend_from_slice(&[0, 0, 0, 1]);
            out.extend_from_slice(u);
        }
        out
    }

    #[test]
    fn ids_parse() {
        assert_eq!(key(Codec::H264, SPS), Some((SetKind::Sps, 0)));
        assert_eq!(key(Codec::H264, PPS), Some((SetKind::Pps, 0)));
        assert_eq!(key(Codec::H264, PPS1), Some((SetKind::Pps, 1)));
        assert_eq!(key(Codec::H264, IDR), None);
        // H.265 VPS id 0, SPS with one sub-layer: id after the 12-byte profile_tier_level.
        let vps = [0x40, 0x01, 0x0c, 0x01];
        assert_eq!(key(Codec::H265, &vps), Some((SetKind::Vps, 0)));
        let mut sps = vec![0x42, 0x01, 0x01];
        sps.extend_from_slice(&[0x01, 0x60, 0, 0, 0, 0x90, 0, 0, 0, 0, 0, 0x5d]);
        // sps_seq_parameter_set_id = 2: "011".
        sps.push(0b0110_0000);
        assert_eq!(key(Codec::H265, &sps), Some((SetKind::Sps, 2)));
        let mut sets = LatestParamSets::default();
        sets.set_codec(Codec::H265);
        assert_eq!(sets.max_temporal_id(), None);
        sets.add(&sps);
        assert_eq!(sets.max_temporal_id(), Some(0));
    }

    #[test]
    fn in_band_sets_are_kept_and_put_before_later_key_frames() {
        let mut sets = LatestParamSets::default();
        sets.set_codec(Codec::H264);
        assert!(sets.add_in_band(&annexb(&[SPS, PPS, IDR]), Framing::AnnexB));
        assert!(!sets.add_in_band(&annexb(&[P]), Framing::AnnexB));
        let later_idr = annexb(&[IDR]);
        assert_eq!(
            sets.missing_from(&later_idr, Framing::AnnexB, &[]),
            vec![SPS.to_vec(), PPS.to_vec()]
        );
        // Nothing twice, nothing the decoder knows from the caps.
        assert!(
            sets.missing_from(&annexb(&[SPS, PPS, IDR]), Framing::AnnexB, &[])
                .is_empty()
        );
        assert_eq!(
            sets.missing_from(&later_idr, Framing::AnnexB, &[SPS.to_vec()]),
            vec![PPS.to_vec()]
        );
        // A second PPS id is kept beside the first; a new codec starts over.
        assert!(sets.add(PPS1));
        assert_eq!(sets.missing_from(&later_idr, Framing::AnnexB, &[]).len(), 3);
        sets.set_codec(Codec::H265);
        assert!(
            sets.missing_from(&later_idr, Framing::AnnexB, &[])
                .is_empty()
        );
    }
}
