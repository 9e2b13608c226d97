// SPDX-License-Identifier: MPL-2.0

/**
 * SECTION:element-offeroverlay
 *
 * Burns timed commerce offer cards (title, subtitle, price, badge, image, QR code, countdown)
 * into raw video, so that the live stream, the HLS fallback, the recording and every clip show
 * the same card, and keeps the offer timeline.
 *
 * Offers come from a schedule file (property `schedule`, JSON when the name ends in `.json`,
 * TOML otherwise) and from the action signals `show-offer` (an offer as JSON) and
 * `hide-offer` (an id). A schedule file is a list `offers`, each with:
 *
 * - `id` (string, unique), `title`, `price` (strings), optional `subtitle`, `badge`,
 * - `image`: PNG or JPEG path, relative to the schedule file,
 * - `qr`: URL shown as a QR code, `countdown`: true shows "ends in MM:SS" until `end`,
 * - `start`, `end`: seconds of running time (`90`, `"01:30"`, `"90s"`) or a UTC time
 *   (`"2026-11-27T10:30:00Z"`, or a TOML date-time); or `duration` (seconds) instead of `end`,
 * - `anchor`: overrides the `anchor` property for this card; `background-color`,
 *   `text-color`, `accent-color` ("#RRGGBB", "#AARRGGBB" or 0xAARRGGBB) override the theme.
 *
 * Without `start` a schedule offer starts at running time 0 and a `show-offer` offer on the
 * next frame; without `end` it stays until `hide-offer`. Cards sharing an anchor are stacked
 * away from its edge, `margin-y` apart; a card that would leave the frame or cover another is
 * left out, with a warning. Setting `schedule` again, or emitting `reload`, reloads
 * the file while playing; a bad file then leaves the previous schedule in force and posts a
 * warning naming file, line, column and field (at start it is an error).
 *
 * ## Timeline
 *
 * When an offer appears (its start is reached) and when it is gone (its end, including the
 * fade-out, is reached), the element posts an element message named `offer-shown` or
 * `offer-hidden`, and sends downstream, just before that frame, a serialized custom downstream
 * event whose structure is named `hybridlive/offer`. Offers still on screen at EOS get their
 * `offer-hidden` (and event, ahead of EOS) at the end of the last frame. Both carry:
 *
 * - `id` (string): the offer id; `title`, `price` (strings); `subtitle`, `badge`, `qr`
 *   (strings, only when the offer has them),
 * - `running-time` (guint64, ns): running time of the frame,
 * - `stream-time` (guint64, ns; GST_CLOCK_TIME_NONE if unknown): stream time of the frame,
 * - `utc` (string, RFC 3339 with milliseconds): wall-clock time of the frame, from a
 *   `timestamp/x-unix` reference timestamp meta when the buffer has one, else from the
 *   pipeline clock,
 * - the event also has `action` (string): `shown` or `hidden`.
 *
 * ## Rendering
 *
 * A card is drawn with Cairo and Pango once per content and size, into premultiplied ARGB:
 * by the thread that emits `show-offer` or reloads the schedule once the frame size is known,
 * else on the first frame that shows it. Its countdown is a separate small rectangle re-drawn
 * once a second. When downstream draws `GstVideoOverlayCompositionMeta` itself (it
 * requires the caps feature `meta:GstVideoOverlayComposition`, or lists the meta in the
 * allocation query) the cards are attached as that meta; otherwise (also when downstream takes
 * any caps) plain caps are negotiated and only the card area is blended. Crop meta is taken
 * out of the allocation answer, so an upstream `videocrop` crops the frames for real and cards
 * sit in the visible picture. With no card visible the element is in passthrough and does not touch the frames.
 *
 * ## Example
 *
 * ```sh
 * gst-launch-1.0 videotestsrc is-live=true ! offeroverlay schedule=offers.toml ! autovideosink
 * ```
 */
use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use gst::glib;
use gst::prelude::*;
use gst::subclass::prelude::*;
use gst_base::prelude::*;
use gst_base::subclass::prelude::*;
use gst_video::subclass::prelude::*;

use crate::blend::{Layout, Prepared, YuvMatrix};
use crate::card::{self, RenderedCard};
use crate::offer::{Anchor, Offer, Theme, TimeSpec};
use crate::schedule;
use hybridlive_offer_timeline::{Action, TimelineEntry};

static CAT: LazyLock<gst::DebugCategory> = LazyLock::new(|| {
    gst::DebugCategory::new(
        "offeroverlay",
        gst::DebugColorFlags::empty(),
        Some("Offer card overlay"),
    )
});

const DEFAULT_ANCHOR: Anchor = Anchor::BottomRight;
const DEFAULT_CARD_WIDTH: f64 = 0.3;
const DEFAULT_MARGIN: f64 = 0.03;
const DEFAULT_FADE_MS: u32 = 400;
const DEFAULT_OPACITY: f64 = 1.0;
const DEFAULT_FONT: &str = "Sans";
const DEFAULT_BACKGROUND: u32 = 0xeb1c_1f26;
const DEFAULT_TEXT: u32 = 0xffff_ffff;
const DEFAULT_ACCENT: u32 = 0xffff_c94a;
const DEFAULT_CORNER_RADIUS: f64 = 0.04;

const FORMATS: &[gst_video::VideoFormat] = &[
    gst_video::VideoFormat::I420,
    gst_video::VideoFormat::Yv12,
    gst_video::VideoFormat::Nv12,
    gst_video::VideoFormat::Nv21,
    gst_video::VideoFormat::Y42b,
    gst_video::VideoFormat::Y444,
    gst_video::VideoFormat::Ayuv,
    gst_video::VideoFormat::Yuy2,
    gst_video::VideoFormat::Uyvy,
    gst_video::VideoFormat::Rgba,
    gst_video::VideoFormat::Bgra,
    gst_video::VideoFormat::Argb,
    gst_video::VideoFormat::Abgr,
    gst_video::VideoFormat::Rgbx,
    gst_video::VideoFormat::Bgrx,
    gst_video::VideoFormat::Xrgb,
    gst_video::VideoFormat::Xbgr,
    gst_video::VideoFormat::Rgb,
    gst_video::VideoFormat::Bgr,
];

/// Card width in pixels for a frame `frame_width` wide.
fn card_width_px(settings: &Settings, frame_width: u32) -> u32 {
    ((settings.card_width * frame_width as f64).round() as u32)
        .clamp(16.min(frame_width), frame_width)
}

// Lock order: `settings` may be taken alone or before `state`, never the other way round.
// Messages are posted and events pushed only with neither held.

