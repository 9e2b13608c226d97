//! ICE over TCP (RFC 6544) on the WHEP output: every answer carries passive TCP candidates on
//! the configured ports, and a viewer whose UDP a firewall drops (nftables, in a network
//! namespace of the test's own) plays over TCP.
//!
//! `cargo nextest run -p hybridlive-webrtc --test ice_tcp`

mod common;

use common::*;
use gst::prelude::*;
use hybridlive_testkit::process::sh;
use hybridlive_testkit::{eventually_explained, in_private_namespaces, in_private_netns};
use hybridlive_webrtc::{IcePorts, WhepConfig, WhepError};
use std::time::Duration;

/// A candidate line of an SDP: transport, port, and the TCP type when there is one.
#[derive(Debug, PartialEq)]
struct Candidate {
    transport: String,
    port: u16,
    tcptype: Option<String>,
}

fn candidates(sdp: &str) -> Vec<Candidate> {
    sdp.lines()
        .filter_map(|line| line.trim().strip_prefix("a=candidate:"))
        .map(|c| {
            // foundation component transport priority address port typ type [tcptype T]
            let fields: Vec<&str> = c.split_whitespace().collect();
            let tcptype = fields
                .iter()
                .position(|f| *f == "tcptype")
                .and_then(|i| fields.get(i + 1))
                .map(|t| t.to_string());
            Candidate {
                transport: fields[2].to_ascii_uppercase(),
                port: fields[5].parse().expect("a candidate's port"),
                tcptype,
            }
        })
        .collect()
}

#[test]
fn candidates_take_their_ports_from_the_configured_range() {
    if !in_private_netns("candidates_take_their_ports_from_the_configured_range") {
        return;
    }
    let ports = IcePorts {
        min: 31000,
        max: 31003,
    };
    let (pipeline, output) = sender_with(WhepConfig {
        loopback_ice: true,
        ice_ports: Some(ports),
        ..Default::default()
    });
    let viewers: Vec<Viewer> = (0..3).map(|_| Viewer::new()).collect();
    let mut passive_ports = Vec::new();
    for viewer in &viewers {
        let answer = output.offer(&viewer.offer()).expect("an answer");
        let found = candidates(&answer.sdp);
        let passive: Vec<&Candidate> = found
            .iter()
            .filter(|c| c.tcptype.as_deref() == Some("passive"))
            .collect();
        assert_eq!(
            passive.len(),
            1,
            "one passive TCP candidate: {}",
            answer.sdp
        );
        assert!(
            found.iter().any(|c| c.transport == "UDP"),
            "UDP candidates stay: {}",
            answer.sdp
        );
        // Active TCP candidates carry the discard port 9: they listen on nothing.
        for c in found
            .iter()
            .filter(|c| c.tcptype.as_deref() != Some("active"))
        {
            assert!(
                (ports.min..=ports.max).contains(&c.port),
                "{c:?} outside {ports:?}: {}",
                answer.sdp
            );
        }
        passive_ports.push(passive[0].port);
        viewer.answer(&answer.sdp);
    }
    passive_ports.sort_unstable();
    passive_ports.dedup();
    assert_eq!(
        passive_ports.len(),
        3,
        "one listening port each: {passive_ports:?}"
    );
    output.close_all();
    pipeline.set_state(gst::State::Null).unwrap();
}

#[test]
fn without_ice_tcp_answers_carry_udp_candidates_only() {
    if !in_private_netns("without_ice_tcp_answers_carry_udp_candidates_only") {
        return;
    }
    let (pipeline, output) = sender_with(WhepConfig {
        loopback_ice: true,
        ice_tcp: false,
        ..Default::default()
    });
    let viewer = Viewer::new();
    let answer = output.offer(&viewer.offer()).expect("an answer");
    let found = candidates(&answer.sdp);
    assert!(!found.is_empty(), "{}", answer.sdp);
    assert!(found.iter().all(|c| c.transport == "UDP"), "{}", answer.sdp);
    output.close_all();
    pipeline.set_state(gst::State::Null).unwrap();
}

/// What a firewall that lets no UDP through does: every UDP packet arriving in this (the
/// test's own) network namespace is dropped silently, as by a middlebox, not refused.
fn drop_all_udp() {
    sh("nft add table inet icetcp && \
        nft add chain inet icetcp in '{ type filter hook input priority 0; }' && \
        nft add rule inet icetcp in meta l4proto udp drop");
}

/// The transports (`udp`, `tcp`) of the local and remote candidates of the pair `webrtcbin`
/// selected, from its statistics; `None` before one is selected.
fn selected_pair(webrtcbin: &gst::Element) -> Option<(String, String)> {
    let promise = gst::Promise::new();
    webrtcbin.emit_by_name::<()>("get-stats", &[&None::<gst::Pad>, &promise]);
    promise.wait();
    let stats = promise.get_reply()?.to_owned();
    let structure = |id: &str| stats.get::<gst::Structure>(id).ok();
    let pair = stats.iter().find_map(|(_, value)| {
        let s = value.get::<gst::Structure>().ok()?;
        let id = s.get::<String>("selected-candidate-pair-id").ok()?;
        structure(&id)
    })?;
    let protocol = |key: &str| {
        let id = pair.get::<String>(key).ok()?;
        structure(&id)?.get::<String>("protocol").ok()
    };
    Some((
        protocol("local-candidate-id")?,
        protocol("remote-candidate-id")?,
    ))
}

