//! TURN for viewers behind firewalls: the WHEP output names its STUN/TURN servers in `Link`
//! headers (RFC 9725) with short-lived credentials that a real coturn, started by the test in
//! its own network namespace with the same shared secret, accepts until they expire.
//!
//! `cargo nextest run -p hybridlive-webrtc --test turn` (coturn: `scripts/setup`)

mod common;

use common::*;
use gst::prelude::*;
use hybridlive_testkit::coturn::{self, Coturn, EchoPeer};
use hybridlive_testkit::{eventually_explained, free_tcp_port, in_private_netns};
use hybridlive_webrtc::{
    HttpRequest, HttpResponse, IceServer, TurnAuth, TurnCredential, TurnSecret, WhepConfig,
};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

const SECRET: &str = "test-shared-secret";

/// A TURN link's URL, username and credential.
#[derive(Debug)]
struct Link {
    url: String,
    username: Option<String>,
    credential: Option<String>,
}

fn links(response: &HttpResponse) -> Vec<Link> {
    response
        .headers
        .iter()
        .filter(|(name, _)| name.eq_ignore_ascii_case("link"))
        .map(|(_, value)| {
            assert!(value.contains("rel=\"ice-server\""), "{value}");
            let param = |name: &str| {
                value
                    .split(&format!("; {name}=\""))
                    .nth(1)
                    .and_then(|rest| rest.split('"').next())
                    .map(str::to_string)
            };
            Link {
                url: value
                    .strip_prefix('<')
                    .and_then(|v| v.split('>').next())
                    .expect("<url>")
                    .to_string(),
                username: param("username"),
                credential: param("credential"),
            }
        })
        .collect()
}

fn options(output: &hybridlive_webrtc::WhepOutput) -> HttpResponse {
    output.handle_http(
        "/whep",
        HttpRequest {
            method: "OPTIONS",
            path: "",
            content_type: None,
            body: b"",
        },
    )
}

fn config(turn_port: u16, ttl: Duration) -> WhepConfig {
    WhepConfig {
        loopback_ice: true,
        ice_servers: vec![
            IceServer::parse(&format!("stun:127.0.0.1:{turn_port}")).unwrap(),
            IceServer::parse(&format!("turn:127.0.0.1:{turn_port}?transport=tcp")).unwrap(),
        ],
        turn: Some(TurnAuth {
            secret: TurnSecret::new(SECRET),
            ttl,
        }),
        ..Default::default()
    }
}

/// The one TURN link of a response, with its credential.
fn turn_link(response: &HttpResponse) -> (String, String) {
    let found = links(response);
    assert_eq!(found.len(), 2, "a STUN and a TURN link: {found:?}");
    assert!(found[0].url.starts_with("stun:") && found[0].username.is_none());
    let turn = &found[1];
    assert!(turn.url.starts_with("turn:"), "{found:?}");
    (
        turn.username.clone().expect("a TURN username"),
        turn.credential.clone().expect("a TURN credential"),
    )
}

#[test]
fn coturn_relays_for_the_credentials_whep_hands_out() {
    if !in_private_netns("coturn_relays_for_the_credentials_whep_hands_out") {
        return;
    }
    assert!(
        coturn::available(),
        "coturn is not installed: scripts/setup"
    );
    let turn = Coturn::start(free_tcp_port(), SECRET);
    let peer = EchoPeer::start(free_tcp_port());
    let (pipeline, output) = sender_with(config(turn.port, Duration::from_secs(3600)));

    let answer = options(&output);
    assert_eq!(answer.status, 204);
    let exposed = answer
        .headers
        .iter()
        .find(|(n, _)| n == "Access-Control-Expose-Headers")
        .map(|(_, v)| v.clone())
        .unwrap_or_default();
    assert!(exposed.contains("Link"), "a page reads Link: {exposed}");
    let (username, password) = turn_link(&answer);
    let expiry: u64 = username
        .split_once(':')
        .and_then(|(e, _)| e.parse().ok())
        .expect("username = expiry:label");
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    assert!(
        (now + 3500..=now + 3700).contains(&expiry),
        "expires in an hour: {username}"
    );

    // The echo peer may still be starting: a relay that works is one whose echoes come back.
    eventually_explained(
        Duration::from_secs(120),
        || {
            let a = turn.allocate(&username, &password, peer.port);
            (a.allocated && a.echoed > 0).then_some(())
        },
        || {
            format!(
                "coturn never relayed for the OPTIONS credential; last try:\n{}\ncoturn:\n{}",
                turn.allocate(&username, &password, peer.port).output,
                turn.log()
            )
        },
    );

    // The answer to an offer names the servers too, with a credential of its own.
    let viewer = Viewer::new();
    let response = output.handle_http(
        "/whep",
        HttpRequest {
            method: "POST",
            path: "",
            content_type: Some("application/sdp"),
            body: viewer.offer().as_bytes(),
        },
    );
    assert_eq!(
        response.status,
        201,
        "{:?}",
        String::from_utf8_lossy(&response.body)
    );
    let (post_user, post_password) = turn_link(&response);
    assert_ne!(post_user, username, "every answer has its own label");
    let a = turn.allocate(&post_user, &post_password, peer.port);
    assert!(a.allocated, "the answer's credential: {}", a.output);

    // A credential made with another secret is refused.
    let forged = TurnCredential::new(&TurnSecret::new("not-the-secret"), expiry, "x");
    let a = turn.allocate(&forged.username, &forged.password, peer.port);
    assert!(!a.allocated, "a forged credential allocated: {}", a.output);

    viewer.pipeline.set_state(gst::State::Null).unwrap();
    output.close_all();
    pipeline.set_state(gst::State::Null).unwrap();
}

