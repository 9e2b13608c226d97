// SPDX-License-Identifier: MPL-2.0

//! Drawing an offer card with Cairo and Pango into premultiplied ARGB pixels that a
//! `GstVideoOverlayRectangle` can carry.
//!
//! A card is drawn once per content and size. The countdown line is a separate small
//! rectangle inside the card, so that the ticking digits re-render on their own once a second.

use crate::offer::{DecodedImage, Offer, QrMatrix, Theme};

/// Pixel format of cairo's ARGB32 surfaces in memory, as a GStreamer video format.
#[cfg(target_endian = "little")]
pub const SURFACE_FORMAT: gst_video::VideoFormat = gst_video::VideoFormat::Bgra;
#[cfg(target_endian = "big")]
pub const SURFACE_FORMAT: gst_video::VideoFormat = gst_video::VideoFormat::Argb;

/// Light modules around the code, as the QR specification asks.
const QR_QUIET_ZONE: usize = 4;

/// Modules across a QR code as drawn, quiet zone included.
fn qr_total_modules(qr: &QrMatrix) -> usize {
    qr.width() + 2 * QR_QUIET_ZONE
}

/// The decoded image as a cairo surface to paint from.
fn image_surface(img: &DecodedImage) -> Result<cairo::ImageSurface, cairo::Error> {
    cairo::ImageSurface::create_for_data(
        img.pixels().to_vec(),
        cairo::Format::ARgb32,
        img.width() as i32,
        img.height() as i32,
        img.width() as i32 * 4,
    )
}

/// A rendered card body: premultiplied pixels and where the countdown goes inside it.
pub struct RenderedCard {
    pub pixels: gst::Buffer,
    pub width: u32,
    pub height: u32,
    /// x, y, width, height of the countdown line within the card.
    pub countdown_slot: Option<(u32, u32, u32, u32)>,
    /// Characters drawn as boxes because no installed font has them.
    pub missing_glyphs: i32,
}

fn set_argb(cr: &cairo::Context, argb: u32, alpha_scale: f64) {
    let c = |shift: u32| ((argb >> shift) & 0xff) as f64 / 255.0;
    cr.set_source_rgba(c(16), c(8), c(0), c(24) * alpha_scale);
}

fn rounded_rect(cr: &cairo::Context, x: f64, y: f64, w: f64, h: f64, r: f64) {
    let r = r.min(w / 2.0).min(h / 2.0).max(0.0);
    use std::f64::consts::{FRAC_PI_2, PI};
    cr.new_sub_path();
    cr.arc(x + w - r, y + r, r, -FRAC_PI_2, 0.0);
    cr.arc(x + w - r, y + h - r, r, 0.0, FRAC_PI_2);
    cr.arc(x + r, y + h - r, r, FRAC_PI_2, PI);
    cr.arc(x + r, y + r, r, PI, 3.0 * FRAC_PI_2);
    cr.close_path();
}

struct Fonts {
    base_px: f64,
    family: String,
}

impl Fonts {
    fn layout(
        &self,
        cr: &cairo::Context,
        text: &str,
        scale: f64,
        bold: bool,
        width: i32,
        max_lines: i32,
    ) -> pango::Layout {
        let layout = pangocairo::functions::create_layout(cr);
        let mut desc = pango::FontDescription::from_string(&self.family);
        desc.set_absolute_size(self.base_px * scale * pango::SCALE as f64);
        if bold {
            desc.set_weight(pango::Weight::Bold);
        }
        layout.set_font_description(Some(&desc));
        layout.set_width(width.max(1) * pango::SCALE);
        layout.set_wrap(pango::WrapMode::WordChar);
        layout.set_ellipsize(pango::EllipsizeMode::End);
        // A negative height caps the number of lines; the last one is ellipsized.
        layout.set_height(-max_lines);
        layout.set_text(text);
        layout
    }
}

fn layout_height(layout: &pango::Layout) -> i32 {
    layout.pixel_size().1
}

