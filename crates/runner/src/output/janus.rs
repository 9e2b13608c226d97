//! `type = "janus"`: the encoded streams published into a Janus VideoRoom with
//! `janusvrwebrtcsink` (Janus's WebSocket API), no second encode.

use serde::Serialize;

use super::egress::Publisher;
use super::{Context, Kind, OutputFactory, refuse_for_webrtc, refuse_vp8, settings};
use crate::config::reader::Fields;
use crate::config::{Diagnostic, EncoderKind, OutputSpec, Refusal};

const TYPE: &str = "janus";

/// `type = "janus"`: publishing into a Janus VideoRoom.
#[derive(Debug, Clone, Serialize)]
pub struct JanusOutput {
    /// `endpoint`: Janus's WebSocket URL, e.g. `ws://janus.example:8188`.
    pub endpoint: String,
    /// `room_id`: the VideoRoom to publish in (it must exist).
    pub room_id: u64,
    /// `feed_id`: our publisher id in the room; Janus picks one when absent.
    pub feed_id: Option<u64>,
    /// `display_name`: the publisher's name in the room.
    pub display_name: String,
    /// `loopback_only`: ICE on 127.0.0.1 only.
    pub loopback_only: bool,
}

output_spec!(JanusOutput, TYPE, {
    fn refuses_input(&self, input: &str, encoder: &EncoderKind) -> Option<Refusal> {
        refuse_for_webrtc(input, encoder).or_else(|| refuse_vp8(input, encoder))
    }
});

/// The Janus kind in the registry.
pub(super) struct Factory;

impl OutputFactory for Factory {
    fn type_name(&self) -> &'static str {
        TYPE
    }

    fn steerable(&self) -> bool {
        true
    }

    fn parse(&self, diags: &mut Vec<Diagnostic>, f: &mut Fields) -> Option<Box<dyn OutputSpec>> {
        let endpoint = f.required_url(
            diags,
            "endpoint",
            &["ws://", "wss://"],
            "a ws:// or wss:// URL (Janus's WebSocket API)",
        )?;
        if !f.table.contains_key("room_id") {
            f.error(
                diags,
                f.header.clone(),
                "room_id",
                "missing required key".into(),
            );
        }
        let room_id = f.integer(diags, "room_id", 1..4_294_967_296, 1);
        // 0: absent (Janus picks the id).
        let feed_id = f.integer(diags, "feed_id", 1..4_294_967_296, 0);
        let feed_id = (feed_id != 0).then_some(feed_id);
        Some(Box::new(JanusOutput {
            endpoint,
            room_id: u64::from(room_id),
            feed_id: feed_id.map(u64::from),
            display_name: f
                .string(diags, "display_name")
                .map_or_else(|| "hybridlive".to_string(), |d| d.0),
            loopback_only: f.bool(diags, "loopback_only", false),
        }))
    }

    /// A publisher in the room of the Janus at the endpoint.
    fn prepare(&self, spec: &dyn OutputSpec, _cx: &Context<'_>) -> anyhow::Result<Box<dyn Kind>> {
        let settings = settings::<JanusOutput>(spec)?;
        Ok(Box::new(Publisher::new(
            hybridlive_webrtc::Egress::Janus {
                endpoint: settings.endpoint.clone(),
                room_id: settings.room_id,
                feed_id: settings.feed_id,
                display_name: settings.display_name.clone(),
            },
            settings.loopback_only,
            &settings.endpoint,
            Vec::new(),
        )))
    }
}
