//! Advisories: OSV records (schema 1.x) and the CISA Known Exploited
//! Vulnerabilities catalog, read into one model and indexed by (ecosystem,
//! package) so an inventory lookup is one hash probe per package.
//!
//! Pure: the functions here take bytes and paths the caller already chose to
//! read; nothing fetches from the network.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::hash::{BuildHasher, DefaultHasher, Hash, Hasher};
use std::io::Read;
use std::path::Path;
use std::sync::Arc;

use jiff::Timestamp;
use jiff::civil::Date;
use serde::Deserialize;

use super::version::{Ecosystem, Version, parse_platform};
use crate::api::common::Severity;

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

// ---------------------------------------------------------------------------
// OSV wire format (only the fields Patchloop uses; unknown fields ignored).

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

/// Reads OSV records from a file (JSON record or zip archive) or a directory
/// (every `*.json` and `*.zip` below it, recursively, in name order).
pub fn load_osv_path(path: &Path) -> Result<Vec<OsvRecord>, AdvisoryError> {
    let io = |source| AdvisoryError::Io {
        path: path.display().to_string(),
        source,
    };
    let meta = std::fs::metadata(path).map_err(io)?;
    if meta.is_dir() {
        let mut entries: Vec<_> = std::fs::read_dir(path)
            .map_err(io)?
            .collect::<Result<Vec<_>, _>>()
            .map_err(io)?;
        entries.sort_by_key(|e| e.file_name());
        let mut records = Vec::new();
        for entry in entries {
            // Dot-names are a mounted ConfigMap volume's `..data` links:
            // reading them would load every record again.
            if entry.file_name().to_string_lossy().starts_with('.') {
                continue;
            }
            let child = entry.path();
            let is_data = child.extension().is_some_and(|e| e == "json" || e == "zip");
            if child.is_dir() || is_data {
                records.extend(load_osv_path(&child)?);
            }
        }
        return Ok(records);
    }
    let bytes = std::fs::read(path).map_err(io)?;
    parse_osv_bytes(&bytes, &path.display().to_string())
}

// ---------------------------------------------------------------------------
// CISA Known Exploited Vulnerabilities.

/// One KEV catalog entry.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct KevEntry {
    /// The CVE.
    pub cve: String,
    /// When CISA added it to the catalog (the KEV deadline clock starts here).
    pub date_added: Date,
    /// CISA's due date for federal agencies.
    pub due_date: Option<Date>,
}

/// The KEV catalog, by CVE id.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KevCatalog {
    /// Entries by CVE id.
    pub entries: HashMap<String, KevEntry>,
}

#[derive(Deserialize)]
struct KevWire {
    vulnerabilities: Vec<KevWireEntry>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct KevWireEntry {
    #[serde(rename = "cveID")]
    cve_id: String,
    date_added: String,
    #[serde(default)]
    due_date: Option<String>,
}

/// Parses the CISA KEV catalog JSON (`known_exploited_vulnerabilities.json`).
pub fn parse_kev(bytes: &[u8], origin: &str) -> Result<KevCatalog, AdvisoryError> {
    let wire: KevWire = serde_json::from_slice(bytes).map_err(|source| AdvisoryError::Json {
        origin: origin.to_owned(),
        what: "KEV catalog",
        source,
    })?;
    let mut entries = HashMap::with_capacity(wire.vulnerabilities.len());
    for v in wire.vulnerabilities {
        let date = |field: &'static str, value: &str| {
            value.parse::<Date>().map_err(|_| AdvisoryError::KevDate {
                origin: origin.to_owned(),
                cve: v.cve_id.clone(),
                field,
                value: value.to_owned(),
            })
        };
        let date_added = date("dateAdded", &v.date_added)?;
        let due_date = match v.due_date.as_deref() {
            Some(d) if !d.is_empty() => Some(date("dueDate", d)?),
            _ => None,
        };
        let cve = v.cve_id.trim().to_uppercase();
        entries.insert(
            cve.clone(),
            KevEntry {
                cve,
                date_added,
                due_date,
            },
        );
    }
    Ok(KevCatalog { entries })
}

