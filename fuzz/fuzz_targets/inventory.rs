//! What reporters write: the four package-database formats `patchloop
//! inventory` reads and the compact lines of an Inventory's spec. A compact
//! list that parses must survive a round trip unchanged.
#![no_main]

use libfuzzer_sys::fuzz_target;
use patchloop::engine::inventory::{
    InputFormat, detect, parse, parse_compact_list, to_compact_list,
};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let _ = detect(text);
    for format in InputFormat::ALL {
        let _ = parse(format, text);
    }
    let lines: Vec<&str> = text.lines().collect();
    if let Ok(packages) = parse_compact_list(&lines) {
        let written = to_compact_list(&packages);
        let again = parse_compact_list(&written).expect("written compact lines parse");
        assert_eq!(packages, again, "compact lines round-trip");
    }
});
