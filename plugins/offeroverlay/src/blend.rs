// SPDX-License-Identifier: MPL-2.0

//! Blending cards into frames without going through ARGB per frame.
//!
//! `gst_video_overlay_composition_blend()` unpacks every touched line of the frame to AYUV or
//! ARGB, blends in floating-point-free but per-pixel generic code and packs it back: about
//! 15 ns a card pixel here. A card changes rarely, so it is converted once into the frame's
//! own layout (premultiplied Y, U, V planes with matching alpha for 4:2:0, premultiplied bytes
//! in the frame's byte order for packed RGB), and each frame only runs the "over" operator on
//! bytes, which the compiler vectorises. Other formats fall back to GStreamer's blend.

use gst_video::VideoFormat;
use gst_video::prelude::*;

/// Colour transform of the frame, enough to convert card pixels once.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct YuvMatrix {
    kr: f32,
    kb: f32,
    full_range: bool,
}

impl YuvMatrix {
    pub fn from_info(info: &gst_video::VideoInfo) -> Self {
        let c = info.colorimetry();
        let (kr, kb) = match c.matrix() {
            gst_video::VideoColorMatrix::Bt709 => (0.2126, 0.0722),
            gst_video::VideoColorMatrix::Bt2020 => (0.2627, 0.0593),
            gst_video::VideoColorMatrix::Smpte240m => (0.212, 0.087),
            _ => (0.299, 0.114),
        };
        YuvMatrix {
            kr,
            kb,
            full_range: c.range() == gst_video::VideoColorRange::Range0_255,
        }
    }

    /// Premultiplied (r, g, b, a) in 0..=255 to premultiplied (y, u, v), each clamped to <= a.
    fn convert(&self, r: f32, g: f32, b: f32, a: f32) -> (u8, u8, u8) {
        let kg = 1.0 - self.kr - self.kb;
        let luma = self.kr * r + kg * g + self.kb * b;
        let pb = (b - luma) / (2.0 * (1.0 - self.kb));
        let pr = (r - luma) / (2.0 * (1.0 - self.kr));
        let offset = 128.0 * a / 255.0;
        let (y, u, v) = if self.full_range {
            (luma, pb + offset, pr + offset)
        } else {
            let scale = 224.0 / 255.0;
            (
                luma * 219.0 / 255.0 + 16.0 * a / 255.0,
                pb * scale + offset,
                pr * scale + offset,
            )
        };
        let q = |x: f32| x.round().clamp(0.0, a) as u8;
        (q(y), q(u), q(v))
    }
}

/// Which formats have a fast path, and how their bytes are laid out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    I420,
    Nv12,
    /// Packed 32-bit RGB with the byte positions of R, G, B and A (or padding).
    Packed4([usize; 4]),
}

impl Layout {
    pub fn for_format(format: VideoFormat) -> Option<Layout> {
        Some(match format {
            VideoFormat::I420 => Layout::I420,
            VideoFormat::Nv12 => Layout::Nv12,
            VideoFormat::Rgba | VideoFormat::Rgbx => Layout::Packed4([0, 1, 2, 3]),
            VideoFormat::Bgra | VideoFormat::Bgrx => Layout::Packed4([2, 1, 0, 3]),
            VideoFormat::Argb | VideoFormat::Xrgb => Layout::Packed4([1, 2, 3, 0]),
            VideoFormat::Abgr | VideoFormat::Xbgr => Layout::Packed4([3, 2, 1, 0]),
            _ => return None,
        })
    }
}

/// A card converted for one frame layout and one position parity.
#[derive(Debug)]
pub struct Prepared {
    x: i32,
    y: i32,
    width: usize,
    height: usize,
    planes: Vec<PreparedPlane>,
}

/// Premultiplied source bytes and the alpha of each byte, for one plane of the frame.
#[derive(Debug)]
struct PreparedPlane {
    plane: u32,
    /// First byte column and row in the frame plane.
    x0: usize,
    y0: usize,
    /// Bytes per row and rows.
    row_bytes: usize,
    rows: usize,
    src: Vec<u8>,
    alpha: Vec<u8>,
}

