//! `hybridlive validate`: a table of broken pipeline files and the messages a user must see,
//! and every shipped pipeline file accepted.

use std::path::PathBuf;

fn init() {
    hybridlive_runner::init().expect("GStreamer initialises");
}

const VALID: &str = r#"
[sources.cam]
type = "test"

[encoders.video]
type = "h264"
inputs = ["cam"]

[encoders.audio]
type = "aac"
inputs = ["cam"]

[outputs.hls]
type = "hls"
inputs = ["video", "audio"]
"#;

/// Replaces `from` in the valid file with `to`; panics if `from` is absent so a table row can
/// never silently test the valid file.
fn broken(from: &str, to: &str) -> String {
    assert!(VALID.contains(from), "`{from}` is not in the base file");
    VALID.replacen(from, to, 1)
}

fn errors(text: &str) -> String {
    match hybridlive_runner::parse_named("broken.toml", text) {
        Ok(_) => panic!("accepted a broken file:\n{text}"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn the_base_file_is_valid() {
    init();
    let pipeline = hybridlive_runner::parse_named("valid.toml", VALID).expect("valid");
    assert_eq!(pipeline.sources.len(), 1);
    assert_eq!(pipeline.outputs[0].inputs, ["video", "audio"]);
}

#[test]
fn broken_files_report_position_component_key_and_suggestion() {
    init();
    // (what is broken, replaced by, expected fragments of the report)
    let table: &[(&str, &str, &[&str])] = &[
        (
            "type = \"test\"",
            "type = \"tset\"",
            &[
                "broken.toml:3:8: error: sources.cam: `type`: unknown type `tset`",
                "did you mean `test`?",
            ],
        ),
        (
            "type = \"test\"",
            "type = \"test\"\nwidht = 640",
            &[
                "broken.toml:4:1: error: sources.cam: `widht`: unknown key",
                "did you mean `width`?",
            ],
        ),
        (
            "type = \"test\"",
            "type = \"test\"\nheight = \"720\"",
            &[
                "broken.toml:4:10: error: sources.cam: `height`: expected an integer, found a string",
            ],
        ),
        (
            "type = \"test\"",
            "type = \"test\"\nframerate = 0",
            &[
                "broken.toml:4:13: error: sources.cam: `framerate`: 0 is out of range: expected 1..=120",
            ],
        ),
        (
            "type = \"test\"",
            "type = \"test\"\nframerate = \"30000/0\"",
            &[
                "broken.toml:4:13: error: sources.cam: `framerate`: `30000/0` is not a frame rate from 1 to 120 fps",
            ],
        ),
        (
            "type = \"test\"",
            "type = \"test\"\nframerate = 240.5",
            &["broken.toml:4:13: error: sources.cam: `framerate`: `240.5` is not a frame rate"],
        ),
        (
            "type = \"test\"",
            "type = \"test\"\nframerate = true",
            &[
                "broken.toml:4:13: error: sources.cam: `framerate`: expected a frame rate (30, 29.97 or \"30000/1001\"), found",
            ],
        ),
        (
            "inputs = [\"cam\"]\n\n[encoders.audio]",
            "inputs = [\"cma\"]\n\n[encoders.audio]",
            &[
                "broken.toml:7:11: error: encoders.video: `inputs`: `cma` is not a source or transform",
                "did you mean `cam`?",
            ],
        ),
        (
            "inputs = [\"video\", \"audio\"]",
            "inputs = [\"vidoe\", \"audio\"]",
            &[
                "broken.toml:15:11: error: outputs.hls: `inputs`: `vidoe` is not an encoder",
                "did you mean `video`?",
            ],
        ),
        (
            "type = \"hls\"",
            "type = \"webrtc\"",
            &[
                "broken.toml:15:20: error: outputs.hls: `inputs`: `audio` is AAC; WebRTC carries Opus",
                "use an encoder with `type = \"opus\"` for WebRTC",
            ],
        ),
        (
            "type = \"hls\"",
            "type = \"hsl\"",
            &[
                "`type`: unknown type `hsl`: expected one of hls, record",
                "did you mean `hls`?",
            ],
        ),
        (
            "[sources.cam]\ntype = \"test\"",
            "[sources.cam]\ntype = \"file\"",
            &["broken.toml:2:10: error: sources.cam: `location`: missing required key"],
        ),
        (
            "[sources.cam]",
            "[sorces.cam]",
            &[
                "broken.toml:2:2: error: `sorces`: unknown section",
                "did you mean `sources`?",
            ],
        ),
        (
            "type = \"aac\"",
            "type = \"opus\"",
            &[
                "outputs.hls: `inputs`: `audio` is Opus, which browsers do not play from HLS MPEG-TS",
            ],
        ),
        (
            "type = \"h264\"",
            "type = \"h264\"\nkeyframe_interval = 0.7",
            &[
                "HLS segments of 1 s need a keyframe interval that divides them",
                "set `keyframe_interval = 1`",
            ],
        ),
        (
            "[outputs.hls]",
            "[transforms.fx]\ntype = \"gst\"\ninputs = [\"cam\"]\npipeline = \"videobalanse saturation=0.5\"\n\n[outputs.hls]",
            &[
                "broken.toml:16:12: error: transforms.fx: `pipeline`: invalid GStreamer fragment: no element \"videobalanse\"",
                "did you mean `videobalance`?",
            ],
        ),
        (
            "[outputs.hls]",
            "[transforms.fx]\ntype = \"gst\"\ninputs = [\"cam\"]\npipeline = \"videobalance saturaton=0.5\"\n\n[outputs.hls]",
            &[
                "no property \"saturaton\" in element \"videobalance\"",
                "did you mean `saturation`?",
            ],
        ),
        (
            "[outputs.hls]",
            "[transforms.abr]\ntype = \"abrcontroller\"\ninputs = [\"cam\"]\noutput = \"up\"\nmax_bitrat = 3000\n\n\
             [encoders.upv]\ntype = \"h264\"\ninputs = [\"abr\"]\n\n\
             [outputs.up]\ntype = \"srt\"\ninputs = [\"upv\"]\nuri = \"srt://127.0.0.1:9100?mode=listener\"\n\n[outputs.hls]",
            &[
                "broken.toml:17:1: error: transforms.abr: `max_bitrat`: unknown key",
                "did you mean `max_bitrate`?",
            ],
        ),
        (
            "[outputs.hls]",
            "[transforms.abr]\ntype = \"abrcontroller\"\ninputs = [\"cam\"]\noutput = \"uplnk\"\n\
             ladder = [\"1280x720@30:1500-4000\", \"640x360:900\"]\nmin_bitrate = 5000\nmax_bitrate = 4000\n\n\
             [encoders.upv]\ntype = \"h264\"\ninputs = [\"abr\"]\n\n\
             [outputs.uplink]\ntype = \"rtmp\"\ninputs = [\"upv\"]\nlocation = \"rtmp://127.0.0.1/live/key\"\n\n[outputs.hls]",
            &[
                "transforms.abr: `output`: `uplnk` is not an output",
                "did you mean `uplink`?",
                "transforms.abr: `ladder`: rung '640x360:900'",
                "transforms.abr: `max_bitrate`: 4000 kbit/s is below min_bitrate (5000 kbit/s)",
            ],
        ),
        (
            "[outputs.hls]",
            "[transforms.abr]\ntype = \"abrcontroller\"\ninputs = [\"cam\"]\noutput = \"hls\"\n\n\
             [encoders.upv]\ntype = \"h264\"\ninputs = [\"abr\"]\n\n\
             [outputs.up]\ntype = \"srt\"\ninputs = [\"upv\"]\nuri = \"srt://127.0.0.1:9100?mode=listener\"\n\n\
             [outputs.rec]\ntype = \"record\"\ninputs = [\"upv\"]\n\n[outputs.hls]",
            &[
                "transforms.abr: `output`: `hls` is a hls output, which gives no feedback about its link",
                "transforms.abr: `output`: `hls` does not take `upv`, the encoder this abrcontroller steers",
                "outputs.up: `inputs`: `upv` is steered by abrcontroller `abr` for `hls`",
                "outputs.rec: `inputs`: `upv` is steered by abrcontroller `abr`",
                "give this output an encoder of its own",
            ],
        ),
        (
            "[outputs.hls]",
            "[transforms.abr]\ntype = \"abrcontroller\"\ninputs = [\"cam\"]\noutput = \"live\"\n\n\
             [encoders.vp8]\ntype = \"vp8\"\ninputs = [\"abr\"]\n\n\
             [outputs.live]\ntype = \"webrtc\"\ninputs = [\"vp8\"]\n\n[outputs.hls]",
            &["encoders.vp8: `inputs`: an abrcontroller steers h264 encoders only"],
        ),
        (
            "[outputs.hls]",
            "[transforms.abr]\ntype = \"abrcontroller\"\ninputs = [\"cam\"]\noutput = \"hls\"\n\n[outputs.hls]",
            &["transforms.abr: no h264 encoder reads from this abrcontroller"],
        ),
        (
            "[outputs.hls]",
            "[transforms.fx]\ntype = \"offeroverlay\"\ninputs = [\"cam\"]\nschedule = \"/nonexistent/offers.toml\"\n\n[outputs.hls]",
            &["transforms.fx: `schedule`: `/nonexistent/offers.toml` is not a readable file"],
        ),
        (
            "[sources.cam]",
            "[sources.cam",
            &["broken.toml:2:13: error: unclosed table"],
        ),
        (
            "[outputs.hls]",
            "[encoders.hq]\ntype = \"h264\"\ninputs = [\"cam\"]\npreset = \"balanced\"\n\n\
             [outputs.live]\ntype = \"webrtc\"\ninputs = [\"hq\", \"audio\"]\n\n[outputs.hls]",
            &[
                "outputs.live: `inputs`: `hq` is not constrained baseline",
                "set `preset = \"zerolatency\"` in [encoders.hq]",
                "outputs.live: `inputs`: `audio` is AAC; WebRTC carries Opus",
            ],
        ),
        (
            "[outputs.hls]",
            "[outputs.live]\ntype = \"webrtc\"\ninputs = [\"video\"]\nmax_viewers = 0\n\n[outputs.hls]",
            &["outputs.live: `max_viewers`"],
        ),
        (
            "[outputs.hls]",
            "[outputs.live]\ntype = \"webrtc\"\ninputs = [\"video\"]\nplayout_delay_ms = [100, 50]\n\n[outputs.hls]",
            &["outputs.live: `playout_delay_ms`: expected [min, max]"],
        ),
        (
            "[outputs.hls]",
            "[outputs.live]\ntype = \"webrtc\"\ninputs = [\"video\"]\nplayout_delay_ms = \"of\"\n\n[outputs.hls]",
            &["outputs.live: `playout_delay_ms`", "did you mean `off`?"],
        ),
        (
            "[outputs.hls]",
            "[outputs.live]\ntype = \"webrtc\"\ninputs = [\"video\"]\nplayout_delay = 0\n\n[outputs.hls]",
            &[
                "outputs.live: `playout_delay`: unknown key",
                "did you mean `playout_delay_ms`?",
            ],
        ),
        (
            "[outputs.hls]\ntype = \"hls\"\ninputs = [\"video\", \"audio\"]",
            "[encoders.vp8]\ntype = \"vp8\"\ninputs = [\"cam\"]\n\n\
             [outputs.hls]\ntype = \"hls\"\ninputs = [\"vp8\", \"audio\"]",
            &["outputs.hls: `inputs`: `vp8` is VP8, which only the webrtc output sends"],
        ),
        (
            "[encoders.video]\ntype = \"h264\"",
            "[encoders.vp]\ntype = \"vp9\"\ninputs = [\"cam\"]\n\n[encoders.video]\ntype = \"h264\"",
            &["encoders.vp: `type`", "did you mean `vp8`?"],
        ),
        (
            "[outputs.hls]",
            "[encoders.vp8]\ntype = \"vp8\"\ninputs = [\"cam\"]\nbitrate = 10\n\n\
             [outputs.live]\ntype = \"webrtc\"\ninputs = [\"video\", \"vp8\", \"video\"]\n\n[outputs.hls]",
            &[
                "encoders.vp8: `bitrate`: 10 is out of range",
                "outputs.live: `inputs`: an output takes exactly one video encoder (a webrtc output: one h264 and one vp8 at most)",
            ],
        ),
        (
            "[outputs.hls]",
            "[encoders.vp8]\ntype = \"vp8\"\ninputs = [\"cam\"]\n\n\
             [outputs.sfu]\ntype = \"whip\"\ninputs = [\"vp8\"]\nendpoint = \"http://sfu.example/whip\"\n\n[outputs.hls]",
            &["outputs.sfu: `inputs`: `vp8` is VP8, which only the webrtc output sends"],
        ),
        (
            "[outputs.hls]",
            "[outputs.sfu]\ntype = \"whipp\"\ninputs = [\"video\"]\n\n[outputs.hls]",
            &[
                "outputs.sfu: `type`: unknown type `whipp`",
                "did you mean `whip`?",
            ],
        ),
        (
            "[outputs.hls]",
            "[outputs.sfu]\ntype = \"whip\"\ninputs = [\"video\", \"audio\"]\n\
             endpiont = \"http://sfu.example/whip\"\n\n[outputs.hls]",
            &[
                "outputs.sfu: `endpoint`: missing required key",
                "outputs.sfu: `endpiont`: unknown key",
                "did you mean `endpoint`?",
            ],
        ),
        (
            "[outputs.hls]",
            "[outputs.sfu]\ntype = \"whip\"\ninputs = [\"video\", \"audio\"]\n\
             endpoint = \"ws://sfu.example/whip\"\ntoken = \"\"\n\n[outputs.hls]",
            &[
                "outputs.sfu: `endpoint`: `ws://sfu.example/whip` is not an http:// or https:// WHIP endpoint URL",
                "outputs.sfu: `token`: an empty token",
                "outputs.sfu: `inputs`: `audio` is AAC; WebRTC carries Opus",
            ],
        ),
        (
            "[outputs.hls]",
            "[encoders.hq]\ntype = \"h264\"\ninputs = [\"cam\"]\npreset = \"balanced\"\n\n\
             [outputs.room]\ntype = \"janus\"\ninputs = [\"hq\"]\nendpoint = \"http://janus:8088\"\n\
             rom_id = 1234\n\n[outputs.hls]",
            &[
                "outputs.room: `room_id`: missing required key",
                "outputs.room: `rom_id`: unknown key",
                "did you mean `room_id`?",
                "outputs.room: `endpoint`: `http://janus:8088` is not a ws:// or wss:// URL",
                "outputs.room: `inputs`: `hq` is not constrained baseline",
            ],
        ),
    ];
    for (from, to, expected) in table {
        let report = errors(&broken(from, to));
        for fragment in *expected {
            assert!(
                report.contains(fragment),
                "replacing `{from}` by `{to}`: expected `{fragment}` in:\n{report}"
            );
        }
    }
}

#[test]
fn a_refused_source_is_not_also_reported_missing() {
    init();
    let report = errors(&broken("type = \"test\"", "type = \"tset\""));
    assert!(report.contains("unknown type `tset`"), "{report}");
    assert!(!report.contains("has no source"), "{report}");
}

#[test]
fn every_error_is_reported_not_just_the_first() {
    init();
    let text = broken("type = \"test\"", "type = \"test\"\nwidht = 1\nhieght = 2")
        .replace("type = \"aac\"", "type = \"acc\"");
    let report = errors(&text);
    assert!(report.contains("`widht`"), "{report}");
    assert!(report.contains("`hieght`"), "{report}");
    assert!(report.contains("unknown type `acc`"), "{report}");
    assert!(report.contains("3 error(s)"), "{report}");
}

#[test]
fn shipped_pipelines_are_valid() {
    init();
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../pipelines");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .expect("pipelines folder")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .collect();
    files.sort();
    let names: Vec<String> = files
        .iter()
        .map(|f| f.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    for expected in ["hls.toml", "ingest.toml", "record.toml", "workshop.toml"] {
        assert!(
            names.iter().any(|n| n == expected),
            "{expected} is missing from {names:?}"
        );
    }
    hybridlive_runner::validate(&hybridlive_runner::ValidateArgs { files })
        .expect("all shipped pipelines validate");
}

/// Every listener binds 127.0.0.1 unless the file names an address: an SRT URI without a host
/// gets the loopback address (and keeps listening), written addresses are kept.
#[test]
fn srt_listeners_without_a_host_bind_loopback() {
    init();
    let text = |source_uri: &str, output_uri: &str| {
        format!(
            "[sources.ingest]\ntype = \"srt\"\nuri = \"{source_uri}\"\nbackup_uri = \"srt://:9002\"\n\n\
             [encoders.video]\ntype = \"h264\"\ninputs = [\"ingest\"]\n\n\
             [outputs.pull]\ntype = \"srt\"\ninputs = [\"video\"]\nuri = \"{output_uri}\"\n"
        )
    };
    let uris = |file: &str| {
        let pipeline = hybridlive_runner::parse_named("srt.toml", file).expect("valid");
        let hybridlive_runner::config::SourceKind::Network { uri, fallback } =
            &pipeline.sources[0].kind
        else {
            panic!("not a network source");
        };
        let Some(hybridlive_runner::SrtOutput { uri: out }) =
            pipeline.outputs[0].kind.as_any().downcast_ref()
        else {
            panic!("not an SRT output");
        };
        (uri.clone(), fallback.backup_uri.clone(), out.clone())
    };
    let (source, backup, output) = uris(&text(
        "srt://:9000?mode=listener",
        "srt://:9100?latency=200",
    ));
    assert_eq!(source, "srt://127.0.0.1:9000?mode=listener");
    assert_eq!(
        backup.as_deref(),
        Some("srt://127.0.0.1:9002?mode=listener")
    );
    assert_eq!(output, "srt://127.0.0.1:9100?latency=200&mode=listener");
    // Written addresses, and callers, are left alone.
    let (source, _, output) = uris(&text(
        "srt://0.0.0.0:9000?mode=listener",
        "srt://ingest.example:9000?mode=caller",
    ));
    assert_eq!(source, "srt://0.0.0.0:9000?mode=listener");
    assert_eq!(output, "srt://ingest.example:9000?mode=caller");
}

#[test]
fn a_file_source_must_name_a_file() {
    init();
    let file = "[sources.clip]\ntype = \"file\"\nlocation = \"/nonexistent/lesson.mp4\"\n\n\
                [encoders.video]\ntype = \"h264\"\ninputs = [\"clip\"]\n\n\
                [outputs.hls]\ntype = \"hls\"\ninputs = [\"video\"]\n";
    let report = errors(file);
    assert!(
        report.contains("broken.toml:3:12: error: sources.clip: `location`")
            && report.contains("`/nonexistent/lesson.mp4` is not a file"),
        "{report}"
    );
}

#[test]
fn latency_test_budgets_are_read_and_checked() {
    init();
    let text = format!("{VALID}\n[latency_test]\nduration = 5\nwebrtc_p95_ms = 45\n");
    let pipeline = hybridlive_runner::parse_named("budgets.toml", &text).expect("valid");
    assert_eq!(pipeline.latency_test.duration, Some(5.0));
    assert_eq!(pipeline.latency_test.webrtc_p95_ms, Some(45.0));
    assert_eq!(pipeline.latency_test.hls_p95_ms, None);

    let report = errors(&format!("{VALID}\n[latency_test]\nwebrtc_p95 = 45\n"));
    assert!(
        report.contains("latency_test: `webrtc_p95`: unknown key"),
        "{report}"
    );
    assert!(report.contains("did you mean `webrtc_p95_ms`?"), "{report}");
    let report = errors(&format!("{VALID}\n[latency_test]\nhls_p95_ms = \"3 s\"\n"));
    assert!(
        report.contains("`hls_p95_ms`: expected a number"),
        "{report}"
    );
}

#[test]
fn webrtc_playout_delay_is_read_in_every_form() {
    init();
    let delay = |line: &str| {
        let text = broken(
            "[outputs.hls]",
            &format!(
                "[outputs.live]\ntype = \"webrtc\"\ninputs = [\"video\"]\n{line}\n\n[outputs.hls]"
            ),
        );
        let pipeline = hybridlive_runner::parse_named("delay.toml", &text)
            .unwrap_or_else(|e| panic!("`{line}` refused: {e}"));
        let kind = &pipeline
            .outputs
            .iter()
            .find(|o| o.name == "live")
            .unwrap()
            .kind;
        match kind
            .as_any()
            .downcast_ref::<hybridlive_runner::WebrtcOutput>()
        {
            Some(webrtc) => webrtc.playout_delay_ms,
            None => panic!("not a webrtc output: {kind:?}"),
        }
    };
    let default = hybridlive_webrtc::DEFAULT_PLAYOUT_DELAY;
    assert_eq!(delay(""), Some([default.min, default.max]));
    assert_eq!(delay("playout_delay_ms = [0, 100]"), Some([0, 100]));
    assert_eq!(delay("playout_delay_ms = 60"), Some([60, 60]));
    assert_eq!(delay("playout_delay_ms = \"off\""), None);
}

#[test]
fn a_webrtc_output_takes_one_h264_and_one_vp8_encoder() {
    init();
    let text = broken(
        "[outputs.hls]",
        "[encoders.vp8]\ntype = \"vp8\"\ninputs = [\"cam\"]\n\n\
         [encoders.voice]\ntype = \"opus\"\ninputs = [\"cam\"]\n\n\
         [outputs.live]\ntype = \"webrtc\"\ninputs = [\"vp8\", \"video\", \"voice\"]\n\n[outputs.hls]",
    );
    let pipeline = hybridlive_runner::parse_named("codecs.toml", &text)
        .unwrap_or_else(|e| panic!("refused: {e}"));
    let live = pipeline.outputs.iter().find(|o| o.name == "live").unwrap();
    assert_eq!(live.inputs, ["vp8", "video", "voice"]);
}

#[test]
fn a_rist_output_needs_a_rist_url_with_an_even_port() {
    let text = |uri: &str| {
        format!(
            "[sources.cam]\ntype = \"test\"\n\n\
             [encoders.video]\ntype = \"h264\"\ninputs = [\"cam\"]\n\n\
             [outputs.contribution]\ntype = \"rist\"\ninputs = [\"video\"]\nuri = \"{uri}\"\n"
        )
    };
    assert!(hybridlive_runner::parse_named("rist.toml", &text("rist://127.0.0.1:5004")).is_ok());
    let odd = errors(&text("rist://127.0.0.1:5005"));
    assert!(
        odd.contains("broken.toml:11:7: error: outputs.contribution: `uri`: port 5005"),
        "{odd}"
    );
    assert!(odd.contains("even port"), "{odd}");
    let srt = errors(&text("srt://127.0.0.1:5004"));
    assert!(srt.contains("is not a rist:// URL"), "{srt}");
}

/// Relative paths are read from the pipeline file's folder, wherever the command runs: a
/// slate beside the file is found, recordings go beside it, and a missing file is named with
/// where it was looked for.
#[test]
fn relative_paths_are_read_from_the_pipeline_files_folder() {
    init();
    let dir = std::env::temp_dir().join(format!(
        "hybridlive-validate-relative-{}",
        std::process::id()
    ));
    std::fs::create_dir_all(dir.join("media")).unwrap();
    std::fs::write(dir.join("media/slate.png"), b"not checked here").unwrap();
    let file = dir.join("class.toml");
    std::fs::write(
        &file,
        "[sources.cam]\ntype = \"srt\"\nuri = \"srt://127.0.0.1:9000?mode=listener\"\n\
         slate = \"media/slate.png\"\n\n\
         [encoders.video]\ntype = \"h264\"\ninputs = [\"cam\"]\n\n\
         [outputs.rec]\ntype = \"record\"\ninputs = [\"video\"]\ndirectory = \"takes\"\n",
    )
    .unwrap();
    // The tests run in the crate's folder, not the file's.
    assert_ne!(std::env::current_dir().unwrap(), dir);
    let pipeline = hybridlive_runner::load(&file).expect("the slate beside the file is found");
    let hybridlive_runner::config::SourceKind::Network { fallback, .. } = &pipeline.sources[0].kind
    else {
        panic!("not a network source");
    };
    assert_eq!(
        fallback.slate.as_deref(),
        Some(dir.join("media/slate.png").as_path())
    );
    let Some(record) = pipeline.outputs[0]
        .kind
        .as_any()
        .downcast_ref::<hybridlive_runner::RecordOutput>()
    else {
        panic!("not a record output");
    };
    assert_eq!(record.directory, dir.join("takes"));

    std::fs::remove_file(dir.join("media/slate.png")).unwrap();
    let err = hybridlive_runner::load(&file)
        .expect_err("the slate is gone")
        .to_string();
    assert!(
        err.contains("`media/slate.png` is not a file (looked for")
            && err.contains(&dir.join("media/slate.png").display().to_string()),
        "{err}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// A ladder encoder over the 1280x720@30 test source, with `rungs` as given.
fn ladder_file(rungs: &str) -> String {
    format!(
        "[sources.cam]\ntype = \"test\"\n\n\
         [encoders.video]\ntype = \"h264\"\ninputs = [\"cam\"]\nrungs = {rungs}\n\n\
         [outputs.live]\ntype = \"webrtc\"\ninputs = [\"video\"]\n"
    )
}

#[test]
fn a_ladder_encoder_reads_its_rungs_highest_first() {
    init();
    let text = ladder_file(r#"["1280x720@30:2500", "640x360@30:700", "320x180:200"]"#);
    let pipeline = hybridlive_runner::parse_named("ladder.toml", &text)
        .unwrap_or_else(|e| panic!("refused: {e}"));
    let rungs: Vec<(u32, u32, u32)> = pipeline.encoders[0]
        .rungs
        .iter()
        .map(|r| (r.width, r.height, r.bitrate))
        .collect();
    assert_eq!(rungs, [(1280, 720, 2500), (640, 360, 700), (320, 180, 200)]);
    // The top rung's bitrate is the encoder's.
    match &pipeline.encoders[0].kind {
        hybridlive_runner::config::EncoderKind::H264 { bitrate, .. } => {
            assert_eq!(*bitrate, 2500)
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_ladder_that_does_not_fit_its_source_is_refused_where_it_is_written() {
    init();
    // (rungs, expected fragments): the rungs line is line 7, its array starts at column 9.
    let table: &[(&str, &[&str])] = &[
        (
            r#"["1920x1080@30:4000", "640x360@30:700"]"#,
            &[
                "broken.toml:7:10: error: encoders.video: `rungs`: rung 1920x1080 is above the source's 1280x720",
            ],
        ),
        (
            r#"["1280x720@30:2500", "640x360@60:700"]"#,
            &[
                "broken.toml:7:30: error: encoders.video: `rungs`: rung 640x360 asks for more frames per second than the source's 30",
            ],
        ),
        (
            r#"["640x360@30:700", "1280x720@30:2500"]"#,
            &[
                "broken.toml:7:28: error: encoders.video: `rungs`: bitrates out of order: 2500 kbit/s is not below the rung before it (700 kbit/s)",
            ],
        ),
        (
            r#"["1280x720@30:2500", "640x480@30:700"]"#,
            &[
                "broken.toml:7:30: error: encoders.video: `rungs`: rung 640x480 does not fit the 1280x720 source",
            ],
        ),
        (
            r#"["1280x720@30:2500", "641x361@30:700"]"#,
            &[
                "broken.toml:7:30: error: encoders.video: `rungs`: 641x361: width and height must be even",
            ],
        ),
        (
            r#"["1280x720@30:2500-4000"]"#,
            &[
                "broken.toml:7:10: error: encoders.video: `rungs`: rung '1280x720@30:2500-4000': expected WIDTHxHEIGHT@FPS:KBPS, one bitrate in kbit/s",
            ],
        ),
        (
            r#"["1280x720@30"]"#,
            &[
                "broken.toml:7:10: error: encoders.video: `rungs`: rung '1280x720@30': expected WIDTHxHEIGHT@FPS:KBPS",
            ],
        ),
        (
            "[]",
            &["broken.toml:7:9: error: encoders.video: `rungs`: a ladder needs at least one rung"],
        ),
        (
            "\"720p\"",
            &["`rungs`: expected an array of rungs, found a string"],
        ),
    ];
    for (rungs, expected) in table {
        let report = errors(&ladder_file(rungs));
        for fragment in *expected {
            assert!(
                report.contains(fragment),
                "{rungs}: want `{fragment}` in:\n{report}"
            );
        }
    }
}

#[test]
fn a_ladder_encoder_cannot_be_steered_by_an_abrcontroller() {
    init();
    let text = "[sources.cam]\ntype = \"test\"\n\n\
         [transforms.abr]\ntype = \"abrcontroller\"\ninputs = [\"cam\"]\noutput = \"up\"\n\n\
         [encoders.video]\ntype = \"h264\"\ninputs = [\"abr\"]\nrungs = [\"1280x720@30:2500\", \"640x360@30:700\"]\n\n\
         [outputs.up]\ntype = \"webrtc\"\ninputs = [\"video\"]\n";
    let report = errors(text);
    assert!(
        report.contains("`abr` is an abrcontroller, which steers one encode for one uplink"),
        "{report}"
    );
}

#[test]
fn trusted_proxies_must_be_addresses_or_networks() {
    init();
    let good =
        format!("{VALID}\n[server]\ntrusted_proxies = [\"127.0.0.1\", \"10.0.0.0/8\", \"::1\"]\n");
    let pipeline = hybridlive_runner::parse_named("valid.toml", &good).expect("valid");
    assert_eq!(
        pipeline.server.trusted_proxies,
        ["127.0.0.1", "10.0.0.0/8", "::1"]
    );
    let lines = VALID.lines().count();
    let bad = format!(
        "{VALID}\n[server]\ntrusted_proxies = [\"127.0.0.1\", \"nginx\", \"10.0.0.0/40\", 5]\n"
    );
    let report = errors(&bad);
    let line = lines + 3;
    for expected in [
        format!(
            "broken.toml:{line}:33: error: server: `trusted_proxies`: `nginx` is not an IP \
             address or network"
        ),
        format!(
            "broken.toml:{line}:42: error: server: `trusted_proxies`: `10.0.0.0/40`: the prefix \
             length must be 0 to 32"
        ),
        format!("broken.toml:{line}:57: error: server: `trusted_proxies`: expected an address"),
    ] {
        assert!(report.contains(&expected), "{expected}\nin:\n{report}");
    }
    let not_a_list = format!("{VALID}\n[server]\ntrusted_proxies = \"127.0.0.1\"\n");
    assert!(
        errors(&not_a_list).contains("`trusted_proxies`: expected an array of addresses"),
        "{}",
        errors(&not_a_list)
    );
}