fn font_options() -> Option<cairo::FontOptions> {
    let mut options = cairo::FontOptions::new().ok()?;
    // Sub-pixel (coloured) anti-aliasing smears once chroma is subsampled.
    options.set_antialias(cairo::Antialias::Gray);
    options.set_hint_style(cairo::HintStyle::Slight);
    Some(options)
}

fn new_context(surface: &cairo::ImageSurface) -> Result<cairo::Context, String> {
    let cr = cairo::Context::new(surface).map_err(|e| e.to_string())?;
    if let Some(options) = font_options() {
        cr.set_font_options(&options);
    }
    Ok(cr)
}

fn surface_to_buffer(mut surface: cairo::ImageSurface) -> Result<gst::Buffer, String> {
    surface.flush();
    let (w, h, stride) = (
        surface.width() as u32,
        surface.height() as u32,
        surface.stride(),
    );
    let data = surface.data().map_err(|e| e.to_string())?;
    let mut buffer = gst::Buffer::from_mut_slice(data.to_vec());
    drop(data);
    gst_video::VideoMeta::add_full(
        buffer.get_mut().ok_or("fresh buffer is not writable")?,
        gst_video::VideoFrameFlags::empty(),
        SURFACE_FORMAT,
        w,
        h,
        &[0],
        &[stride],
    )
    .map_err(|e| e.to_string())?;
    Ok(buffer)
}

/// Card geometry shared by the body and the countdown.
fn base_font_px(card_width: u32) -> f64 {
    (card_width as f64 * 0.058).max(6.0)
}

/// Text shown on the countdown line for `remaining_secs` seconds left: `label` with `{time}`
/// replaced by the time left (`MM:SS`, or `H:MM:SS` from an hour on).
pub fn countdown_text(label: &str, remaining_secs: u64) -> String {
    let (h, m, s) = (
        remaining_secs / 3600,
        (remaining_secs / 60) % 60,
        remaining_secs % 60,
    );
    let time = if h > 0 {
        format!("{h}:{m:02}:{s:02}")
    } else {
        format!("{m:02}:{s:02}")
    };
    label.replacen("{time}", &time, 1)
}

