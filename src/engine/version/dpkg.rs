//! Debian package versions: dpkg's split into epoch, upstream and
//! revision, `debversion`'s ordering (with its one correction), and a byte
//! sort key so that most comparisons are a `memcmp`.

use std::cmp::Ordering;
use std::fmt;
use std::str::FromStr;

use super::{
    Ecosystem, VersionError, all_digits, check_charset, check_common, invalid, quoted_part,
};

/// A Debian package version (`[epoch:]upstream[-revision]`).
///
/// Parsing follows dpkg's `parseversion`: the epoch is everything before the
/// first `:` and must be a number no larger than `i32::MAX`; the revision is
/// everything after the last `-` and must not be empty; the upstream part
/// must not be empty. Characters are limited to those Debian policy allows
/// (upstream: letters, digits, `. + ~ -`, and `:` when there is an epoch;
/// revision: letters, digits, `. + ~`) — dpkg only warns about others, but no
/// archive ships them and accepting them would reach orderings `debversion`
/// does not model. Like dpkg, an upstream part not starting with a digit is
/// accepted (dpkg warns). Surrounding whitespace, which dpkg trims, is
/// rejected here.
///
/// Ordering is `debversion`'s, which implements dpkg's `verrevcmp`, with one
/// correction: `debversion` 0.5.5 orders a missing trailing number below
/// zero (`1.0~ < 1.0~0`, `2.0+dfsg < 2.0+dfsg0`), where dpkg treats a
/// missing number as 0 (`1.0~ = 1.0~0`, so `2.0+dfsg-11 > 2.0+dfsg0-1`).
/// Such pairs occur in the Debian archive. A number can only be missing at
/// the end of the upstream part or the revision, so both are handed to
/// `debversion` with a `0` appended when they end in a non-digit, which is
/// neutral under dpkg's rules. The oracle tests hold the result to
/// `dpkg --compare-versions` and libapt.
///
/// Comparisons are the bulk of testing a version against advisories, and
/// `debversion` walks both strings character by character (about 270 ns a
/// pair). Parsing therefore also lays the version out as a byte string whose
/// plain lexicographic order is `debversion`'s (see [`dpkg_sort_key`]); two
/// versions compare by `memcmp` when both have one, else by `debversion`.
/// Property tests hold the two orders equal.
#[derive(Debug, Clone)]
pub struct DpkgVersion {
    raw: String,
    epoch: Option<u32>,
    upstream: String,
    revision: Option<String>,
    /// What `debversion` compares: the parts above, each ending in a digit.
    key: debversion::Version,
    /// `key` as bytes ordered like it; `None` for the versions the layout
    /// cannot hold (a number of more than 255 significant digits).
    sort_key: Option<Box<[u8]>>,
}

/// The weight of the end of a non-digit run in a [`dpkg_sort_key`]: above
/// `~` (which sorts before the end of a run), below every other character.
const KEY_END: u8 = 2;

/// The weight of a non-digit character in a [`dpkg_sort_key`], ordered as
/// `debversion` (and dpkg's `order()`) order them: `~` first, then the end
/// of the run, then letters in ASCII order, then every other character in
/// ASCII order. `None` for a digit (never part of a non-digit run).
fn key_weight(c: u8) -> Option<u8> {
    match c {
        b'~' => Some(1),
        b'0'..=b'9' => None,
        // 3..=60 for 'A'..='z'.
        b'A'..=b'Z' | b'a'..=b'z' => Some(c - b'A' + 3),
        // 64..=191 for the other ASCII characters (parsing admits `. + - :`);
        // non-ASCII never gets here (parsing rejects it).
        _ if c.is_ascii() => Some(c + 64),
        _ => None,
    }
}

