//! Durations users write in policies (`backoff: 10m`, `verifyTimeout: 2h`).
#![no_main]

use libfuzzer_sys::fuzz_target;
use patchloop::api::common::Duration;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(d) = Duration(text.to_owned()).parse() {
        assert!(!d.is_negative(), "{text:?} parsed to a negative duration");
    }
});