#[derive(Debug, Clone)]
struct Settings {
    schedule: Option<String>,
    anchor: Anchor,
    card_width: f64,
    margin_x: f64,
    margin_y: f64,
    fade_in_ms: u32,
    fade_out_ms: u32,
    opacity: f64,
    font: String,
    background_color: u32,
    text_color: u32,
    accent_color: u32,
    corner_radius: f64,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            schedule: None,
            anchor: DEFAULT_ANCHOR,
            card_width: DEFAULT_CARD_WIDTH,
            margin_x: DEFAULT_MARGIN,
            margin_y: DEFAULT_MARGIN,
            fade_in_ms: DEFAULT_FADE_MS,
            fade_out_ms: DEFAULT_FADE_MS,
            opacity: DEFAULT_OPACITY,
            font: DEFAULT_FONT.into(),
            background_color: DEFAULT_BACKGROUND,
            text_color: DEFAULT_TEXT,
            accent_color: DEFAULT_ACCENT,
            corner_radius: DEFAULT_CORNER_RADIUS,
        }
    }
}

impl Settings {
    fn theme(&self) -> Theme {
        Theme {
            font: self.font.clone(),
            background: self.background_color,
            text: self.text_color,
            accent: self.accent_color,
            corner_radius: self.corner_radius,
        }
    }
}

/// A card drawn for one offer at one size and theme.
struct CardCache {
    width: u32,
    theme: Theme,
    body: RenderedCard,
    rect: Option<gst_video::VideoOverlayRectangle>,
    countdown: Option<(u64, gst_video::VideoOverlayRectangle)>,
    /// The body and countdown converted for the frame format, when blending ourselves.
    prepared_body: Option<Arc<Prepared>>,
    prepared_countdown: Option<Arc<Prepared>>,
}

struct Entry {
    offer: Arc<Offer>,
    from_schedule: bool,
    /// None until the first frame for a `show-offer` offer without `start`.
    start: Option<TimeSpec>,
    end: Option<TimeSpec>,
    visible: bool,
    card: Option<CardCache>,
    /// Last frame found no room for the card at its anchor (warned once).
    out_of_room: bool,
}

impl Entry {
    fn new(offer: Arc<Offer>, from_schedule: bool) -> Self {
        let start = match (offer.spec.start, from_schedule) {
            (Some(s), _) => Some(s),
            (None, true) => Some(TimeSpec::RunningTime(gst::ClockTime::ZERO)),
            (None, false) => None,
        };
        let end = offer.end;
        Entry {
            offer,
            from_schedule,
            start,
            end,
            visible: false,
            card: None,
            out_of_room: false,
        }
    }

    fn replace_offer(&mut self, offer: Arc<Offer>, from_schedule: bool) {
        let fresh = Entry::new(offer, from_schedule);
        if !fresh.offer.same_content(&self.offer) {
            self.card = None;
        }
        self.offer = fresh.offer;
        self.from_schedule = from_schedule;
        self.start = fresh.start;
        self.end = fresh.end;
    }
}

#[derive(Default)]
struct State {
    started: bool,
    info: Option<gst_video::VideoInfo>,
    entries: Vec<Entry>,
    composition: Option<gst_video::VideoOverlayComposition>,
    composition_key: Vec<u32>,
    /// What `transform_ip` blends itself (card, global alpha); empty = use `composition`.
    blend_plan: Vec<(Arc<Prepared>, u8)>,
    attach_caps: bool,
    attach_query: bool,
    last_running_time: Option<gst::ClockTime>,
    /// Running time, stream time and UTC where the last frame ends, for `offer-hidden` at EOS.
    last_frame_end: Option<(gst::ClockTime, Option<gst::ClockTime>, SystemTime)>,
}

// SAFETY: the only non-Send parts are pango-free GStreamer mini objects (Send) and plain data;
// nothing in State is tied to a thread.

#[derive(Default)]
struct Stats {
    frames: AtomicU64,
    frames_passthrough: AtomicU64,
    frames_blended: AtomicU64,
    frames_attached: AtomicU64,
    card_renders: AtomicU64,
    countdown_renders: AtomicU64,
    offers_visible: AtomicU64,
}

/// Something to tell the application once no lock is held.
enum Notice {
    Timeline {
        shown: bool,
        offer: Arc<Offer>,
        running_time: gst::ClockTime,
        stream_time: Option<gst::ClockTime>,
        utc: SystemTime,
    },
    Warning {
        id: String,
        error: String,
    },
}

#[derive(Default, glib::Properties)]
#[properties(wrapper_type = super::OfferOverlay)]
pub struct OfferOverlay {
    #[property(name = "schedule", nick = "Schedule file",
        blurb = "Path of the offer schedule: JSON if it ends in .json, TOML otherwise. Setting it while running reloads it (NULL = no schedule)",
        mutable_playing, get, set = Self::set_schedule, type = Option<String>, member = schedule)]
    #[property(name = "anchor", nick = "Anchor",
        blurb = "Where cards sit in the frame (one of nine positions); offers may override it",
        mutable_playing, get, set, type = Anchor, member = anchor, builder(DEFAULT_ANCHOR))]
    #[property(name = "card-width", nick = "Card width",
        blurb = "Card width as a fraction of the frame width (0.05 to 1)",
        mutable_playing, controllable, get, set, type = f64, member = card_width, minimum = 0.05, maximum = 1.0, default = DEFAULT_CARD_WIDTH)]
    #[property(name = "margin-x", nick = "Horizontal margin",
        blurb = "Distance of cards from the left/right edge as a fraction of the frame width (0 to 0.5)",
        mutable_playing, controllable, get, set, type = f64, member = margin_x, minimum = 0.0, maximum = 0.5, default = DEFAULT_MARGIN)]
    #[property(name = "margin-y", nick = "Vertical margin",
        blurb = "Distance of cards from the top/bottom edge and between stacked cards, as a fraction of the frame height (0 to 0.5)",
        mutable_playing, controllable, get, set, type = f64, member = margin_y, minimum = 0.0, maximum = 0.5, default = DEFAULT_MARGIN)]
    #[property(name = "fade-in", nick = "Fade-in duration",
        blurb = "Time a card takes to fade in after its start, in milliseconds (0 to 60000, 0 = cut)",
        mutable_playing, controllable, get, set, type = u32, member = fade_in_ms, maximum = 60_000, default = DEFAULT_FADE_MS)]
    #[property(name = "fade-out", nick = "Fade-out duration",
        blurb = "Time a card takes to fade out before its end, in milliseconds (0 to 60000, 0 = cut)",
        mutable_playing, controllable, get, set, type = u32, member = fade_out_ms, maximum = 60_000, default = DEFAULT_FADE_MS)]
    #[property(name = "opacity", nick = "Opacity",
        blurb = "Opacity of every card (0 = invisible to 1 = as drawn)",
        mutable_playing, controllable, get, set, type = f64, member = opacity, minimum = 0.0, maximum = 1.0, default = DEFAULT_OPACITY)]
    #[property(name = "font", nick = "Font",
        blurb = "Pango font family and style of the card text, e.g. \"Sans\" or \"Noto Sans\"; sizes follow the card width",
        mutable_playing, get, set, type = String, member = font)]
    #[property(name = "background-color", nick = "Background colour",
        blurb = "Card background colour as 0xAARRGGBB",
        mutable_playing, controllable, get, set, type = u32, member = background_color, default = DEFAULT_BACKGROUND)]
    #[property(name = "text-color", nick = "Text colour",
        blurb = "Colour of title, subtitle and countdown as 0xAARRGGBB",
        mutable_playing, controllable, get, set, type = u32, member = text_color, default = DEFAULT_TEXT)]
    #[property(name = "accent-color", nick = "Accent colour",
        blurb = "Colour of the price and the badge as 0xAARRGGBB",
        mutable_playing, controllable, get, set, type = u32, member = accent_color, default = DEFAULT_ACCENT)]
    #[property(name = "corner-radius", nick = "Corner radius",
        blurb = "Card corner radius as a fraction of the card width (0 to 0.5)",
        mutable_playing, controllable, get, set, type = f64, member = corner_radius, minimum = 0.0, maximum = 0.5, default = DEFAULT_CORNER_RADIUS)]
    settings: Mutex<Settings>,
    state: Mutex<State>,
    stats: Stats,
}