impl KevCatalog {
    /// Merges another catalog in (the earliest `dateAdded` wins).
    pub fn merge(&mut self, other: KevCatalog) {
        for (cve, entry) in other.entries {
            match self.entries.get(&cve) {
                Some(old) if old.date_added <= entry.date_added => {}
                _ => {
                    self.entries.insert(cve, entry);
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------
// The model.

/// The normalised CVE id an id stands for: `CVE-2023-4911` itself, and
/// Ubuntu's `UBUNTU-CVE-2023-4911`; other ids (DSA, USN, GHSA) are not CVEs.
pub fn cve_of(id: &str) -> Option<String> {
    let id = id.trim();
    let upper = id.to_ascii_uppercase();
    let cve = upper.strip_prefix("UBUNTU-").unwrap_or(&upper);
    let rest = cve.strip_prefix("CVE-")?;
    let (year, number) = rest.split_once('-')?;
    let valid = year.len() == 4
        && year.bytes().all(|b| b.is_ascii_digit())
        && number.len() >= 4
        && number.bytes().all(|b| b.is_ascii_digit());
    valid.then(|| cve.to_owned())
}

/// Where an advisory's severity came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SeveritySource {
    /// A CVSS vector in the record.
    Cvss,
    /// A distribution's rating (Debian urgency, Ubuntu priority).
    Distribution,
    /// The highest severity known for the record's CVEs in the loaded data
    /// (Debian DSA/DLA and Ubuntu USN records carry none of their own).
    RelatedCves,
    /// No source states one.
    None,
}

/// One range event with its version parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Event {
    /// `introduced`; `None` is `"0"`, before every version.
    Introduced(Option<Version>),
    Fixed(Version),
    LastAffected(Version),
    Limit(Version),
}

impl Event {
    fn version(&self) -> Option<&Version> {
        match self {
            Event::Introduced(v) => v.as_ref(),
            Event::Fixed(v) | Event::LastAffected(v) | Event::Limit(v) => Some(v),
        }
    }
}

/// One affected package of an advisory, ready to test versions against.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Affected {
    /// The OSV ecosystem (`Debian:12`).
    pub ecosystem: String,
    /// The package the advisory names (Debian/Ubuntu: a source package).
    pub package: String,
    /// The severity that applies to this package.
    pub severity: Severity,
    /// Where the severity came from.
    pub severity_source: SeveritySource,
    ranges: Vec<Vec<Event>>,
    versions: HashSet<String>,
}

/// Whether and how an installed version is affected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Match<'a> {
    /// The minimum version that fixes it, if one is published.
    pub fixed: Option<&'a Version>,
}

impl Affected {
    /// Tests an installed version (of this entry's ordering family): `None`
    /// when not affected, else the minimum fixed version above it, if any.
    ///
    /// OSV semantics: affected when listed in `versions`, or inside any
    /// ECOSYSTEM range (events applied in version order: `introduced` opens,
    /// `fixed` closes at, `last_affected` closes after; `limit` bounds the
    /// range). An open-ended range counts even when `versions` stops short.
    pub fn check(&self, installed: &Version) -> Option<Match<'_>> {
        // Each event's version is compared once (comparisons dominate the
        // cost of evaluating a fleet). Events are in version order, so the
        // first `fixed` above the installed version in a range is the
        // smallest one of that range.
        let mut affected = false;
        let mut fixed: Option<&Version> = None;
        for events in &self.ranges {
            let mut inside = false;
            let mut limited = false;
            let mut below_a_limit = false;
            let mut range_fix: Option<&Version> = None;
            for event in events {
                let order = event.version().and_then(|v| installed.compare(v).ok());
                match event {
                    Event::Introduced(None) => inside = true,
                    Event::Introduced(Some(_)) => inside |= order.is_some_and(|o| o.is_ge()),
                    Event::Fixed(v) => match order {
                        Some(o) if o.is_ge() => inside = false,
                        Some(_) if range_fix.is_none() => range_fix = Some(v),
                        _ => {}
                    },
                    Event::LastAffected(_) => {
                        if order.is_some_and(|o| o.is_gt()) {
                            inside = false;
                        }
                    }
                    Event::Limit(_) => {
                        limited = true;
                        below_a_limit |= order.is_some_and(|o| o.is_lt());
                    }
                }
            }
            if limited && !below_a_limit {
                inside = false;
            }
            affected |= inside;
            if let Some(candidate) = range_fix
                && fixed.is_none_or(|f| candidate.compare(f).is_ok_and(|o| o.is_lt()))
            {
                fixed = Some(candidate);
            }
        }
        // Explicit versions count too (consulted last: a hash probe into a
        // cold table costs more than the range comparisons above).
        affected = affected || self.versions.contains(installed.as_str());
        affected.then_some(Match { fixed })
    }
}