/// Reads a card's premultiplied cairo ARGB32 pixels (native endian words).
fn argb_pixels(buffer: &gst::BufferRef, width: usize, height: usize) -> Option<Vec<[f32; 4]>> {
    let meta = buffer.meta::<gst_video::VideoMeta>()?;
    let stride = *meta.stride().first()? as usize;
    let offset = *meta.offset().first()?;
    let map = buffer.map_readable().ok()?;
    let mut out = Vec::with_capacity(width * height);
    for row in 0..height {
        let start = offset + row * stride;
        let line = map.get(start..start + width * 4)?;
        for px in line.chunks_exact(4) {
            let w = u32::from_ne_bytes([px[0], px[1], px[2], px[3]]);
            out.push([
                ((w >> 16) & 0xff) as f32,
                ((w >> 8) & 0xff) as f32,
                (w & 0xff) as f32,
                (w >> 24) as f32,
            ]);
        }
    }
    Some(out)
}

impl Prepared {
    /// Converts a card (premultiplied ARGB buffer of `width`x`height`) placed at `x`, `y`.
    pub fn new(
        pixels: &gst::BufferRef,
        x: i32,
        y: i32,
        width: u32,
        height: u32,
        layout: Layout,
        matrix: YuvMatrix,
    ) -> Option<Prepared> {
        if x < 0 || y < 0 {
            return None;
        }
        let (w, h) = (width as usize, height as usize);
        let px = argb_pixels(pixels, w, h)?;
        let (ux, uy) = (x as usize, y as usize);
        let planes = match layout {
            Layout::Packed4(pos) => {
                let mut src = vec![0u8; w * h * 4];
                let mut alpha = vec![0u8; w * h * 4];
                for (i, [r, g, b, a]) in px.iter().enumerate() {
                    let o = i * 4;
                    src[o + pos[0]] = *r as u8;
                    src[o + pos[1]] = *g as u8;
                    src[o + pos[2]] = *b as u8;
                    src[o + pos[3]] = *a as u8;
                    alpha[o..o + 4].fill(*a as u8);
                }
                vec![PreparedPlane {
                    plane: 0,
                    x0: ux * 4,
                    y0: uy,
                    row_bytes: w * 4,
                    rows: h,
                    src,
                    alpha,
                }]
            }
            Layout::I420 | Layout::Nv12 => {
                let mut luma = vec![0u8; w * h];
                let mut luma_a = vec![0u8; w * h];
                // Chroma covers the 2x2 blocks the card touches, in frame chroma coordinates.
                let (cx0, cy0) = (ux / 2, uy / 2);
                let (cx1, cy1) = ((ux + w).div_ceil(2), (uy + h).div_ceil(2));
                let (cw, ch) = (cx1 - cx0, cy1 - cy0);
                let mut acc = vec![[0f32; 3]; cw * ch];
                for (i, [r, g, b, a]) in px.iter().enumerate() {
                    let (yv, u, v) = matrix.convert(*r, *g, *b, *a);
                    luma[i] = yv;
                    luma_a[i] = *a as u8;
                    let (col, row) = (ux + i % w, uy + i / w);
                    let c = &mut acc[(row / 2 - cy0) * cw + (col / 2 - cx0)];
                    c[0] += u as f32;
                    c[1] += v as f32;
                    c[2] += *a;
                }
                let q = |x: f32| (x / 4.0).round() as u8;
                let mut planes = vec![PreparedPlane {
                    plane: 0,
                    x0: ux,
                    y0: uy,
                    row_bytes: w,
                    rows: h,
                    src: luma,
                    alpha: luma_a,
                }];
                if layout == Layout::I420 {
                    for (plane, k) in [(1u32, 0usize), (2, 1)] {
                        planes.push(PreparedPlane {
                            plane,
                            x0: cx0,
                            y0: cy0,
                            row_bytes: cw,
                            rows: ch,
                            src: acc.iter().map(|c| q(c[k]).min(q(c[2]))).collect(),
                            alpha: acc.iter().map(|c| q(c[2])).collect(),
                        });
                    }
                } else {
                    planes.push(PreparedPlane {
                        plane: 1,
                        x0: cx0 * 2,
                        y0: cy0,
                        row_bytes: cw * 2,
                        rows: ch,
                        src: acc
                            .iter()
                            .flat_map(|c| [q(c[0]).min(q(c[2])), q(c[1]).min(q(c[2]))])
                            .collect(),
                        alpha: acc.iter().flat_map(|c| [q(c[2]), q(c[2])]).collect(),
                    });
                }
                planes
            }
        };
        Some(Prepared {
            x,
            y,
            width: w,
            height: h,
            planes,
        })
    }

