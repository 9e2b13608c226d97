//! Low-Latency HLS from `hybridlive run`, checked against RFC 8216bis (draft-pantos-hls-
//! rfc8216bis) as a client reads it: blocking playlist reload, the part one past the end of a
//! segment, requests too far ahead, delta updates, cache headers a CDN can use, `ETag` and
//! `If-None-Match`, gzip; hls.js in Chromium playing with delta updates; and thousands of
//! blocking reloads waiting at once, every one answered with the part it asked for.
//!
//! `cargo nextest run -p hybridlive-runner --test llhls_conformance`

use std::net::IpAddr;
use std::path::Path;
use std::time::Duration;

use hybridlive_testkit::http::{
    HttpReply, connect_from, raise_descriptor_limit, read_reply, send_request,
};
use hybridlive_testkit::runner_child::{RunnerChild, test_runner};
use hybridlive_testkit::{eventually, scratch_dir};

hybridlive_testkit::runner_child_entry!();

/// 200 ms parts of 1 s segments, ten segments listed: long enough for a delta update to skip
/// some (CAN-SKIP-UNTIL is six target durations).
const PIPELINE: &str = r#"
[sources.cam]
type = "test"
pattern = "ball"
width = 640
height = 360

[encoders.video]
type = "h264"
inputs = ["cam"]
preset = "balanced"
bitrate = 600
keyframe_interval = 1

[outputs.hls]
type = "hls"
inputs = ["video"]
segment_duration = 1
playlist_length = 10
low_latency = true
part_duration_ms = 200
"#;

fn start_runner(dir: &Path) -> RunnerChild {
    let file = dir.join("llhls.toml");
    std::fs::write(&file, PIPELINE).unwrap();
    test_runner(&file, dir).args(&["--duration", "120"]).start()
}

/// What a media playlist says, read line by line.
#[derive(Debug, Default)]
struct Playlist {
    target: f64,
    can_skip_until: Option<f64>,
    media_sequence: u64,
    skipped: u64,
    /// Complete segments: (URI, duration).
    segments: Vec<(String, f64)>,
    /// Parts, in order: (URI, duration).
    parts: Vec<(String, f64)>,
    /// Duration of the parts listed after the last complete segment.
    open_duration: f64,
    hint: Option<String>,
}

fn attribute(attributes: &str, name: &str) -> Option<String> {
    attributes.split(',').find_map(|kv| {
        let (k, v) = kv.split_once('=')?;
        (k == name).then(|| v.trim_matches('"').to_string())
    })
}

fn parse(text: &str) -> Playlist {
    assert!(text.starts_with("#EXTM3U\n"), "not a playlist:\n{text}");
    let mut playlist = Playlist::default();
    let mut pending = None;
    for line in text.lines() {
        if let Some(v) = line.strip_prefix("#EXT-X-TARGETDURATION:") {
            playlist.target = v.parse().unwrap();
        } else if let Some(v) = line.strip_prefix("#EXT-X-SERVER-CONTROL:") {
            playlist.can_skip_until = attribute(v, "CAN-SKIP-UNTIL").map(|s| s.parse().unwrap());
        } else if let Some(v) = line.strip_prefix("#EXT-X-MEDIA-SEQUENCE:") {
            playlist.media_sequence = v.parse().unwrap();
        } else if let Some(v) = line.strip_prefix("#EXT-X-SKIP:") {
            playlist.skipped = attribute(v, "SKIPPED-SEGMENTS").unwrap().parse().unwrap();
        } else if let Some(v) = line.strip_prefix("#EXT-X-PART:") {
            let duration: f64 = attribute(v, "DURATION").unwrap().parse().unwrap();
            playlist
                .parts
                .push((attribute(v, "URI").unwrap(), duration));
            playlist.open_duration += duration;
        } else if let Some(v) = line.strip_prefix("#EXT-X-PRELOAD-HINT:") {
            playlist.hint = attribute(v, "URI");
        } else if let Some(v) = line.strip_prefix("#EXTINF:") {
            pending = Some(v.trim_end_matches(',').parse::<f64>().unwrap());
        } else if !line.starts_with('#') && !line.is_empty() {
            let duration = pending.take().expect("a URI after #EXTINF");
            playlist.segments.push((line.to_string(), duration));
            playlist.open_duration = 0.0;
        }
    }
    playlist
}

