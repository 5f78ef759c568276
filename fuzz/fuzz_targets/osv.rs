//! OSV records from a feed (one record, an array, or an all.zip archive):
//! any bytes a feed serves must parse or fail cleanly, never panic or
//! allocate without bound.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = patchloop::engine::advisory::parse_osv_bytes(data, "fuzz");
});
