//! The offer schedule parsers of `offeroverlay`: schedule files (TOML and JSON) and the one-offer
//! JSON of the `show-offer` signal and `POST /api/offers`. Every input ends in offers or in an
//! error naming where; never in a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&selector, rest)) = data.split_first() else {
        return;
    };
    let Ok(text) = std::str::from_utf8(rest) else {
        return;
    };
    match selector % 3 {
        0 => {
            let _ = gstofferoverlay::fuzzing::schedule(text, false);
        }
        1 => {
            let _ = gstofferoverlay::fuzzing::schedule(text, true);
        }
        _ => {
            let _ = gstofferoverlay::fuzzing::offer_json(text);
        }
    }
});