/// Draws the card body for `offer` at `width` pixels wide; the height follows the content.
pub fn render_card(offer: &Offer, theme: &Theme, width: u32) -> Result<RenderedCard, String> {
    let s = width as f64;
    let pad = (s * 0.06).round().max(2.0);
    let fonts = Fonts {
        base_px: base_font_px(width),
        family: theme.font.clone(),
    };
    let gap = (fonts.base_px * 0.45).round();
    let inner_w = (s - 2.0 * pad).max(8.0);

    // Measure on a scratch surface: the card height depends on how the text wraps.
    let scratch =
        cairo::ImageSurface::create(cairo::Format::ARgb32, 1, 1).map_err(|e| e.to_string())?;
    let mcr = new_context(&scratch)?;

    let image_size = offer.image.as_ref().map(|img| {
        let aspect = img.height() as f64 / img.width() as f64;
        let mut w = inner_w;
        let mut h = (w * aspect).round();
        let max_h = (s * 0.5).round();
        if h > max_h {
            h = max_h;
            w = (h / aspect).round();
        }
        (w, h)
    });

    let qr_px = offer.qr.as_ref().map(|qr| {
        let total = qr_total_modules(qr) as f64;
        // Whole pixels per module keep the code crisp; 3 px survive H.264 at 720p.
        let module = ((s * 0.42) / total).floor().max(3.0);
        (module, module * total)
    });

    let col_w = match qr_px {
        Some((_, px)) => (inner_w - px - gap).max(inner_w * 0.3),
        None => inner_w,
    };
    let col_wi = col_w as i32;
    let title = fonts.layout(&mcr, &offer.spec.title, 1.2, true, inner_w as i32, 2);
    let title_h = layout_height(&title) as f64;
    let subtitle = offer
        .spec
        .subtitle
        .as_deref()
        .map(|t| fonts.layout(&mcr, t, 0.85, false, col_wi, 2));
    let price = fonts.layout(&mcr, &offer.spec.price, 1.5, true, col_wi, 1);
    let badge_pad = (fonts.base_px * 0.4).round();
    let badge = offer
        .spec
        .badge
        .as_deref()
        .map(|t| fonts.layout(&mcr, t, 0.8, true, (col_w - 2.0 * badge_pad) as i32, 1));

    let mut text_h = 0.0;
    if let Some(l) = &subtitle {
        text_h += layout_height(l) as f64 + gap;
    }
    text_h += layout_height(&price) as f64;
    if let Some(l) = &badge {
        text_h += gap + layout_height(l) as f64 + badge_pad;
    }
    let row_h = text_h.max(qr_px.map_or(0.0, |(_, px)| px));

    let countdown_h = if offer.spec.countdown {
        let probe = fonts.layout(
            &mcr,
            &countdown_text(offer.countdown_label(), 3599),
            0.9,
            true,
            inner_w as i32,
            1,
        );
        Some(layout_height(&probe) as f64)
    } else {
        None
    };

    let mut height = pad;
    if let Some((_, h)) = image_size {
        height += h + gap;
    }
    height += title_h + gap * 0.6 + row_h;
    if let Some(h) = countdown_h {
        height += gap + h;
    }
    height += pad;
    let height = height.ceil() as u32;

    let surface = cairo::ImageSurface::create(cairo::Format::ARgb32, width as i32, height as i32)
        .map_err(|e| format!("cannot allocate a {width}x{height} card: {e}"))?;
    let cr = new_context(&surface)?;
    let draw = |cr: &cairo::Context| -> Result<Option<(u32, u32, u32, u32)>, cairo::Error> {
        let radius = theme.corner_radius * s;
        rounded_rect(cr, 0.0, 0.0, s, height as f64, radius);
        set_argb(cr, theme.background, 1.0);
        cr.fill()?;

        let mut y = pad;
        if let (Some(img), Some((w, h))) = (offer.image.as_ref(), image_size) {
            let x = pad + ((inner_w - w) / 2.0).round();
            cr.save()?;
            rounded_rect(cr, x, y, w, h, radius * 0.6);
            cr.clip();
            cr.translate(x, y);
            cr.scale(w / img.width() as f64, h / img.height() as f64);
            let src = image_surface(img)?;
            cr.set_source_surface(&src, 0.0, 0.0)?;
            cr.source().set_filter(cairo::Filter::Good);
            cr.paint()?;
            cr.restore()?;
            y += h + gap;
        }

        let show = |cr: &cairo::Context, layout: &pango::Layout, x: f64, y: f64| {
            pangocairo::functions::update_layout(cr, layout);
            cr.move_to(x, y);
            pangocairo::functions::show_layout(cr, layout);
        };
        set_argb(cr, theme.text, 1.0);
        show(cr, &title, pad, y);
        let y = y + title_h + gap * 0.6;
        let mut ty = y;
        if let Some(l) = &subtitle {
            set_argb(cr, theme.text, 0.8);
            show(cr, l, pad, ty);
            ty += layout_height(l) as f64 + gap;
        }
        set_argb(cr, theme.accent, 1.0);
        show(cr, &price, pad, ty);
        ty += layout_height(&price) as f64;
        if let Some(l) = &badge {
            ty += gap;
            // The layout is as wide as the column; its text starts where the paragraph's
            // direction puts it (right-aligned for Arabic or Hebrew), so the pill goes around
            // the text's logical extent, not at the column's left edge.
            let (_, text) = l.pixel_extents();
            let pill_h = text.height() as f64 + badge_pad;
            rounded_rect(
                cr,
                pad + text.x() as f64,
                ty,
                text.width() as f64 + 2.0 * badge_pad,
                pill_h,
                pill_h / 2.0,
            );
            set_argb(cr, theme.accent, 1.0);
            cr.fill()?;
            set_argb(cr, theme.background | 0xff00_0000, 1.0);
            show(cr, l, pad + badge_pad, ty + badge_pad / 2.0);
        }

        if let (Some(qr), Some((module, px))) = (offer.qr.as_ref(), qr_px) {
            let qx = (s - pad - px).round();
            let qy = y.round();
            cr.save()?;
            cr.set_antialias(cairo::Antialias::None);
            cr.set_source_rgb(1.0, 1.0, 1.0);
            cr.rectangle(qx, qy, px, px);
            cr.fill()?;
            cr.set_source_rgb(0.0, 0.0, 0.0);
            for my in 0..qr.width() {
                for mx in 0..qr.width() {
                    if qr.is_dark(mx, my) {
                        cr.rectangle(
                            qx + (mx + QR_QUIET_ZONE) as f64 * module,
                            qy + (my + QR_QUIET_ZONE) as f64 * module,
                            module,
                            module,
                        );
                    }
                }
            }
            cr.fill()?;
            cr.restore()?;
        }

        Ok(countdown_h.map(|h| {
            let cy = y + row_h + gap;
            (pad as u32, cy as u32, inner_w as u32, h.ceil() as u32)
        }))
    };
    let missing_glyphs = [
        Some(&title),
        subtitle.as_ref(),
        Some(&price),
        badge.as_ref(),
    ]
    .into_iter()
    .flatten()
    .map(|l| l.unknown_glyphs_count())
    .sum();
    let countdown_slot = draw(&cr).map_err(|e| format!("drawing the card failed: {e}"))?;
    drop(cr);
    Ok(RenderedCard {
        pixels: surface_to_buffer(surface)?,
        width,
        height,
        countdown_slot,
        missing_glyphs,
    })
}

