//! H.264 splicing at open-GOP key frames.
//!
//! x264's `open-gop` makes every key frame after the first a non-IDR I frame with a recovery
//! point SEI: decoding can start there, but the pictures after it carry on the source's
//! `frame_num` and picture order count, and the frames that precede it in display order
//! (leading pictures) reference the previous group. `smart` mode re-encodes up to such a frame
//! and copies from it on; for the copied frames to follow the re-encoded head (a new coded
//! sequence with its own SPS), the [`Splicer`] rewrites their slice headers:
//!
//! - the I frame becomes an IDR (`nal_unit_type` 5, `frame_num` 0, `idr_pic_id`, POC 0, IDR
//!   reference marking); its recovery point SEI goes;
//! - the leading pictures are not copied (the head re-encoded them), so `frame_num` of every
//!   following picture shifts down by the I's number plus the leading reference pictures, and
//!   `pic_order_cnt_lsb` by the I's;
//! - reference list modifications and memory management operations name pictures by
//!   difference of picture numbers: they are recomputed for the new numbering, and operations
//!   on pictures the spliced stream does not hold (before the I, or the dropped leading ones)
//!   are removed.
//!
//! Only the slice headers change, so every copied picture decodes to exactly the source's
//! pixels. With CABAC the slice data starts byte-aligned after the header, so it is copied as
//! bytes; CAVLC slice data is shifted bit by bit when the header length changes.
//!
//! What is not handled (field coding, picture order count type 1, slice groups, long-term
//! references) makes the frame no splice point (checked before the cut is decided), or, for a
//! long-term operation met later, an error.

use std::collections::BTreeMap;

use hybridlive_stamp::{Framing, NalUnits, escape_into};

/// Why a bitstream cannot be parsed or spliced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpliceError(pub &'static str);

impl std::fmt::Display for SpliceError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.0)
    }
}

type Result<T> = std::result::Result<T, SpliceError>;

const TRUNCATED: SpliceError = SpliceError("truncated H.264 header");

/// Reads bits, MSB first, from an RBSP (emulation prevention removed).
pub(super) struct BitReader<'a> {
    data: &'a [u8],
    pos: usize,
}

impl<'a> BitReader<'a> {
    pub(super) fn new(data: &'a [u8], pos: usize) -> Self {
        Self { data, pos }
    }

    fn bit(&mut self) -> Result<u32> {
        let byte = *self.data.get(self.pos / 8).ok_or(TRUNCATED)?;
        let b = (byte >> (7 - self.pos % 8)) & 1;
        self.pos += 1;
        Ok(u32::from(b))
    }

    pub(super) fn bits(&mut self, n: u32) -> Result<u32> {
        let mut v = 0u32;
        for _ in 0..n {
            v = (v << 1) | self.bit()?;
        }
        Ok(v)
    }

    fn flag(&mut self) -> Result<bool> {
        Ok(self.bit()? == 1)
    }

    pub(super) fn ue(&mut self) -> Result<u32> {
        let mut zeros = 0;
        while self.bit()? == 0 {
            zeros += 1;
            if zeros > 31 {
                return Err(SpliceError("invalid Exp-Golomb code"));
            }
        }
        let rest = self.bits(zeros)?;
        Ok(((1u64 << zeros) - 1 + u64::from(rest)).min(u64::from(u32::MAX)) as u32)
    }

    fn se(&mut self) -> Result<i32> {
        let k = self.ue()?;
        Ok(if k % 2 == 1 {
            k.div_ceil(2) as i32
        } else {
            -((k / 2) as i32)
        })
    }
}

/// Writes bits, MSB first.
#[derive(Default)]
struct BitWriter {
    out: Vec<u8>,
    bits: usize,
}

impl BitWriter {
    fn bit(&mut self, b: u32) {
        if self.bits.is_multiple_of(8) {
            self.out.push(0);
        }
        if b & 1 == 1 {
            let last = self.out.len() - 1;
            self.out[last] |= 1 << (7 - self.bits % 8);
        }
        self.bits += 1;
    }

    fn bits(&mut self, v: u32, n: u32) {
        for i in (0..n).rev() {
            self.bit((v >> i) & 1);
        }
    }

    fn ue(&mut self, v: u32) {
        let x = u64::from(v) + 1;
        let len = 64 - x.leading_zeros();
        for _ in 0..len - 1 {
            self.bit(0);
        }
        for i in (0..len).rev() {
            self.bit(((x >> i) & 1) as u32);
        }
    }

    /// Copies bits `[from, to)` of `data`: whole bytes when reader and writer share their bit
    /// alignment, shifted bytes otherwise.
    fn copy(&mut self, data: &[u8], from: usize, to: usize) {
        let mut pos = from;
        let read = |pos: usize| u32::from((data[pos / 8] >> (7 - pos % 8)) & 1);
        // Bit by bit until the writer is byte-aligned.
        while pos < to && !self.bits.is_multiple_of(8) {
            self.bit(read(pos));
            pos += 1;
        }
        let shift = pos % 8;
        if shift == 0 {
            let whole = (to.saturating_sub(pos)) / 8;
            self.out.extend_from_slice(&data[pos / 8..pos / 8 + whole]);
            self.bits += whole * 8;
            pos += whole * 8;
        } else {
            while to.saturating_sub(pos) >= 8 {
                let i = pos / 8;
                self.out
                    .push((data[i] << shift) | (data[i + 1] >> (8 - shift)));
                self.bits += 8;
                pos += 8;
            }
        }
        while pos < to {
            self.bit(read(pos));
            pos += 1;
        }
    }
}

/// What slice headers need from a sequence parameter set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sps {
    chroma_array_type: u32,
    separate_colour_plane: bool,
    log2_max_frame_num: u32,
    poc_type: u32,
    log2_max_poc_lsb: u32,
    frame_mbs_only: bool,
}