/// Appends one version part (upstream or revision, as `debversion`
/// compares it: ending in a digit) to a sort key.
///
/// `debversion` compares a part as alternating runs: non-digits (character
/// weights, the shorter run padded with a weight between `~` and letters),
/// then digits (numerically). Each run pair is laid out as the characters'
/// weights, [`KEY_END`], the count of significant digits and the digits
/// without leading zeros; the part ends with [`KEY_END`]. Because a part
/// ends in a digit, after a digit run comes either a non-empty non-digit run
/// or the end of the part, so an ended part meets the other part's first
/// character exactly where `debversion` pads it, and the layout is
/// prefix-free (upstream and revision keys concatenate).
fn push_part_key(key: &mut Vec<u8>, part: &[u8]) -> Option<()> {
    let mut i = 0;
    loop {
        while let Some(&c) = part.get(i)
            && !c.is_ascii_digit()
        {
            key.push(key_weight(c)?);
            i += 1;
        }
        key.push(KEY_END);
        while part.get(i) == Some(&b'0') {
            i += 1;
        }
        let start = i;
        while part.get(i).is_some_and(u8::is_ascii_digit) {
            i += 1;
        }
        key.push(u8::try_from(i - start).ok()?);
        key.extend_from_slice(&part[start..i]);
        if i >= part.len() {
            break;
        }
    }
    key.push(KEY_END);
    Some(())
}

/// The byte string whose lexicographic order is `debversion`'s order of
/// `version`: the epoch (absent is 0) big-endian, then the upstream part,
/// then the revision (absent is `0`, as `debversion` reads it). `None` when
/// a number has more than 255 significant digits.
fn dpkg_sort_key(version: &debversion::Version) -> Option<Box<[u8]>> {
    let upstream = version.upstream_version.as_bytes();
    let revision = version.debian_revision.as_deref().unwrap_or("0").as_bytes();
    let mut key = Vec::with_capacity(8 + 2 * (upstream.len() + revision.len()));
    key.extend_from_slice(&version.epoch.unwrap_or(0).to_be_bytes());
    push_part_key(&mut key, upstream)?;
    push_part_key(&mut key, revision)?;
    Some(key.into_boxed_slice())
}

/// Appends the `0` that dpkg implies after a trailing non-digit (see
/// [`DpkgVersion`]).
fn with_explicit_trailing_number(part: &str) -> String {
    let mut out = part.to_owned();
    if !part.ends_with(|c: char| c.is_ascii_digit()) {
        out.push('0');
    }
    out
}

impl DpkgVersion {
    /// The string this version was parsed from.
    pub fn as_str(&self) -> &str {
        &self.raw
    }

    /// The epoch, if one was written.
    pub fn epoch(&self) -> Option<u32> {
        self.epoch
    }

    /// The upstream version.
    pub fn upstream(&self) -> &str {
        &self.upstream
    }

    /// The Debian revision, if one was written.
    pub fn revision(&self) -> Option<&str> {
        self.revision.as_deref()
    }
}

impl FromStr for DpkgVersion {
    type Err = VersionError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        const F: Ecosystem = Ecosystem::Dpkg;
        check_common(F, s)?;
        let (epoch, rest) = match s.split_once(':') {
            None => (None, s),
            Some((epoch, rest)) => {
                if epoch.is_empty() {
                    return Err(invalid(F, s, "epoch is empty (nothing before ':')"));
                }
                if !all_digits(epoch) {
                    return Err(invalid(
                        F,
                        s,
                        format!("epoch {} is not a number", quoted_part(epoch)),
                    ));
                }
                // dpkg rejects epochs above INT_MAX.
                let epoch = epoch
                    .parse::<u32>()
                    .ok()
                    .filter(|e| i32::try_from(*e).is_ok())
                    .ok_or_else(|| {
                        invalid(
                            F,
                            s,
                            format!("epoch {} is larger than 2147483647", quoted_part(epoch)),
                        )
                    })?;
                if rest.is_empty() {
                    return Err(invalid(F, s, "nothing after the epoch's ':'"));
                }
                (Some(epoch), rest)
            }
        };
        let (upstream, revision) = match rest.rsplit_once('-') {
            None => (rest, None),
            Some((_, "")) => {
                return Err(invalid(F, s, "revision is empty (trailing '-')"));
            }
            Some((upstream, revision)) => (upstream, Some(revision)),
        };
        if upstream.is_empty() {
            return Err(invalid(F, s, "upstream version is empty"));
        }
        check_charset(F, s, "upstream version", upstream, ".+~-:")?;
        if let Some(revision) = revision {
            check_charset(F, s, "revision", revision, ".+~")?;
        }
        let key = debversion::Version {
            epoch,
            upstream_version: with_explicit_trailing_number(upstream),
            debian_revision: revision.map(with_explicit_trailing_number),
        };
        Ok(DpkgVersion {
            raw: s.to_owned(),
            epoch,
            upstream: upstream.to_owned(),
            revision: revision.map(str::to_owned),
            sort_key: dpkg_sort_key(&key),
            key,
        })
    }
}