/// `partM.P.m4s` → (M, P).
fn part_numbers(uri: &str) -> (u64, u64) {
    let (m, p) = uri
        .strip_prefix("part")
        .and_then(|r| r.strip_suffix(".m4s"))
        .and_then(|r| r.split_once('.'))
        .unwrap_or_else(|| panic!("not a part URI: {uri}"));
    (m.parse().unwrap(), p.parse().unwrap())
}

fn segment_number(uri: &str) -> u64 {
    uri.strip_prefix("seg")
        .and_then(|r| r.strip_suffix(".m4s"))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("not a segment URI: {uri}"))
}

fn get(runner: &RunnerChild, path: &str, headers: &[(&str, &str)]) -> HttpReply {
    runner.request("GET", path, headers, b"")
}

/// The playlist once it lists at least `segments` complete segments.
fn playlist_with(runner: &RunnerChild, segments: usize) -> (HttpReply, Playlist) {
    eventually(
        Duration::from_secs(60),
        &format!("{segments} complete segments"),
        || {
            let reply = get(runner, "/hls/live.m3u8", &[]);
            if reply.status != 200 {
                return None;
            }
            let playlist = parse(&reply.text());
            (playlist.segments.len() >= segments && playlist.hint.is_some())
                .then_some((reply, playlist))
        },
    )
}

fn gunzip(data: &[u8], dir: &Path) -> Vec<u8> {
    let file = dir.join("playlist.gz");
    std::fs::write(&file, data).unwrap();
    let out = std::process::Command::new("gzip")
        .arg("-dc")
        .arg(&file)
        .output()
        .expect("gzip is installed");
    assert!(out.status.success(), "gzip -d: {:?}", out);
    out.stdout
}

