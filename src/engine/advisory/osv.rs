//! OSV records (schema 1.x): the wire format (only the fields Patchloop
//! uses), single documents, streamed arrays filtered by ecosystem, and zip
//! archives read within limits.

use std::io::Read;

use jiff::Timestamp;
use serde::Deserialize;

use super::*;

/// One OSV record as distributed.
#[derive(Debug, Clone, Deserialize)]
pub struct OsvRecord {
    /// The record id (DSA-5514-1, CVE-2023-4911, USN-6409-1, ...).
    pub id: String,
    /// Last modification.
    #[serde(default)]
    pub modified: Option<Timestamp>,
    /// Publication.
    #[serde(default)]
    pub published: Option<Timestamp>,
    /// Set when the record was withdrawn: it no longer counts.
    #[serde(default)]
    pub withdrawn: Option<Timestamp>,
    /// Other ids for the same vulnerability.
    #[serde(default)]
    pub aliases: Vec<String>,
    /// Upstream vulnerabilities this record derives from.
    #[serde(default)]
    pub upstream: Vec<String>,
    /// Related, not equivalent, records.
    #[serde(default)]
    pub related: Vec<String>,
    /// One-line summary.
    #[serde(default)]
    pub summary: Option<String>,
    /// Severity scores (CVSS vectors, or an ecosystem's own rating).
    #[serde(default)]
    pub severity: Vec<OsvSeverity>,
    /// Affected packages.
    #[serde(default)]
    pub affected: Vec<OsvAffected>,
}

/// One `severity[]` entry.
#[derive(Debug, Clone, Deserialize)]
pub struct OsvSeverity {
    /// `CVSS_V2`, `CVSS_V3`, `CVSS_V4`, `Ubuntu`, ...
    #[serde(rename = "type")]
    pub kind: String,
    /// The vector or rating.
    pub score: String,
}

/// One `affected[]` entry.
#[derive(Debug, Clone, Deserialize)]
pub struct OsvAffected {
    /// The package; some entries (GIT-only) carry none.
    #[serde(default)]
    pub package: Option<OsvPackage>,
    /// Version ranges.
    #[serde(default)]
    pub ranges: Vec<OsvRange>,
    /// Explicitly listed affected versions.
    #[serde(default)]
    pub versions: Vec<String>,
    /// Per-entry severity (rare).
    #[serde(default)]
    pub severity: Vec<OsvSeverity>,
    /// Ecosystem-specific data: Debian `urgency`, Ubuntu `priority`.
    #[serde(default)]
    pub ecosystem_specific: Option<serde_json::Value>,
}

/// An affected package.
#[derive(Debug, Clone, Deserialize)]
pub struct OsvPackage {
    /// The OSV ecosystem (`Debian:12`).
    #[serde(default)]
    pub ecosystem: String,
    /// The package name (a source package for Debian and Ubuntu).
    #[serde(default)]
    pub name: String,
}

/// A version range.
#[derive(Debug, Clone, Deserialize)]
pub struct OsvRange {
    /// `ECOSYSTEM`, `SEMVER` or `GIT`; only `ECOSYSTEM` applies to packages.
    #[serde(rename = "type")]
    pub kind: String,
    /// The range's events.
    #[serde(default)]
    pub events: Vec<OsvEvent>,
}

/// One range event; exactly one field is set.
#[derive(Debug, Clone, Deserialize)]
pub struct OsvEvent {
    /// The range starts here (`0`: from the beginning).
    #[serde(default)]
    pub introduced: Option<String>,
    /// Fixed in this version.
    #[serde(default)]
    pub fixed: Option<String>,
    /// The last affected version (no fix known after it).
    #[serde(default)]
    pub last_affected: Option<String>,
    /// Upper limit of the range.
    #[serde(default)]
    pub limit: Option<String>,
}

/// Parses one OSV record from JSON bytes; `origin` names it in errors.
pub fn parse_osv(bytes: &[u8], origin: &str) -> Result<OsvRecord, AdvisoryError> {
    serde_json::from_slice(bytes).map_err(|source| AdvisoryError::Json {
        origin: origin.to_owned(),
        what: "OSV record",
        source,
    })
}