/// Draws the countdown line ("ends in 04:59", or the offer's own `label`) on a transparent
/// background.
pub fn render_countdown(
    theme: &Theme,
    card_width: u32,
    slot: (u32, u32),
    label: &str,
    remaining_secs: u64,
) -> Result<gst::Buffer, String> {
    let (w, h) = slot;
    let surface =
        cairo::ImageSurface::create(cairo::Format::ARgb32, w.max(1) as i32, h.max(1) as i32)
            .map_err(|e| e.to_string())?;
    let cr = new_context(&surface)?;
    let fonts = Fonts {
        base_px: base_font_px(card_width),
        family: theme.font.clone(),
    };
    let layout = fonts.layout(
        &cr,
        &countdown_text(label, remaining_secs),
        0.9,
        true,
        w as i32,
        1,
    );
    set_argb(&cr, theme.text, 0.9);
    cr.move_to(0.0, 0.0);
    pangocairo::functions::show_layout(&cr, &layout);
    drop(cr);
    surface_to_buffer(surface)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::offer::DEFAULT_COUNTDOWN_LABEL;

    /// An offer as the `show-offer` JSON `json` describes it, without image or QR code: drawing
    /// needs a well-formed offer, not the schedule's validation.
    fn offer_from_json(json: &str) -> Offer {
        Offer {
            spec: serde_json::from_str(json).unwrap(),
            image: None,
            qr: None,
            end: None,
        }
    }

    fn theme() -> Theme {
        Theme {
            font: "Sans".into(),
            background: 0xff00_0000,
            text: 0xffff_ffff,
            accent: 0xffff_ff00,
            corner_radius: 0.04,
        }
    }

    #[test]
    fn long_text_stays_inside_the_card() {
        let long = "Extraordinarily long workshop kit name ".repeat(20);
        let offer = offer_from_json(&format!(
            r#"{{"id": "l", "title": "{long}", "subtitle": "{long}", "price": "{long}", "badge": "{long}"}}"#
        ));
        let short = offer_from_json(r#"{"id": "s", "title": "Kit", "price": "1"}"#);
        gst::init().unwrap();
        let card = render_card(&offer, &theme(), 400).unwrap();
        let small = render_card(&short, &theme(), 400).unwrap();
        assert_eq!(card.width, 400);
        // Title and subtitle wrap to two lines each, price and badge are one ellipsized line:
        // the card grows by a bounded amount, not with the text.
        assert!(
            card.height < small.height * 3,
            "{} vs {}",
            card.height,
            small.height
        );
    }

    /// Columns of the badge's row band holding ink of the badge text (opaque and dark) that
    /// lie outside the pill (accent-coloured), on a card whose background is transparent so
    /// that the badge text, drawn in the background colour made opaque, shows wherever it lands.
    fn badge_ink_outside_pill(badge: &str) -> (usize, usize) {
        let offer = offer_from_json(&format!(
            r#"{{"id": "b", "title": "T", "price": "P", "badge": "{badge}"}}"#
        ));
        let theme = Theme {
            background: 0x0000_0000,
            text: 0xffff_0000,
            accent: 0xff00_ff00,
            ..theme()
        };
        let card = render_card(&offer, &theme, 1920 / 3).unwrap();
        let map = card.pixels.map_readable().unwrap();
        let stride = map.len() / card.height as usize;
        // Cairo's ARGB32 is native-endian: B, G, R, A in memory here.
        let px = |x: usize, y: usize| {
            let o = y * stride + x * 4;
            (map[o + 2], map[o + 1], map[o], map[o + 3])
        };
        let is_pill = |(r, g, b, a): (u8, u8, u8, u8)| a > 200 && g > 200 && r < 60 && b < 60;
        let is_ink = |(r, g, b, a): (u8, u8, u8, u8)| a > 128 && r < 60 && g < 60 && b < 60;
        let (w, h) = (card.width as usize, card.height as usize);
        // The badge is the lowest element: its band is the last run of rows with pill pixels
        // (the green price above it is separated by a gap).
        let rows_with_pill: Vec<usize> = (0..h)
            .filter(|&y| (0..w).any(|x| is_pill(px(x, y))))
            .collect();
        let bottom = *rows_with_pill.last().expect("a pill");
        let mut top = bottom;
        while top > 0 && rows_with_pill.contains(&(top - 1)) {
            top -= 1;
        }
        let band = top..=bottom;
        let pill_x: Vec<usize> = band
            .clone()
            .flat_map(|y| (0..w).filter(move |&x| is_pill(px(x, y))))
            .collect();
        let (left, right) = (*pill_x.iter().min().unwrap(), *pill_x.iter().max().unwrap());
        let mut inside = 0;
        let mut outside = 0;
        for y in band {
            for x in 0..w {
                if is_ink(px(x, y)) {
                    if (left..=right).contains(&x) {
                        inside += 1;
                    } else {
                        outside += 1;
                    }
                }
            }
        }
        (inside, outside)
    }

    #[test]
    fn badge_text_stays_inside_its_pill_in_every_direction() {
        gst::init().unwrap();
        for badge in [
            "12 kits left",
            "متبقي ١٢",
            "נשארו 12 ערכות",
            "Only ١٢ متبقي left",
            "متبقي 12 kits",
        ] {
            let (inside, outside) = badge_ink_outside_pill(badge);
            assert!(inside > 50, "{badge}: no badge text drawn in the pill");
            assert_eq!(
                outside, 0,
                "{badge}: {outside} text pixels outside the pill"
            );
        }
    }

    #[test]
    fn the_countdown_speaks_the_offers_language() {
        assert_eq!(countdown_text(DEFAULT_COUNTDOWN_LABEL, 29), "ends in 00:29");
        assert_eq!(countdown_text("ينتهي خلال {time}", 29), "ينتهي خلال 00:29");
        assert_eq!(countdown_text("残り {time}", 3723), "残り 1:02:03");
    }

    #[test]
    fn scripts_and_emoji_have_fonts() {
        let offer = offer_from_json(
            r#"{"id": "i", "title": "Aquarelle 🎨 Ölfarben", "subtitle": "مجموعة الرسم · ערכת ציור · Набор · 水彩セット · 水彩套装 · जलरंग · ชุดสีน้ำ", "price": "€29"}"#,
        );
        gst::init().unwrap();
        let card = render_card(&offer, &theme(), 400).unwrap();
        assert_eq!(card.missing_glyphs, 0, "install fonts (scripts/setup)");
    }
}
