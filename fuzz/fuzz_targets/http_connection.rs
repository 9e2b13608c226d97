//! One connection of the runner's HTTP server under an arbitrary client script (bytes, request
//! heads, pauses, reads, a half-close; see `hybridlive_runner::http_abuse::run_script`): no
//! panic, no allocation of an announced body, only HTTP/1.1 responses, and a client that goes
//! quiet loses its connection within the server's limits.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|script: &[u8]| {
    // A longer script only adds bytes and pauses (bounded in all) to the same connection.
    if script.len() <= 4096 {
        hybridlive_runner::http_abuse::run_script(script);
    }
});