/// Limits on reading one zip archive, counted in what is actually
/// decompressed (the sizes a member's headers declare are not trusted).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ZipLimits {
    /// The most bytes decompressed from all members together (bounds the
    /// work: members are read one at a time).
    pub total_bytes: u64,
    /// The most bytes of the members kept as records (bounds the memory
    /// the records take: several times their JSON size).
    pub kept_bytes: u64,
    /// The most members (files and directories) an archive may list.
    pub entries: usize,
    /// The most bytes decompressed from one member (OSV records are a few
    /// KiB each; the largest real ones, kernel CVEs, well under 1 MiB).
    pub member_bytes: u64,
}

impl ZipLimits {
    /// The limits of a feed whose downloads may hold `max_bytes` bytes.
    ///
    /// OSV's zip archives compress JSON about ten to one, so a real archive
    /// within `max_bytes` decompresses to less than 16 times that; the
    /// records kept may take as much JSON as an uncompressed download could
    /// (`max_bytes`); a member count of one per 64 bytes of archive is above
    /// any real archive (a zip central-directory entry alone takes 46 bytes
    /// plus the name).
    pub fn for_archive_limit(max_bytes: u64) -> ZipLimits {
        ZipLimits {
            total_bytes: max_bytes.saturating_mul(16),
            kept_bytes: max_bytes,
            entries: usize::try_from(max_bytes / 64).unwrap_or(usize::MAX),
            member_bytes: 16 * 1024 * 1024,
        }
    }
}

/// Which OSV records to keep while reading: all of them, or those that can
/// matter to a database restricted to some ecosystems.
#[derive(Clone, Copy, Debug)]
pub struct OsvFilter<'a> {
    /// The wanted ecosystems; empty keeps every record.
    pub ecosystems: &'a [String],
}

impl OsvFilter<'_> {
    /// Keeps every record.
    pub const ALL: OsvFilter<'static> = OsvFilter { ecosystems: &[] };

    /// Whether a record can matter: one of its `affected` entries names a
    /// wanted ecosystem, or it names a CVE (as id or alias) and carries a
    /// severity, which [`AdvisoryDb::build`] lends to the records of every
    /// ecosystem naming the same CVE. The database applies the exact
    /// ecosystem filter again.
    fn keeps(&self, head: &RecordHead) -> bool {
        if self.ecosystems.is_empty() {
            return true;
        }
        let affects_wanted = head.affected.iter().any(|a| {
            a.package
                .as_ref()
                .is_some_and(|p| self.ecosystems.contains(&p.ecosystem))
        });
        if affects_wanted {
            return true;
        }
        let names_cve = std::iter::once(&head.id)
            .chain(&head.aliases)
            .any(|id| cve_of(id).is_some());
        let has_severity = !head.severity.is_empty()
            || head
                .affected
                .iter()
                .any(|a| a.ecosystem_specific.is_some() || !a.severity.is_empty());
        names_cve && has_severity
    }

    fn keeps_record(&self, record: &OsvRecord) -> bool {
        self.ecosystems.is_empty() || self.keeps(&RecordHead::of(record))
    }
}

/// The fields of an OSV record [`OsvFilter`] decides on, read without
/// building the record: everything else is skipped unallocated.
#[derive(Deserialize)]
struct RecordHead {
    id: String,
    #[serde(default)]
    aliases: Vec<String>,
    #[serde(default)]
    severity: Vec<serde::de::IgnoredAny>,
    #[serde(default)]
    affected: Vec<AffectedHead>,
}

#[derive(Deserialize)]
struct AffectedHead {
    #[serde(default)]
    package: Option<PackageHead>,
    #[serde(default)]
    severity: Vec<serde::de::IgnoredAny>,
    #[serde(default)]
    ecosystem_specific: Option<serde::de::IgnoredAny>,
}

#[derive(Deserialize)]
struct PackageHead {
    #[serde(default)]
    ecosystem: String,
}

