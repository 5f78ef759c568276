//! Engine benchmark: a fleet of 10,000 inventories × 500 packages evaluated
//! against 50,000 advisories on one core, and the advisory index's memory.
//!
//! Run: `cargo bench --bench engine` (release build). Prints a report; the
//! figures recorded in BENCHMARKS.md come from it. `PATCHLOOP_BENCH_MACHINES`
//! sets the fleet size (default 10,000) for a quicker run while iterating;
//! the recorded figures use the default. On a shared machine compare the
//! fleet's on-CPU time too (the wall-clock time includes waits for a CPU).
//!
//! The data is synthetic but shaped like Debian's OSV export: 10,000 source
//! packages with 1-4 binary packages each, dpkg versions with epochs and
//! `+deb12uN` revisions, 50,000 advisories (about 5 per source) with
//! `introduced: 0` / `fixed` ranges (a fifth without a fix, as Debian's CVE
//! records often are), `versions` lists and related CVEs, 1,000 of them in a
//! KEV catalog. A machine has 500 packages from about 200 sources; 85% of its
//! sources are at the newest update, 15% lag behind, which gives on average
//! about 200 no-fix findings and 60 actionable ones per machine. Inventories
//! are drawn from 200 distinct machine profiles (fleets are homogeneous; each
//! evaluation does its full work regardless).

use std::time::Instant;

use jiff::Timestamp;
use patchloop::api::policy::PatchPolicySpec;
use patchloop::engine::advisory::{AdvisoryDb, KevCatalog, KevEntry, OsvRecord};
use patchloop::engine::evaluate::{self, Input, InventoryInput, PolicyRef};
use patchloop::engine::inventory::InstalledPackage;
use sha2::{Digest, Sha256};

const SOURCES: usize = 10_000;
const ADVISORIES: usize = 50_000;
const MACHINES: usize = 10_000;

/// The fleet size: `PATCHLOOP_BENCH_MACHINES`, else [`MACHINES`].
fn machines() -> usize {
    std::env::var("PATCHLOOP_BENCH_MACHINES")
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|n| *n > 0)
        .unwrap_or(MACHINES)
}

const PACKAGES_PER_MACHINE: usize = 500;
const PROFILES: usize = 200;

/// A small deterministic PRNG (xorshift), so runs are comparable.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1).and_then(|v| v.parse().ok()))
        })
        .unwrap_or(0)
}

fn source_name(i: usize) -> String {
    format!("src{i:04}")
}

/// The version of source `i` at update level `u`: `[1:]M.m.p-r+deb12uU`.
fn version(i: usize, u: usize) -> String {
    let epoch = if i.is_multiple_of(7) { "1:" } else { "" };
    format!(
        "{epoch}{}.{}.{}-{}+deb12u{u}",
        i % 9 + 1,
        i % 17,
        i % 5,
        i % 3 + 1
    )
}

fn records(rng: &mut Rng) -> Vec<OsvRecord> {
    (0..ADVISORIES)
        .map(|n| {
            let src = rng.below(SOURCES);
            let fixed_level = rng.below(8) + 1;
            let no_fix = n.is_multiple_of(5);
            let events = if no_fix {
                serde_json::json!([{"introduced": "0"}])
            } else {
                serde_json::json!([{"introduced": "0"}, {"fixed": version(src, fixed_level)}])
            };
            let versions: Vec<String> = (0..fixed_level).map(|u| version(src, u)).collect();
            let id = if n.is_multiple_of(3) {
                format!("DSA-{}-1", 10_000 + n)
            } else {
                format!("CVE-2025-{:05}", n)
            };
            let urgency = ["low", "medium", "high", "not yet assigned"][n % 4];
            let mut record = serde_json::json!({
                "id": id,
                "published": "2026-10-01T00:00:00Z",
                "modified": "2026-10-02T00:00:00Z",
                "related": [format!("CVE-2025-{:05}", n + 1)],
                "affected": [{
                    "package": {"ecosystem": "Debian:12", "name": source_name(src)},
                    "ranges": [{"type": "ECOSYSTEM", "events": events}],
                    "versions": versions,
                    "ecosystem_specific": {"urgency": urgency},
                }],
            });
            if n % 2 == 1 {
                record["severity"] = serde_json::json!([{"type": "CVSS_V3", "score": "CVSS:3.1/AV:N/AC:L/PR:N/UI:N/S:U/C:H/I:H/A:H"}]);
            }
            serde_json::from_value(record).expect("record")
        })
        .collect()
}

fn kev() -> KevCatalog {
    let mut kev = KevCatalog::default();
    for n in (0..ADVISORIES).step_by(50) {
        let cve = format!("CVE-2025-{:05}", n + 1);
        kev.entries.insert(
            cve.clone(),
            KevEntry {
                cve,
                date_added: jiff::civil::Date::constant(2026, 10, 5),
                due_date: None,
            },
        );
    }
    kev
}

fn profile(rng: &mut Rng) -> Vec<InstalledPackage> {
    let mut packages = Vec::with_capacity(PACKAGES_PER_MACHINE);
    let mut seen = std::collections::HashSet::new();
    while packages.len() < PACKAGES_PER_MACHINE {
        let src = rng.below(SOURCES);
        let binaries = src % 4 + 1;
        // Update levels 0-9; fixes land at levels 1-8, so level 9 is patched.
        let level = if rng.below(100) < 85 {
            9
        } else {
            rng.below(10)
        };
        for b in 0..binaries {
            let name = if b == 0 {
                source_name(src)
            } else {
                format!("lib{}-{b}", source_name(src))
            };
            if packages.len() < PACKAGES_PER_MACHINE && seen.insert(name.clone()) {
                let source = (b > 0).then(|| source_name(src));
                packages.push(InstalledPackage::new(
                    name,
                    version(src, level),
                    source,
                    None,
                ));
            }
        }
    }
    packages
}

