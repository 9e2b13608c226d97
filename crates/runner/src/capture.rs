//! Capture stamps: the wall-clock time a frame was captured, as latencystamp attaches it to
//! buffers. Read by the outputs (a recording's start) and the Low-Latency HLS store
//! (`EXT-X-PROGRAM-DATE-TIME`); a module of its own so that neither imports the other for it.

/// The capture time latencystamp attached to a buffer, UTC nanoseconds.
pub(crate) fn capture_utc_ns(buffer: &gst::BufferRef) -> Option<u64> {
    let caps = gst::Caps::builder("timestamp/x-unix").build();
    buffer
        .iter_meta::<gst::ReferenceTimestampMeta>()
        .find(|m| m.reference().is_subset(&caps))
        .map(|m| m.timestamp().nseconds())
}