impl RecordHead {
    fn of(record: &OsvRecord) -> RecordHead {
        let ignored = |n: usize| vec![serde::de::IgnoredAny; n];
        RecordHead {
            id: record.id.clone(),
            aliases: record.aliases.clone(),
            severity: ignored(record.severity.len()),
            affected: record
                .affected
                .iter()
                .map(|a| AffectedHead {
                    package: a.package.as_ref().map(|p| PackageHead {
                        ecosystem: p.ecosystem.clone(),
                    }),
                    severity: ignored(a.severity.len()),
                    ecosystem_specific: a
                        .ecosystem_specific
                        .as_ref()
                        .filter(|v| !v.is_null())
                        .map(|_| serde::de::IgnoredAny),
                })
                .collect(),
        }
    }
}

/// Reads OSV records from a zip archive as OSV distributes them per
/// ecosystem (`all.zip`: one JSON record per member), keeping those
/// `filter` keeps: a member is first read for the fields the filter needs
/// and only built into a record when kept, so an archive of mostly other
/// ecosystems costs little more than one member at a time.
pub fn parse_osv_zip(
    bytes: &[u8],
    origin: &str,
    filter: OsvFilter<'_>,
    limits: ZipLimits,
) -> Result<Vec<OsvRecord>, AdvisoryError> {
    let zip_err = |source| AdvisoryError::Zip {
        origin: origin.to_owned(),
        source,
    };
    let over = |path: String, what: String| AdvisoryError::TooLarge { path, what };
    let mut archive = zip::ZipArchive::new(std::io::Cursor::new(bytes)).map_err(zip_err)?;
    if archive.len() > limits.entries {
        return Err(over(
            origin.to_owned(),
            format!(
                "{} archive members, more than the limit of {}",
                archive.len(),
                limits.entries
            ),
        ));
    }
    let mut records = Vec::new();
    let mut buf = Vec::new();
    let mut total: u64 = 0;
    let mut kept: u64 = 0;
    for i in 0..archive.len() {
        let mut member = archive.by_index(i).map_err(zip_err)?;
        let member_name = member.name().map_err(zip_err)?.into_owned();
        if !member.is_file() || !member_name.ends_with(".json") {
            continue;
        }
        let name = member_label(origin, i, &member_name);
        buf.clear();
        // Count what the decompressor yields, whatever the headers declare.
        (&mut member)
            .take(limits.member_bytes + 1)
            .read_to_end(&mut buf)
            .map_err(|source| AdvisoryError::Io {
                path: name.clone(),
                source,
            })?;
        if buf.len() as u64 > limits.member_bytes {
            return Err(over(
                name,
                format!(
                    "archive member larger than the limit of {} bytes",
                    limits.member_bytes
                ),
            ));
        }
        total += buf.len() as u64;
        if total > limits.total_bytes {
            return Err(over(
                origin.to_owned(),
                format!(
                    "archive decompresses to more than the limit of {} bytes",
                    limits.total_bytes
                ),
            ));
        }
        if !filter.ecosystems.is_empty() {
            let head: RecordHead =
                serde_json::from_slice(&buf).map_err(|source| AdvisoryError::Json {
                    origin: name.clone(),
                    what: "OSV record",
                    source,
                })?;
            if !filter.keeps(&head) {
                continue;
            }
        }
        kept += buf.len() as u64;
        if kept > limits.kept_bytes {
            return Err(over(
                origin.to_owned(),
                format!(
                    "the records kept take more than the limit of {} bytes (set ecosystems to keep fewer)",
                    limits.kept_bytes
                ),
            ));
        }
        records.push(parse_osv(&buf, &name)?);
    }
    Ok(records)
}

/// How messages name an archive member: `ORIGIN!NAME` when the name is a
/// plain path (OSV's are `ID.json`), else `ORIGIN!member #N`. Names come from
/// whoever built the archive and reach statuses and Events: never verbatim
/// when they could carry markup, control characters or misleading text.
fn member_label(origin: &str, index: usize, name: &str) -> String {
    let plain = name.len() <= 128
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b'/' | b':'));
    if plain {
        format!("{origin}!{name}")
    } else {
        format!("{origin}!member #{}", index + 1)
    }
}

/// Reads OSV records from bytes that are either a zip archive, one JSON
/// record, or a JSON array of records, keeping every record.
pub fn parse_osv_bytes(bytes: &[u8], origin: &str) -> Result<Vec<OsvRecord>, AdvisoryError> {
    parse_osv_filtered(
        bytes,
        origin,
        OsvFilter::ALL,
        ZipLimits::for_archive_limit(bytes.len() as u64),
    )
}