/// What slice headers need from a picture parameter set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pps {
    sps_id: u32,
    cabac: bool,
    bottom_field_pic_order_in_frame_present: bool,
    slice_groups: bool,
    num_ref_idx_l0_default: u32,
    num_ref_idx_l1_default: u32,
    weighted_pred: bool,
    weighted_bipred_idc: u32,
    deblocking_filter_control_present: bool,
    redundant_pic_cnt_present: bool,
}

fn skip_scaling_list(r: &mut BitReader<'_>, size: usize) -> Result<()> {
    let (mut last, mut next) = (8i32, 8i32);
    for _ in 0..size {
        if next != 0 {
            let delta = r.se()?;
            next = (last + delta).rem_euclid(256);
        }
        if next != 0 {
            last = next;
        }
    }
    Ok(())
}

/// Parses an SPS NAL unit (header byte included, emulation prevention removed).
fn parse_sps(rbsp: &[u8]) -> Result<(u32, Sps)> {
    let mut r = BitReader::new(rbsp, 8);
    let profile = r.bits(8)?;
    r.bits(16)?;
    let id = r.ue()?;
    let (mut chroma_format_idc, mut separate_colour_plane) = (1, false);
    if matches!(
        profile,
        100 | 110 | 122 | 244 | 44 | 83 | 86 | 118 | 128 | 138 | 139 | 134 | 135
    ) {
        chroma_format_idc = r.ue()?;
        if chroma_format_idc == 3 {
            separate_colour_plane = r.flag()?;
        }
        r.ue()?;
        r.ue()?;
        r.flag()?;
        if r.flag()? {
            let lists = if chroma_format_idc == 3 { 12 } else { 8 };
            for i in 0..lists {
                if r.flag()? {
                    skip_scaling_list(&mut r, if i < 6 { 16 } else { 64 })?;
                }
            }
        }
    }
    let log2_max_frame_num = r.ue()? + 4;
    let poc_type = r.ue()?;
    let mut log2_max_poc_lsb = 0;
    match poc_type {
        0 => log2_max_poc_lsb = r.ue()? + 4,
        1 => {
            r.flag()?;
            r.se()?;
            r.se()?;
            let n = r.ue()?;
            for _ in 0..n.min(255) {
                r.se()?;
            }
        }
        _ => {}
    }
    r.ue()?;
    r.flag()?;
    r.ue()?;
    r.ue()?;
    let frame_mbs_only = r.flag()?;
    if log2_max_frame_num > 16 || log2_max_poc_lsb > 16 || id > 31 {
        return Err(SpliceError("invalid SPS"));
    }
    Ok((
        id,
        Sps {
            chroma_array_type: if separate_colour_plane {
                0
            } else {
                chroma_format_idc
            },
            separate_colour_plane,
            log2_max_frame_num,
            poc_type,
            log2_max_poc_lsb,
            frame_mbs_only,
        },
    ))
}

/// Parses a PPS NAL unit (header byte included, emulation prevention removed).
fn parse_pps(rbsp: &[u8]) -> Result<(u32, Pps)> {
    let mut r = BitReader::new(rbsp, 8);
    let id = r.ue()?;
    let sps_id = r.ue()?;
    let cabac = r.flag()?;
    let bottom_field_pic_order_in_frame_present = r.flag()?;
    let slice_groups = r.ue()? > 0;
    let mut pps = Pps {
        sps_id,
        cabac,
        bottom_field_pic_order_in_frame_present,
        slice_groups,
        num_ref_idx_l0_default: 1,
        num_ref_idx_l1_default: 1,
        weighted_pred: false,
        weighted_bipred_idc: 0,
        deblocking_filter_control_present: false,
        redundant_pic_cnt_present: false,
    };
    if slice_groups {
        // Not parsed further: such streams are never spliced.
        return Ok((id, pps));
    }
    pps.num_ref_idx_l0_default = r.ue()? + 1;
    pps.num_ref_idx_l1_default = r.ue()? + 1;
    pps.weighted_pred = r.flag()?;
    pps.weighted_bipred_idc = r.bits(2)?;
    r.se()?;
    r.se()?;
    r.se()?;
    pps.deblocking_filter_control_present = r.flag()?;
    r.flag()?;
    pps.redundant_pic_cnt_present = r.flag()?;
    if id > 255 || sps_id > 31 {
        return Err(SpliceError("invalid PPS"));
    }
    Ok((id, pps))
}

/// Removes emulation prevention from `ebsp`, up to `limit` output bytes. `starts[i]` is where
/// the bytes that produce output byte `i` begin in `ebsp` (an emulation prevention byte in
/// front of it included); `starts` has one more entry, the end of what was read.
fn unescape_mapped(ebsp: &[u8], limit: usize) -> (Vec<u8>, Vec<usize>) {
    let cap = limit.min(ebsp.len());
    let mut out = Vec::with_capacity(cap);
    let mut starts = Vec::with_capacity(cap + 1);
    let (mut i, mut zeros) = (0, 0);
    while i < ebsp.len() && out.len() < limit {
        let start = i;
        if zeros >= 2 && ebsp[i] == 3 {
            zeros = 0;
            i += 1;
            if i == ebsp.len() {
                break;
            }
        }
        let b = ebsp[i];
        starts.push(start);
        out.push(b);
        zeros = if b == 0 { zeros + 1 } else { 0 };
        i += 1;
    }
    starts.push(i);
    (out, starts)
}

/// The SPS and PPS seen so far, by id.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ParamSets {
    sps: BTreeMap<u32, Sps>,
    pps: BTreeMap<u32, Pps>,
}

