//! The query string of an LL-HLS playlist request (`_HLS_msn`, `_HLS_part`, `_HLS_skip`, and
//! whatever else a client or a cache buster appends): no panic; a query it accepts names a
//! part only with a segment, and reads back the same from its canonical form.
#![no_main]

use hybridlive_runner::hls_query::{PlaylistQuery, parse_playlist_query};
use libfuzzer_sys::fuzz_target;

fn canonical(query: &PlaylistQuery) -> String {
    let mut pairs = Vec::new();
    if let Some(msn) = query.msn {
        pairs.push(format!("_HLS_msn={msn}"));
    }
    if let Some(part) = query.part {
        pairs.push(format!("_HLS_part={part}"));
    }
    if query.skip {
        pairs.push("_HLS_skip=YES".to_string());
    }
    pairs.join("&")
}

fuzz_target!(|data: &[u8]| {
    let Ok(query) = std::str::from_utf8(data) else {
        return;
    };
    match parse_playlist_query(query) {
        Ok(asked) => {
            assert!(asked.part.is_none() || asked.msn.is_some(), "{query:?}");
            assert_eq!(parse_playlist_query(&canonical(&asked)), Ok(asked), "{query:?}");
        }
        Err(reason) => assert!(!reason.is_empty()),
    }
});