/// Reads OSV records like [`parse_osv_bytes`], keeping those `filter`
/// keeps as they are read (an array's records are dropped one by one, never
/// all held), zip archives within `limits`.
pub fn parse_osv_filtered(
    bytes: &[u8],
    origin: &str,
    filter: OsvFilter<'_>,
    limits: ZipLimits,
) -> Result<Vec<OsvRecord>, AdvisoryError> {
    if bytes.starts_with(b"PK\x03\x04") {
        return parse_osv_zip(bytes, origin, filter, limits);
    }
    let json_err = |source| AdvisoryError::Json {
        origin: origin.to_owned(),
        what: "OSV record",
        source,
    };
    let first = bytes.iter().find(|b| !b.is_ascii_whitespace());
    if first == Some(&b'[') {
        let mut de = serde_json::Deserializer::from_slice(bytes);
        let records = serde::Deserializer::deserialize_seq(&mut de, FilteredRecords(filter))
            .map_err(json_err)?;
        de.end().map_err(json_err)?;
        return Ok(records);
    }
    let record = parse_osv(bytes, origin)?;
    Ok(if filter.keeps_record(&record) {
        vec![record]
    } else {
        Vec::new()
    })
}

/// A JSON array of OSV records, each dropped as soon as it is read when the
/// filter does not keep it.
struct FilteredRecords<'a>(OsvFilter<'a>);

impl<'de> serde::de::Visitor<'de> for FilteredRecords<'_> {
    type Value = Vec<OsvRecord>;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("an array of OSV records")
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let mut records = Vec::new();
        while let Some(record) = seq.next_element::<OsvRecord>()? {
            if self.0.keeps_record(&record) {
                records.push(record);
            }
        }
        Ok(records)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn archive_member_names_reach_messages_only_when_plain() {
        assert_eq!(
            member_label("all.zip", 0, "DSA-5514-1.json"),
            "all.zip!DSA-5514-1.json"
        );
        assert_eq!(
            member_label("all.zip", 0, "osv/Debian:12/X.json"),
            "all.zip!osv/Debian:12/X.json"
        );
        for hostile in [
            "apt-get install -y evil.json",
            "$(id).json",
            "a\nb.json",
            "<script>.json",
            &"x".repeat(200),
        ] {
            assert_eq!(
                member_label("all.zip", 6, hostile),
                "all.zip!member #7",
                "{hostile:?}"
            );
        }
    }

    #[test]
    fn the_record_head_keeps_exactly_what_the_full_record_would() {
        let record = |v: serde_json::Value| -> (RecordHead, OsvRecord) {
            let bytes = serde_json::to_vec(&v).expect("JSON");
            (
                serde_json::from_slice(&bytes).expect("head"),
                serde_json::from_slice(&bytes).expect("record"),
            )
        };
        let wanted = ["Debian:12".to_owned()];
        let filter = OsvFilter {
            ecosystems: &wanted,
        };
        for (v, keep) in [
            (
                serde_json::json!({"id": "A", "affected": [{"package": {"ecosystem": "Debian:12", "name": "x"}}]}),
                true,
            ),
            (
                serde_json::json!({"id": "B", "affected": [{"package": {"ecosystem": "PyPI", "name": "x"}}]}),
                false,
            ),
            // Lends its severity to the Debian records of the same CVE.
            (
                serde_json::json!({"id": "CVE-2024-1001", "severity": [{"type": "CVSS_V3", "score": "x"}]}),
                true,
            ),
            (
                serde_json::json!({"id": "C", "aliases": ["CVE-2024-1002"], "affected": [{"ecosystem_specific": {"urgency": "low"}}]}),
                true,
            ),
            (
                serde_json::json!({"id": "CVE-2024-1003", "affected": [{"ecosystem_specific": null}]}),
                false,
            ),
            (serde_json::json!({"id": "CVE-2024-1004"}), false),
        ] {
            let (head, full) = record(v);
            assert_eq!(filter.keeps(&head), keep, "{}", full.id);
            assert_eq!(filter.keeps_record(&full), keep, "{}", full.id);
            assert!(OsvFilter::ALL.keeps(&head));
        }
    }
}