impl ParamSets {
    /// Parses a parameter set NAL unit (header byte first, emulation prevention still in);
    /// other units and ones that do not parse are ignored. Returns whether the tables changed.
    pub fn add(&mut self, nal: &[u8]) -> bool {
        let Some(&h) = nal.first() else {
            return false;
        };
        let (rbsp, _) = unescape_mapped(nal, usize::MAX);
        match h & 0x1f {
            7 => match parse_sps(&rbsp) {
                Ok((id, sps)) => self.sps.insert(id, sps) != Some(sps),
                Err(_) => false,
            },
            8 => match parse_pps(&rbsp) {
                Ok((id, pps)) => self.pps.insert(id, pps) != Some(pps),
                Err(_) => false,
            },
            _ => false,
        }
    }

    /// Adds the parameter sets carried in band in an access unit. Returns whether the tables
    /// changed.
    pub fn add_in_band(&mut self, au: &[u8], framing: Framing) -> bool {
        let mut changed = false;
        for nal in NalUnits::new(au, framing) {
            if matches!(nal.header() & 0x1f, 7 | 8) {
                changed |= self.add(nal.data());
            }
        }
        changed
    }

    fn lookup(&self, pps_id: u32) -> Result<(Sps, Pps)> {
        let pps = *self
            .pps
            .get(&pps_id)
            .ok_or(SpliceError("slice refers to an unknown PPS"))?;
        let sps = *self
            .sps
            .get(&pps.sps_id)
            .ok_or(SpliceError("PPS refers to an unknown SPS"))?;
        Ok((sps, pps))
    }
}

/// Whether the stream's coding tools are ones the splicer rewrites.
fn supported(sps: &Sps, pps: &Pps) -> bool {
    sps.frame_mbs_only && sps.poc_type != 1 && !pps.slice_groups
}

/// Whether the SEI NAL unit (emulation prevention still in) holds a recovery point message
/// with `recovery_frame_cnt` 0: pictures from this access unit on decode exactly.
fn sei_recovery(nal: &[u8]) -> Option<(bool, bool)> {
    // (has an exact recovery point, has only recovery point messages)
    let (rbsp, _) = unescape_mapped(nal, usize::MAX);
    let mut pos = 1;
    let (mut exact, mut only) = (false, true);
    while pos < rbsp.len() && !(rbsp[pos] == 0x80 && pos + 1 == rbsp.len()) {
        let read = |pos: &mut usize| -> Option<usize> {
            let mut v = 0usize;
            loop {
                let b = *rbsp.get(*pos)?;
                *pos += 1;
                v += usize::from(b);
                if b != 0xff {
                    return Some(v);
                }
            }
        };
        let ty = read(&mut pos)?;
        let size = read(&mut pos)?;
        let payload = rbsp.get(pos..pos + size)?;
        if ty == 6 {
            let mut r = BitReader::new(payload, 0);
            if r.ue().ok()? == 0 {
                exact = true;
            }
        } else {
            only = false;
        }
        pos += size;
    }
    Some((exact, only))
}

/// Whether `au` (one access unit) is an I picture with an exact recovery point that the
/// splicer can turn into an IDR, given the parameter sets known before it (in-band ones in
/// `au` are taken into account).
pub fn is_open_gop_splice_point(au: &[u8], framing: Framing, params: &ParamSets) -> bool {
    let mut params = params.clone();
    params.add_in_band(au, framing);
    let mut recovery = false;
    let mut slices = 0;
    for nal in NalUnits::new(au, framing) {
        match nal.header() & 0x1f {
            6 => recovery |= sei_recovery(nal.data()).is_some_and(|(exact, _)| exact),
            1 => {
                let (rbsp, _) = unescape_mapped(nal.data(), 32);
                let mut r = BitReader::new(&rbsp, 8);
                let ok = (|| -> Result<bool> {
                    r.ue()?;
                    let slice_type = r.ue()? % 5;
                    let (sps, pps) = params.lookup(r.ue()?)?;
                    Ok(matches!(slice_type, 2 | 4) && supported(&sps, &pps))
                })();
                if ok != Ok(true) {
                    return false;
                }
                slices += 1;
            }
            5 => return false,
            _ => {}
        }
    }
    recovery && slices > 0
}

/// One memory management control operation.
#[derive(Debug, Clone, Copy)]
enum Mmco {
    /// Short-term picture `picNum` no longer used for reference.
    Unref(i64),
    /// Every reference picture dropped, numbering restarts (operation 5).
    Reset,
}

/// The fields of a slice header that splicing changes, with where they sit.
struct SliceHeader {
    nal_ref_idc: u8,
    slice_type: u32,
    frame_num: u32,
    /// Bits `[8, frame_num_at)`: first_mb_in_slice, slice_type, pps id, colour plane.
    frame_num_at: usize,
    /// `(start, lsb)` of pic_order_cnt_lsb.
    poc_lsb: Option<(usize, u32)>,
    /// Where the fields after frame_num / POC up to the reference list modification end.
    list_mod_at: usize,
    /// Target picture numbers of the list modifications, per list (`None`: no modification).
    list_mods: [Option<Vec<i64>>; 2],
    /// Bits of pred_weight_table.
    weights: (usize, usize),
    /// Memory management operations (`None`: sliding window or none written).
    mmco: Option<Vec<Mmco>>,
    /// Bits from after dec_ref_pic_marking to the end of the header.
    rest: (usize, usize),
    /// CABAC: the byte where slice data starts.
    data_byte: Option<usize>,
}