impl OfferOverlay {
    fn stats_structure(&self) -> gst::Structure {
        let s = &self.stats;
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        gst::Structure::builder("offeroverlay-stats")
            .field("frames", get(&s.frames))
            .field("frames-passthrough", get(&s.frames_passthrough))
            .field("frames-blended", get(&s.frames_blended))
            .field("frames-attached", get(&s.frames_attached))
            .field("card-renders", get(&s.card_renders))
            .field("countdown-renders", get(&s.countdown_renders))
            .field("offers-visible", get(&s.offers_visible))
            .build()
    }

    fn set_schedule(&self, path: Option<String>) {
        let started = {
            let mut settings = self.settings.lock().unwrap();
            settings.schedule = path;
            self.state.lock().unwrap().started
        };
        if started {
            self.reload();
        }
    }

    /// Reloads the schedule while running; keeps the old one and warns when the new one is bad.
    fn reload(&self) -> bool {
        let path = self.settings.lock().unwrap().schedule.clone();
        let offers = match path {
            Some(p) => match schedule::load_schedule(&PathBuf::from(p)) {
                Ok(offers) => offers,
                Err(err) => {
                    gst::element_imp_warning!(
                        self,
                        gst::ResourceError::Read,
                        ("Schedule not reloaded, the previous one stays in force: {err}")
                    );
                    return false;
                }
            },
            None => Vec::new(),
        };
        // Draw new or changed cards here rather than on the streaming thread.
        let unchanged: HashSet<String> = {
            let state = self.state.lock().unwrap();
            state
                .entries
                .iter()
                .filter(|e| e.card.is_some())
                .filter(|e| {
                    offers
                        .iter()
                        .any(|o| o.spec.id == e.offer.spec.id && o.same_content(&e.offer))
                })
                .map(|e| e.offer.spec.id.clone())
                .collect()
        };
        let to_draw: Vec<Arc<Offer>> = offers
            .iter()
            .filter(|o| !unchanged.contains(&o.spec.id))
            .cloned()
            .collect();
        let mut drawn = self.predraw(&to_draw).into_iter();
        let cards = offers
            .iter()
            .map(|o| {
                if unchanged.contains(&o.spec.id) {
                    None
                } else {
                    drawn.next().flatten()
                }
            })
            .collect();
        let fade_out = Duration::from_millis(self.settings.lock().unwrap().fade_out_ms as u64);
        let mut state = self.state.lock().unwrap();
        Self::apply_schedule(&mut state, offers, cards, fade_out);
        gst::info!(CAT, imp = self, "schedule reloaded");
        true
    }

    fn apply_schedule(
        state: &mut State,
        offers: Vec<Arc<Offer>>,
        mut cards: Vec<Option<CardCache>>,
        fade_out: Duration,
    ) {
        let now = TimeSpec::RunningTime(state.last_running_time.unwrap_or_default());
        let new_ids: HashSet<String> = offers.iter().map(|o| o.spec.id.clone()).collect();
        // Offers dropped from the schedule fade out if they are on screen, else go at once.
        state.entries.retain_mut(|e| {
            if !e.from_schedule || new_ids.contains(&e.offer.spec.id) {
                return true;
            }
            if e.visible {
                e.from_schedule = false;
                e.end = Some(now.plus(fade_out));
                true
            } else {
                false
            }
        });
        cards.resize_with(offers.len(), || None);
        for (offer, card) in offers.into_iter().zip(cards) {
            Self::install(state, offer, true, card);
        }
    }

    fn show_offer(&self, json: &str) -> bool {
        let offer = match schedule::parse_offer_json(json) {
            Ok(o) => Arc::new(o),
            Err(err) => {
                gst::element_imp_warning!(
                    self,
                    gst::StreamError::Format,
                    ("show-offer ignored: {err}")
                );
                return false;
            }
        };
        let card = self.predraw(std::slice::from_ref(&offer)).pop().flatten();
        let mut state = self.state.lock().unwrap();
        Self::install(&mut state, offer, false, card);
        true
    }

    /// Adds an offer, or replaces the one with its id, with its card if already drawn.
    fn install(state: &mut State, offer: Arc<Offer>, from_schedule: bool, card: Option<CardCache>) {
        let entry = match state
            .entries
            .iter_mut()
            .position(|e| e.offer.spec.id == offer.spec.id)
        {
            Some(i) => {
                state.entries[i].replace_offer(offer, from_schedule);
                &mut state.entries[i]
            }
            None => {
                state.entries.push(Entry::new(offer, from_schedule));
                state.entries.last_mut().expect("just pushed")
            }
        };
        if entry.card.is_none() {
            entry.card = card;
        }
    }

    fn hide_offer(&self, id: &str) -> bool {
        let fade_out = Duration::from_millis(self.settings.lock().unwrap().fade_out_ms as u64);
        let mut state = self.state.lock().unwrap();
        let now = TimeSpec::RunningTime(state.last_running_time.unwrap_or_default());
        let Some(e) = state.entries.iter_mut().find(|e| e.offer.spec.id == id) else {
            gst::info!(CAT, imp = self, "hide-offer: no offer `{id}`");
            return false;
        };
        let hide_at = if e.visible { now.plus(fade_out) } else { now };
        // An offer already ending sooner keeps its end (and its fade).
        let ends_sooner = matches!(
            (e.end, hide_at),
            (Some(TimeSpec::RunningTime(old)), TimeSpec::RunningTime(new)) if old <= new
        );
        if !ends_sooner {
            e.end = Some(hide_at);
        }
        // A hidden offer stays hidden even if it came from the schedule.
        e.from_schedule = false;
        true
    }