/// An advisory after normalisation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Advisory {
    /// The record id (shared with the findings that name it).
    pub id: Arc<str>,
    /// One-line summary.
    pub summary: Option<String>,
    /// The CVEs this advisory covers: itself, aliases, upstream and related
    /// ids that are CVEs (sorted, unique; shared with the findings).
    pub cves: Arc<[Arc<str>]>,
    /// Publication (else modification) time; deadlines run from here.
    pub published: Option<Timestamp>,
    /// Last modification.
    pub modified: Option<Timestamp>,
    /// The highest severity over the affected packages.
    pub severity: Severity,
    /// The affected packages on known platforms.
    pub affected: Vec<Affected>,
    /// The earliest KEV entry among its CVEs, linked when the database is
    /// built (ids, aliases, upstream and related all count).
    pub known_exploited: Option<KevEntry>,
}

/// What a load kept, skipped and could not read.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LoadReport {
    /// Advisories indexed.
    pub advisories: usize,
    /// Withdrawn records left out.
    pub withdrawn: usize,
    /// Affected entries without a package name (GIT-only), left out.
    pub empty_packages: usize,
    /// Affected entries on ecosystems Patchloop does not order (PyPI, ...) or
    /// not requested, left out.
    pub other_ecosystems: usize,
    /// Records superseded by a newer copy of the same id.
    pub duplicates: usize,
    /// Entries whose versions could not be parsed: `(record id, message)`.
    pub errors: Vec<(String, String)>,
}

/// One advisory's entry for one (ecosystem, package) key.
#[derive(Debug, Clone)]
pub struct IndexEntry {
    /// The advisory.
    pub advisory: Arc<Advisory>,
    /// Index into `advisory.affected`.
    pub affected: usize,
    /// The advisory's number in this database (dense, from 0): evaluations
    /// tell advisories apart by it without reaching into each one.
    pub ordinal: u32,
}

impl IndexEntry {
    /// The affected package this entry stands for.
    pub fn affected(&self) -> &Affected {
        &self.advisory.affected[self.affected]
    }
}

/// Index maps use foldhash: lookups by package name are the hot path of every
/// evaluation, and SipHash cost a fifth of it.
type FastMap<K, V> = foldhash::HashMap<K, V>;

/// Longest text a [`Key`] keeps in place.
const KEY_INLINE: usize = 30;

/// The key of the package index and the text of a probe memo entry: a
/// package name, or a package name and version, kept in the map's own slot
/// when short (nearly all are), so that a lookup compares it without a trip
/// to the heap. Each evaluation does one memo lookup per distinct source,
/// and with the keys on the heap each cost a cache miss more.
#[derive(Debug, Clone)]
pub struct Key(KeyText);

#[derive(Debug, Clone)]
enum KeyText {
    Inline { len: u8, bytes: [u8; KEY_INLINE] },
    Heap(Box<str>),
}

impl Key {
    /// The text.
    pub fn as_str(&self) -> &str {
        match &self.0 {
            // Always whole UTF-8 (copied from a `str`); never the default.
            KeyText::Inline { len, bytes } => {
                std::str::from_utf8(&bytes[..usize::from(*len)]).unwrap_or_default()
            }
            KeyText::Heap(text) => text,
        }
    }
}

impl From<&str> for Key {
    fn from(text: &str) -> Self {
        match u8::try_from(text.len()) {
            Ok(len) if text.len() <= KEY_INLINE => {
                let mut bytes = [0; KEY_INLINE];
                bytes[..text.len()].copy_from_slice(text.as_bytes());
                Key(KeyText::Inline { len, bytes })
            }
            _ => Key(KeyText::Heap(text.into())),
        }
    }
}

impl std::borrow::Borrow<str> for Key {
    fn borrow(&self) -> &str {
        self.as_str()
    }
}

impl PartialEq for Key {
    fn eq(&self, other: &Self) -> bool {
        self.as_str() == other.as_str()
    }
}

impl Eq for Key {}

impl Hash for Key {
    // As `str` hashes: maps keyed by `Key` are looked up by `&str`.
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.as_str().hash(state);
    }
}

/// The advisory entries indexed under each package of one ecosystem.
pub type PackageIndex = FastMap<Key, Vec<IndexEntry>>;

/// How many locks the probe memo of an ecosystem is split over, so that
/// concurrent evaluations rarely wait for one another.
const MEMO_SHARDS: usize = 16;

