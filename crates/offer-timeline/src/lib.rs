// SPDX-License-Identifier: MPL-2.0

//! The offer timeline: when each commerce offer appeared on and left the picture.
//!
//! `offeroverlay` writes it as element messages (`offer-shown`, `offer-hidden`) and as a
//! serialized custom downstream event named [`EVENT_NAME`] sent just before the frame
//! concerned. A recorder reads the events from its branch and keeps them, e.g. as JSON lines
//! next to the recording ([`TimelineEntry::to_json_line`]); a clip cutter reads them back.
//! This crate is the one definition of those structures for writers and readers.

use serde::Serialize;

/// Name of the custom downstream event structure.
pub const EVENT_NAME: &str = "hybridlive/offer";
/// Name of the element message posted when an offer appears.
pub const MESSAGE_SHOWN: &str = "offer-shown";
/// Name of the element message posted when an offer is gone.
pub const MESSAGE_HIDDEN: &str = "offer-hidden";

/// Whether the offer appeared or left.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Action {
    Shown,
    Hidden,
}

impl Action {
    fn as_str(self) -> &'static str {
        match self {
            Action::Shown => "shown",
            Action::Hidden => "hidden",
        }
    }
}

/// One change of the timeline.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct TimelineEntry {
    pub action: Action,
    pub id: String,
    pub title: String,
    pub price: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub subtitle: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub badge: Option<String>,
    /// URL shown as a QR code.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub qr: Option<String>,
    /// Running time of the frame, in nanoseconds when serialized.
    #[serde(serialize_with = "clock_ns")]
    pub running_time: gst::ClockTime,
    /// Stream time of the frame, if known.
    #[serde(serialize_with = "opt_clock_ns")]
    pub stream_time: Option<gst::ClockTime>,
    /// Wall-clock time of the frame, RFC 3339 with milliseconds.
    pub utc: String,
}

fn clock_ns<S: serde::Serializer>(t: &gst::ClockTime, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_u64(t.nseconds())
}

fn opt_clock_ns<S: serde::Serializer>(t: &Option<gst::ClockTime>, s: S) -> Result<S::Ok, S::Error> {
    match t {
        Some(t) => s.serialize_some(&t.nseconds()),
        None => s.serialize_none(),
    }
}

/// A structure that claims to be a timeline entry but is not well formed.
#[derive(Debug, thiserror::Error)]
#[error("offer timeline `{structure}`: field `{field}`: {reason}")]
pub struct ParseError {
    pub structure: String,
    pub field: &'static str,
    pub reason: String,
}

impl TimelineEntry {
    /// Fields shared by the message and the event.
    fn fill(&self, b: gst::structure::Builder) -> gst::structure::Builder {
        b.field("id", &self.id)
            .field("title", &self.title)
            .field("price", &self.price)
            .field("running-time", self.running_time)
            .field(
                "stream-time",
                self.stream_time.map_or(u64::MAX, |t| t.nseconds()),
            )
            .field("utc", &self.utc)
            .field_if_some("subtitle", self.subtitle.as_deref())
            .field_if_some("badge", self.badge.as_deref())
            .field_if_some("qr", self.qr.as_deref())
    }

    /// The element message structure (`offer-shown` or `offer-hidden`).
    pub fn to_message_structure(&self) -> gst::Structure {
        let name = match self.action {
            Action::Shown => MESSAGE_SHOWN,
            Action::Hidden => MESSAGE_HIDDEN,
        };
        self.fill(gst::Structure::builder(name)).build()
    }

    /// The serialized custom downstream event.
    pub fn to_event(&self) -> gst::Event {
        let s = self
            .fill(gst::Structure::builder(EVENT_NAME))
            .field("action", self.action.as_str())
            .build();
        gst::event::CustomDownstream::new(s)
    }

    /// Reads an entry from a timeline event; `None` for any other event.
    pub fn from_event(event: &gst::EventRef) -> Option<Result<Self, ParseError>> {
        let gst::EventView::CustomDownstream(c) = event.view() else {
            return None;
        };
        let s = c.structure()?;
        (s.name() == EVENT_NAME).then(|| Self::from_structure(s))
    }

    /// Reads an entry from an event or message structure.
    pub fn from_structure(s: &gst::StructureRef) -> Result<Self, ParseError> {
        let err = |field: &'static str, reason: String| ParseError {
            structure: s.name().to_string(),
            field,
            reason,
        };
        let string = |field: &'static str| {
            s.get::<String>(field)
                .map_err(|e| err(field, e.to_string()))
        };
        let optional = |field: &'static str| s.get_optional::<String>(field).ok().flatten();
        let action = match s.name().as_str() {
            MESSAGE_SHOWN => Action::Shown,
            MESSAGE_HIDDEN => Action::Hidden,
            _ => match string("action")?.as_str() {
                "shown" => Action::Shown,
                "hidden" => Action::Hidden,
                other => return Err(err("action", format!("`{other}` is not shown/hidden"))),
            },
        };
        let ns = |field: &'static str| s.get::<u64>(field).map_err(|e| err(field, e.to_string()));
        Ok(TimelineEntry {
            action,
            id: string("id")?,
            title: string("title")?,
            price: string("price")?,
            subtitle: optional("subtitle"),
            badge: optional("badge"),
            qr: optional("qr"),
            running_time: gst::ClockTime::from_nseconds(ns("running-time")?),
            stream_time: Some(ns("stream-time")?)
                .filter(|&t| t != u64::MAX)
                .map(gst::ClockTime::from_nseconds),
            utc: string("utc")?,
        })
    }

    /// One line of JSON (no trailing newline), for a sidecar file next to a recording.
    pub fn to_json_line(&self) -> String {
        serde_json::to_string(self).expect("timeline entries always serialize")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry() -> TimelineEntry {
        TimelineEntry {
            action: Action::Shown,
            id: "kit".into(),
            title: "Kit".into(),
            price: "€29".into(),
            subtitle: None,
            badge: Some("12 left".into()),
            qr: Some("https://example.com/kit".into()),
            running_time: gst::ClockTime::from_mseconds(1500),
            stream_time: None,
            utc: "2026-11-27T10:30:00.000Z".into(),
        }
    }

    #[test]
    fn event_and_message_round_trip() {
        gst::init().unwrap();
        let e = entry();
        assert_eq!(
            TimelineEntry::from_event(&e.to_event()).unwrap().unwrap(),
            e
        );
        let hidden = TimelineEntry {
            action: Action::Hidden,
            stream_time: Some(gst::ClockTime::SECOND),
            ..e
        };
        let s = hidden.to_message_structure();
        assert_eq!(s.name(), MESSAGE_HIDDEN);
        assert_eq!(TimelineEntry::from_structure(&s).unwrap(), hidden);
        assert!(TimelineEntry::from_event(&gst::event::Eos::new()).is_none());
    }

    #[test]
    fn json_line() {
        assert_eq!(
            entry().to_json_line(),
            r#"{"action":"shown","id":"kit","title":"Kit","price":"€29","badge":"12 left","qr":"https://example.com/kit","running-time":1500000000,"stream-time":null,"utc":"2026-11-27T10:30:00.000Z"}"#
        );
    }

    #[test]
    fn malformed_structure_names_the_field() {
        gst::init().unwrap();
        let s = gst::Structure::builder(EVENT_NAME)
            .field("action", "shown")
            .field("id", "kit")
            .build();
        let err = TimelineEntry::from_structure(&s).unwrap_err().to_string();
        assert!(err.contains("`title`"), "{err}");
    }
}
