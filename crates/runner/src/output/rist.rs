//! `type = "rist"`: MPEG-TS over RTP to a RIST receiver (the Simple Profile broadcasters'
//! contribution links and decoders speak), with retransmission of what the receiver reports
//! lost.

use gst::prelude::*;

use serde::Serialize;

use super::{Context, InputLink, Kind, OutputFactory, Sink, make, refuse_vp8, settings};
use crate::config::reader::Fields;
use crate::config::{Diagnostic, EncoderKind, OutputSpec, Refusal};
use crate::endpoint::Endpoint;

const TYPE: &str = "rist";
/// What the sender keeps for retransmission when `buffer_ms` is not given: ristsink's own
/// default, enough for a receiver a continent away to ask again.
const DEFAULT_BUFFER_MS: u32 = 1200;

/// `type = "rist"`: MPEG-TS over RTP to a RIST receiver.
#[derive(Debug, Clone, Serialize)]
pub struct RistOutput {
    /// `uri`: the receiver, e.g. `rist://decoder.example:5004` (an even port: RTCP goes to
    /// the next one).
    pub uri: String,
    /// The receiver's host.
    #[serde(skip)]
    pub host: String,
    /// The receiver's RTP port.
    #[serde(skip)]
    pub port: u16,
    /// `buffer_ms`: how much the sender keeps for retransmission, in milliseconds.
    pub buffer_ms: u32,
}

output_spec!(RistOutput, TYPE, {
    fn refuses_input(&self, input: &str, encoder: &EncoderKind) -> Option<Refusal> {
        refuse_vp8(input, encoder)
    }
});

/// `rist://HOST:PORT` read into host and port, or why not.
fn receiver(uri: &str) -> Result<(String, u16), String> {
    let rest = uri
        .strip_prefix("rist://")
        .ok_or_else(|| format!("`{uri}` is not a rist:// URL"))?;
    let authority = rest.split(['/', '?']).next().unwrap_or_default();
    let (host, port) = authority
        .rsplit_once(':')
        .ok_or_else(|| format!("`{uri}` names no port (rist://HOST:PORT)"))?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let port: u16 = port
        .parse()
        .map_err(|_| format!("`{port}` in `{uri}` is not a port number"))?;
    if host.is_empty() {
        return Err(format!("`{uri}` names no host"));
    }
    if port == 0 || port % 2 == 1 {
        return Err(format!(
            "port {port} in `{uri}`: RIST sends RTP to an even port and RTCP to the next one"
        ));
    }
    Ok((host.to_string(), port))
}

/// The RIST kind in the registry.
pub(super) struct Factory;

impl OutputFactory for Factory {
    fn type_name(&self) -> &'static str {
        TYPE
    }

    fn parse(&self, diags: &mut Vec<Diagnostic>, f: &mut Fields) -> Option<Box<dyn OutputSpec>> {
        let (uri, span) = f.required_string(diags, "uri")?;
        let buffer_ms = f.integer(diags, "buffer_ms", 50..30_001, DEFAULT_BUFFER_MS);
        let (host, port) = match receiver(&uri) {
            Ok(receiver) => receiver,
            Err(message) => {
                f.error(diags, span, "uri", message);
                (String::new(), 0)
            }
        };
        Some(Box::new(RistOutput {
            uri,
            host,
            port,
            buffer_ms,
        }))
    }

    fn prepare(&self, spec: &dyn OutputSpec, _cx: &Context<'_>) -> anyhow::Result<Box<dyn Kind>> {
        Ok(Box::new(Rist(settings::<RistOutput>(spec)?.clone())))
    }
}

/// A RIST output.
struct Rist(RistOutput);

impl Kind for Rist {
    fn build_sink(&self, pipeline: &gst::Pipeline) -> anyhow::Result<Sink> {
        let mux = make("mpegtsmux", "mux")?;
        // Whole 188-byte packets, 7 to an RTP packet.
        mux.set_property("alignment", 7i32);
        let pay = make("rtpmp2tpay", "pay")?;
        let sink = make("ristsink", "ristsink")?;
        sink.set_property("address", &self.0.host);
        sink.set_property("port", u32::from(self.0.port));
        sink.set_property("sender-buffer", self.0.buffer_ms);
        pipeline.add_many([&mux, &pay, &sink])?;
        gst::Element::link_many([&mux, &pay, &sink])?;
        Ok(Sink::new(mux))
    }

    fn input_pad(&self, link: &InputLink<'_>) -> anyhow::Result<gst::Pad> {
        link.request_pad("sink_%d")
    }

    fn endpoint(&self) -> Option<Endpoint> {
        Some(Endpoint::new(&self.0.uri, &[]))
    }
}

#[cfg(test)]
mod tests {
    use super::receiver;

    #[test]
    fn receivers_are_read_from_rist_urls() {
        assert_eq!(
            receiver("rist://127.0.0.1:5004"),
            Ok(("127.0.0.1".into(), 5004))
        );
        assert_eq!(receiver("rist://[::1]:6000"), Ok(("::1".into(), 6000)));
        for bad in [
            "srt://127.0.0.1:5004",
            "rist://127.0.0.1",
            "rist://127.0.0.1:5005",
            "rist://:5004",
            "rist://host:port",
            "rist://host:0",
        ] {
            assert!(receiver(bad).is_err(), "{bad}");
        }
    }
}