/// One ecosystem's advisories by package, and the memo of installed
/// (package, version) pairs already tested against them.
///
/// The memo is keyed by the pair, so a repeated pair is found with one
/// lookup: it used to take two (the package in the index, then the version
/// in that package's own memo), each a cache miss or two, together the
/// largest cost of an evaluation. Fleets repeat the same pairs on thousands
/// of machines (they come from a few images), and testing a version against
/// every advisory of a package is the bulk of an evaluation otherwise. The
/// memo lives and dies with its database, so swapping in new advisories never
/// serves a stale answer.
#[derive(Debug)]
pub struct EcosystemIndex {
    packages: PackageIndex,
    /// By [`probe_hash`], split over [`MEMO_SHARDS`] locks.
    memo: Box<[std::sync::Mutex<MemoShard>]>,
    /// The answer for a package without advisories, shared by every such
    /// memo entry.
    no_matches: ProbeMatches,
}

impl Default for EcosystemIndex {
    fn default() -> Self {
        EcosystemIndex {
            packages: PackageIndex::default(),
            memo: (0..MEMO_SHARDS).map(|_| Default::default()).collect(),
            no_matches: Arc::from([]),
        }
    }
}

/// Memo entries by the pair's [`probe_hash`]. One entry per hash: a pair
/// whose hash another pair took first is not memoized (tested each time),
/// which keeps the entry small and lookups to one probe.
type MemoShard = HashMap<u64, MemoEntry, PassThrough>;

/// A memoized probe.
#[derive(Debug)]
struct MemoEntry {
    /// The package name followed by the version, split at `name_len`.
    pair: Key,
    name_len: usize,
    result: Result<ProbeMatches, String>,
}

impl MemoEntry {
    fn is(&self, package: &str, version: &str) -> bool {
        let pair = self.pair.as_str();
        self.name_len == package.len()
            && pair.len() == package.len() + version.len()
            && pair.starts_with(package)
            && pair.ends_with(version)
    }
}

/// The hash of an installed (package, version) pair, under which the probe
/// memo keeps it. Evaluations group an inventory's packages by this very
/// hash, so one hash of each pair serves both.
pub fn probe_hash(package: &str, version: &str) -> u64 {
    const HASHER: foldhash::fast::FixedState = foldhash::fast::FixedState::with_seed(0x9e37_79b9);
    HASHER.hash_one((package, version))
}

/// A hasher for keys that are hashes already.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct PassThrough;

impl std::hash::BuildHasher for PassThrough {
    type Hasher = PassThroughHasher;
    fn build_hasher(&self) -> PassThroughHasher {
        PassThroughHasher(0)
    }
}

#[derive(Debug)]
pub(crate) struct PassThroughHasher(u64);

impl Hasher for PassThroughHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        // Only u64 keys are hashed here; bytes are folded in for completeness.
        for b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(*b);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

/// Every loaded advisory, indexed by ecosystem then package, with the KEV
/// overlay. Immutable once built (but for the probe memos): the controller
/// swaps whole databases.
#[derive(Debug, Default)]
pub struct AdvisoryDb {
    index: FastMap<String, EcosystemIndex>,
    kev: KevCatalog,
    fingerprints: HashMap<(String, String), u64>,
    ecosystems: BTreeMap<String, usize>,
    advisories: usize,
    /// Entries in all the probe memos together, to bound their memory.
    memoized: std::sync::atomic::AtomicUsize,
}

/// One advisory entry an installed version matches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbeMatch {
    /// The entry's advisory, so that a finding is built without a trip
    /// through the package's entries.
    pub advisory: Arc<Advisory>,
    /// The entry's [`IndexEntry::ordinal`], copied so that counting
    /// advisories needs no trip to the advisory itself.
    pub ordinal: u32,
    /// The entry's severity, copied for the same reason.
    pub severity: Severity,
    /// The minimum fixed version above the installed one, if published.
    pub fixed: Option<Arc<str>>,
}

/// What one installed (package, version) matches, in entry order.
pub type ProbeMatches = Arc<[ProbeMatch]>;

/// Beyond this many distinct (ecosystem, package, version) triples the memos
/// stop growing, bounding their memory (about 100 bytes per entry).
const PROBE_CACHE_LIMIT: usize = 1_000_000;

/// The (ecosystem, package) keys whose advisories differ between two
/// databases; exactly the objects with these packages need re-evaluation.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IndexDiff {
    /// Keys with advisories gained, lost or changed (KEV links included).
    pub changed: BTreeSet<(String, String)>,
    /// Ecosystems that have data in one database and not the other.
    pub ecosystems: BTreeSet<String>,
}

