//! The advisory database: records indexed by (ecosystem, package), a
//! sharded memo of probes, and the diff between two builds.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::hash::{BuildHasher, DefaultHasher, Hash, Hasher};
use std::sync::Arc;

use super::model::{Event, parse_events};
use super::severity::{affected_distribution, record_cvss, record_distribution};
use super::*;
use crate::api::common::Severity;
use crate::engine::version::{Ecosystem, Version, parse_platform};

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
}