#[test]
fn credentials_expire_as_configured() {
    if !in_private_netns("credentials_expire_as_configured") {
        return;
    }
    assert!(
        coturn::available(),
        "coturn is not installed: scripts/setup"
    );
    let turn = Coturn::start(free_tcp_port(), SECRET);
    let peer = EchoPeer::start(free_tcp_port());
    let (pipeline, output) = sender_with(config(turn.port, Duration::from_secs(1)));
    let (username, password) = turn_link(&options(&output));
    let expiry: u64 = username
        .split_once(':')
        .and_then(|(e, _)| e.parse().ok())
        .expect("username = expiry:label");
    // Wait for the expiry to be past, by the clock coturn reads too.
    eventually_explained(
        Duration::from_secs(30),
        || {
            let now = SystemTime::now().duration_since(UNIX_EPOCH).ok()?.as_secs();
            (now > expiry + 1).then_some(())
        },
        || "the clock never passed the expiry".to_string(),
    );
    let a = turn.allocate(&username, &password, peer.port);
    assert!(
        !a.allocated,
        "an expired credential allocated: {}",
        a.output
    );

    // The same secret with a live expiry works: the refusal was the expiry.
    let fresh = TurnCredential::new(&TurnSecret::new(SECRET), expiry + 3600, "fresh");
    eventually_explained(
        Duration::from_secs(120),
        || {
            turn.allocate(&fresh.username, &fresh.password, peer.port)
                .allocated
                .then_some(())
        },
        || format!("a live credential was refused too; coturn:\n{}", turn.log()),
    );

    output.close_all();
    pipeline.set_state(gst::State::Null).unwrap();
}

#[test]
fn no_link_without_ice_servers() {
    if !in_private_netns("no_link_without_ice_servers") {
        return;
    }
    let (pipeline, output) = sender_with(WhepConfig {
        loopback_ice: true,
        ..Default::default()
    });
    assert!(links(&options(&output)).is_empty());
    // TURN named without a secret: the URL only, no credential.
    output.close_all();
    pipeline.set_state(gst::State::Null).unwrap();
    let (pipeline, output) = sender_with(WhepConfig {
        loopback_ice: true,
        ice_servers: vec![IceServer::parse("turn:127.0.0.1:3478").unwrap()],
        ..Default::default()
    });
    let found = links(&options(&output));
    assert_eq!(found.len(), 1);
    assert!(found[0].username.is_none() && found[0].credential.is_none());
    output.close_all();
    pipeline.set_state(gst::State::Null).unwrap();
}