#[test]
fn a_viewer_whose_udp_is_dropped_plays_over_tcp() {
    if !in_private_netns("a_viewer_whose_udp_is_dropped_plays_over_tcp") {
        return;
    }
    drop_all_udp();
    let (pipeline, output) = sender();
    let viewer = Viewer::new();
    let answer = output.offer(&viewer.offer()).expect("an answer");
    viewer.answer(&answer.sdp);
    let stats = viewer.wait_frames(60, Duration::from_secs(30));
    let p95 = stats.get::<f64>("window-p95-ms").unwrap();
    assert!(
        p95 > 0.0 && p95 < 500.0,
        "capture to decoded over TCP: p95 {p95} ms"
    );
    assert_eq!(
        selected_pair(&viewer.webrtcbin),
        Some(("tcp".to_string(), "tcp".to_string())),
        "the viewer's selected candidate pair"
    );
    output.close_all();
    pipeline.set_state(gst::State::Null).unwrap();
}

/// The control of the test above: the same viewer behind the same firewall, served without
/// TCP candidates, never connects (the server gives its slot back when the connect timeout
/// passes), and decodes nothing.
#[test]
fn without_ice_tcp_a_viewer_whose_udp_is_dropped_never_connects() {
    if !in_private_netns("without_ice_tcp_a_viewer_whose_udp_is_dropped_never_connects") {
        return;
    }
    drop_all_udp();
    let (pipeline, output) = sender_with(WhepConfig {
        loopback_ice: true,
        ice_tcp: false,
        connect_timeout: Duration::from_secs(3),
        ..Default::default()
    });
    let viewer = Viewer::new();
    let answer = output.offer(&viewer.offer()).expect("an answer");
    viewer.answer(&answer.sdp);
    eventually_explained(
        Duration::from_secs(60),
        || (output.session_count() == 0).then_some(()),
        || format!("the session never timed out: {:?}", output.sessions()),
    );
    let decoded = viewer.meter.property::<gst::Structure>("stats");
    assert_eq!(decoded.get::<u64>("count").unwrap(), 0, "{decoded}");
    assert_eq!(selected_pair(&viewer.webrtcbin), None);
    pipeline.set_state(gst::State::Null).unwrap();
}

/// A range with no free port left: the offer is refused (the HTTP side answers 503) rather than
/// answered with candidates nobody can reach, and the refused session holds nothing.
#[test]
fn an_offer_that_finds_no_free_port_is_refused() {
    if !in_private_netns("an_offer_that_finds_no_free_port_is_refused") {
        return;
    }
    let (pipeline, output) = sender_with(WhepConfig {
        loopback_ice: true,
        ice_ports: Some(IcePorts {
            min: 31100,
            max: 31100,
        }),
        ..Default::default()
    });
    let first = Viewer::new();
    let answer = output
        .offer(&first.offer())
        .expect("the first viewer's answer");
    first.answer(&answer.sdp);
    let second = Viewer::new();
    let refused = output.offer(&second.offer());
    assert!(
        matches!(refused, Err(WhepError::NoCandidates)),
        "{refused:?}"
    );
    assert_eq!(output.session_count(), 1);
    assert_eq!(webrtcbins(&pipeline), 1);
    // The first viewer plays on.
    first.wait_frames(30, Duration::from_secs(30));
    output.close_all();
    pipeline.set_state(gst::State::Null).unwrap();
}

/// Open file descriptors and threads of this process.
fn fds_and_threads() -> (usize, usize) {
    let count = |dir: &str| std::fs::read_dir(dir).map_or(0, |d| d.count());
    (count("/proc/self/fd"), count("/proc/self/task"))
}

/// The measurement behind docs/benchmarks.md ("ICE over TCP"), not a test: what passive TCP
/// candidates cost the server, 16 connected webrtcbin viewers with and without them: time from
/// offer to answer (ICE gathering included), and file descriptors and threads per session.
///
/// `cargo nextest run -p hybridlive-webrtc --test ice_tcp --run-ignored only --no-capture measure`
#[test]
#[ignore = "a measurement, run by hand: see docs/benchmarks.md"]
fn measure_the_cost_of_tcp_candidates() {
    if !in_private_namespaces("measure_the_cost_of_tcp_candidates") {
        return;
    }
    const VIEWERS: usize = 16;
    for ice_tcp in [false, true, false, true] {
        let (pipeline, output) = sender_with(WhepConfig {
            loopback_ice: true,
            ice_tcp,
            ..Default::default()
        });
        let viewers: Vec<Viewer> = (0..VIEWERS).map(|_| Viewer::new()).collect();
        let offers: Vec<String> = viewers.iter().map(Viewer::offer).collect();
        let (fds, threads) = fds_and_threads();
        let mut answer_ms = Vec::new();
        for (viewer, offer) in viewers.iter().zip(&offers) {
            let started = std::time::Instant::now();
            let answer = output.offer(offer).expect("an answer");
            answer_ms.push(started.elapsed().as_secs_f64() * 1000.0);
            viewer.answer(&answer.sdp);
        }
        for viewer in &viewers {
            viewer.wait_frames(10, Duration::from_secs(60));
        }
        let (fds_after, threads_after) = fds_and_threads();
        answer_ms.sort_by(f64::total_cmp);
        eprintln!(
            "ICE-TCP cost: ice_tcp {ice_tcp}: offer to answer p50 {:.1} ms, max {:.1} ms; per \
             session {:.1} fds, {:.1} threads",
            answer_ms[VIEWERS / 2],
            answer_ms[VIEWERS - 1],
            (fds_after as f64 - fds as f64) / VIEWERS as f64,
            (threads_after as f64 - threads as f64) / VIEWERS as f64,
        );
        output.close_all();
        drop(viewers);
        pipeline.set_state(gst::State::Null).unwrap();
    }
}
