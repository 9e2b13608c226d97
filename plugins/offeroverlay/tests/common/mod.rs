// SPDX-License-Identifier: MPL-2.0
//! Helpers shared by the offeroverlay tests: a harness around the element, frame analysis in
//! RGBA, and temporary files.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::sync::Once;
use std::sync::atomic::{AtomicUsize, Ordering};

use gst::prelude::*;
use gst_check::Harness;
use gst_video::prelude::*;

pub fn init() {
    static INIT: Once = Once::new();
    INIT.call_once(|| {
        gst::init().unwrap();
        gstofferoverlay::plugin_register_static().expect("offeroverlay registers");
    });
}

/// A fresh directory under the system temp dir, removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> Self {
        static N: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "offeroverlay-{tag}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }

    pub fn write(&self, name: &str, text: &str) -> String {
        let p = self.0.join(name);
        std::fs::write(&p, text).unwrap();
        p.to_str().unwrap().to_string()
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Writes a PNG of a vertical colour gradient.
pub fn write_png(path: &Path, w: u32, h: u32) {
    let img = image::RgbaImage::from_fn(w, h, |x, y| {
        image::Rgba([(x * 255 / w) as u8, (y * 255 / h) as u8, 128, 255])
    });
    img.save(path).unwrap();
}

/// Background colour of the test video (videotestsrc solid-color, 0xAARRGGBB).
pub const BACKGROUND: u32 = 0xff3a_7bd5;

/// The element inside a harness fed by a solid-colour videotestsrc, its output converted to
/// RGBA for analysis (a capsfilter first forces plain system memory so cards get blended).
pub struct Run {
    pub h: Harness,
    pub overlay: gst::Element,
    pub bus: gst::Bus,
    pub width: u32,
    pub height: u32,
    pub fps: u32,
}

impl Run {
    pub fn new(
        format: &str,
        width: u32,
        height: u32,
        fps: u32,
        props: &[(&str, glib::Value)],
    ) -> Self {
        Self::with_tail(
            format,
            width,
            height,
            fps,
            props,
            &format!(
                "capsfilter caps=video/x-raw,format={format} ! videoconvert ! \
                 capsfilter caps=video/x-raw,format=RGBA"
            ),
        )
    }

    pub fn with_tail(
        format: &str,
        width: u32,
        height: u32,
        fps: u32,
        props: &[(&str, glib::Value)],
        tail: &str,
    ) -> Self {
        init();
        let mut h = Harness::new_parse(&format!("offeroverlay name=o ! {tail}"));
        let bin = h.element().unwrap().downcast::<gst::Bin>().unwrap();
        let overlay = bin.by_name("o").unwrap();
        for (name, value) in props {
            overlay.set_property_from_value(name, value);
        }
        let bus = gst::Bus::new();
        bin.set_bus(Some(&bus));
        h.add_src_parse(
            &format!(
                "videotestsrc pattern=solid-color foreground-color={BACKGROUND} ! capsfilter caps=\
                 video/x-raw,format={format},width={width},height={height},framerate={fps}/1"
            ),
            false,
        );
        h.play();
        Run {
            h,
            overlay,
            bus,
            width,
            height,
            fps,
        }
    }

    /// Pushes one frame through; returns it with the custom events sent just before it.
    pub fn step(&mut self) -> (Frame, Vec<gst::Structure>) {
        self.h.push_from_src().expect("frame pushed");
        let buf = self.h.pull().expect("frame out");
        let mut events = Vec::new();
        while let Some(ev) = self.h.try_pull_event() {
            if let gst::EventView::CustomDownstream(c) = ev.view()
                && let Some(s) = c.structure()
            {
                events.push(s.to_owned());
            }
        }
        (Frame::from_rgba(&buf, self.width, self.height), events)
    }

    pub fn messages(&self) -> Vec<gst::Message> {
        std::iter::from_fn(|| self.bus.pop()).collect()
    }

    pub fn stats(&self) -> gst::Structure {
        self.overlay.property::<gst::Structure>("stats")
    }
}

impl Drop for Run {
    fn drop(&mut self) {
        if let Some(e) = self.h.element() {
            let _ = e.set_state(gst::State::Null);
        }
    }
}

/// An RGBA frame.
pub struct Frame {
    pub pts: gst::ClockTime,
    pub width: u32,
    pub height: u32,
    pub data: Vec<u8>,
}

impl Frame {
    pub fn from_rgba(buf: &gst::Buffer, width: u32, height: u32) -> Self {
        let info = gst_video::VideoInfo::builder(gst_video::VideoFormat::Rgba, width, height)
            .build()
            .unwrap();
        let frame =
            gst_video::VideoFrameRef::from_buffer_ref_readable(buf.as_ref(), &info).unwrap();
        let stride = frame.plane_stride()[0] as usize;
        let plane = frame.plane_data(0).unwrap();
        let mut data = Vec::with_capacity((width * height * 4) as usize);
        for y in 0..height as usize {
            data.extend_from_slice(&plane[y * stride..y * stride + width as usize * 4]);
        }
        Frame {
            pts: buf.pts().unwrap(),
            width,
            height,
            data,
        }
    }

    pub fn rgb(&self, x: u32, y: u32) -> [u8; 3] {
        let i = ((y * self.width + x) * 4) as usize;
        [self.data[i], self.data[i + 1], self.data[i + 2]]
    }

    /// Sum of channel differences from the ARGB colour.
    pub fn diff_at(&self, x: u32, y: u32, argb: u32) -> u32 {
        let [r, g, b] = self.rgb(x, y);
        let c = |s: u32| ((argb >> s) & 0xff) as i32;
        ((r as i32 - c(16)).abs() + (g as i32 - c(8)).abs() + (b as i32 - c(0)).abs()) as u32
    }

    /// Bounding box (x0, y0, x1, y1 exclusive) of pixels clearly off the background.
    pub fn card_bbox(&self) -> Option<(u32, u32, u32, u32)> {
        let mut bbox: Option<(u32, u32, u32, u32)> = None;
        for y in 0..self.height {
            for x in 0..self.width {
                if self.diff_at(x, y, BACKGROUND) > 30 {
                    let b = bbox.get_or_insert((x, y, x + 1, y + 1));
                    b.0 = b.0.min(x);
                    b.1 = b.1.min(y);
                    b.2 = b.2.max(x + 1);
                    b.3 = b.3.max(y + 1);
                }
            }
        }
        bbox
    }

    /// Rows in column `x` that are off the background, as runs (y0, y1 exclusive).
    pub fn runs_in_column(&self, x: u32) -> Vec<(u32, u32)> {
        let mut runs = Vec::new();
        let mut start = None;
        for y in 0..self.height {
            let on = self.diff_at(x, y, BACKGROUND) > 30;
            match (on, start) {
                (true, None) => start = Some(y),
                (false, Some(s)) => {
                    runs.push((s, y));
                    start = None;
                }
                _ => {}
            }
        }
        if let Some(s) = start {
            runs.push((s, self.height));
        }
        runs
    }

    /// Mean difference from the background over a region: how strongly a card shows there.
    pub fn strength(&self, (x0, y0, x1, y1): (u32, u32, u32, u32)) -> f64 {
        let mut sum = 0u64;
        for y in y0..y1 {
            for x in x0..x1 {
                sum += self.diff_at(x, y, BACKGROUND) as u64;
            }
        }
        sum as f64 / ((x1 - x0) * (y1 - y0)) as f64
    }
}

/// Where the element's defaults put a bottom-right card of `card_width` (fraction) in a
/// `w`x`h` frame: (x0, x1 exclusive, y1 exclusive).
pub fn expected_bottom_right(w: u32, h: u32, card_width: f64, margin: f64) -> (i64, i64, i64) {
    let cw = (card_width * w as f64).round() as i64;
    let mx = (margin * w as f64).round() as i64;
    let my = (margin * h as f64).round() as i64;
    (w as i64 - mx - cw, w as i64 - mx, h as i64 - my)
}

pub fn offer_toml(id: &str, extra: &str) -> String {
    format!("[[offers]]\nid = \"{id}\"\ntitle = \"Offer {id}\"\nprice = \"€19\"\n{extra}\n")
}

pub fn clock_field(s: &gst::StructureRef, name: &str) -> gst::ClockTime {
    gst::ClockTime::from_nseconds(s.get::<u64>(name).unwrap())
}