/// Plays `/whep` until 60 frames are decoded and 30 glass-to-glass figures read (or 30 s),
/// then reports the peer connection's ICE servers, what carries the media, the frames decoded
/// and the glass-to-glass p50/p95 (printed, not asserted).
const RELAY_PAGE: &str = r#"<!doctype html>
<video id="v" autoplay muted playsinline></video>
<script type="module">
import { playWhep } from '/whep-player.js';
const latencies = [];
const player = await playWhep(document.getElementById('v'), '/whep', {
  onLatency: (ms) => latencies.push(ms),
});
const deadline = performance.now() + 30000;
let s = null;
while (performance.now() < deadline) {
  s = await player.stats();
  if (s && s.framesDecoded >= 60 && latencies.length >= 30) break;
  await new Promise((r) => setTimeout(r, 100));
}
const iceServers = player.pc.getConfiguration().iceServers;
const transport = await player.transport();
await player.stop();
latencies.sort((a, b) => a - b);
const q = (p) => latencies.length ? latencies[Math.min(latencies.length - 1, Math.floor(p * latencies.length))] : null;
window.result = {
  iceServers, transport, framesDecoded: s ? s.framesDecoded : 0,
  measured: latencies.length, p50: q(0.5), p95: q(0.95),
};
</script>
"#;

/// coturn's relay ports in [`Coturn::start`].
const RELAY_PORTS: &str = "49160-49400";

#[test]
fn chromium_plays_through_the_turn_relay_when_only_tcp_to_it_gets_through() {
    if !in_private_netns("chromium_plays_through_the_turn_relay_when_only_tcp_to_it_gets_through") {
        return;
    }
    assert!(
        coturn::available(),
        "coturn is not installed: scripts/setup"
    );
    let turn = Coturn::start(free_tcp_port(), SECRET);
    let (pipeline, output) = sender_with(WhepConfig {
        // No ICE-TCP: the relay is the only way left.
        ice_tcp: false,
        ice_servers: vec![
            IceServer::parse(&format!("turn:127.0.0.1:{}?transport=tcp", turn.port)).unwrap(),
        ],
        ..config(turn.port, Duration::from_secs(600))
    });
    // Every UDP datagram dropped but those to or from the relay's ports (coturn to the
    // server): the browser reaches the server only over TCP to coturn.
    hybridlive_testkit::process::sh(&format!(
        "nft add table inet turn && \
         nft add chain inet turn in '{{ type filter hook input priority 0; }}' && \
         nft add rule inet turn in meta l4proto udp udp sport != {RELAY_PORTS} \
         udp dport != {RELAY_PORTS} drop"
    ));
    let port = serve_page(
        RELAY_PAGE,
        std::sync::Arc::new(std::sync::Mutex::new(Some(output.clone()))),
        None,
    );
    let result = open_in_chromium(port, "", 60);
    eprintln!(
        "chromium through coturn (TURN/TCP on loopback): glass-to-glass p50 {} ms, p95 {} ms \
         over {} frames",
        result["p50"], result["p95"], result["measured"]
    );
    let servers = result["iceServers"].as_array().expect("iceServers");
    assert_eq!(servers.len(), 1, "{result}");
    assert!(
        servers[0]["username"]
            .as_str()
            .is_some_and(|u| u.contains(':')),
        "the page passed the TURN credential: {result}"
    );
    assert_eq!(
        result["transport"]["candidateType"],
        "relay",
        "{result}\n{}",
        turn.log()
    );
    assert_eq!(result["transport"]["relayProtocol"], "tcp", "{result}");
    assert!(
        result["framesDecoded"].as_u64().unwrap_or(0) >= 60,
        "{result}"
    );
    output.close_all();
    pipeline.set_state(gst::State::Null).unwrap();
}

#[test]
fn the_server_gathers_a_relay_candidate_when_told_to() {
    if !in_private_netns("the_server_gathers_a_relay_candidate_when_told_to") {
        return;
    }
    assert!(
        coturn::available(),
        "coturn is not installed: scripts/setup"
    );
    let turn = Coturn::start(free_tcp_port(), SECRET);
    let relay_in = |server_relay: bool| {
        let (pipeline, output) = sender_with(WhepConfig {
            server_relay,
            ..config(turn.port, Duration::from_secs(600))
        });
        let viewer = Viewer::new();
        let answer = output.offer(&viewer.offer()).expect("an answer");
        output.close_all();
        viewer.pipeline.set_state(gst::State::Null).unwrap();
        pipeline.set_state(gst::State::Null).unwrap();
        let relay = answer
            .sdp
            .lines()
            .any(|l| l.starts_with("a=candidate:") && l.contains(" typ relay"));
        (relay, answer.sdp)
    };
    let (relay, sdp) = relay_in(true);
    assert!(
        relay,
        "no relay candidate from coturn:\n{sdp}\ncoturn:\n{}",
        turn.log()
    );
    let (relay, sdp) = relay_in(false);
    assert!(!relay, "a relay candidate without server_relay:\n{sdp}");
}
