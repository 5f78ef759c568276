//! What reporters write: the four package-database formats `patchloop
//! inventory` reads, the compact lines of an Inventory's spec under each
//! family's grammar, and the subject names the canonical Inventory name is
//! made from. A compact list that parses must survive a round trip
//! unchanged.
#![no_main]

use libfuzzer_sys::fuzz_target;
use patchloop::api::inventory::{InventorySubject, SubjectKind};
use patchloop::engine::inventory::{
    InputFormat, detect, parse, parse_compact_list, to_compact_list,
};
use patchloop::engine::version::Ecosystem;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let _ = detect(text);
    for format in InputFormat::ALL {
        let _ = parse(format, text);
    }
    for kind in [
        SubjectKind::Workload,
        SubjectKind::Template,
        SubjectKind::ChangeRequest,
    ] {
        let subject = InventorySubject {
            kind,
            name: text.to_owned(),
            revision: Some(7),
        };
        assert!(subject.canonical_inventory_name().len() <= 253);
    }
    let lines: Vec<&str> = text.lines().collect();
    for family in Ecosystem::ALL {
        if let Ok(packages) = parse_compact_list(family, &lines) {
            let written = to_compact_list(&packages);
            let again = parse_compact_list(family, &written).expect("written compact lines parse");
            assert_eq!(packages, again, "compact lines round-trip");
        }
    }
});
