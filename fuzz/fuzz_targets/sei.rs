//! The SEI parser of `hybridlive-stamp`: NAL unit splitting, emulation prevention, stamp
//! payloads and SEI messages, on any bytes a decoder or a network could hand it.
#![no_main]

use arbitrary::Arbitrary;
use hybridlive_stamp::{
    CaptureStamp, Codec, Framing, MAX_STREAM_ID_LEN, NalUnits, escape_into, find_insert_point,
    framed_sei_nal, locate_stamp, unescape,
};
use libfuzzer_sys::fuzz_target;

#[derive(Arbitrary, Debug)]
struct Input {
    h265: bool,
    framing: u8,
    capture_time_ns: u64,
    frame: u32,
    stream_id: String,
    au: Vec<u8>,
}

fuzz_target!(|input: Input| {
    let codec = if input.h265 { Codec::H265 } else { Codec::H264 };
    let framing = match input.framing % 4 {
        0 => Framing::AnnexB,
        1 => Framing::LengthPrefixed(1),
        2 => Framing::LengthPrefixed(2),
        _ => Framing::LengthPrefixed(4),
    };
    let au = input.au.as_slice();

    for unit in NalUnits::new(au, framing) {
        let _ = unit.header();
        let data = unit.data();
        assert!(unit.prefix_start <= unit.start && unit.start < au.len());
        // Emulation prevention is lossless.
        let mut escaped = Vec::new();
        escape_into(data, &mut escaped);
        assert_eq!(unescape(&escaped), data);
        let _ = CaptureStamp::from_payload(data);
    }
    if let Some(point) = find_insert_point(codec, framing, au) {
        assert!(point.offset < au.len());
    }
    if let Ok(Some(found)) = locate_stamp(codec, framing, au) {
        assert!(found.prefix_start < au.len());
    }

    // A stamp written in front of whatever follows is read back as written.
    let stamp = CaptureStamp {
        capture_time_ns: input.capture_time_ns,
        frame: input.frame,
        stream_id: input.stream_id,
    };
    let Some(mut stamped) = framed_sei_nal(codec, framing, &stamp, 1) else {
        return;
    };
    stamped.extend_from_slice(au);
    let read = locate_stamp(codec, framing, &stamped)
        .expect("a freshly written stamp is well-formed")
        .expect("a freshly written stamp is found");
    assert_eq!(read.prefix_start, 0);
    assert_eq!(read.stamp.capture_time_ns, stamp.capture_time_ns);
    assert_eq!(read.stamp.frame, stamp.frame);
    assert!(read.stamp.stream_id.len() <= MAX_STREAM_ID_LEN);
    assert!(stamp.stream_id.starts_with(&read.stamp.stream_id));
    let mut payload = Vec::new();
    stamp.write_payload(&mut payload);
    assert_eq!(
        CaptureStamp::from_payload(&payload).as_ref(),
        Ok(&read.stamp)
    );
});