impl IndexDiff {
    /// True when nothing differs.
    pub fn is_empty(&self) -> bool {
        self.changed.is_empty() && self.ecosystems.is_empty()
    }
}

fn cvss_severity(kind: &str, score: &str) -> Option<Severity> {
    let value = match kind {
        "CVSS_V2" => {
            let vector = score.strip_prefix("CVSS:2.0/").unwrap_or(score);
            let v: cvss::v2::Vector = vector.parse().ok()?;
            let s = v.score().value();
            // NVD's CVSS v2 bands have no "critical".
            return Some(if s >= 7.0 {
                Severity::High
            } else if s >= 4.0 {
                Severity::Medium
            } else {
                Severity::Low
            });
        }
        "CVSS_V3" | "CVSS_V4" => score.parse::<cvss::Cvss>().ok()?.score(),
        _ => return None,
    };
    Some(band(value))
}

/// The standard CVSS v3/v4 qualitative bands; a 0.0 score ("none") is low.
fn band(score: f64) -> Severity {
    if score >= 9.0 {
        Severity::Critical
    } else if score >= 7.0 {
        Severity::High
    } else if score >= 4.0 {
        Severity::Medium
    } else {
        Severity::Low
    }
}

/// A distribution's word for severity: Debian urgency, Ubuntu priority.
fn distribution_severity(word: &str) -> Option<Severity> {
    match word
        .trim()
        .trim_end_matches('*')
        .to_ascii_lowercase()
        .as_str()
    {
        "critical" => Some(Severity::Critical),
        "high" => Some(Severity::High),
        "medium" => Some(Severity::Medium),
        "low" | "unimportant" | "negligible" => Some(Severity::Low),
        _ => None, // "not yet assigned", "untriaged", "end-of-life"
    }
}

fn record_cvss(severities: &[OsvSeverity]) -> Option<Severity> {
    severities
        .iter()
        .filter_map(|s| cvss_severity(&s.kind, &s.score))
        .max()
}

fn record_distribution(severities: &[OsvSeverity]) -> Option<Severity> {
    severities
        .iter()
        .filter(|s| s.kind.eq_ignore_ascii_case("ubuntu"))
        .filter_map(|s| distribution_severity(&s.score))
        .max()
}

fn affected_distribution(a: &OsvAffected) -> Option<Severity> {
    let specific = a.ecosystem_specific.as_ref();
    let word = |key: &str| {
        specific
            .and_then(|v| v.get(key))
            .and_then(|v| v.as_str())
            .and_then(distribution_severity)
    };
    word("urgency")
        .or_else(|| word("ubuntu_priority"))
        .or_else(|| word("priority"))
        .or_else(|| word("severity"))
        .or_else(|| record_distribution(&a.severity))
}

fn parse_events(
    family: Ecosystem,
    range: &OsvRange,
) -> Result<Vec<Event>, super::version::VersionError> {
    let mut events = Vec::with_capacity(range.events.len());
    for e in &range.events {
        let parse = |s: &str| Version::parse(family, s);
        let event = if let Some(v) = &e.introduced {
            if v == "0" {
                Event::Introduced(None)
            } else {
                Event::Introduced(Some(parse(v)?))
            }
        } else if let Some(v) = &e.fixed {
            Event::Fixed(parse(v)?)
        } else if let Some(v) = &e.last_affected {
            Event::LastAffected(parse(v)?)
        } else if let Some(v) = &e.limit {
            if v == "*" {
                continue;
            }
            Event::Limit(parse(v)?)
        } else {
            continue;
        };
        events.push(event);
    }
    // Events apply in version order; `introduced: 0` comes first. Versions of
    // one family always compare.
    events.sort_by(|a, b| match (a.version(), b.version()) {
        (None, None) => std::cmp::Ordering::Equal,
        (None, Some(_)) => std::cmp::Ordering::Less,
        (Some(_), None) => std::cmp::Ordering::Greater,
        (Some(x), Some(y)) => x.compare(y).unwrap_or(std::cmp::Ordering::Equal),
    });
    Ok(events)
}

