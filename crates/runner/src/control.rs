//! What the HTTP server may see and do of a run: the narrow interface between `server` and
//! `runner`. The server depends on this trait, never on the runner itself; the runner
//! implements it.

use std::sync::Arc;

use crate::llhls::LlHls;
use crate::state::{Marker, Shared};

/// A run as the HTTP server sees it.
pub trait Control: Send + Sync + 'static {
    /// The run's figures (`/api/status`, `/metrics`).
    fn shared(&self) -> &Shared;

    /// The WHEP sessions of the WebRTC output, if one runs.
    fn whep(&self) -> Option<hybridlive_webrtc::WhepOutput>;

    /// The Low-Latency HLS store, if an HLS output serves one.
    fn ll_hls(&self) -> Option<Arc<LlHls>>;

    /// How many segments the HLS playlist keeps, if an HLS output runs.
    fn hls_playlist_length(&self) -> Option<usize>;

    /// Shows (`show` = the offer as JSON) or hides (`hide` = its id) an offer on every
    /// overlay; returns on how many overlays it was accepted.
    fn control_offer(&self, show: Option<&str>, hide: Option<&str>) -> usize;

    /// Drops a marker labelled `label` into every recording.
    fn marker(&self, label: String) -> Marker;

    /// Starts (`start`) or stops the recording outputs (one, by `output`, or all); returns the
    /// outputs it applied to, or why it could not.
    fn recording(&self, start: bool, output: Option<&str>) -> Result<Vec<String>, String>;
}