impl Ord for DpkgVersion {
    fn cmp(&self, other: &Self) -> Ordering {
        match (&self.sort_key, &other.sort_key) {
            (Some(a), Some(b)) => a.cmp(b),
            _ => self.key.cmp(&other.key),
        }
    }
}

impl PartialOrd for DpkgVersion {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl PartialEq for DpkgVersion {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}

impl Eq for DpkgVersion {}

impl fmt::Display for DpkgVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.raw)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::version::{Ecosystem, compare, err, parse_version};

    #[test]
    fn dpkg_rejects_what_dpkg_rejects() {
        assert_eq!(
            err(Ecosystem::Dpkg, "1:"),
            r#"invalid dpkg version "1:": nothing after the epoch's ':'"#
        );
        for bad in [
            "",
            ":1",
            "a:1",
            "1.0-",
            "-1",
            "1.0:2",
            "1 .0",
            "4294967296:1",
            "2147483648:1",
            "1.0-a_b",
            "1.0_1",
            "é",
            "1:-1",
        ] {
            assert!(parse_version(Ecosystem::Dpkg, bad).is_err(), "{bad:?}");
        }
        for good in [
            "1",
            "0:1",
            "2147483647:1",
            "1:2:3",
            "a1",
            "1.0-1-2",
            "1~~a-0+b1",
        ] {
            assert!(parse_version(Ecosystem::Dpkg, good).is_ok(), "{good:?}");
        }
    }

    #[test]
    fn dpkg_split_is_dpkgs_and_matches_debversion_where_it_parses() {
        let v: DpkgVersion = "1:2.0-3-4".parse().unwrap();
        assert_eq!(
            (v.epoch(), v.upstream(), v.revision()),
            (Some(1), "2.0-3", Some("4"))
        );
        for s in [
            "1.0",
            "1:1.0-1",
            "1.0-1-2",
            "1:2:3-4",
            "1.0~rc1+dfsg-1~bpo12+1",
        ] {
            let mine: DpkgVersion = s.parse().unwrap();
            let theirs: debversion::Version = s.parse().unwrap();
            assert_eq!(mine.epoch(), theirs.epoch, "{s}");
            assert_eq!(mine.upstream(), theirs.upstream_version, "{s}");
            assert_eq!(mine.revision(), theirs.debian_revision.as_deref(), "{s}");
        }
    }

    #[test]
    fn dpkg_orders() {
        let cases = [
            ("1.0", "1.0-0", Ordering::Equal),
            ("0:1.0", "1.0", Ordering::Equal),
            ("1.0~rc1", "1.0", Ordering::Less),
            ("1.0", "1.0+b1", Ordering::Less),
            ("1:0.1", "2.0", Ordering::Greater),
            ("1.01", "1.1", Ordering::Equal),
            ("1.0a", "1.0+", Ordering::Less),
            // Where debversion 0.5.5 alone is wrong (a missing number is 0):
            ("8.1~", "8.1~0", Ordering::Equal),
            ("2.0.2+dfsg-11", "2.0.2+dfsg0", Ordering::Greater),
            ("0.9+ds-4", "0.9+ds0-3", Ordering::Greater),
            ("0.7.1~", "0.7.1~0~20220913+ds1-1", Ordering::Greater),
            ("1.0-a", "1.0-a0", Ordering::Equal),
        ];
        for (a, b, want) in cases {
            assert_eq!(compare(Ecosystem::Dpkg, a, b), Ok(want), "{a} vs {b}");
        }
    }

    #[test]
    fn debversion_alone_orders_a_missing_number_below_zero() {
        // Documents the crate bug worked around in DpkgVersion; if this starts
        // failing, debversion was fixed and the workaround can go.
        let a: debversion::Version = "8.1~".parse().unwrap();
        let b: debversion::Version = "8.1~0".parse().unwrap();
        assert_eq!(a.cmp(&b), Ordering::Less);
    }

    mod dpkg_sort_keys {
        use super::*;
        use proptest::prelude::*;

        /// Version-like strings over a small alphabet, so that equal runs,
        /// `~` against the end of a run, leading zeros and long numbers all
        /// come up often.
        fn dpkg_text() -> impl Strategy<Value = String> {
            let run = prop_oneof![
                "[0-9]{1,3}",
                "0{1,3}[0-9]{0,2}",
                "[1-9][0-9]{18,24}",
                "[~.+]{1,2}",
                "[a-cYZ]{1,2}",
                "[~.+a-c]{1,3}[0-9]?",
            ];
            (
                proptest::option::of("[0-9]{1,2}"),
                proptest::collection::vec(run.clone(), 1..5),
                proptest::option::of(proptest::collection::vec(run, 1..3)),
            )
                .prop_map(|(epoch, upstream, revision)| {
                    let mut s = epoch.map(|e| format!("{e}:")).unwrap_or_default();
                    s.push_str(&upstream.concat());
                    if let Some(revision) = revision {
                        s.push('-');
                        s.push_str(&revision.concat());
                    }
                    s
                })
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(4096))]

            /// The byte-key order is `debversion`'s order, pair by pair.
            #[test]
            fn sort_keys_order_as_debversion(a in dpkg_text(), b in dpkg_text()) {
                let (Ok(x), Ok(y)) = (a.parse::<DpkgVersion>(), b.parse::<DpkgVersion>()) else {
                    return Ok(());
                };
                prop_assert!(x.sort_key.is_some() && y.sort_key.is_some());
                prop_assert_eq!(x.cmp(&y), x.key.cmp(&y.key), "{} vs {}", a, b);
                prop_assert_eq!(y.cmp(&x), y.key.cmp(&x.key), "{} vs {}", b, a);
            }

            /// Near-equal pairs (one edit apart) are where orders go wrong.
            #[test]
            fn sort_keys_order_as_debversion_on_near_pairs(
                a in dpkg_text(),
                at in 0usize..40,
                insert in "[0~.a+]",
            ) {
                let at = (0..=at.min(a.len())).rev().find(|i| a.is_char_boundary(*i)).unwrap_or(0);
                let b = format!("{}{}{}", &a[..at], insert, &a[at..]);
                let (Ok(x), Ok(y)) = (a.parse::<DpkgVersion>(), b.parse::<DpkgVersion>()) else {
                    return Ok(());
                };
                prop_assert_eq!(x.cmp(&y), x.key.cmp(&y.key), "{} vs {}", a, b);
                prop_assert_eq!(y.cmp(&x), y.key.cmp(&x.key), "{} vs {}", b, a);
            }
        }

        #[test]
        fn sort_keys_agree_on_known_pairs() {
            let pairs = [
                ("1.0~", "1.0~0"),
                ("1.0", "1.0-0"),
                ("1.0-0", "1.00-0"),
                ("0:1.0", "1.0"),
                ("1.0~rc1", "1.0"),
                ("1.0a", "1.0+"),
                ("1.0", "1.0.0"),
                ("1:0.9", "2.0"),
                ("2.0+dfsg-11", "2.0+dfsg0-1"),
                ("1.2-0~1", "1.2"),
                ("1.2-1~", "1.2-1"),
                ("a1", "1"),
                ("1.0-a", "1.0-1"),
            ];
            for (a, b) in pairs {
                let x: DpkgVersion = a.parse().expect("valid");
                let y: DpkgVersion = b.parse().expect("valid");
                assert!(x.sort_key.is_some() && y.sort_key.is_some(), "{a} {b}");
                assert_eq!(x.cmp(&y), x.key.cmp(&y.key), "{a} vs {b}");
                assert_eq!(y.cmp(&x), y.key.cmp(&x.key), "{b} vs {a}");
            }
        }

        #[test]
        fn numbers_too_long_for_a_key_compare_through_debversion() {
            let long = format!("1.{}-1", "7".repeat(300));
            let longer = format!("1.{}-1", "7".repeat(301));
            let x: DpkgVersion = long.parse().expect("valid");
            let y: DpkgVersion = longer.parse().expect("valid");
            assert!(x.sort_key.is_none());
            assert_eq!(x.cmp(&y), Ordering::Less);
            let small: DpkgVersion = "1.8-1".parse().expect("valid");
            assert!(small.sort_key.is_some());
            assert_eq!(small.cmp(&x), Ordering::Less);
            assert_eq!(x.cmp(&small), Ordering::Greater);
        }
    }
}