impl AdvisoryDb {
    /// Builds a database from OSV records and KEV catalogs. `ecosystems`
    /// restricts which OSV ecosystems are kept (empty keeps every ecosystem
    /// Patchloop can order). A record that appears several times (several
    /// feeds) is kept once, the most recently modified copy.
    pub fn build(
        records: Vec<OsvRecord>,
        kev: KevCatalog,
        ecosystems: &[String],
    ) -> (AdvisoryDb, LoadReport) {
        let mut report = LoadReport::default();

        // One copy per id: the most recently modified.
        let mut by_id: HashMap<String, OsvRecord> = HashMap::with_capacity(records.len());
        for record in records {
            match by_id.get(&record.id) {
                Some(old) if old.modified >= record.modified => report.duplicates += 1,
                Some(_) => {
                    report.duplicates += 1;
                    by_id.insert(record.id.clone(), record);
                }
                None => {
                    by_id.insert(record.id.clone(), record);
                }
            }
        }
        let mut records: Vec<OsvRecord> = by_id.into_values().collect();
        records.sort_by(|a, b| a.id.cmp(&b.id));

        // The severity each CVE has on its own (from CVE records and records
        // aliasing a CVE), for records that carry none: Debian DSA/DLA and
        // Ubuntu USN records point at their CVEs through upstream/related.
        let mut cve_severity: HashMap<String, Severity> = HashMap::new();
        for record in &records {
            let own = record_cvss(&record.severity).or_else(|| {
                record_distribution(&record.severity).or_else(|| {
                    record
                        .affected
                        .iter()
                        .filter_map(affected_distribution)
                        .max()
                })
            });
            let Some(own) = own else { continue };
            let names = std::iter::once(&record.id).chain(&record.aliases);
            for cve in names.filter_map(|id| cve_of(id)) {
                let slot = cve_severity.entry(cve).or_insert(own);
                *slot = (*slot).max(own);
            }
        }

        let mut index: FastMap<String, EcosystemIndex> = FastMap::default();
        let mut ecosystem_counts: BTreeMap<String, usize> = BTreeMap::new();
        let mut platforms: HashMap<String, Option<Ecosystem>> = HashMap::new();
        for record in records {
            if record.withdrawn.is_some() {
                report.withdrawn += 1;
                continue;
            }
            let mut cves: Vec<String> = std::iter::once(&record.id)
                .chain(&record.aliases)
                .chain(&record.upstream)
                .chain(&record.related)
                .filter_map(|id| cve_of(id))
                .collect();
            cves.sort();
            cves.dedup();
            let cvss = record_cvss(&record.severity);
            let derived = cves
                .iter()
                .filter_map(|c| cve_severity.get(c))
                .max()
                .copied();

            let mut affected = Vec::new();
            for entry in &record.affected {
                let Some(package) = entry.package.as_ref().filter(|p| !p.name.is_empty()) else {
                    report.empty_packages += 1;
                    continue;
                };
                let wanted = ecosystems.is_empty() || ecosystems.contains(&package.ecosystem);
                let family = *platforms
                    .entry(package.ecosystem.clone())
                    .or_insert_with(|| {
                        parse_platform(&package.ecosystem)
                            .ok()
                            .filter(|p| p.osv_ecosystem() == package.ecosystem)
                            .map(|p| p.family)
                    });
                let (Some(family), true) = (family, wanted) else {
                    report.other_ecosystems += 1;
                    continue;
                };
                let ranges: Result<Vec<Vec<Event>>, _> = entry
                    .ranges
                    .iter()
                    .filter(|r| r.kind == "ECOSYSTEM")
                    .map(|r| parse_events(family, r))
                    .collect();
                let ranges = match ranges {
                    Ok(r) => r,
                    Err(e) => {
                        report.errors.push((record.id.clone(), e.to_string()));
                        continue;
                    }
                };
                let (severity, severity_source) = if let Some(s) = cvss {
                    (s, SeveritySource::Cvss)
                } else if let Some(s) =
                    affected_distribution(entry).or_else(|| record_distribution(&record.severity))
                {
                    (s, SeveritySource::Distribution)
                } else if let Some(s) = derived {
                    (s, SeveritySource::RelatedCves)
                } else {
                    (Severity::Unknown, SeveritySource::None)
                };
                affected.push(Affected {
                    ecosystem: package.ecosystem.clone(),
                    package: package.name.clone(),
                    severity,
                    severity_source,
                    ranges,
                    versions: entry.versions.iter().cloned().collect(),
                });
            }
            if affected.is_empty() {
                continue;
            }
            let advisory = Arc::new(Advisory {
                severity: affected
                    .iter()
                    .map(|a| a.severity)
                    .max()
                    .unwrap_or(Severity::Unknown),
                id: record.id.into(),
                summary: record.summary,
                published: record.published.or(record.modified),
                modified: record.modified,
                known_exploited: cves
                    .iter()
                    .filter_map(|c| kev.entries.get(c))
                    .min_by_key(|e| e.date_added)
                    .cloned(),
                affected,
                cves: cves.into_iter().map(Arc::from).collect(),
            });
            // Ordinals are dense and fit: no feed holds 4 billion advisories,
            // and saturating keeps a wrong count from becoming a panic.
            let ordinal = u32::try_from(report.advisories).unwrap_or(u32::MAX);
            report.advisories += 1;
            let mut counted = HashSet::new();
            for (i, a) in advisory.affected.iter().enumerate() {
                if counted.insert(a.ecosystem.as_str()) {
                    *ecosystem_counts.entry(a.ecosystem.clone()).or_default() += 1;
                }
                index
                    .entry(a.ecosystem.clone())
                    .or_default()
                    .packages
                    .entry(Key::from(a.package.as_str()))
                    .or_default()
                    .push(IndexEntry {
                        advisory: Arc::clone(&advisory),
                        affected: i,
                        ordinal,
                    });
            }
        }

        let mut db = AdvisoryDb {
            index,
            kev,
            fingerprints: HashMap::new(),
            ecosystems: ecosystem_counts,
            advisories: report.advisories,
            memoized: std::sync::atomic::AtomicUsize::new(0),
        };
        db.fingerprints = db.compute_fingerprints();
        (db, report)
    }

