// SPDX-License-Identifier: MPL-2.0

//! GStreamer steps shared by the two pipelines that read a recording: the cutter and the
//! loudness analysis.

use std::sync::{Mutex, MutexGuard};

use anyhow::Context;
use gst::prelude::*;

/// Locks `m`, also after a thread panicked holding it: the data is plain state that stays
/// usable, and a reader must report an error rather than panic in turn.
pub fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// A new element of `factory`, or an error naming the missing element.
pub fn make(factory: &str) -> anyhow::Result<gst::Element> {
    gst::ElementFactory::make(factory)
        .build()
        .with_context(|| format!("GStreamer element {factory} is missing"))
}

/// Calls `link` with the pipeline for every stream `parsebin` exposes, for as long as the
/// pipeline lives (the handler holds it weakly, so that it does not keep itself alive).
pub fn on_parsed_stream(
    pipeline: &gst::Pipeline,
    parsebin: &gst::Element,
    link: impl Fn(&gst::Pipeline, &gst::Pad) + Send + Sync + 'static,
) {
    let pipeline_weak = pipeline.downgrade();
    parsebin.connect_pad_added(move |_, pad| {
        let Some(pipeline) = pipeline_weak.upgrade() else {
            return;
        };
        link(&pipeline, pad);
    });
}

/// The stream time `buffer` on `pad` is presented at: its PTS (or DTS), no earlier than its
/// segment's start, since what a demuxer's edit list hides before it (AAC priming) is not
/// presented.
pub fn presented_stream_time(pad: &gst::Pad, buffer: &gst::BufferRef) -> Option<gst::ClockTime> {
    let seg = pad
        .sticky_event::<gst::event::Segment>(0)
        .and_then(|e| e.segment().downcast_ref::<gst::ClockTime>().cloned())?;
    let t = buffer.pts().or(buffer.dts())?;
    seg.to_stream_time(t.max(seg.start().unwrap_or(t)))
}