    /// Wall-clock time of a frame: from a `timestamp/x-unix` reference meta if present,
    /// otherwise from how far the frame is from now on the pipeline clock.
    fn frame_utc(&self, buf: &gst::BufferRef, running_time: gst::ClockTime) -> SystemTime {
        static UNIX: LazyLock<gst::Caps> =
            LazyLock::new(|| gst::Caps::builder("timestamp/x-unix").build());
        let from_meta = buf
            .iter_meta::<gst::ReferenceTimestampMeta>()
            .find(|m| m.reference().can_intersect(&UNIX))
            .and_then(|m| UNIX_EPOCH.checked_add(Duration::from_nanos(m.timestamp().nseconds())));
        if let Some(t) = from_meta {
            return t;
        }
        let now = SystemTime::now();
        let obj = self.obj();
        match (obj.clock(), obj.base_time()) {
            (Some(clock), Some(base_time)) => {
                let clock_now = clock.time();
                let frame_clock = base_time.saturating_add(running_time);
                let utc = if clock_now >= frame_clock {
                    now.checked_sub(Duration::from_nanos((clock_now - frame_clock).nseconds()))
                } else {
                    now.checked_add(Duration::from_nanos((frame_clock - clock_now).nseconds()))
                };
                utc.unwrap_or(now)
            }
            _ => now,
        }
    }

