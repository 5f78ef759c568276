//! CISA's Known Exploited Vulnerabilities catalog as a feed serves it.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = patchloop::engine::advisory::parse_kev(data, "fuzz");
});