    fn compute_fingerprints(&self) -> HashMap<(String, String), u64> {
        let mut out = HashMap::new();
        for (ecosystem, index) in &self.index {
            for (package, entries) in &index.packages {
                let mut hasher = DefaultHasher::new();
                let mut items: Vec<_> = entries
                    .iter()
                    .map(|e| {
                        let a = e.affected();
                        let kev: Vec<_> = e
                            .advisory
                            .cves
                            .iter()
                            .filter_map(|c| self.kev.entries.get(&**c))
                            .collect();
                        let mut h = DefaultHasher::new();
                        e.advisory.id.hash(&mut h);
                        e.advisory.published.hash(&mut h);
                        e.advisory.modified.hash(&mut h);
                        e.advisory.cves.hash(&mut h);
                        a.severity.hash(&mut h);
                        format!("{:?}", a.ranges).hash(&mut h);
                        let mut versions: Vec<_> = a.versions.iter().collect();
                        versions.sort();
                        versions.hash(&mut h);
                        kev.hash(&mut h);
                        h.finish()
                    })
                    .collect();
                items.sort_unstable();
                items.hash(&mut hasher);
                out.insert(
                    (ecosystem.clone(), package.as_str().to_owned()),
                    hasher.finish(),
                );
            }
        }
        out
    }

    /// The entries for one package of one ecosystem.
    pub fn lookup(&self, ecosystem: &str, package: &str) -> &[IndexEntry] {
        self.ecosystem(ecosystem)
            .and_then(|m| m.packages.get(package))
            .map_or(&[], Vec::as_slice)
    }

    /// Tests an installed version of `package` against every advisory entry
    /// indexed under it: the matching entries (in [`AdvisoryDb::lookup`]'s
    /// order) with their minimum fixed versions, or
    /// the reason the version cannot be read. Memoized per database.
    pub fn probe(
        &self,
        ecosystem: &str,
        family: Ecosystem,
        package: &str,
        version: &str,
    ) -> Result<ProbeMatches, String> {
        match self.ecosystem(ecosystem) {
            Some(index) => self.probe_hashed(
                index,
                family,
                probe_hash(package, version),
                package,
                version,
            ),
            None => Ok(Arc::from([])),
        }
    }

