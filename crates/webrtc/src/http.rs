//! WHEP over HTTP (RFC 9725), independent of the HTTP server that carries it: the runner hands
//! each request under its WHEP prefix to [`WhepOutput::handle_http`].

use crate::offer::{OfferError, ViewerOffer, read_viewer_offer};
use crate::turn::ice_server_links;
use crate::whep::{WhepError, WhepOutput};
use std::time::SystemTime;

/// Largest SDP offer accepted (browsers send 4-10 kB).
pub const MAX_OFFER_BYTES: usize = 64 * 1024;

/// An HTTP request as far as WHEP needs it.
#[derive(Debug, Clone, Copy)]
pub struct HttpRequest<'a> {
    /// `POST`, `DELETE`, `PATCH`, `OPTIONS`, ...
    pub method: &'a str,
    /// Path below the WHEP prefix: `""` for the endpoint, `"/<id>"` for a session resource.
    pub path: &'a str,
    /// The Content-Type header, if any.
    pub content_type: Option<&'a str>,
    /// The request body.
    pub body: &'a [u8],
}

/// The response to send back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpResponse {
    /// Status code.
    pub status: u16,
    /// Headers, CORS included.
    pub headers: Vec<(String, String)>,
    /// Body (the SDP answer, or a plain-text reason for errors).
    pub body: Vec<u8>,
}

impl HttpResponse {
    fn new(status: u16) -> Self {
        Self {
            status,
            headers: vec![
                // Viewer pages may live on another origin (a CMS, a course platform).
                ("Access-Control-Allow-Origin".into(), "*".into()),
                // Retry-After too: a page told 503 reads when to try again; Link names the
                // ICE servers (a cross-origin page sees no other header unless told).
                (
                    "Access-Control-Expose-Headers".into(),
                    "Location, Retry-After, Link".into(),
                ),
            ],
            body: Vec::new(),
        }
    }

    fn header(mut self, name: &str, value: &str) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }

    fn text(mut self, text: impl Into<String>) -> Self {
        self.body = text.into().into_bytes();
        self.header("Content-Type", "text/plain; charset=utf-8")
    }
}

/// Reads a POST to the endpoint as far as it can be checked before any element is built for
/// it: content type, size, UTF-8, SDP syntax, a usable H.264 format. `Err` is the response the
/// client gets (415, 413, 400 or 406). This is all of the request that reaches GStreamer.
pub fn read_offer_request(req: &HttpRequest<'_>) -> Result<ViewerOffer, HttpResponse> {
    let is_sdp = req.content_type.is_some_and(|ct| {
        ct.split(';')
            .next()
            .is_some_and(|t| t.trim().eq_ignore_ascii_case("application/sdp"))
    });
    if !is_sdp {
        return Err(HttpResponse::new(415)
            .header("Accept-Post", "application/sdp")
            .text("the offer must be sent as application/sdp"));
    }
    if req.body.len() > MAX_OFFER_BYTES {
        return Err(
            HttpResponse::new(413).text(format!("an offer is at most {MAX_OFFER_BYTES} bytes"))
        );
    }
    let Ok(offer) = std::str::from_utf8(req.body) else {
        return Err(HttpResponse::new(400).text("the offer is not UTF-8"));
    };
    read_viewer_offer(offer).map_err(|e| offer_refused(&e))
}

/// The first of what webrtcbin needs to answer that the offer lacks: ICE credentials and a
/// DTLS fingerprint, for the session or in the video section.
fn missing_transport(offer: &gst_sdp::SDPMessageRef) -> Option<&'static str> {
    let video = offer.medias().find(|m| m.media() == Some("video"));
    let has = |key: &str| {
        offer.attribute_val(key).is_some() || video.is_some_and(|m| m.attribute_val(key).is_some())
    };
    ["ice-ufrag", "ice-pwd", "fingerprint"]
        .into_iter()
        .find(|key| !has(key))
}