    /// Whether this conversion is for a card at `x`, `y` (chroma depends on the parity).
    pub fn placed_at(&self, x: i32, y: i32, width: u32, height: u32) -> bool {
        self.x == x && self.y == y && self.width == width as usize && self.height == height as usize
    }

    /// Blends onto the frame with a global alpha of `global` (0..=255). Returns false, having
    /// touched nothing, if the card does not fit in the frame.
    pub fn blend(
        &self,
        frame: &mut gst_video::VideoFrameRef<&mut gst::BufferRef>,
        global: u8,
    ) -> bool {
        let fits = self.planes.iter().all(|p| {
            let (plane_w, plane_h) = plane_bytes(frame, p.plane);
            p.x0 + p.row_bytes <= plane_w && p.y0 + p.rows <= plane_h
        });
        if !fits {
            return false;
        }
        for p in &self.planes {
            let stride = frame.plane_stride()[p.plane as usize] as usize;
            let Ok(data) = frame.plane_data_mut(p.plane) else {
                return false;
            };
            for row in 0..p.rows {
                let d0 = (p.y0 + row) * stride + p.x0;
                let s0 = row * p.row_bytes;
                let dst = &mut data[d0..d0 + p.row_bytes];
                let src = &p.src[s0..s0 + p.row_bytes];
                let alpha = &p.alpha[s0..s0 + p.row_bytes];
                if global == 255 {
                    over(dst, src, alpha);
                } else {
                    over_faded(dst, src, alpha, global);
                }
            }
        }
        true
    }
}

fn plane_bytes(
    frame: &gst_video::VideoFrameRef<&mut gst::BufferRef>,
    plane: u32,
) -> (usize, usize) {
    let info = frame.info();
    let finfo = info.format_info();
    let comp = finfo.plane().iter().position(|&p| p == plane).unwrap_or(0) as u8;
    let w = finfo.scale_width(comp, info.width()) as usize;
    let h = finfo.scale_height(comp, info.height()) as usize;
    let bytes_per_px = match (info.format(), plane) {
        (VideoFormat::Nv12, 1) => 2,
        (VideoFormat::I420, _) | (VideoFormat::Nv12, _) => 1,
        _ => 4,
    };
    (w * bytes_per_px, h)
}

/// x / 255 rounded, exact for x <= 65025.
#[inline(always)]
fn div255(x: u16) -> u16 {
    let t = x + 128;
    (t + (t >> 8)) >> 8
}

/// Porter-Duff "over" with premultiplied `src`: dst = src + dst * (1 - alpha).
#[inline(never)]
fn over(dst: &mut [u8], src: &[u8], alpha: &[u8]) {
    for ((d, &s), &a) in dst.iter_mut().zip(src).zip(alpha) {
        *d = div255(s as u16 * 255 + *d as u16 * (255 - a as u16)) as u8;
    }
}

/// "over" with the source scaled by a global alpha (fades, opacity).
#[inline(never)]
fn over_faded(dst: &mut [u8], src: &[u8], alpha: &[u8], global: u8) {
    let g = global as u16;
    for ((d, &s), &a) in dst.iter_mut().zip(src).zip(alpha) {
        let s = div255(s as u16 * g);
        let a = div255(a as u16 * g);
        *d = div255(s * 255 + *d as u16 * (255 - a)) as u8;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn div255_is_exact() {
        for x in 0..=65025u32 {
            assert_eq!(div255(x as u16) as u32, (x + 127) / 255, "{x}");
        }
    }

    #[test]
    fn over_keeps_bounds() {
        let mut dst = [200u8, 0, 255, 17];
        over(&mut dst, &[255, 0, 10, 128], &[255, 0, 10, 128]);
        assert_eq!(dst[0], 255);
        assert_eq!(dst[1], 0);
        assert_eq!(dst[2], 255);
    }
}