fn parse_list_mods(
    r: &mut BitReader<'_>,
    curr: i64,
    max_frame_num: i64,
) -> Result<Option<Vec<i64>>> {
    if !r.flag()? {
        return Ok(None);
    }
    let mut pred = curr;
    let mut targets = Vec::new();
    loop {
        let idc = r.ue()?;
        match idc {
            0 | 1 => {
                let abs = i64::from(r.ue()?) + 1;
                let mut no_wrap = if idc == 0 { pred - abs } else { pred + abs };
                if no_wrap < 0 {
                    no_wrap += max_frame_num;
                } else if no_wrap >= max_frame_num {
                    no_wrap -= max_frame_num;
                }
                pred = no_wrap;
                targets.push(if no_wrap > curr {
                    no_wrap - max_frame_num
                } else {
                    no_wrap
                });
            }
            2 => {
                return Err(SpliceError(
                    "long-term reference pictures are not supported",
                ));
            }
            3 => return Ok(Some(targets)),
            _ => return Err(SpliceError("invalid reference list modification")),
        }
        if targets.len() > 32 {
            return Err(SpliceError("invalid reference list modification"));
        }
    }
}

fn parse_slice_header(rbsp: &[u8], params: &ParamSets) -> Result<(SliceHeader, Sps)> {
    let nal_ref_idc = (rbsp.first().ok_or(TRUNCATED)? >> 5) & 3;
    let nal_type = rbsp[0] & 0x1f;
    let mut r = BitReader::new(rbsp, 8);
    r.ue()?;
    let slice_type = r.ue()? % 5;
    let (sps, pps) = params.lookup(r.ue()?)?;
    if !supported(&sps, &pps) {
        return Err(SpliceError(
            "field coding, POC type 1 or slice groups are not supported",
        ));
    }
    if sps.separate_colour_plane {
        r.bits(2)?;
    }
    let frame_num_at = r.pos;
    let frame_num = r.bits(sps.log2_max_frame_num)?;
    if nal_type == 5 {
        r.ue()?;
    }
    let mut poc_lsb = None;
    if sps.poc_type == 0 {
        let at = r.pos;
        poc_lsb = Some((at, r.bits(sps.log2_max_poc_lsb)?));
        if pps.bottom_field_pic_order_in_frame_present {
            r.se()?;
        }
    }
    if pps.redundant_pic_cnt_present {
        r.ue()?;
    }
    let (is_p, is_b) = (matches!(slice_type, 0 | 3), slice_type == 1);
    if is_b {
        r.flag()?;
    }
    let (mut l0, mut l1) = (pps.num_ref_idx_l0_default, pps.num_ref_idx_l1_default);
    if (is_p || is_b) && r.flag()? {
        l0 = r.ue()? + 1;
        if is_b {
            l1 = r.ue()? + 1;
        }
    }
    if l0 > 32 || l1 > 32 {
        return Err(SpliceError("invalid reference count"));
    }
    let list_mod_at = r.pos;
    let max_frame_num = 1i64 << sps.log2_max_frame_num;
    let curr = i64::from(frame_num);
    let mut list_mods = [None, None];
    if slice_type != 2 && slice_type != 4 {
        list_mods[0] = parse_list_mods(&mut r, curr, max_frame_num)?;
        if is_b {
            list_mods[1] = parse_list_mods(&mut r, curr, max_frame_num)?;
        }
    }
    let weights_at = r.pos;
    if (pps.weighted_pred && is_p) || (pps.weighted_bipred_idc == 1 && is_b) {
        r.ue()?;
        if sps.chroma_array_type != 0 {
            r.ue()?;
        }
        let lists = if is_b { [l0, l1] } else { [l0, 0] };
        for n in lists {
            for _ in 0..n {
                if r.flag()? {
                    r.se()?;
                    r.se()?;
                }
                if sps.chroma_array_type != 0 && r.flag()? {
                    for _ in 0..4 {
                        r.se()?;
                    }
                }
            }
        }
    }
    let weights = (weights_at, r.pos);
    let mut mmco = None;
    if nal_ref_idc != 0 {
        if nal_type == 5 {
            r.bits(2)?;
        } else if r.flag()? {
            let mut ops = Vec::new();
            loop {
                match r.ue()? {
                    0 => break,
                    1 => ops.push(Mmco::Unref(curr - i64::from(r.ue()?) - 1)),
                    5 => ops.push(Mmco::Reset),
                    2..=4 | 6 => {
                        return Err(SpliceError(
                            "long-term reference pictures are not supported",
                        ));
                    }
                    _ => return Err(SpliceError("invalid memory management operation")),
                }
                if ops.len() > 64 {
                    return Err(SpliceError("invalid memory management operation"));
                }
            }
            mmco = Some(ops);
        }
    }
    let rest_at = r.pos;
    if pps.cabac && slice_type != 2 && slice_type != 4 {
        r.ue()?;
    }
    r.se()?;
    if slice_type == 3 || slice_type == 4 {
        if slice_type == 3 {
            r.flag()?;
        }
        r.se()?;
    }
    if pps.deblocking_filter_control_present && r.ue()? != 1 {
        r.se()?;
        r.se()?;
    }
    let rest = (rest_at, r.pos);
    let mut data_byte = None;
    if pps.cabac {
        while !r.pos.is_multiple_of(8) {
            if r.bit()? != 1 {
                return Err(SpliceError("invalid CABAC alignment"));
            }
        }
        data_byte = Some(r.pos / 8);
    }
    Ok((
        SliceHeader {
            nal_ref_idc,
            slice_type,
            frame_num,
            frame_num_at,
            poc_lsb,
            list_mod_at,
            list_mods,
            weights,
            mmco,
            rest,
            data_byte,
        },
        sps,
    ))
}

/// Where splicing stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// The next picture is the splice point.
    First,
    /// Renumbering the pictures after the converted IDR.
    Active,
    /// The source's numbering is right again (an IDR or a numbering reset): copy as is.
    Off,
}