#[test]
fn low_latency_hls_follows_rfc_8216bis_and_caches_well() {
    let dir = scratch_dir("runner-test", "llhls-conformance");
    let runner = start_runner(&dir);
    let (plain, playlist) = playlist_with(&runner, 8);

    // Cache headers per kind: the playlist revalidated, media immutable.
    assert_eq!(plain.header("cache-control"), Some("no-cache"));
    assert!(plain.header("etag").is_some());
    assert_eq!(plain.header("vary"), Some("Accept-Encoding"));
    let can_skip_until = playlist.can_skip_until.expect("CAN-SKIP-UNTIL");
    assert!(
        can_skip_until >= 6.0 * playlist.target,
        "CAN-SKIP-UNTIL={can_skip_until} below six target durations"
    );
    let (segment_uri, _) = playlist.segments.last().unwrap();
    let (part_uri, _) = playlist.parts.first().unwrap();
    for name in ["init.mp4", segment_uri, part_uri] {
        let media = get(&runner, &format!("/hls/{name}"), &[]);
        assert_eq!(media.status, 200, "{name}");
        let cache = media
            .header("cache-control")
            .unwrap_or_default()
            .to_string();
        let max_age: u64 = cache
            .split(", ")
            .find_map(|d| d.strip_prefix("max-age="))
            .and_then(|v| v.parse().ok())
            .unwrap_or_default();
        assert!(
            cache.contains("immutable") && max_age >= 60,
            "{name}: {cache}"
        );
    }

    // A blocking reload for the hinted part returns a playlist holding it, cacheable for a
    // while (its URL is unique); the hinted part itself is served once complete.
    let hint = playlist.hint.clone().unwrap();
    let (msn, part) = part_numbers(&hint);
    let blocked = get(
        &runner,
        &format!("/hls/live.m3u8?_HLS_msn={msn}&_HLS_part={part}"),
        &[],
    );
    assert_eq!(blocked.status, 200);
    let reloaded = parse(&blocked.text());
    assert!(
        reloaded.parts.iter().any(|(uri, _)| *uri == hint),
        "no {hint} in the blocking reload:\n{}",
        blocked.text()
    );
    let cache = blocked.header("cache-control").unwrap_or_default();
    assert!(
        cache.starts_with("public, max-age=") && !cache.ends_with("=0"),
        "{cache}"
    );
    assert_eq!(get(&runner, &format!("/hls/{hint}"), &[]).status, 200);

    // One past the last part of a segment is part 0 of the next (6.2.5.2): ask for it while
    // that segment is in progress, with the count of parts a whole segment has.
    let per_segment = {
        let last = segment_number(segment_uri);
        playlist
            .parts
            .iter()
            .filter(|(uri, _)| part_numbers(uri).0 == last)
            .count() as u64
    };
    eventually(
        Duration::from_secs(60),
        "a segment of as many parts as the one before",
        || {
            let now = parse(&get(&runner, "/hls/live.m3u8", &[]).text());
            let (open, _) = part_numbers(now.hint.as_deref()?);
            let reply = get(
                &runner,
                &format!("/hls/live.m3u8?_HLS_msn={open}&_HLS_part={per_segment}"),
                &[],
            );
            assert_eq!(reply.status, 200, "{}", reply.text());
            let answered = parse(&reply.text());
            let of_open = answered
                .parts
                .iter()
                .filter(|(uri, _)| part_numbers(uri).0 == open)
                .count() as u64;
            if of_open != per_segment {
                // That segment came out a part longer or shorter than the one before: the
                // part asked for is not one past its end. Try the next.
                return None;
            }
            // Answered because the next segment began, not because the wait timed out.
            let next = format!("part{}.0.m4s", open + 1);
            assert!(
                answered.parts.iter().any(|(uri, _)| *uri == next),
                "asked for part {per_segment} of {open} (one past its end); no {next} in:\n{}",
                reply.text()
            );
            assert!(
                answered
                    .segments
                    .iter()
                    .any(|(uri, _)| *uri == format!("seg{open}.m4s")),
                "{}",
                reply.text()
            );
            assert_ne!(reply.header("cache-control"), Some("no-store"));
            // The part under the name the preload hint gave it is that same part.
            let hinted = get(&runner, &format!("/hls/part{open}.{per_segment}.m4s"), &[]);
            assert_eq!(hinted.status, 200);
            assert_eq!(hinted.body, get(&runner, &format!("/hls/{next}"), &[]).body);
            Some(())
        },
    );

    // Too far ahead: 400 at once, not a wait.
    let (_, now) = playlist_with(&runner, 8);
    let last_segment = segment_number(&now.segments.last().unwrap().0);
    let (last_msn, last_part) = part_numbers(&now.parts.last().unwrap().0);
    // Advance Part Limit: three seconds of 200 ms parts, 15. Asked with a margin, as the
    // live edge moves on while the request travels.
    let advance_part_limit = 15;
    for query in [
        format!("_HLS_msn={}", last_segment + 4),
        format!(
            "_HLS_msn={last_msn}&_HLS_part={}",
            last_part + 2 * advance_part_limit
        ),
        format!("_HLS_msn={last_msn}&_HLS_part=99999"),
        "_HLS_msn=x".to_string(),
        "_HLS_part=1".to_string(),
        "_HLS_msn=1&_HLS_skip=maybe".to_string(),
    ] {
        let reply = get(&runner, &format!("/hls/live.m3u8?{query}"), &[]);
        assert_eq!(reply.status, 400, "{query}: {}", reply.text());
        assert_eq!(reply.header("cache-control"), Some("no-store"), "{query}");
    }

    // A delta update: the same playlist with the segments older than CAN-SKIP-UNTIL replaced
    // by EXT-X-SKIP. Both asked of one state: the last part listed, already there.
    let (full, delta) = eventually(Duration::from_secs(30), "two answers of one state", || {
        let now = parse(&get(&runner, "/hls/live.m3u8", &[]).text());
        let (msn, part) = part_numbers(&now.parts.last()?.0);
        let query = format!("/hls/live.m3u8?_HLS_msn={msn}&_HLS_part={part}");
        let full = get(&runner, &query, &[]).text();
        let delta = get(&runner, &format!("{query}&_HLS_skip=YES"), &[]).text();
        (full.lines().last() == delta.lines().last()).then_some((full, delta))
    });
    let (full_list, delta_list) = (parse(&full), parse(&delta));
    let end: f64 = full_list.segments.iter().map(|(_, d)| d).sum::<f64>() + full_list.open_duration;
    let boundary = end - can_skip_until;
    let mut elapsed = 0.0;
    let expected = full_list
        .segments
        .iter()
        .take_while(|(_, d)| {
            elapsed += d;
            elapsed <= boundary + 1e-6
        })
        .count() as u64;
    assert!(expected > 0, "nothing to skip in\n{full}");
    assert_eq!(delta_list.skipped, expected, "{delta}\nagainst\n{full}");
    assert_eq!(delta_list.media_sequence, full_list.media_sequence);
    assert_eq!(
        delta_list.segments[..],
        full_list.segments[expected as usize..],
        "{delta}\nagainst\n{full}"
    );
    assert_eq!(delta_list.parts, full_list.parts);
    assert_eq!(delta_list.hint, full_list.hint);

    // If-None-Match with the tag just given: 304 while nothing changed (a part comes every
    // 200 ms, so a few tries).
    eventually(Duration::from_secs(30), "a 304", || {
        let first = get(&runner, "/hls/live.m3u8", &[]);
        let etag = first.header("etag")?.to_string();
        let again = get(&runner, "/hls/live.m3u8", &[("If-None-Match", &etag)]);
        match again.status {
            304 => {
                assert!(again.body.is_empty());
                assert_eq!(again.header("etag"), Some(etag.as_str()));
                Some(())
            }
            200 => {
                assert_ne!(again.header("etag"), Some(etag.as_str()));
                None
            }
            other => panic!("If-None-Match answered {other}"),
        }
    });

    // gzip when asked: the same text, under its own tag.
    eventually(Duration::from_secs(30), "a gzip round trip", || {
        let identity = get(&runner, "/hls/live.m3u8", &[]);
        let gzip = get(
            &runner,
            "/hls/live.m3u8",
            &[("Accept-Encoding", "gzip, br")],
        );
        assert_eq!(gzip.status, 200);
        assert_eq!(gzip.header("content-encoding"), Some("gzip"));
        assert_eq!(gzip.header("vary"), Some("Accept-Encoding"));
        let unzipped = gunzip(&gzip.body, &dir);
        assert!(unzipped.starts_with(b"#EXTM3U\n"));
        assert!(gzip.body.len() < unzipped.len());
        let tag = |r: &HttpReply| r.header("etag").unwrap_or_default().to_string();
        assert_ne!(tag(&gzip), tag(&identity));
        (tag(&gzip).replace("-gz\"", "\"") == tag(&identity))
            .then(|| assert_eq!(unzipped, identity.body))
    });
    assert_eq!(identity_encoding(&runner), None);
    let _ = std::fs::remove_dir_all(&dir);
}