    /// Decides what is on screen for the frame at `running_time`, re-renders what changed and
    /// rebuilds the composition only if something moved. Returns whether the frame can pass
    /// through untouched, and what to announce.
    fn evaluate(
        &self,
        state: &mut State,
        settings: &Settings,
        running_time: gst::ClockTime,
        stream_time: Option<gst::ClockTime>,
        utc: SystemTime,
    ) -> (bool, Vec<Notice>) {
        let mut notices = Vec::new();
        state.last_running_time = Some(running_time);
        if state.entries.is_empty() && state.composition.is_none() {
            return (true, notices);
        }
        let Some(info) = state.info.clone() else {
            return (true, notices);
        };
        let (fw, fh) = (info.width(), info.height());
        let fade_in = settings.fade_in_ms as f64 * 1e6;
        let fade_out = settings.fade_out_ms as f64 * 1e6;

        // Which offers are on screen, with their opacity and seconds left.
        let mut on_screen: Vec<(usize, f32, Option<u64>)> = Vec::new();
        for (i, e) in state.entries.iter_mut().enumerate() {
            let start = *e.start.get_or_insert(TimeSpec::RunningTime(running_time));
            if e.end.is_none()
                && let Some(d) = e
                    .offer
                    .spec
                    .duration
                    .and_then(|d| Duration::try_from_secs_f64(d).ok())
            {
                e.end = Some(start.plus(d));
            }
            let since_start = start.elapsed_at(running_time, utc);
            let until_end = e.end.map(|end| -end.elapsed_at(running_time, utc));
            let visible = since_start >= 0 && until_end.is_none_or(|u| u > 0);
            if visible != e.visible {
                e.visible = visible;
                notices.push(Notice::Timeline {
                    shown: visible,
                    offer: e.offer.clone(),
                    running_time,
                    stream_time,
                    utc,
                });
            }
            if !visible {
                continue;
            }
            let mut alpha = settings.opacity;
            if fade_in > 0.0 {
                alpha *= (since_start as f64 / fade_in).min(1.0);
            }
            if let (Some(u), true) = (until_end, fade_out > 0.0) {
                alpha *= (u as f64 / fade_out).min(1.0);
            }
            let secs_left = until_end
                .filter(|_| e.offer.spec.countdown)
                .map(|u| (u as u64).div_ceil(1_000_000_000));
            on_screen.push((i, alpha as f32, secs_left));
        }
        // `show-offer` offers that ended are forgotten; schedule offers stay for reloads.
        let ended = |e: &Entry| {
            !e.from_schedule
                && !e.visible
                && e.end
                    .is_some_and(|end| end.elapsed_at(running_time, utc) >= 0)
        };
        if state.entries.iter().any(ended) {
            let mut keep = Vec::with_capacity(state.entries.len());
            let mut remap = vec![usize::MAX; state.entries.len()];
            for (i, e) in std::mem::take(&mut state.entries).into_iter().enumerate() {
                if !ended(&e) {
                    remap[i] = keep.len();
                    keep.push(e);
                }
            }
            state.entries = keep;
            for v in on_screen.iter_mut() {
                v.0 = remap[v.0];
            }
        }
        self.stats
            .offers_visible
            .store(on_screen.len() as u64, Ordering::Relaxed);

        // Render what is missing or stale.
        let card_w = card_width_px(settings, fw);
        let base_theme = settings.theme();
        for &(i, _, secs_left) in &on_screen {
            let e = &mut state.entries[i];
            let theme = e.offer.theme(&base_theme);
            let stale = e
                .card
                .as_ref()
                .is_none_or(|c| c.width != card_w || c.theme != theme);
            if stale {
                e.card = self.draw_card(&e.offer, &theme, card_w, &mut notices);
                if e.card.is_none() {
                    continue;
                }
            }
            let Some(c) = e.card.as_mut() else { continue };
            if let (Some(secs), Some((_, _, sw, sh))) = (secs_left, c.body.countdown_slot)
                && c.countdown.as_ref().is_none_or(|(s, _)| *s != secs)
            {
                let label = e.offer.countdown_label();
                match card::render_countdown(&theme, card_w, (sw, sh), label, secs) {
                    Ok(pixels) => {
                        self.stats.countdown_renders.fetch_add(1, Ordering::Relaxed);
                        let rect = gst_video::VideoOverlayRectangle::new_raw(
                            &pixels,
                            0,
                            0,
                            sw,
                            sh,
                            gst_video::VideoOverlayFormatFlags::PREMULTIPLIED_ALPHA,
                        );
                        c.countdown = Some((secs, rect));
                        c.prepared_countdown = None;
                    }
                    Err(error) => notices.push(Notice::Warning {
                        id: e.offer.spec.id.clone(),
                        error: format!("cannot draw the countdown: {error}"),
                    }),
                }
            }
        }

        // Stack cards per anchor, away from the anchor's edge.
        let mx = (settings.margin_x * fw as f64).round() as i32;
        let my = (settings.margin_y * fh as f64).round() as i32;
        let mut groups: Vec<(Anchor, Vec<(usize, f32)>)> = Vec::new();
        for &(i, alpha, _) in &on_screen {
            if state.entries[i].card.is_none() || alpha <= 0.0 {
                continue;
            }
            let anchor = state.entries[i]
                .offer
                .spec
                .anchor
                .unwrap_or(settings.anchor);
            match groups.iter_mut().find(|(a, _)| *a == anchor) {
                Some((_, v)) => v.push((i, alpha)),
                None => groups.push((anchor, vec![(i, alpha)])),
            }
        }
        let fast = if state.attach_caps || state.attach_query {
            None
        } else {
            Layout::for_format(info.format()).map(|l| (l, YuvMatrix::from_info(&info)))
        };
        let prepare = |slot: &mut Option<Arc<Prepared>>,
                       pixels: &gst::Buffer,
                       (x, y, w, h): (i32, i32, u32, u32)|
         -> Option<Arc<Prepared>> {
            let (layout, matrix) = fast?;
            if slot.as_ref().is_none_or(|p| !p.placed_at(x, y, w, h)) {
                *slot = Prepared::new(pixels, x, y, w, h, layout, matrix).map(Arc::new);
            }
            slot.clone()
        };
        let mut plan: Vec<(Arc<Prepared>, u8)> = Vec::new();
        let mut plan_complete = fast.is_some();
        let mut rects: Vec<gst_video::VideoOverlayRectangle> = Vec::new();
        // Cards already placed, any anchor: a later card never covers an earlier one.
        let mut placed: Vec<(i32, i32, i32, i32)> = Vec::new();
        for (anchor, members) in &groups {
            let heights: Vec<i32> = members
                .iter()
                .filter_map(|(i, _)| state.entries[*i].card.as_ref())
                .map(|c| c.body.height as i32)
                .collect();
            let total: i32 = heights.iter().sum::<i32>() + my * (heights.len() as i32 - 1);
            let x = match anchor.column() {
                0 => mx,
                1 => (fw as i32 - card_w as i32) / 2,
                _ => fw as i32 - mx - card_w as i32,
            }
            .max(0);
            let mut y = match anchor.row() {
                0 => my,
                1 => (fh as i32 - total) / 2,
                _ => fh as i32 - my - heights.first().copied().unwrap_or(0),
            };
            for (k, (i, alpha)) in members.iter().enumerate() {
                let entry = &mut state.entries[*i];
                let Some(c) = entry.card.as_mut() else {
                    continue;
                };
                let h = c.body.height as i32;
                if anchor.row() == 2 && k > 0 {
                    y -= h + my;
                }
                let cw = c.body.width as i32;
                let overlaps = |&(px, py, pw, ph): &(i32, i32, i32, i32)| {
                    x < px + pw && px < x + cw && y < py + ph && py < y + h
                };
                let fits = y >= 0 && y + h <= fh as i32 && !placed.iter().any(overlaps);
                if !fits && !entry.out_of_room {
                    notices.push(Notice::Warning {
                        id: entry.offer.spec.id.clone(),
                        error: format!(
                            "no room at {anchor:?} beside the cards already shown; it is not shown \
                             (use another anchor or a smaller card-width)"
                        ),
                    });
                }
                entry.out_of_room = !fits;
                if !fits {
                    continue;
                }
                placed.push((x, y, cw, h));
                let Some(c) = entry.card.as_mut() else {
                    continue;
                };
                let rect = c.rect.get_or_insert_with(|| {
                    gst_video::VideoOverlayRectangle::new_raw(
                        &c.body.pixels,
                        x,
                        y,
                        c.body.width,
                        c.body.height,
                        gst_video::VideoOverlayFormatFlags::PREMULTIPLIED_ALPHA,
                    )
                });
                if rect.render_rectangle() != (x, y, c.body.width, c.body.height) {
                    rect.make_mut()
                        .set_render_rectangle(x, y, c.body.width, c.body.height);
                }
                if rect.global_alpha() != *alpha {
                    rect.make_mut().set_global_alpha(*alpha);
                }
                rects.push(rect.clone());
                let alpha_u8 = (*alpha * 255.0).round().clamp(0.0, 255.0) as u8;
                match prepare(
                    &mut c.prepared_body,
                    &c.body.pixels,
                    (x, y, c.body.width, c.body.height),
                ) {
                    Some(p) => plan.push((p, alpha_u8)),
                    None => plan_complete = false,
                }
                if let (Some((_, cd)), Some((sx, sy, sw, sh))) =
                    (c.countdown.as_mut(), c.body.countdown_slot)
                {
                    let pos = (x + sx as i32, y + sy as i32, sw, sh);
                    if cd.render_rectangle() != pos {
                        cd.make_mut()
                            .set_render_rectangle(pos.0, pos.1, pos.2, pos.3);
                    }
                    if cd.global_alpha() != *alpha {
                        cd.make_mut().set_global_alpha(*alpha);
                    }
                    rects.push(cd.clone());
                    // GLOBAL_ALPHA: the blend plan applies the fade itself. Without it GStreamer
                    // would bake the alpha into the pixels of a rectangle the composition shares
                    // (a CRITICAL on a non-writable rectangle).
                    let pixels = cd.pixels_unscaled_raw(
                        gst_video::VideoOverlayFormatFlags::PREMULTIPLIED_ALPHA
                            | gst_video::VideoOverlayFormatFlags::GLOBAL_ALPHA,
                    );
                    match prepare(&mut c.prepared_countdown, &pixels, pos) {
                        Some(p) => plan.push((p, alpha_u8)),
                        None => plan_complete = false,
                    }
                }
                if anchor.row() != 2 {
                    y += h + my;
                }
            }
        }

        state.blend_plan = if plan_complete { plan } else { Vec::new() };
        let key: Vec<u32> = rects.iter().map(|r| r.seqnum()).collect();
        if rects.is_empty() {
            state.blend_plan.clear();
            state.composition = None;
            state.composition_key.clear();
        } else if key != state.composition_key {
            state.composition = gst_video::VideoOverlayComposition::new(rects.iter()).ok();
            state.composition_key = key;
        }
        (state.composition.is_none(), notices)
    }