/// Numbers of one picture, in the source and in the spliced stream.
#[derive(Debug, Clone, Copy)]
struct Numbering {
    /// `frame_num` of the picture in the spliced stream.
    frame_num: u32,
    /// Source frame number unwrapped, of this picture.
    src_unwrapped: i64,
    /// Spliced-stream frame number unwrapped.
    new_unwrapped: i64,
}

/// Rewrites copied access units after an open-GOP splice point (see the module docs).
#[derive(Debug)]
pub struct Splicer {
    params: ParamSets,
    phase: Phase,
    /// `frame_num` and unwrapped number of the source I frame; its POC lsb.
    i_frame_num: u32,
    i_poc_lsb: u32,
    /// Source frame number (unwrapped) of the previous reference picture, and its `frame_num`.
    prev_ref: (i64, u32),
    /// Source frame numbers `(I, I + leading]` belong to dropped leading reference pictures.
    leading_refs: Option<i64>,
}

/// `idr_pic_id` of the converted I frame: x264 numbers its first IDR (the head's) 0, and two
/// consecutive IDRs must differ.
const IDR_PIC_ID: u32 = 1;

impl Splicer {
    /// A splicer for the access units that follow a re-encoded head; `params` are the
    /// parameter sets the source used up to the splice point.
    pub fn new(params: ParamSets) -> Self {
        Self {
            params,
            phase: Phase::First,
            i_frame_num: 0,
            i_poc_lsb: 0,
            prev_ref: (0, 0),
            leading_refs: None,
        }
    }

    /// Whether later access units still need rewriting.
    pub fn is_done(&self) -> bool {
        self.phase == Phase::Off
    }

    /// Rewrites one access unit (the next copied one in decode order). `None`: keep it as it is.
    pub fn rewrite(&mut self, au: &[u8], framing: Framing) -> Result<Option<Vec<u8>>> {
        if self.phase == Phase::Off {
            return Ok(None);
        }
        self.params.add_in_band(au, framing);
        let mut numbering = None;
        let mut converting = false;
        let mut reset = false;
        let mut out = Vec::with_capacity(au.len() + 16);
        for nal in NalUnits::new(au, framing) {
            let data = nal.data();
            let ty = nal.header() & 0x1f;
            let new: Option<Vec<u8>> = match ty {
                5 => {
                    // A real IDR: from here the source's numbering is the stream's.
                    self.phase = Phase::Off;
                    return Ok(None);
                }
                1 => {
                    let (nal, n, conv, r) = self.rewrite_slice(data, numbering)?;
                    numbering = Some(n);
                    converting |= conv;
                    reset |= r;
                    Some(nal)
                }
                6 if self.phase == Phase::First => {
                    // The recovery point SEI of the frame that becomes an IDR goes.
                    match sei_recovery(data) {
                        Some((_, true)) => continue,
                        _ => None,
                    }
                }
                _ => None,
            };
            let bytes = new.as_deref().unwrap_or(data);
            match framing {
                Framing::AnnexB => out.extend_from_slice(&[0, 0, 0, 1]),
                Framing::LengthPrefixed(size) => {
                    let len = u32::try_from(bytes.len())
                        .map_err(|_| SpliceError("NAL unit too large"))?;
                    let size = usize::from(size);
                    if size < 4 && len >= 1 << (8 * size) {
                        return Err(SpliceError("NAL unit too large for its length field"));
                    }
                    out.extend_from_slice(&len.to_be_bytes()[4 - size..]);
                }
            }
            out.extend_from_slice(bytes);
        }
        if numbering.is_none() {
            // No picture in it: nothing to renumber.
            return Ok(None);
        }
        if converting {
            self.phase = Phase::Active;
        }
        if reset {
            self.phase = Phase::Off;
        }
        Ok(Some(out))
    }