/// What a client that refuses gzip gets.
fn identity_encoding(runner: &RunnerChild) -> Option<String> {
    get(runner, "/hls/live.m3u8", &[("Accept-Encoding", "gzip;q=0")])
        .header("content-encoding")
        .map(str::to_string)
}

/// Thousands of viewers long-polling the next part at once, from a few addresses (as behind
/// a few NATs): every one is answered 200 with a playlist holding the part it asked for.
#[test]
fn two_thousand_blocking_reloads_wait_at_once_and_all_get_their_part() {
    const CLIENTS: usize = 2000;
    const ADDRESSES: u8 = 8;
    /// The pipeline's and the server's own threads, well under one per waiting request.
    const MAX_RUNNER_THREADS: usize = 200;
    let limit = raise_descriptor_limit();
    assert!(
        limit as usize > CLIENTS + 256,
        "this test needs {CLIENTS} descriptors; the hard limit is {limit}"
    );
    let dir = scratch_dir("runner-test", "llhls-load");
    let runner = start_runner(&dir);
    let (_, playlist) = playlist_with(&runner, 2);
    // The first part of the segment after the one in progress: all of them wait for it.
    let (open, _) = part_numbers(playlist.hint.as_deref().unwrap());
    let wanted = format!("part{}.0.m4s", open + 1);
    let path = format!("/hls/live.m3u8?_HLS_msn={}&_HLS_part=0", open + 1);
    let addr = runner.addr();
    let mut streams = Vec::with_capacity(CLIENTS);
    for i in 0..CLIENTS {
        let source: IpAddr = [127, 0, 0, 2 + (i % ADDRESSES as usize) as u8].into();
        let mut stream = connect_from(source, &addr)
            .unwrap_or_else(|e| panic!("client {i} cannot connect from {source}: {e}"));
        stream
            .set_read_timeout(Some(Duration::from_secs(30)))
            .unwrap();
        send_request(&mut stream, &addr, "GET", &path, &[], b"")
            .unwrap_or_else(|e| panic!("client {i} cannot send: {e}"));
        streams.push(stream);
    }
    // Waiting is a sleeping task each, not a thread: the runner has no more threads than
    // before (a thread each was 256 at most, and the rest queued).
    let threads = std::fs::read_to_string(format!("/proc/{}/status", runner.pid()))
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find_map(|l| l.strip_prefix("Threads:"))
                .and_then(|n| n.trim().parse::<usize>().ok())
        })
        .expect("the runner's thread count");
    println!("runner threads with {CLIENTS} requests waiting: {threads}");
    assert!(
        threads < MAX_RUNNER_THREADS,
        "{threads} threads for {CLIENTS} waiting requests"
    );
    // The page and the API answer meanwhile.
    assert_eq!(runner.get("/").status, 200);
    assert_eq!(runner.get("/api/status").status, 200);
    let mut failures = Vec::new();
    for (i, stream) in streams.iter_mut().enumerate() {
        match read_reply(stream) {
            Ok(reply) if reply.status == 200 && reply.text().contains(&wanted) => {}
            Ok(reply) => failures.push(format!(
                "client {i}: {} {}",
                reply.status,
                reply.text().lines().last().unwrap_or_default()
            )),
            Err(e) => failures.push(format!("client {i}: {e}")),
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {CLIENTS} blocking reloads failed, the first: {:?}",
        failures.len(),
        &failures[..failures.len().min(5)]
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// hls.js, an independent reader of the same RFC, plays the parts and merges the delta
/// updates it asks for (`_HLS_skip=YES`) into the playlist it has.
#[test]
fn hls_js_plays_with_delta_updates() {
    let dir = scratch_dir("runner-test", "llhls-delta");
    let runner = start_runner(&dir);
    // Long enough already that its next reloads skip segments.
    playlist_with(&runner, 8);
    let result = hybridlive_testkit::viewer_page(
        &runner.base,
        "window.viewer && window.viewer.mode === 'hls' && window.viewer.hls \
             && window.viewer.hls.latestLevelDetails \
             && window.viewer.hls.latestLevelDetails.skippedSegments > 0 \
             && document.querySelector('video').currentTime > 3",
        "(() => { const d = window.viewer.hls.latestLevelDetails; \
               return { skipped: d.skippedSegments, failed: !!d.deltaUpdateFailed, \
                        segments: d.fragments.length, parts: d.partList ? d.partList.length : 0, \
                        played: document.querySelector('video').currentTime }; })()",
    );
    println!("hls.js with delta updates: {result}");
    assert!(result["skipped"].as_u64().unwrap_or(0) > 0, "{result}");
    assert_eq!(result["failed"], false, "{result}");
    assert!(result["parts"].as_u64().unwrap_or(0) > 0, "{result}");
    // The merged playlist still holds the skipped segments (ten are listed).
    assert!(result["segments"].as_u64().unwrap_or(0) >= 8, "{result}");
    assert!(result["played"].as_f64().unwrap_or(0.0) > 3.0, "{result}");
    let _ = std::fs::remove_dir_all(&dir);
}