    /// [`AdvisoryDb::probe`] in an ecosystem already looked up with
    /// [`AdvisoryDb::ecosystem`], for a pair whose [`probe_hash`] is `hash`
    /// (what evaluations do: they hashed the pair to group their packages).
    pub fn probe_hashed(
        &self,
        index: &EcosystemIndex,
        family: Ecosystem,
        hash: u64,
        package: &str,
        version: &str,
    ) -> Result<ProbeMatches, String> {
        // Bits the shard's own table does not use for buckets or tags.
        let shard = &index.memo[(hash >> 32) as usize % MEMO_SHARDS];
        // A poisoned memo (a panic elsewhere while it was held) only loses
        // the memo: the answer is computed again.
        if let Ok(memo) = shard.lock()
            && let Some(hit) = memo.get(&hash).filter(|e| e.is(package, version))
        {
            return hit.result.clone();
        }
        let result = match index.packages.get(package) {
            None => Ok(Arc::clone(&index.no_matches)),
            Some(entries) => Version::parse(family, version)
                .map(|installed| {
                    entries
                        .iter()
                        .filter_map(|e| {
                            e.affected().check(&installed).map(|m| ProbeMatch {
                                advisory: Arc::clone(&e.advisory),
                                ordinal: e.ordinal,
                                severity: e.affected().severity,
                                fixed: m.fixed.map(|f| Arc::from(f.as_str())),
                            })
                        })
                        .collect::<Vec<_>>()
                        .into()
                })
                .map_err(|e| e.to_string()),
        };
        use std::sync::atomic::Ordering::Relaxed;
        if self.memoized.load(Relaxed) < PROBE_CACHE_LIMIT
            && let Ok(mut memo) = shard.lock()
            && let std::collections::hash_map::Entry::Vacant(slot) = memo.entry(hash)
        {
            slot.insert(MemoEntry {
                pair: Key::from([package, version].concat().as_str()),
                name_len: package.len(),
                result: result.clone(),
            });
            self.memoized.fetch_add(1, Relaxed);
        }
        result
    }

    /// The index of one ecosystem, for repeated probes.
    pub fn ecosystem(&self, ecosystem: &str) -> Option<&EcosystemIndex> {
        self.index.get(ecosystem)
    }

    /// True when any advisory is loaded for the ecosystem: a platform without
    /// data is Unknown, never Compliant.
    pub fn has_data_for(&self, ecosystem: &str) -> bool {
        self.ecosystems.contains_key(ecosystem)
    }

    /// Advisories loaded per ecosystem.
    pub fn ecosystems(&self) -> &BTreeMap<String, usize> {
        &self.ecosystems
    }

    /// Advisories loaded.
    pub fn len(&self) -> usize {
        self.advisories
    }

    /// True when no advisory is loaded.
    pub fn is_empty(&self) -> bool {
        self.advisories == 0
    }

    /// The KEV overlay.
    pub fn kev(&self) -> &KevCatalog {
        &self.kev
    }

    /// The earliest KEV entry among an advisory's CVEs (ids, aliases,
    /// upstream and related), if it is known exploited.
    pub fn known_exploited<'a>(&self, advisory: &'a Advisory) -> Option<&'a KevEntry> {
        advisory.known_exploited.as_ref()
    }

    /// Which (ecosystem, package) keys differ from `old`.
    pub fn diff(&self, old: &AdvisoryDb) -> IndexDiff {
        let mut changed = BTreeSet::new();
        for (key, fp) in &self.fingerprints {
            if old.fingerprints.get(key) != Some(fp) {
                changed.insert(key.clone());
            }
        }
        for key in old.fingerprints.keys() {
            if !self.fingerprints.contains_key(key) {
                changed.insert(key.clone());
            }
        }
        let mine: BTreeSet<_> = self.ecosystems.keys().cloned().collect();
        let theirs: BTreeSet<_> = old.ecosystems.keys().cloned().collect();
        IndexDiff {
            changed,
            ecosystems: mine.symmetric_difference(&theirs).cloned().collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
    fn severity_bands_and_distribution_words() {
        assert_eq!(
            cvss_severity("CVSS_V3", "CVSS:3.1/AV:L/AC:L/PR:L/UI:N/S:U/C:H/I:H/A:H"),
            Some(Severity::High)
        );
        assert_eq!(
            cvss_severity("CVSS_V3", "CVSS:3.1/AV:N/AC:L/PR:N/UI:N/S:U/C:H/I:H/A:H"),
            Some(Severity::Critical)
        );
        assert_eq!(
            cvss_severity("CVSS_V2", "AV:N/AC:L/Au:N/C:P/I:P/A:P"),
            Some(Severity::High)
        );
        assert_eq!(cvss_severity("CVSS_V3", "garbage"), None);
        assert_eq!(distribution_severity("unimportant"), Some(Severity::Low));
        assert_eq!(distribution_severity("not yet assigned"), None);
        assert_eq!(distribution_severity("negligible"), Some(Severity::Low));
    }

    #[test]
    fn memo_entries_tell_where_the_name_ends() {
        let entry = MemoEntry {
            pair: Key::from("a b c"),
            name_len: 3,
            result: Ok(Arc::from([])),
        };
        assert!(entry.is("a b", " c"));
        assert!(!entry.is("a", " b c"));
        assert!(!entry.is("a b", " c2"));
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