    /// Draws an offer's card body; problems become warnings.
    fn draw_card(
        &self,
        offer: &Offer,
        theme: &Theme,
        card_w: u32,
        notices: &mut Vec<Notice>,
    ) -> Option<CardCache> {
        match card::render_card(offer, theme, card_w) {
            Ok(body) => {
                self.stats.card_renders.fetch_add(1, Ordering::Relaxed);
                if body.missing_glyphs > 0 {
                    notices.push(Notice::Warning {
                        id: offer.spec.id.clone(),
                        error: format!(
                            "{} characters have no installed font and show as boxes",
                            body.missing_glyphs
                        ),
                    });
                }
                Some(CardCache {
                    width: card_w,
                    theme: theme.clone(),
                    body,
                    rect: None,
                    countdown: None,
                    prepared_body: None,
                    prepared_countdown: None,
                })
            }
            Err(error) => {
                notices.push(Notice::Warning {
                    id: offer.spec.id.clone(),
                    error: format!("cannot draw the card: {error}"),
                });
                None
            }
        }
    }

    /// Draws cards in the calling (application) thread, so that the streaming thread finds
    /// them ready; only once the frame size is known. Takes no lock while drawing.
    fn predraw(&self, offers: &[Arc<Offer>]) -> Vec<Option<CardCache>> {
        let settings = self.settings.lock().unwrap().clone();
        let Some(info) = self.state.lock().unwrap().info.clone() else {
            return offers.iter().map(|_| None).collect();
        };
        let card_w = card_width_px(&settings, info.width());
        let base_theme = settings.theme();
        let mut notices = Vec::new();
        let cards = offers
            .iter()
            .map(|o| self.draw_card(o, &o.theme(&base_theme), card_w, &mut notices))
            .collect();
        self.announce(notices);
        cards
    }

    fn announce(&self, notices: Vec<Notice>) {
        let obj = self.obj();
        for notice in notices {
            match notice {
                Notice::Timeline {
                    shown,
                    offer,
                    running_time,
                    stream_time,
                    utc,
                } => {
                    let entry = TimelineEntry {
                        action: if shown { Action::Shown } else { Action::Hidden },
                        id: offer.spec.id.clone(),
                        title: offer.spec.title.clone(),
                        price: offer.spec.price.clone(),
                        subtitle: offer.spec.subtitle.clone(),
                        badge: offer.spec.badge.clone(),
                        qr: offer.spec.qr.clone(),
                        running_time,
                        stream_time,
                        utc: schedule::format_utc(utc),
                    };
                    gst::info!(CAT, imp = self, "{entry:?}");
                    if !obj.src_pad().push_event(entry.to_event()) {
                        gst::debug!(CAT, imp = self, "downstream did not take {entry:?}");
                    }
                    let msg = gst::message::Element::builder(entry.to_message_structure())
                        .src(&*obj)
                        .build();
                    let _ = obj.post_message(msg);
                }
                Notice::Warning { id, error } => {
                    gst::element_imp_warning!(
                        self,
                        gst::LibraryError::Failed,
                        ("Offer `{id}`: {error}")
                    );
                }
            }
        }
    }
}

#[glib::object_subclass]
impl ObjectSubclass for OfferOverlay {
    const NAME: &'static str = "GstOfferOverlay";
    type Type = super::OfferOverlay;
    type ParentType = gst_video::VideoFilter;
}

impl ObjectImpl for OfferOverlay {
    fn properties() -> &'static [glib::ParamSpec] {
        static PROPERTIES: LazyLock<Vec<glib::ParamSpec>> = LazyLock::new(|| {
            let mut props = OfferOverlay::derived_properties().to_vec();
            props.push(
                glib::ParamSpecBoxed::builder::<gst::Structure>("stats")
                    .nick("Statistics")
                    .blurb("Counters since start: frames, frames-passthrough (untouched, no card), frames-blended, frames-attached (cards sent as meta), card-renders, countdown-renders, and offers-visible now")
                    .read_only()
                    .build(),
            );
            props
        });
        PROPERTIES.as_ref()
    }

    fn property(&self, id: usize, pspec: &glib::ParamSpec) -> glib::Value {
        match pspec.name() {
            "stats" => self.stats_structure().to_value(),
            _ => self.derived_property(id, pspec),
        }
    }

    fn set_property(&self, id: usize, value: &glib::Value, pspec: &glib::ParamSpec) {
        self.derived_set_property(id, value, pspec)
    }

    fn signals() -> &'static [glib::subclass::Signal] {
        static SIGNALS: LazyLock<Vec<glib::subclass::Signal>> = LazyLock::new(|| {
            vec![
                /**
                 * GstOfferOverlay::show-offer:
                 * @json: one offer as JSON, same fields as a schedule entry
                 *
                 * Shows (or replaces, by id) an offer; returns FALSE and posts a warning
                 * naming line, column and field when the JSON is bad.
                 */
                glib::subclass::Signal::builder("show-offer")
                    .param_types([String::static_type()])
                    .return_type::<bool>()
                    .action()
                    .class_handler(|args| {
                        let obj = args[0].get::<super::OfferOverlay>().ok()?;
                        let json = args[1].get::<Option<String>>().ok().flatten()?;
                        Some(obj.imp().show_offer(&json).to_value())
                    })
                    .build(),
                /**
                 * GstOfferOverlay::hide-offer:
                 * @id: the offer id
                 *
                 * Fades the offer out (or drops it if not yet shown); FALSE if no such offer.
                 */
                glib::subclass::Signal::builder("hide-offer")
                    .param_types([String::static_type()])
                    .return_type::<bool>()
                    .action()
                    .class_handler(|args| {
                        let obj = args[0].get::<super::OfferOverlay>().ok()?;
                        let id = args[1].get::<Option<String>>().ok().flatten()?;
                        Some(obj.imp().hide_offer(&id).to_value())
                    })
                    .build(),
                /**
                 * GstOfferOverlay::reload:
                 *
                 * Re-reads the schedule file; FALSE (and a warning) if it is bad, in which
                 * case the previous schedule stays in force.
                 */
                glib::subclass::Signal::builder("reload")
                    .return_type::<bool>()
                    .action()
                    .class_handler(|args| {
                        let obj = args[0].get::<super::OfferOverlay>().ok()?;
                        Some(obj.imp().reload().to_value())
                    })
                    .build(),
            ]
        });
        SIGNALS.as_ref()
    }
}

impl GstObjectImpl for OfferOverlay {}