fn offer_refused(e: &OfferError) -> HttpResponse {
    let status = match e {
        OfferError::NoH264 | OfferError::NoCommonCodec { .. } => 406,
        OfferError::NotSdp | OfferError::NoVideo => 400,
    };
    HttpResponse::new(status).text(WhepError::Offer(e.clone()).to_string())
}

impl WhepOutput {
    /// Answers one WHEP request. `prefix` is where the endpoint is mounted (e.g. `/whep`): it
    /// is used for the `Location` of new sessions.
    pub fn handle_http(&self, prefix: &str, req: HttpRequest<'_>) -> HttpResponse {
        let resource = req.path.strip_prefix('/').filter(|id| !id.is_empty());
        match (req.method, resource) {
            ("OPTIONS", _) => self
                .with_ice_servers(HttpResponse::new(204))
                .header("Access-Control-Allow-Methods", "POST, DELETE, OPTIONS")
                .header(
                    "Access-Control-Allow-Headers",
                    "Content-Type, Authorization",
                )
                .header("Access-Control-Max-Age", "600")
                .header("Accept-Post", "application/sdp"),
            ("POST", None) => self.post(prefix, req),
            ("DELETE", Some(id)) => match self.delete(id) {
                Ok(()) => HttpResponse::new(200),
                Err(e) => HttpResponse::new(404).text(e.to_string()),
            },
            // Candidates all travel in the answer (no trickle ICE, no ICE restart).
            ("PATCH", Some(_)) => HttpResponse::new(405)
                .header("Allow", "DELETE, OPTIONS")
                .text("trickle ICE is not supported: all candidates are in the answer"),
            (_, None) => HttpResponse::new(405)
                .header("Allow", "POST, OPTIONS")
                .text("POST an SDP offer here"),
            (_, Some(_)) => HttpResponse::new(405)
                .header("Allow", "DELETE, OPTIONS")
                .text("DELETE ends the session"),
        }
    }

    /// Adds a `Link: <url>; rel="ice-server"` header per configured STUN/TURN server, TURN ones
    /// with a credential made for this response (RFC 9725 section 4.4). Never logged.
    fn with_ice_servers(&self, mut response: HttpResponse) -> HttpResponse {
        let config = self.config();
        for link in ice_server_links(&config.ice_servers, config.turn.as_ref(), SystemTime::now()) {
            response = response.header("Link", &link);
        }
        response
    }

    fn post(&self, prefix: &str, req: HttpRequest<'_>) -> HttpResponse {
        let offer = match read_offer_request(&req) {
            Ok(offer) => offer,
            Err(response) => return response,
        };
        // Checked here, not with the rest of the offer, so a codec the output does not send
        // is still 406 whatever else the offer lacks.
        let missing = missing_transport(&offer.sdp);
        match self.start_session(offer) {
            Ok(answer) => {
                let location = format!("{}/{}", prefix.trim_end_matches('/'), answer.id);
                let mut response = self
                    .with_ice_servers(HttpResponse::new(201))
                    .header("Content-Type", "application/sdp")
                    .header("Location", &location);
                response.body = answer.sdp.into_bytes();
                response
            }
            Err(WhepError::Offer(e)) => offer_refused(&e),
            Err(e @ (WhepError::Full(_) | WhepError::Closed | WhepError::NoCandidates)) => {
                HttpResponse::new(503)
                    .header("Retry-After", "10")
                    .text(e.to_string())
            }
            Err(e @ WhepError::UnknownSession(_)) => HttpResponse::new(404).text(e.to_string()),
            Err(e @ WhepError::Negotiation(_)) => match missing {
                // webrtcbin fails such an offer as it fails itself: the viewer's mistake all
                // the same.
                Some(missing) => HttpResponse::new(400).text(format!(
                    "the offer has no a={missing} (for the session or its video section)"
                )),
                None => HttpResponse::new(500).text(e.to_string()),
            },
        }
    }
}
