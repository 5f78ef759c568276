//! Advisories: OSV records (schema 1.x) and the CISA Known Exploited
//! Vulnerabilities catalog, read into one model and indexed by (ecosystem,
//! package) so an inventory lookup is one hash probe per package.
//!
//! Pure: the functions here take bytes and paths the caller already chose to
//! read; nothing fetches from the network.
//!
//! Layout: `osv.rs` and `kev.rs` read the two formats, `model.rs` is what a
//! record says, `severity.rs` rates it, and `index.rs` is the database an
//! inventory is matched against.

mod index;
mod kev;
mod model;
mod osv;
mod severity;

pub(crate) use index::PassThrough;
pub use index::{
    AdvisoryDb, EcosystemIndex, IndexDiff, Key, PackageIndex, ProbeMatch, ProbeMatches, probe_hash,
};
pub use kev::{KevCatalog, KevEntry, parse_kev};
pub use model::{Advisory, Affected, IndexEntry, LoadReport, Match, SeveritySource, cve_of};
pub use osv::{
    OsvAffected, OsvEvent, OsvFilter, OsvPackage, OsvRange, OsvRecord, OsvSeverity, ZipLimits,
    parse_osv, parse_osv_bytes, parse_osv_filtered, parse_osv_zip,
};

/// Why advisory data could not be read.
#[derive(Debug, thiserror::Error)]
pub enum AdvisoryError {
    /// A file or directory could not be read.
    #[error("{path}: {source}")]
    Io {
        /// The path.
        path: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A document is not valid JSON of the expected shape.
    #[error("{origin}: not a valid {what} document: {source}")]
    Json {
        /// Where the document came from (file, archive member).
        origin: String,
        /// `OSV record` or `KEV catalog`.
        what: &'static str,
        /// The parse error.
        source: serde_json::Error,
    },
    /// A zip archive is corrupt or truncated.
    #[error("{origin}: not a readable zip archive: {source}")]
    Zip {
        /// The archive.
        origin: String,
        /// The zip error.
        source: zip::result::ZipError,
    },
    /// Data is larger than a limit allows (a zip bomb guard).
    #[error("{path}: {what}")]
    TooLarge {
        /// The archive or member.
        path: String,
        /// Which limit, with its value.
        what: String,
    },
    /// A KEV catalog entry carries an unreadable date.
    #[error("{origin}: {cve}: invalid {field} {value:?}")]
    KevDate {
        /// The catalog.
        origin: String,
        /// The entry's CVE.
        cve: String,
        /// `dateAdded` or `dueDate`.
        field: &'static str,
        /// The text.
        value: String,
    },
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::version::{Ecosystem, Version};
    use jiff::civil::Date;

    fn record(json: serde_json::Value) -> OsvRecord {
        serde_json::from_value(json).expect("valid record")
    }

    fn dpkg(s: &str) -> Version {
        Version::parse(Ecosystem::Dpkg, s).expect("valid version")
    }

    fn one(events: serde_json::Value, versions: serde_json::Value) -> AdvisoryDb {
        let r = record(serde_json::json!({
            "id": "DSA-1-1", "modified": "2024-01-01T00:00:00Z",
            "affected": [{
                "package": {"ecosystem": "Debian:12", "name": "pkg"},
                "ranges": [{"type": "ECOSYSTEM", "events": events}],
                "versions": versions
            }]
        }));
        AdvisoryDb::build(vec![r], KevCatalog::default(), &[]).0
    }

    #[test]
    fn cve_ids_are_recognised() {
        assert_eq!(cve_of("CVE-2023-4911").as_deref(), Some("CVE-2023-4911"));
        assert_eq!(
            cve_of("UBUNTU-CVE-2023-4911").as_deref(),
            Some("CVE-2023-4911")
        );
        assert_eq!(cve_of("cve-2021-44228").as_deref(), Some("CVE-2021-44228"));
        assert_eq!(cve_of("DSA-5514-1"), None);
        assert_eq!(cve_of("CVE-23-1"), None);
    }

    #[test]
    fn ranges_follow_osv_event_semantics() {
        let db = one(
            serde_json::json!([{"introduced": "0"}, {"fixed": "2.0-1"}, {"introduced": "3.0-1"}, {"last_affected": "3.5-1"}]),
            serde_json::json!([]),
        );
        let entry = &db.lookup("Debian:12", "pkg")[0];
        let a = entry.affected();
        let fixed = |v: &str| {
            a.check(&dpkg(v))
                .map(|m| m.fixed.map(|f| f.as_str().to_owned()))
        };
        assert_eq!(fixed("1.0-1"), Some(Some("2.0-1".into())));
        assert_eq!(fixed("2.0-1"), None);
        assert_eq!(fixed("2.5-1"), None);
        assert_eq!(fixed("3.0-1"), Some(None), "last_affected: no fix known");
        assert_eq!(fixed("3.5-1"), Some(None));
        assert_eq!(fixed("3.5-2"), None);
    }

    #[test]
    fn open_ended_ranges_count_beyond_the_versions_list() {
        let db = one(
            serde_json::json!([{"introduced": "0"}]),
            serde_json::json!(["1.0-1", "1.0-2"]),
        );
        let a = db.lookup("Debian:12", "pkg")[0].affected().clone();
        assert!(
            a.check(&dpkg("9.9-9")).is_some(),
            "no fix yet: every version"
        );
        assert_eq!(a.check(&dpkg("9.9-9")).and_then(|m| m.fixed), None);
    }

    #[test]
    fn explicit_versions_count_without_ranges() {
        let r = record(serde_json::json!({
            "id": "X-1", "affected": [{"package": {"ecosystem": "Debian:12", "name": "pkg"},
            "versions": ["1.0-1"]}]
        }));
        let db = AdvisoryDb::build(vec![r], KevCatalog::default(), &[]).0;
        let a = db.lookup("Debian:12", "pkg")[0].affected().clone();
        assert!(a.check(&dpkg("1.0-1")).is_some());
        assert!(a.check(&dpkg("1.0-2")).is_none());
    }

    #[test]
    fn limit_bounds_the_range() {
        let db = one(
            serde_json::json!([{"introduced": "0"}, {"limit": "5.0-1"}]),
            serde_json::json!([]),
        );
        let a = db.lookup("Debian:12", "pkg")[0].affected().clone();
        assert!(a.check(&dpkg("4.9-1")).is_some());
        assert!(a.check(&dpkg("5.0-1")).is_none());
    }

    #[test]
    fn withdrawn_and_empty_and_foreign_entries_are_left_out() {
        let records = vec![
            record(
                serde_json::json!({"id": "W-1", "withdrawn": "2024-01-01T00:00:00Z",
                "affected": [{"package": {"ecosystem": "Debian:12", "name": "a"}, "versions": ["1"]}]}),
            ),
            record(serde_json::json!({"id": "E-1",
                "affected": [{"package": {"ecosystem": "", "name": ""}, "versions": ["1"]}, {"ranges": []}]})),
            record(serde_json::json!({"id": "P-1",
                "affected": [{"package": {"ecosystem": "PyPI", "name": "requests"}, "versions": ["1"]}]})),
        ];
        let (db, report) = AdvisoryDb::build(records, KevCatalog::default(), &[]);
        assert!(db.is_empty());
        assert_eq!(report.withdrawn, 1);
        assert_eq!(report.empty_packages, 2);
        assert_eq!(report.other_ecosystems, 1);
        assert!(!db.has_data_for("Debian:12"));
    }

    #[test]
    fn unparsable_range_versions_are_reported_not_dropped_silently() {
        let r = record(serde_json::json!({"id": "B-1",
            "affected": [{"package": {"ecosystem": "Debian:12", "name": "a"},
              "ranges": [{"type": "ECOSYSTEM", "events": [{"introduced": "0"}, {"fixed": "1:"}]}]}]}));
        let (_, report) = AdvisoryDb::build(vec![r], KevCatalog::default(), &[]);
        assert_eq!(report.errors.len(), 1);
        assert_eq!(report.errors[0].0, "B-1");
    }

    #[test]
    fn diff_names_exactly_the_changed_keys() {
        let base = |fixed: &str| {
            vec![
                record(
                    serde_json::json!({"id": "A-1", "modified": "2024-01-01T00:00:00Z",
                    "affected": [{"package": {"ecosystem": "Debian:12", "name": "a"},
                      "ranges": [{"type": "ECOSYSTEM", "events": [{"introduced": "0"}, {"fixed": fixed}]}]}]}),
                ),
                record(
                    serde_json::json!({"id": "B-1", "modified": "2024-01-01T00:00:00Z", "related": ["CVE-2024-0001"],
                    "affected": [{"package": {"ecosystem": "Debian:12", "name": "b"},
                      "ranges": [{"type": "ECOSYSTEM", "events": [{"introduced": "0"}, {"fixed": "1.0-1"}]}]}]}),
                ),
            ]
        };
        let (old, _) = AdvisoryDb::build(base("1.0-1"), KevCatalog::default(), &[]);
        let (same, _) = AdvisoryDb::build(base("1.0-1"), KevCatalog::default(), &[]);
        assert!(same.diff(&old).is_empty());

        let (newer, _) = AdvisoryDb::build(base("1.0-2"), KevCatalog::default(), &[]);
        let d = newer.diff(&old);
        assert_eq!(
            d.changed.into_iter().collect::<Vec<_>>(),
            vec![("Debian:12".to_owned(), "a".to_owned())]
        );

        let mut kev = KevCatalog::default();
        kev.entries.insert(
            "CVE-2024-0001".into(),
            KevEntry {
                cve: "CVE-2024-0001".into(),
                date_added: Date::constant(2024, 2, 1),
                due_date: None,
            },
        );
        let (exploited, _) = AdvisoryDb::build(base("1.0-1"), kev, &[]);
        let d = exploited.diff(&old);
        assert_eq!(
            d.changed.into_iter().collect::<Vec<_>>(),
            vec![("Debian:12".to_owned(), "b".to_owned())],
            "a new KEV link changes exactly the keys of the advisories it touches"
        );
    }

    mod properties {
        use super::*;
        use proptest::prelude::*;

        /// A range event on plain integers (`n` stands for dpkg version `1.n`).
        #[derive(Debug, Clone, Copy)]
        enum E {
            Introduced(u32),
            Fixed(u32),
            LastAffected(u32),
        }

        /// The straightforward reading of a range: find the last event at or
        /// below `v` (an introduced or fixed version counts when `<= v`, a
        /// last_affected one when `< v`); `v` is affected iff it is an
        /// introduced event.
        fn reference(events: &[E], v: u32) -> bool {
            let mut sorted: Vec<E> = events.to_vec();
            sorted.sort_by_key(|e| match e {
                E::Introduced(n) | E::Fixed(n) | E::LastAffected(n) => *n,
            });
            sorted
                .iter()
                .rfind(|e| match e {
                    E::Introduced(n) | E::Fixed(n) => *n <= v,
                    E::LastAffected(n) => *n < v,
                })
                .is_some_and(|e| matches!(e, E::Introduced(_)))
        }

        fn events() -> impl Strategy<Value = Vec<E>> {
            // Distinct versions, so that no two events tie.
            proptest::collection::btree_set(1u32..60, 1..7)
                .prop_flat_map(|versions| {
                    let versions: Vec<u32> = versions.into_iter().collect();
                    let n = versions.len();
                    (Just(versions), proptest::collection::vec(0u8..3, n))
                })
                .prop_map(|(versions, kinds)| {
                    versions
                        .into_iter()
                        .zip(kinds)
                        .map(|(v, k)| match k {
                            0 => E::Introduced(v),
                            1 => E::Fixed(v),
                            _ => E::LastAffected(v),
                        })
                        .collect()
                })
        }

        proptest! {
            #[test]
            fn range_checks_agree_with_the_reference(events in events(), v in 0u32..65) {
                let json: Vec<serde_json::Value> = events
                    .iter()
                    .map(|e| match e {
                        E::Introduced(n) => serde_json::json!({"introduced": format!("1.{n}")}),
                        E::Fixed(n) => serde_json::json!({"fixed": format!("1.{n}")}),
                        E::LastAffected(n) => serde_json::json!({"last_affected": format!("1.{n}")}),
                    })
                    .collect();
                let db = one(serde_json::Value::Array(json), serde_json::json!([]));
                let got = db.lookup("Debian:12", "pkg")[0]
                    .affected()
                    .check(&dpkg(&format!("1.{v}")))
                    .is_some();
                prop_assert_eq!(got, reference(&events, v), "events {:?}, version 1.{}", events, v);
            }
        }
    }
}