impl ElementImpl for OfferOverlay {
    fn metadata() -> Option<&'static gst::subclass::ElementMetadata> {
        static ELEMENT_METADATA: LazyLock<gst::subclass::ElementMetadata> = LazyLock::new(|| {
            gst::subclass::ElementMetadata::new(
                "Offer card overlay",
                "Filter/Editor/Video/Overlay",
                "Burns timed commerce offer cards (title, subtitle, price, badge, image, QR code, \
                 countdown) into raw video and reports the offer timeline. Offers come from the \
                 schedule file (JSON/TOML list 'offers': id, title, price, subtitle, badge, image, \
                 qr, countdown, start/end or duration as running time or UTC, anchor, colours; \
                 format in the plugin's README) and from three action signals: \
                 show-offer(json: one offer, same fields) -> boolean, shows or replaces it by id, \
                 FALSE and a warning naming line, column and field on bad JSON; \
                 hide-offer(id) -> boolean, fades it out, FALSE when unknown; \
                 reload() -> boolean, re-reads the schedule, a bad file keeps the previous one. \
                 Element messages offer-shown and offer-hidden, when a card appears and when it \
                 is gone (fade-out included; cards still up at EOS are closed at the last frame), \
                 with fields: id, title, price (string), subtitle, badge, qr (string, when set), \
                 running-time (guint64 ns), stream-time (guint64 ns, GST_CLOCK_TIME_NONE if \
                 unknown), utc (string, RFC 3339 ms, from the timestamp/x-unix meta when present). \
                 The same fields plus action (shown/hidden) travel downstream in a serialized \
                 custom event 'hybridlive/offer' just before that frame, for recorders. Cards are \
                 attached as GstVideoOverlayCompositionMeta when downstream draws it (requires \
                 the meta:GstVideoOverlayComposition caps feature or lists the meta in the \
                 allocation query), else blended over their area, also when downstream takes \
                 any caps; with no card visible the element is in passthrough.",
                "The hybridlive developers",
            )
        });
        Some(&*ELEMENT_METADATA)
    }

    fn pad_templates() -> &'static [gst::PadTemplate] {
        static PAD_TEMPLATES: LazyLock<Vec<gst::PadTemplate>> = LazyLock::new(|| {
            let mut caps = gst_video::VideoCapsBuilder::new()
                .features([gst_video::CAPS_FEATURE_META_GST_VIDEO_OVERLAY_COMPOSITION])
                .format_list(FORMATS.iter().copied())
                .build();
            caps.merge(
                gst_video::VideoCapsBuilder::new()
                    .format_list(FORMATS.iter().copied())
                    .build(),
            );
            vec![
                gst::PadTemplate::new(
                    "src",
                    gst::PadDirection::Src,
                    gst::PadPresence::Always,
                    &caps,
                )
                .expect("valid src template"),
                gst::PadTemplate::new(
                    "sink",
                    gst::PadDirection::Sink,
                    gst::PadPresence::Always,
                    &caps,
                )
                .expect("valid sink template"),
            ]
        });
        PAD_TEMPLATES.as_ref()
    }
}

fn with_overlay_feature(caps: &gst::Caps, add: bool) -> gst::Caps {
    let mut out = gst::Caps::new_empty();
    {
        let out = out.get_mut().expect("new caps are writable");
        for (s, f) in caps.iter_with_features() {
            let mut f = f.to_owned();
            if f.is_any() {
                continue;
            }
            // System memory is implied by "video/x-raw(meta:...)" alone: keep that spelling,
            // the one sinks and other overlays use, or the caps would not intersect.
            if add {
                f.remove(gst::CAPS_FEATURE_MEMORY_SYSTEM_MEMORY);
                f.add(gst_video::CAPS_FEATURE_META_GST_VIDEO_OVERLAY_COMPOSITION);
            } else {
                f.remove(gst_video::CAPS_FEATURE_META_GST_VIDEO_OVERLAY_COMPOSITION);
                if f.is_empty() {
                    f.add(gst::CAPS_FEATURE_MEMORY_SYSTEM_MEMORY);
                }
            }
            out.append_structure_full(s.to_owned(), Some(f));
        }
    }
    out
}

impl BaseTransformImpl for OfferOverlay {
    const MODE: gst_base::subclass::BaseTransformMode =
        gst_base::subclass::BaseTransformMode::AlwaysInPlace;
    const PASSTHROUGH_ON_SAME_CAPS: bool = false;
    const TRANSFORM_IP_ON_PASSTHROUGH: bool = false;

    fn start(&self) -> Result<(), gst::ErrorMessage> {
        let settings = self.settings.lock().unwrap().clone();
        let offers = match &settings.schedule {
            Some(p) => schedule::load_schedule(&PathBuf::from(p)).map_err(|err| {
                gst::error_msg!(gst::ResourceError::Read, ("Bad offer schedule: {err}"))
            })?,
            None => Vec::new(),
        };
        for counter in [
            &self.stats.frames,
            &self.stats.frames_passthrough,
            &self.stats.frames_blended,
            &self.stats.frames_attached,
            &self.stats.card_renders,
            &self.stats.countdown_renders,
            &self.stats.offers_visible,
        ] {
            counter.store(0, Ordering::Relaxed);
        }
        let mut state = self.state.lock().unwrap();
        state.started = true;
        state.entries.retain(|e| !e.from_schedule);
        Self::apply_schedule(
            &mut state,
            offers,
            Vec::new(),
            Duration::from_millis(settings.fade_out_ms as u64),
        );
        gst::debug!(
            CAT,
            imp = self,
            "started with {} offers",
            state.entries.len()
        );
        Ok(())
    }

    fn stop(&self) -> Result<(), gst::ErrorMessage> {
        let mut state = self.state.lock().unwrap();
        state.started = false;
        state.composition = None;
        state.composition_key.clear();
        state.blend_plan.clear();
        state.last_running_time = None;
        state.last_frame_end = None;
        state.entries.retain(|e| !e.from_schedule);
        for e in &mut state.entries {
            e.visible = false;
            e.card = None;
        }
        Ok(())
    }

    fn transform_caps(
        &self,
        direction: gst::PadDirection,
        caps: &gst::Caps,
        filter: Option<&gst::Caps>,
    ) -> Option<gst::Caps> {
        // Plain caps first: a downstream that takes anything (fakesink, appsink, shmsink,
        // proxysink: ANY caps) says nothing about drawing compositions, so it gets the cards
        // blended in, as textoverlay does. The feature is negotiated only with a downstream
        // that requires it; one that lists the meta in the allocation query gets it attached
        // on plain caps.
        let mut out = if direction == gst::PadDirection::Sink {
            let mut out = with_overlay_feature(caps, false);
            out.merge(with_overlay_feature(caps, true));
            out
        } else {
            let mut out = with_overlay_feature(caps, false);
            out.merge(caps.clone());
            out
        };
        if let Some(filter) = filter {
            out = filter.intersect_with_mode(&out, gst::CapsIntersectMode::First);
        }
        gst::debug!(CAT, imp = self, "{direction:?} {caps} -> {out}");
        Some(out)
    }

