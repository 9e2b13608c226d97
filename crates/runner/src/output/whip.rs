//! `type = "whip"`: the encoded streams published to an SFU's WHIP endpoint (RFC 9725) with
//! `whipclientsink`, no second encode.

use serde::Serialize;

use super::egress::Publisher;
use super::{Context, Kind, OutputFactory, refuse_for_webrtc, refuse_vp8, settings};
use crate::config::reader::Fields;
use crate::config::{Diagnostic, EncoderKind, OutputSpec, Refusal};

const TYPE: &str = "whip";

/// `type = "whip"`: publishing to an SFU's WHIP endpoint.
#[derive(Debug, Clone, Serialize)]
pub struct WhipOutput {
    /// `endpoint`: e.g. `https://sfu.example/whip/endpoint`.
    pub endpoint: String,
    /// `token`: bearer token sent with the offer; never shown in the status.
    #[serde(skip_serializing)]
    pub token: Option<String>,
    /// `loopback_only`: ICE on 127.0.0.1 only (an SFU on this machine).
    pub loopback_only: bool,
}

output_spec!(WhipOutput, TYPE, {
    fn refuses_input(&self, input: &str, encoder: &EncoderKind) -> Option<Refusal> {
        refuse_for_webrtc(input, encoder).or_else(|| refuse_vp8(input, encoder))
    }
});

/// The WHIP kind in the registry.
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
            &["http://", "https://"],
            "an http:// or https:// WHIP endpoint URL",
        )?;
        let token = f.string(diags, "token").map(|t| t.0);
        if let Some(value) = f.table.get("token")
            && token.as_deref().is_some_and(str::is_empty)
        {
            f.error(
                diags,
                value.span(),
                "token",
                "an empty token: leave the key out to send none".into(),
            );
        }
        Some(Box::new(WhipOutput {
            endpoint,
            token,
            loopback_only: f.bool(diags, "loopback_only", false),
        }))
    }

    /// A publisher to the endpoint, its bearer token masked in every message.
    fn prepare(&self, spec: &dyn OutputSpec, _cx: &Context<'_>) -> anyhow::Result<Box<dyn Kind>> {
        let settings = settings::<WhipOutput>(spec)?;
        Ok(Box::new(Publisher::new(
            hybridlive_webrtc::Egress::Whip {
                endpoint: settings.endpoint.clone(),
                token: settings.token.clone(),
            },
            settings.loopback_only,
            &settings.endpoint,
            vec![settings.token.clone().unwrap_or_default()],
        )))
    }
}
