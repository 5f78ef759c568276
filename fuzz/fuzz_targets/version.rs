//! Package versions of each ecosystem, from inventories and advisories: two
//! versions that parse are ordered consistently (antisymmetric, reflexive).
#![no_main]

use std::cmp::Ordering;

use libfuzzer_sys::fuzz_target;
use patchloop::engine::version::{Ecosystem, parse_platform, parse_version};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let _ = parse_platform(text);
    let (a, b) = text.split_once('\n').unwrap_or((text, ""));
    for family in Ecosystem::ALL {
        let (Ok(va), Ok(vb)) = (parse_version(family, a), parse_version(family, b)) else {
            continue;
        };
        assert_eq!(
            va.compare(&va).ok(),
            Some(Ordering::Equal),
            "{family:?} {a:?} = itself"
        );
        assert_eq!(
            va.compare(&vb).ok(),
            vb.compare(&va).ok().map(Ordering::reverse),
            "{family:?} order of {a:?} and {b:?} is antisymmetric"
        );
    }
});