    fn sink_event(&self, event: gst::Event) -> bool {
        // Close the timeline at the end of the stream: a recording made from this stream
        // should not hold an offer that never ends.
        if let gst::EventView::Eos(_) = event.view() {
            let notices: Vec<Notice> = {
                let mut state = self.state.lock().unwrap();
                let end = state.last_frame_end;
                state
                    .entries
                    .iter_mut()
                    .filter(|e| e.visible)
                    .filter_map(|e| {
                        e.visible = false;
                        let (running_time, stream_time, utc) = end?;
                        Some(Notice::Timeline {
                            shown: false,
                            offer: e.offer.clone(),
                            running_time,
                            stream_time,
                            utc,
                        })
                    })
                    .collect()
            };
            self.announce(notices);
        }
        self.parent_sink_event(event)
    }

    fn propose_allocation(
        &self,
        decide_query: Option<&gst::query::Allocation>,
        query: &mut gst::query::Allocation,
    ) -> Result<(), gst::LoggableError> {
        // In place, the query goes on downstream; its answer says whether the sink draws
        // overlay compositions itself.
        self.parent_propose_allocation(decide_query, query)?;
        // A frame with crop meta is the uncropped picture: cards would be placed against the
        // crop's size but land from the full frame's corner. Upstream crops for real instead.
        while let Some(index) = query.find_allocation_meta::<gst_video::VideoCropMeta>() {
            query.remove_nth_allocation_meta(index);
        }
        let accepts = query
            .find_allocation_meta::<gst_video::VideoOverlayCompositionMeta>()
            .is_some();
        gst::debug!(
            CAT,
            imp = self,
            "downstream accepts composition meta: {accepts}"
        );
        self.state.lock().unwrap().attach_query = accepts;
        Ok(())
    }

    fn before_transform(&self, inbuf: &gst::BufferRef) {
        let obj = self.obj();
        self.stats.frames.fetch_add(1, Ordering::Relaxed);
        let segment = obj.segment().downcast::<gst::ClockTime>().ok();
        let pts = inbuf.pts();
        let running_time = segment.as_ref().and_then(|s| s.to_running_time(pts));
        let stream_time = segment.as_ref().and_then(|s| s.to_stream_time(pts));
        // Numeric properties are controllable: animate them on the stream's timeline.
        if let Some(st) = stream_time {
            let _ = obj.sync_values(st);
        }
        let Some(running_time) = running_time else {
            gst::log!(
                CAT,
                imp = self,
                "no running time for {inbuf:?}, keeping the overlay"
            );
            return;
        };
        let utc = self.frame_utc(inbuf, running_time);
        let settings = self.settings.lock().unwrap().clone();
        let (passthrough, notices) = {
            let mut state = self.state.lock().unwrap();
            let duration = inbuf.duration().unwrap_or_default();
            state.last_frame_end = Some((
                running_time + duration,
                stream_time.map(|t| t + duration),
                utc.checked_add(Duration::from_nanos(duration.nseconds()))
                    .unwrap_or(utc),
            ));
            self.evaluate(&mut state, &settings, running_time, stream_time, utc)
        };
        if obj.is_passthrough() != passthrough {
            gst::debug!(CAT, imp = self, "passthrough: {passthrough}");
            obj.set_passthrough(passthrough);
        }
        if passthrough {
            self.stats
                .frames_passthrough
                .fetch_add(1, Ordering::Relaxed);
        }
        self.announce(notices);
    }

    fn transform_ip(&self, buf: &mut gst::BufferRef) -> Result<gst::FlowSuccess, gst::FlowError> {
        let (composition, attach, info, plan) = {
            let state = self.state.lock().unwrap();
            (
                state.composition.clone(),
                state.attach_caps || state.attach_query,
                state.info.clone(),
                state.blend_plan.clone(),
            )
        };
        let Some(composition) = composition else {
            return Ok(gst::FlowSuccess::Ok);
        };
        if attach {
            let merged = match buf.meta::<gst_video::VideoOverlayCompositionMeta>() {
                Some(meta) => {
                    let mut merged = meta.overlay_owned();
                    let m = merged.make_mut();
                    for r in composition.iter() {
                        m.add_rectangle(&r);
                    }
                    Some(merged)
                }
                None => None,
            };
            match merged {
                Some(merged) => {
                    if let Some(mut meta) = buf.meta_mut::<gst_video::VideoOverlayCompositionMeta>()
                    {
                        meta.set_overlay(&merged);
                    }
                }
                None => {
                    gst_video::VideoOverlayCompositionMeta::add(buf, &composition);
                }
            }
            self.stats.frames_attached.fetch_add(1, Ordering::Relaxed);
            return Ok(gst::FlowSuccess::Ok);
        }
        let Some(info) = info else {
            gst::element_imp_error!(self, gst::CoreError::Negotiation, ["No video format set"]);
            return Err(gst::FlowError::NotNegotiated);
        };
        let mut frame =
            gst_video::VideoFrameRef::from_buffer_ref_writable(buf, &info).map_err(|err| {
                gst::element_imp_error!(
                    self,
                    gst::CoreError::Failed,
                    ["Cannot map the video frame: {err}"]
                );
                gst::FlowError::Error
            })?;
        if !plan.is_empty() {
            for (prepared, alpha) in &plan {
                if !prepared.blend(&mut frame, *alpha) {
                    gst::warning!(CAT, imp = self, "card outside the frame, not drawn");
                }
            }
            self.stats.frames_blended.fetch_add(1, Ordering::Relaxed);
            return Ok(gst::FlowSuccess::Ok);
        }
        composition.blend(&mut frame).map_err(|err| {
            gst::element_imp_error!(self, gst::CoreError::Failed, ["Blending failed: {err}"]);
            gst::FlowError::Error
        })?;
        self.stats.frames_blended.fetch_add(1, Ordering::Relaxed);
        Ok(gst::FlowSuccess::Ok)
    }
}

impl VideoFilterImpl for OfferOverlay {
    fn set_info(
        &self,
        incaps: &gst::Caps,
        in_info: &gst_video::VideoInfo,
        outcaps: &gst::Caps,
        out_info: &gst_video::VideoInfo,
    ) -> Result<(), gst::LoggableError> {
        let attach_caps = outcaps.features(0).is_some_and(|f| {
            f.contains(gst_video::CAPS_FEATURE_META_GST_VIDEO_OVERLAY_COMPOSITION)
        });
        gst::debug!(
            CAT,
            imp = self,
            "output {outcaps}, attach by caps: {attach_caps}"
        );
        {
            let mut state = self.state.lock().unwrap();
            state.attach_caps = attach_caps;
            if state.info.as_ref() != Some(out_info) {
                state.info = Some(out_info.clone());
                state.composition = None;
                state.composition_key.clear();
                state.blend_plan.clear();
                for e in &mut state.entries {
                    e.card = None;
                }
            }
        }
        self.parent_set_info(incaps, in_info, outcaps, out_info)
    }
}