    /// Rewrites one slice NAL unit. `picture`: the numbering of the picture when an earlier
    /// slice of it was seen. Returns the unit, the picture's numbering, whether it is the
    /// converted IDR and whether it resets numbering.
    fn rewrite_slice(
        &mut self,
        nal: &[u8],
        picture: Option<Numbering>,
    ) -> Result<(Vec<u8>, Numbering, bool, bool)> {
        // Slice headers are short; the first bytes almost always hold them.
        let (mut rbsp, mut starts) = unescape_mapped(nal, 256);
        let parsed = match parse_slice_header(&rbsp, &self.params) {
            Ok(p) => p,
            Err(e) if e == TRUNCATED && rbsp.len() < nal.len() => {
                (rbsp, starts) = unescape_mapped(nal, usize::MAX);
                parse_slice_header(&rbsp, &self.params)?
            }
            Err(e) => return Err(e),
        };
        let (h, sps) = parsed;
        let max_frame_num = 1i64 << sps.log2_max_frame_num;
        let converting = self.phase == Phase::First;
        if converting && !matches!(h.slice_type, 2 | 4) {
            return Err(SpliceError("the splice point is not an I picture"));
        }
        let modulo = |v: i64| v.rem_euclid(max_frame_num);
        let n = match picture {
            Some(n) => n,
            None if converting => {
                self.i_frame_num = h.frame_num;
                self.i_poc_lsb = h.poc_lsb.map_or(0, |(_, v)| v);
                Numbering {
                    frame_num: 0,
                    src_unwrapped: i64::from(h.frame_num),
                    new_unwrapped: 0,
                }
            }
            None => {
                let (prev_src, prev_fn) = self.prev_ref;
                let src_unwrapped = prev_src + modulo(i64::from(h.frame_num) - i64::from(prev_fn));
                let i = i64::from(self.i_frame_num);
                // The first picture after the I tells how many leading reference pictures
                // (between them in decode order) were left out.
                let leading = *self
                    .leading_refs
                    .get_or_insert_with(|| (src_unwrapped - i - 1).max(0));
                let new_unwrapped = src_unwrapped - i - leading;
                Numbering {
                    frame_num: modulo(new_unwrapped) as u32,
                    src_unwrapped,
                    new_unwrapped,
                }
            }
        };
        // Source picture number (relative to this picture) to the spliced stream's, or None
        // for a picture the spliced stream does not have.
        let i_unwrapped = i64::from(self.i_frame_num);
        let leading = self.leading_refs.unwrap_or(0);
        let map = |pic_num: i64| -> Option<i64> {
            let target = n.src_unwrapped - (i64::from(h.frame_num) - pic_num);
            let new_target = if target == i_unwrapped {
                0
            } else if target > i_unwrapped + leading {
                target - i_unwrapped - leading
            } else {
                return None;
            };
            Some(i64::from(n.frame_num) - (n.new_unwrapped - new_target))
        };

        let mut w = BitWriter::default();
        let first = rbsp[0];
        w.bits(
            u32::from(match (converting, h.nal_ref_idc) {
                // An IDR is always a reference picture.
                (true, 0) => 0x65,
                (true, _) => (first & 0xe0) | 5,
                (false, _) => first,
            }),
            8,
        );
        w.copy(&rbsp, 8, h.frame_num_at);
        w.bits(n.frame_num, sps.log2_max_frame_num);
        if converting {
            w.ue(IDR_PIC_ID);
        }
        let mut pos = h.frame_num_at + sps.log2_max_frame_num as usize;
        if let Some((at, lsb)) = h.poc_lsb {
            w.copy(&rbsp, pos, at);
            let bits = sps.log2_max_poc_lsb;
            let new = (i64::from(lsb) - i64::from(self.i_poc_lsb)).rem_euclid(1 << bits);
            w.bits(new as u32, bits);
            pos = at + bits as usize;
        }
        w.copy(&rbsp, pos, h.list_mod_at);
        if !matches!(h.slice_type, 2 | 4) {
            let lists = if h.slice_type == 1 { 2 } else { 1 };
            for mods in h.list_mods.iter().take(lists) {
                match mods {
                    None => w.bit(0),
                    Some(targets) => {
                        w.bit(1);
                        let curr = i64::from(n.frame_num);
                        let mut pred = curr;
                        for &t in targets {
                            let t = map(t).ok_or(SpliceError(
                                "a copied picture references one before the splice point",
                            ))?;
                            let t_no_wrap = t.rem_euclid(max_frame_num);
                            let d = t_no_wrap - pred;
                            match d {
                                // The same picture again (x264 repeats references for weighted
                                // prediction): a whole turn of picture numbers.
                                0 => {
                                    w.ue(0);
                                    w.ue((max_frame_num - 1) as u32);
                                }
                                ..0 => {
                                    w.ue(0);
                                    w.ue((-d - 1) as u32);
                                }
                                _ => {
                                    w.ue(1);
                                    w.ue((d - 1) as u32);
                                }
                            }
                            pred = t_no_wrap;
                        }
                        w.ue(3);
                    }
                }
            }
        }
        w.copy(&rbsp, h.weights.0, h.weights.1);
        let mut reset = false;
        if h.nal_ref_idc != 0 || converting {
            if converting {
                // no_output_of_prior_pics_flag 0 (the head's last frames are shown),
                // long_term_reference_flag 0.
                w.bits(0, 2);
            } else {
                let ops: Vec<Mmco> = h
                    .mmco
                    .iter()
                    .flatten()
                    .filter(|op| match op {
                        Mmco::Unref(p) => map(*p).is_some(),
                        Mmco::Reset => true,
                    })
                    .copied()
                    .collect();
                if ops.is_empty() {
                    w.bit(0);
                } else {
                    w.bit(1);
                    for op in ops {
                        match op {
                            Mmco::Unref(p) => {
                                let t = map(p).unwrap_or(0);
                                w.ue(1);
                                w.ue((i64::from(n.frame_num) - t - 1).max(0) as u32);
                            }
                            Mmco::Reset => {
                                w.ue(5);
                                reset = true;
                            }
                        }
                    }
                    w.ue(0);
                }
            }
        }
        w.copy(&rbsp, h.rest.0, h.rest.1);
        let mut out = Vec::with_capacity(nal.len() + 8);
        match h.data_byte {
            Some(data_byte) => {
                while !w.bits.is_multiple_of(8) {
                    w.bit(1);
                }
                // Re-escape the new header and the slice data up to its first non-zero byte;
                // from there the original escaped bytes are valid as they are.
                let resync = rbsp[data_byte..]
                    .iter()
                    .position(|&b| b != 0)
                    .map(|p| data_byte + p + 1);
                match resync {
                    Some(end) if end < starts.len() => {
                        w.out.extend_from_slice(&rbsp[data_byte..end]);
                        escape_into(&w.out, &mut out);
                        out.extend_from_slice(&nal[starts[end]..]);
                    }
                    _ => {
                        let (all, _) = unescape_mapped(nal, usize::MAX);
                        w.out.extend_from_slice(&all[data_byte..]);
                        escape_into(&w.out, &mut out);
                    }
                }
            }
            None => {
                // CAVLC: the slice data follows the header bit by bit.
                let all = if rbsp.len() < nal.len() {
                    unescape_mapped(nal, usize::MAX).0
                } else {
                    rbsp
                };
                w.copy(&all, h.rest.1, all.len() * 8);
                // The copied tail ends with the stop bit and zero padding of the original; a
                // shifted tail may end mid-byte or carry a zero byte too many.
                while !w.bits.is_multiple_of(8) {
                    w.bit(0);
                }
                while w.out.len() > 1 && w.out.last() == Some(&0) {
                    w.out.pop();
                }
                escape_into(&w.out, &mut out);
            }
        }
        if h.nal_ref_idc != 0 || converting {
            self.prev_ref = (n.src_unwrapped, h.frame_num);
        }
        Ok((out, n, converting, reset))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exp_golomb_round_trip() {
        let mut w = BitWriter::default();
        for v in [0u32, 1, 2, 3, 7, 8, 255, 65535] {
            w.ue(v);
        }
        w.bits(0b101, 3);
        let mut r = BitReader::new(&w.out, 0);
        for v in [0u32, 1, 2, 3, 7, 8, 255, 65535] {
            assert_eq!(r.ue().unwrap(), v);
        }
        assert_eq!(r.bits(3).unwrap(), 0b101);
        let mut r = BitReader::new(&[0b0010_0011, 0b0000_0000], 0);
        // 00100 = 3 -> se 2; 011 = 2 -> se -1.
        assert_eq!(r.se().unwrap(), 2);
        assert_eq!(r.se().unwrap(), -1);
    }

    #[test]
    fn bit_copy_aligned_and_shifted() {
        let data = [0xde, 0xad, 0xbe, 0xef, 0x12];
        for shift in 0..8 {
            let mut w = BitWriter::default();
            w.bits(0, shift);
            w.copy(&data, 3, 37);
            let mut r = BitReader::new(&w.out, shift as usize);
            let mut src = BitReader::new(&data, 3);
            for _ in 3..37 {
                assert_eq!(r.bit().unwrap(), src.bit().unwrap(), "shift {shift}");
            }
        }
    }

    #[test]
    fn unescape_maps_escaped_offsets() {
        let ebsp = [0x41, 0, 0, 3, 1, 0x80];
        let (rbsp, starts) = unescape_mapped(&ebsp, usize::MAX);
        assert_eq!(rbsp, [0x41, 0, 0, 1, 0x80]);
        // Byte 3 (the 01) starts at the emulation prevention byte in front of it.
        assert_eq!(starts, [0, 1, 2, 3, 5, 6]);
        let (part, starts) = unescape_mapped(&ebsp, 2);
        assert_eq!(part, [0x41, 0]);
        assert_eq!(starts, [0, 1, 2]);
    }

    /// `bits` as a NAL unit: header byte, RBSP trailing bits, emulation prevention.
    fn nal(header: u8, mut w: BitWriter) -> Vec<u8> {
        w.bit(1);
        while !w.bits.is_multiple_of(8) {
            w.bit(0);
        }
        let mut out = vec![header];
        escape_into(&w.out, &mut out);
        out
    }

    /// A CABAC slice: the header `w` so far, alignment ones, then `data`.
    fn cabac_slice(header: u8, mut w: BitWriter, data: &[u8]) -> Vec<u8> {
        while !w.bits.is_multiple_of(8) {
            w.bit(1);
        }
        w.out.extend_from_slice(data);
        w.bits += data.len() * 8;
        nal(header, w)
    }

    fn length_prefixed(nals: &[Vec<u8>]) -> Vec<u8> {
        let mut out = Vec::new();
        for n in nals {
            out.extend_from_slice(&(n.len() as u32).to_be_bytes());
            out.extend_from_slice(n);
        }
        out
    }

    /// High profile, 4-bit frame_num, 6-bit POC lsb; CABAC, weighted P prediction.
    fn parameter_sets() -> (Vec<u8>, Vec<u8>) {
        let mut w = BitWriter::default();
        w.bits(100, 8);
        w.bits(0, 8);
        w.bits(30, 8);
        w.ue(0); // sps id
        w.ue(1); // 4:2:0
        w.ue(0);
        w.ue(0);
        w.bit(0);
        w.bit(0); // no scaling matrices
        w.ue(0); // log2_max_frame_num 4
        w.ue(0); // POC type 0
        w.ue(2); // log2_max_poc_lsb 6
        w.ue(4); // references
        w.bit(0);
        w.ue(19);
        w.ue(14);
        w.bit(1); // frame_mbs_only
        w.bit(1);
        w.bit(0);
        w.bit(0);
        let sps = nal(0x67, w);
        let mut w = BitWriter::default();
        w.ue(0);
        w.ue(0);
        w.bit(1); // CABAC
        w.bit(0);
        w.ue(0);
        w.ue(0);
        w.ue(0);
        w.bit(1); // weighted P
        w.bits(2, 2);
        w.ue(0); // se 0
        w.ue(0);
        w.ue(0);
        w.bit(1); // deblocking control
        w.bit(0);
        w.bit(0);
        let pps = nal(0x68, w);
        (sps, pps)
    }

    /// Slice data that needs emulation prevention and starts with zero bytes.
    const DATA: [u8; 9] = [0, 0, 1, 0xab, 0, 0, 0, 3, 0x5c];

    /// The source: an open-GOP I frame (frame_num 13, POC lsb 44) with its recovery point SEI,
    /// then a P frame after one dropped leading reference picture (frame_num 15) that names the
    /// I in its reference list modification and drops two pictures the clip lacks.
    fn open_gop_pair() -> (Vec<u8>, Vec<u8>) {
        let sei = {
            let mut w = BitWriter::default();
            w.bits(6, 8);
            w.bits(1, 8);
            w.bits(0x84, 8);
            nal(0x06, w)
        };
        let mut w = BitWriter::default();
        w.ue(0);
        w.ue(7); // I
        w.ue(0);
        w.bits(13, 4);
        w.bits(44, 6);
        w.bit(0); // sliding window
        w.ue(0); // qp delta 0
        w.ue(0); // deblocking on
        w.ue(0);
        w.ue(0);
        let i = cabac_slice(0x41, w, &DATA);
        let mut w = BitWriter::default();
        w.ue(0);
        w.ue(5); // P
        w.ue(0);
        w.bits(15, 4);
        w.bits(46, 6);
        w.bit(0); // no override
        w.bit(1); // list modification: picNum 15 - 2 = 13 (the I)
        w.ue(0);
        w.ue(1);
        w.ue(3);
        w.ue(0); // pred_weight_table: denominators, one entry without weights
        w.ue(0);
        w.bit(0);
        w.bit(0);
        w.bit(1); // MMCO: unmark 12 (before the I) and 14 (the dropped leading picture)
        w.ue(1);
        w.ue(2);
        w.ue(1);
        w.ue(0);
        w.ue(0);
        w.ue(0); // cabac_init_idc
        w.ue(0); // qp delta
        w.ue(1); // deblocking off
        let p = cabac_slice(0x41, w, &DATA);
        (length_prefixed(&[sei, i]), length_prefixed(&[p]))
    }

    fn slices(au: &[u8]) -> Vec<Vec<u8>> {
        NalUnits::new(au, Framing::LengthPrefixed(4))
            .filter(|n| matches!(n.header() & 0x1f, 1 | 5))
            .map(|n| unescape_mapped(n.data(), usize::MAX).0)
            .collect()
    }

    #[test]
    fn open_gop_i_frame_becomes_idr_and_followers_are_renumbered() {
        let (sps, pps) = parameter_sets();
        let mut params = ParamSets::default();
        assert!(params.add(&sps));
        assert!(params.add(&pps));
        let (i, p) = open_gop_pair();
        assert!(is_open_gop_splice_point(
            &i,
            Framing::LengthPrefixed(4),
            &params
        ));
        assert!(!is_open_gop_splice_point(
            &p,
            Framing::LengthPrefixed(4),
            &params
        ));

        let mut splicer = Splicer::new(params.clone());
        let idr = splicer
            .rewrite(&i, Framing::LengthPrefixed(4))
            .unwrap()
            .expect("rewritten");
        // The recovery point SEI is gone; one slice, now an IDR.
        assert_eq!(NalUnits::new(&idr, Framing::LengthPrefixed(4)).count(), 1);
        let s = slices(&idr);
        assert_eq!(s[0][0], 0x45);
        let (h, _) = parse_slice_header(&s[0], &params).unwrap();
        assert_eq!((h.frame_num, h.poc_lsb.map(|p| p.1)), (0, Some(0)));
        assert_eq!(s[0][h.data_byte.unwrap()..], [&DATA[..], &[0x80]].concat());

        let p2 = splicer
            .rewrite(&p, Framing::LengthPrefixed(4))
            .unwrap()
            .expect("rewritten");
        let s = slices(&p2);
        assert_eq!(s[0][0], 0x41);
        let (h, _) = parse_slice_header(&s[0], &params).unwrap();
        assert_eq!((h.frame_num, h.poc_lsb.map(|p| p.1)), (1, Some(2)));
        // The I is picture number 0 now; both unmarked pictures are not in the clip.
        assert_eq!(h.list_mods[0], Some(vec![0]));
        assert!(h.mmco.is_none());
        assert_eq!(s[0][h.data_byte.unwrap()..], [&DATA[..], &[0x80]].concat());
        assert!(!splicer.is_done());

        // A real IDR ends the rewriting.
        let mut w = BitWriter::default();
        w.ue(0);
        w.ue(7);
        w.ue(0);
        w.bits(0, 4);
        w.ue(0);
        w.bits(0, 6);
        w.bits(0, 2);
        w.ue(0);
        w.ue(0);
        w.ue(0);
        w.ue(0);
        let idr_src = length_prefixed(&[cabac_slice(0x65, w, &DATA)]);
        assert_eq!(
            splicer.rewrite(&idr_src, Framing::LengthPrefixed(4)),
            Ok(None)
        );
        assert!(splicer.is_done());
    }

    #[test]
    fn mutated_streams_never_panic() {
        let (sps, pps) = parameter_sets();
        let (i, p) = open_gop_pair();
        let mut seed = 0x9e37_79b9u32;
        let mut next = move || {
            seed = seed.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            seed
        };
        for _ in 0..3000 {
            let mut units = [sps.clone(), pps.clone(), i.clone(), p.clone()];
            for _ in 0..1 + next() % 4 {
                let u = &mut units[(next() % 4) as usize];
                let at = (next() as usize) % u.len();
                match next() % 3 {
                    0 => u[at] ^= 1 << (next() % 8),
                    1 => u[at] = (next() >> 24) as u8,
                    _ => u.truncate(at.max(1)),
                }
            }
            let [sps, pps, i, p] = units;
            let mut params = ParamSets::default();
            params.add(&sps);
            params.add(&pps);
            let _ = is_open_gop_splice_point(&i, Framing::LengthPrefixed(4), &params);
            let mut splicer = Splicer::new(params);
            let _ = splicer.rewrite(&i, Framing::LengthPrefixed(4));
            let _ = splicer.rewrite(&p, Framing::LengthPrefixed(4));
            let _ = splicer.rewrite(&p, Framing::AnnexB);
        }
    }

    #[test]
    fn garbage_never_panics() {
        let mut seed = 0x1234_5678u32;
        let mut params = ParamSets::default();
        for round in 0..2000 {
            let len = (round % 64) + 1;
            let bytes: Vec<u8> = (0..len)
                .map(|_| {
                    seed = seed.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
                    (seed >> 24) as u8
                })
                .collect();
            params.add(&bytes);
            let mut au = vec![0, 0, 0, len as u8];
            au.extend_from_slice(&bytes);
            let _ = is_open_gop_splice_point(&au, Framing::LengthPrefixed(4), &params);
            let _ = Splicer::new(params.clone()).rewrite(&au, Framing::LengthPrefixed(4));
            let _ = sei_recovery(&bytes);
        }
    }
}