fn main() {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let policy: PatchPolicySpec = serde_json::from_value(serde_json::json!({
        "selector": {}, "knownExploited": "2d", "inventoryMaxAge": "365d",
        "approval": {"approveAfter": "3d"}, "emergency": {"severities": ["critical"]},
    }))
    .expect("policy");

    let records = records(&mut rng);
    let rss_before = rss_kib();
    let start = Instant::now();
    let (db, report) = AdvisoryDb::build(records, kev(), &[]);
    let build = start.elapsed();
    let rss_index = rss_kib().saturating_sub(rss_before);
    assert_eq!(report.advisories, ADVISORIES);

    let profiles: Vec<Vec<InstalledPackage>> = (0..PROFILES).map(|_| profile(&mut rng)).collect();
    let now: Timestamp = "2026-11-24T00:00:00Z".parse().expect("timestamp");
    let policies = [PolicyRef {
        name: "gold",
        spec: &policy,
    }];

    let probes: usize = profiles
        .iter()
        .map(|p| {
            let sources: std::collections::BTreeSet<&str> =
                p.iter().map(|x| x.source_name()).collect();
            sources
                .iter()
                .map(|s| db.lookup("Debian:12", s).len())
                .sum::<usize>()
        })
        .sum::<usize>()
        / PROFILES;

    // One machine's evaluation, as the controller runs it.
    let evaluate_machine = |packages| {
        evaluate::evaluate(&Input {
            detail: evaluate::Detail::Actionable,
            platform: "Debian:12",
            policies: &policies,
            exceptions: &[],
            inventory: Some(InventoryInput {
                packages,
                collected_at: now,
                ages: true,
                provisional: false,
            }),
            advisories: &db,
            now,
        })
    };

    // Cold: every machine profile once, on a database whose probe memo is
    // empty (what a fleet of all-different machines would cost each time).
    let start = Instant::now();
    for packages in &profiles {
        let e = evaluate_machine(packages);
        std::hint::black_box(e);
    }
    let cold = start.elapsed();

    let machines = machines();
    let sched_before = schedstat();
    let start = Instant::now();
    let mut findings = 0usize;
    let mut non_compliant = 0usize;
    for m in 0..machines {
        let packages = &profiles[m % PROFILES];
        let e = evaluate_machine(packages);
        findings += e.findings.len();
        non_compliant += usize::from(e.counts.pending + e.counts.overdue > 0);
    }
    let fleet = start.elapsed();
    let sched = schedstat()
        .zip(sched_before)
        .map(|((cpu, wait), (cpu0, wait0))| {
            (
                cpu.saturating_sub(cpu0) as f64 / 1e9,
                wait.saturating_sub(wait0) as f64 / 1e9,
            )
        });

    // A digest of what every profile evaluates to (statuses as serialized,
    // counts, verdict, next change, emergency and installable flags), outside
    // the timed loop: machines of one profile evaluate alike, so equal
    // digests and finding counts mean a change left the results untouched.
    let mut digest = Sha256::new();
    for packages in &profiles {
        let e = evaluate_machine(packages);
        for f in &e.findings {
            digest.update(serde_json::to_vec(&f.finding).expect("a finding serializes"));
            digest.update([u8::from(f.emergency), u8::from(f.installable)]);
        }
        digest.update(serde_json::to_vec(&e.summary()).expect("a summary serializes"));
        digest.update(format!("{:?} {:?}", e.counts, e.next_change));
    }
    let digest: String = digest.finalize()[..8]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();

    println!("engine benchmark (one thread)");
    println!("  advisories indexed:        {}", db.len());
    println!("  index build:               {:.2} s", build.as_secs_f64());
    println!(
        "  index resident memory:     {:.1} MiB (RSS growth while building)",
        rss_index as f64 / 1024.0
    );
    println!(
        "  fleet:                     {machines} inventories x {PACKAGES_PER_MACHINE} packages"
    );
    println!(
        "  fleet evaluation:          {:.2} s ({:.0} us per machine)",
        fleet.as_secs_f64(),
        fleet.as_secs_f64() * 1e6 / machines as f64
    );
    if let Some((cpu, waited)) = sched {
        println!(
            "  fleet on-CPU time:         {cpu:.2} s (waited {waited:.2} s for a CPU: other load)"
        );
    }
    println!(
        "  cold machine (empty memo): {:.0} us per machine",
        cold.as_secs_f64() * 1e6 / PROFILES as f64
    );
    println!("  advisory entries tested:   {probes} per machine");
    println!(
        "  findings:                  {findings} ({:.1} per machine), {non_compliant} machines non-compliant",
        findings as f64 / machines as f64
    );
    println!("  findings digest:           {digest} (the {PROFILES} profiles)");
    println!(
        "  process peak RSS:          {:.1} MiB",
        peak_kib() as f64 / 1024.0
    );
}

/// This thread's time on a CPU and time spent waiting for one, in ns
/// (`/proc/thread-self/schedstat`): on a shared machine the wall-clock figure
/// includes the waits, the on-CPU time does not.
fn schedstat() -> Option<(u64, u64)> {
    let text = std::fs::read_to_string("/proc/thread-self/schedstat").ok()?;
    let mut fields = text.split_whitespace().map(|f| f.parse().ok());
    Some((fields.next()??, fields.next()??))
}

fn peak_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1).and_then(|v| v.parse().ok()))
        })
        .unwrap_or(0)
}
