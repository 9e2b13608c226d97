//! TURN on the webrtc output: what a pipeline file may say of ICE servers (`ice_servers`,
//! `turn_secret_env`, `turn_ttl`) and their errors, and the runner's `/whep` naming the servers
//! with credentials made from the secret in the environment.
//!
//! `cargo nextest run -p hybridlive-runner --test turn`

mod common;

use std::time::Duration;

use hybridlive_testkit::http::http;
use hybridlive_testkit::runner_child::test_runner;
use hybridlive_testkit::{free_tcp_port, in_private_netns, scratch_dir};

hybridlive_testkit::runner_child_entry!();

const PIPELINE: &str = common::WEBRTC_PIPELINE;

fn webrtc_output(keys: &str) -> Result<hybridlive_runner::WebrtcOutput, String> {
    common::webrtc_output("turn.toml", keys)
}

#[test]
fn ice_server_keys_are_read_with_their_defaults() {
    let default = webrtc_output("").unwrap();
    assert!(default.ice_servers.is_empty());
    assert_eq!(default.turn_secret_env, None);
    assert_eq!(default.turn_ttl, 3600);
    let set = webrtc_output(
        "ice_servers = [\"stun:turn.example.org:3478\", \
         \"turns:turn.example.org:443?transport=tcp\"]\n\
         turn_secret_env = \"HYBRIDLIVE_TURN_SECRET\"\nturn_ttl = 600",
    )
    .unwrap();
    assert_eq!(
        set.ice_servers,
        [
            "stun:turn.example.org:3478",
            "turns:turn.example.org:443?transport=tcp"
        ]
    );
    assert_eq!(
        set.turn_secret_env.as_deref(),
        Some("HYBRIDLIVE_TURN_SECRET")
    );
    assert_eq!(set.turn_ttl, 600);
    assert!(!set.server_relay);
    // STUN alone needs no secret.
    assert!(webrtc_output("ice_servers = [\"stun:192.0.2.1\"]").is_ok());
}

#[test]
fn malformed_ice_server_keys_are_refused_where_they_are_written() {
    for (keys, expected) in [
        (
            "ice_servers = [\"stun:ok.example.org\", \"turn//bad:3478\"]",
            &[
                "turn.toml:12:39",
                "outputs.live: `ice_servers`: `turn//bad:3478`",
                "e.g. \"stun:",
            ][..],
        ),
        (
            "ice_servers = [\"turn:host:99999\"]",
            &["turn.toml:12:16", "the port is not 1..=65535"],
        ),
        (
            "ice_servers = [\"http://turn.example.org\"]",
            &["the scheme is not stun:, stuns:, turn: or turns:"],
        ),
        (
            "ice_servers = \"stun:host\"",
            &["turn.toml:12:15", "expected an array of stun:/turn: URLs"],
        ),
        (
            "ice_servers = [\"turn:host:3478?transport=tcp\"]",
            &[
                "turn.toml:12:16",
                "a turn: server needs credentials: set turn_secret_env",
            ],
        ),
        (
            "ice_servers = [\"turn:host\"]\nturn_secret_env = \"s3cr3t value!\"",
            &[
                "turn.toml:13:19",
                "expected the name of an environment variable",
            ],
        ),
        (
            "ice_servers = [\"stun:host\"]\nserver_relay = true",
            &["turn.toml:13:16", "server_relay needs a turn: server"],
        ),
        (
            "turn_ttl = 5",
            &["turn.toml:12:12", "`turn_ttl`: 5 is out of range"],
        ),
    ] {
        let error = webrtc_output(keys).expect_err(keys);
        for part in expected {
            assert!(
                error.contains(part),
                "`{keys}`: expected `{part}` in:\n{error}"
            );
        }
    }
}

#[test]
fn whep_names_the_turn_server_with_a_credential_from_the_environment() {
    if !in_private_netns("whep_names_the_turn_server_with_a_credential_from_the_environment") {
        return;
    }
    let dir = scratch_dir("turn", "whep");
    let file = dir.join("turn.toml");
    std::fs::write(
        &file,
        format!(
            "{PIPELINE}loopback_only = true\n\
             ice_servers = [\"stun:127.0.0.1:3478\", \"turn:127.0.0.1:3478?transport=tcp\"]\n\
             turn_secret_env = \"HYBRIDLIVE_TEST_TURN_SECRET\"\nturn_ttl = 120\n"
        ),
    )
    .unwrap();
    let secret = "runner-test-secret-4f1c";

    // No secret in the environment: the start fails naming the variable.
    let mut missing = test_runner(&file, &dir)
        .http(&format!("127.0.0.1:{}", free_tcp_port()))
        .keep_stderr()
        .spawn();
    let status = missing.wait_exit(Duration::from_secs(90));
    assert!(!status.success(), "started without the secret");
    let said = missing.output();
    assert!(
        said.contains("HYBRIDLIVE_TEST_TURN_SECRET") && said.contains("not set"),
        "the error names the variable:\n{said}"
    );

    let port = free_tcp_port();
    let runner = test_runner(&file, &dir)
        .http(&format!("127.0.0.1:{port}"))
        .env(&[("HYBRIDLIVE_TEST_TURN_SECRET", secret)])
        .keep_stderr()
        .start_within(Duration::from_secs(90));
    let reply = http(&format!("127.0.0.1:{port}"), "OPTIONS", "/whep", &[], b"")
        .expect("OPTIONS /whep answered");
    assert_eq!(reply.status, 204, "{}", reply.text());
    let links: Vec<&str> = reply
        .headers
        .iter()
        .filter(|(n, _)| n == "link")
        .map(|(_, v)| v.as_str())
        .collect();
    assert_eq!(links.len(), 2, "{:?}", reply.headers);
    assert_eq!(links[0], "<stun:127.0.0.1:3478>; rel=\"ice-server\"");
    assert!(
        links[1]
            .starts_with("<turn:127.0.0.1:3478?transport=tcp>; rel=\"ice-server\"; username=\""),
        "{}",
        links[1]
    );
    let expose = reply.header("access-control-expose-headers").unwrap_or("");
    assert!(expose.contains("Link"), "{expose}");
    let log = runner.output();
    assert!(!log.contains(secret), "the secret was logged:\n{log}");
    let _ = std::fs::remove_dir_all(&dir);
}
