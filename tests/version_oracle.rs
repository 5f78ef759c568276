//! Holds `patchloop::engine::version` to the real tools.
//!
//! - dpkg: every version this Debian machine knows (dpkg's status database and
//!   `apt-cache dumpavail`, including the versions in dependency relations),
//!   plus generated edge cases, sorted with our comparator and checked pair by
//!   pair against libapt's `apt_pkg.version_compare` (dpkg's algorithm) in one
//!   python process, and spot-checked against `dpkg --compare-versions`.
//! - rpm: thousands of generated and real-world EVRs checked against rpm's own
//!   `labelCompare` (and `rpm.ver`) from Debian's `python3-rpm`.
//! - apk: a table derived from apk-tools' `version.c`.
//! - proptest: every family's ordering is a total order consistent with
//!   equality, and no input makes parsing or comparing panic.
//!
//! The oracle tests need Debian's tools; they install what is missing with
//! apt-get (these tests run as root on Debian 12 in CI) and fail, rather than
//! skip, when that is impossible. Debian's python is used explicitly
//! (`/usr/bin/python3`), since python3-apt and python3-rpm are built for it.

use std::cmp::Ordering;
use std::collections::BTreeSet;
use std::io::Write;
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::time::Instant;

use patchloop::engine::version::{
    ApkVersion, DpkgVersion, Ecosystem, RpmVersion, Version, VersionError, apk_version_compare,
    compare, parse_platform, parse_version,
};
use proptest::prelude::*;

const DEBIAN_PYTHON: &str = "/usr/bin/python3";

// ---------------------------------------------------------------------------
// Tooling: installing what the oracles need, talking to python
// ---------------------------------------------------------------------------

/// apt-get and dpkg take a lock; tests run in parallel threads.
static APT: Mutex<()> = Mutex::new(());

fn apt_lock() -> std::sync::MutexGuard<'static, ()> {
    APT.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn succeeds(program: &str, args: &[&str]) -> bool {
    Command::new(program)
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn apt_get(args: &[&str]) -> Result<(), String> {
    let output = Command::new("apt-get")
        .args(args)
        .env("DEBIAN_FRONTEND", "noninteractive")
        .stdin(Stdio::null())
        .output()
        .map_err(|e| {
            format!("cannot run apt-get ({e}); these oracle tests need a Debian machine")
        })?;
    if output.status.success() {
        Ok(())
    } else {
        Err(format!(
            "apt-get {} failed ({}):\n{}{}",
            args.join(" "),
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        ))
    }
}

/// Installs Debian packages idempotently: `apt-get install`, and if that
/// cannot find them, `apt-get update` once and again. Callers hold the lock.
fn apt_install(packages: &[&str]) {
    let mut args = vec!["install", "-y", "-q", "--no-install-recommends"];
    args.extend_from_slice(packages);
    if apt_get(&args).is_ok() {
        return;
    }
    if let Err(e) = apt_get(&["update", "-q"]) {
        panic!("cannot install {packages:?}: apt-get update failed: {e}");
    }
    if let Err(e) = apt_get(&args) {
        panic!("cannot install {packages:?} needed by this oracle test: {e}");
    }
}

/// Makes Debian's python able to `import module`, installing `package`.
fn ensure_python_module(module: &str, package: &str) {
    let _guard = apt_lock();
    let imports = || succeeds(DEBIAN_PYTHON, &["-c", &format!("import {module}")]);
    if !imports() {
        apt_install(&["python3", package]);
    }
    assert!(
        imports(),
        "{DEBIAN_PYTHON} still cannot import {module} after installing {package}"
    );
}

/// Runs a python script on Debian's python, feeding `input` on stdin, and
/// returns its stdout lines.
fn python_lines(script: &str, input: String) -> Vec<String> {
    let mut child = Command::new(DEBIAN_PYTHON)
        .args(["-c", script])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {DEBIAN_PYTHON}: {e}"));
    let mut stdin = child.stdin.take().expect("piped stdin");
    let writer = std::thread::spawn(move || stdin.write_all(input.as_bytes()));
    let output = child.wait_with_output().expect("python runs");
    writer
        .join()
        .expect("writer thread")
        .expect("python reads its input");
    assert!(
        output.status.success(),
        "python oracle failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout)
        .expect("python prints UTF-8")
        .lines()
        .map(str::to_owned)
        .collect()
}

fn sign(o: Ordering) -> i8 {
    match o {
        Ordering::Less => -1,
        Ordering::Equal => 0,
        Ordering::Greater => 1,
    }
}

/// SplitMix64: deterministic pairs and corpora without a `rand` dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
        items[self.below(items.len())]
    }

    fn chance(&mut self, percent: usize) -> bool {
        self.below(100) < percent
    }
}

/// Index pairs over a sorted list of `n`: every adjacent pair (which, if all
/// agree with the oracle, proves the whole order), pairs a few places apart
/// (where near-equal versions meet), and uniformly random pairs.
fn pairs_to_check(n: usize, near: usize, random: usize, rng: &mut Rng) -> Vec<(usize, usize)> {
    let mut pairs: Vec<(usize, usize)> = (1..n).map(|i| (i - 1, i)).collect();
    for _ in 0..near {
        let i = rng.below(n);
        let j = (i + 2 + rng.below(30)).min(n - 1);
        pairs.push((i, j));
    }
    for _ in 0..random {
        pairs.push((rng.below(n), rng.below(n)));
    }
    pairs
}

/// Asserts our ordering agrees with an oracle's signs on every pair, listing
/// the first disagreements.
fn assert_agreement<T: AsRef<str>>(
    what: &str,
    sorted: &[T],
    pairs: &[(usize, usize)],
    ours: impl Fn(usize, usize) -> Ordering,
    oracle: &[String],
) {
    assert_eq!(
        oracle.len(),
        pairs.len(),
        "{what}: oracle answered {} of {} pairs",
        oracle.len(),
        pairs.len()
    );
    let mut disagreements = Vec::new();
    for (&(i, j), theirs) in pairs.iter().zip(oracle) {
        let mine = sign(ours(i, j));
        if theirs.parse::<i8>() != Ok(mine) {
            disagreements.push(format!(
                "  {:?} vs {:?}: ours {mine}, oracle {theirs}",
                sorted[i].as_ref(),
                sorted[j].as_ref()
            ));
        }
    }
    assert!(
        disagreements.is_empty(),
        "{what}: {} of {} pairs disagree, e.g.\n{}",
        disagreements.len(),
        pairs.len(),
        disagreements
            .iter()
            .take(25)
            .cloned()
            .collect::<Vec<_>>()
            .join("\n")
    );
}

// ---------------------------------------------------------------------------
// dpkg
// ---------------------------------------------------------------------------

/// Every version in a dpkg/apt control stream: `Version:` fields, the
/// version of `Source: name (version)`, and the versions in relation fields
/// such as `Depends: libc6 (>= 2.34)`.
fn control_versions(text: &str, into: &mut BTreeSet<String>) {
    for line in text.lines() {
        if let Some(v) = line.strip_prefix("Version:") {
            into.insert(v.trim().to_owned());
            continue;
        }
        let Some((field, value)) = line.split_once(':') else {
            continue;
        };
        if !matches!(
            field,
            "Source"
                | "Depends"
                | "Pre-Depends"
                | "Recommends"
                | "Suggests"
                | "Enhances"
                | "Breaks"
                | "Conflicts"
                | "Replaces"
                | "Provides"
                | "Built-Using"
                | "Static-Built-Using"
        ) {
            continue;
        }
        for group in value.split('(').skip(1) {
            let Some((inside, _)) = group.split_once(')') else {
                continue;
            };
            if let Some(version) = inside.split_whitespace().last()
                && !matches!(version, "<<" | "<=" | "=" | ">=" | ">>")
            {
                into.insert(version.to_owned());
            }
        }
    }
}

fn dumpavail() -> String {
    let output = Command::new("apt-cache")
        .arg("dumpavail")
        .output()
        .unwrap_or_else(|e| {
            panic!("cannot run apt-cache ({e}); the dpkg oracle needs Debian's apt")
        });
    assert!(
        output.status.success(),
        "apt-cache dumpavail failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn real_dpkg_versions() -> BTreeSet<String> {
    let mut versions = BTreeSet::new();
    let status = std::fs::read_to_string("/var/lib/dpkg/status")
        .expect("the dpkg oracle needs /var/lib/dpkg/status (a Debian machine)");
    control_versions(&status, &mut versions);
    // Hold the apt lock: another test may be running apt-get update.
    let _guard = apt_lock();
    let mut avail = dumpavail();
    // Empty (or nearly) package lists: a fresh machine that never ran
    // apt-get update.
    if avail.matches("\nVersion:").count() < 10_000 {
        apt_get(&["update", "-q"])
            .unwrap_or_else(|e| panic!("apt-cache dumpavail knows almost no packages, and {e}"));
        avail = dumpavail();
    }
    control_versions(&avail, &mut versions);
    versions
}

/// Versions built to hit dpkg's corners: tildes before everything, letters
/// before other punctuation, leading zeros, epochs, colons and hyphens in
/// the upstream part, huge numbers (debversion switches to BigInt).
fn generated_dpkg_versions(rng: &mut Rng, count: usize) -> BTreeSet<String> {
    const NUMBERS: [&str; 10] = [
        "0",
        "00",
        "1",
        "01",
        "2",
        "9",
        "10",
        "010",
        "100",
        "123456789012345678901234567890",
    ];
    const WORDS: [&str; 10] = [
        "a", "b", "z", "A", "Z", "rc", "dfsg", "deb", "ubuntu", "bpo",
    ];
    const SEPARATORS: [&str; 9] = [".", ".", "+", "~", "~~", "-", ".~", "+~", ""];
    let segment = |rng: &mut Rng| -> String {
        let mut s = String::new();
        for i in 0..1 + rng.below(4) {
            if i > 0 {
                s.push_str(rng.pick(&SEPARATORS));
            }
            if rng.chance(65) {
                s.push_str(rng.pick(&NUMBERS));
            } else {
                s.push_str(rng.pick(&WORDS));
            }
        }
        if rng.chance(10) {
            s.push_str(rng.pick(&["~", "+", "."]));
        }
        s
    };
    let mut out = BTreeSet::new();
    while out.len() < count {
        let mut v = String::new();
        let epoch = rng.chance(20);
        if epoch {
            v.push_str(rng.pick(&["0:", "1:", "2:", "01:", "10:", "2147483647:"]));
        }
        v.push_str(rng.pick(&NUMBERS[..9]));
        let upstream = segment(rng);
        if rng.chance(80) {
            v.push_str(rng.pick(&[".", "+", "~", ""]));
            v.push_str(&upstream);
        }
        if epoch && rng.chance(10) {
            v.push_str(":1");
        }
        if rng.chance(60) {
            v.push('-');
            v.push_str(&segment(rng).replace('-', "."));
        }
        if parse_version(Ecosystem::Dpkg, &v).is_ok() {
            out.insert(v);
        }
    }
    out
}

const APT_COMPARE: &str = r#"
import sys, apt_pkg
apt_pkg.init()
out = []
for line in sys.stdin.read().splitlines():
    a, b = line.split("\t")
    r = apt_pkg.version_compare(a, b)
    out.append("1" if r > 0 else "-1" if r < 0 else "0")
print("\n".join(out))
"#;

/// Returns (distinct versions, pairs checked with libapt, pairs checked with dpkg).
fn check_dpkg_corpus(
    what: &str,
    strings: BTreeSet<String>,
    near: usize,
    random: usize,
    seed: u64,
) -> (usize, usize, usize) {
    let mut bad = Vec::new();
    let mut versions: Vec<DpkgVersion> = Vec::new();
    for s in &strings {
        match s.parse::<DpkgVersion>() {
            Ok(v) => versions.push(v),
            Err(e) => bad.push(e.to_string()),
        }
    }
    assert!(
        bad.is_empty(),
        "{what}: {} versions rejected, e.g.\n{}",
        bad.len(),
        bad[..bad.len().min(20)].join("\n")
    );
    versions.sort();
    let n = versions.len();
    let pairs = pairs_to_check(n, near, random, &mut Rng(seed));
    let input: String = pairs
        .iter()
        .map(|&(i, j)| format!("{}\t{}\n", versions[i].as_str(), versions[j].as_str()))
        .collect();
    let oracle = python_lines(APT_COMPARE, input);
    let names: Vec<&str> = versions.iter().map(DpkgVersion::as_str).collect();
    assert_agreement(
        what,
        &names,
        &pairs,
        |i, j| versions[i].cmp(&versions[j]),
        &oracle,
    );

    // The real dpkg on a few hundred of the same pairs, in one shell.
    let mut script = String::new();
    let spot: Vec<(usize, usize)> = pairs
        .iter()
        .step_by((pairs.len() / 150).max(1))
        .copied()
        .collect();
    for &(i, j) in &spot {
        let (a, b) = (names[i], names[j]);
        // Versions are [A-Za-z0-9.+~:-] only: safe in single quotes.
        script.push_str(&format!(
            "if dpkg --compare-versions '{a}' lt '{b}'; then echo -1; elif dpkg --compare-versions '{a}' eq '{b}'; then echo 0; else echo 1; fi\n"
        ));
    }
    let mut child = Command::new("sh")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("sh runs");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(script.as_bytes())
        .expect("script written");
    let output = child.wait_with_output().expect("sh finishes");
    let dpkg: Vec<String> = String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(str::to_owned)
        .collect();
    assert_agreement(
        &format!("{what} (dpkg --compare-versions)"),
        &names,
        &spot,
        |i, j| versions[i].cmp(&versions[j]),
        &dpkg,
    );
    (n, pairs.len(), spot.len())
}

#[test]
fn dpkg_ordering_matches_dpkg_and_libapt() {
    let started = Instant::now();
    assert!(
        succeeds("dpkg", &["--version"]),
        "the dpkg oracle needs dpkg (a Debian machine)"
    );
    ensure_python_module("apt_pkg", "python3-apt");

    let real = real_dpkg_versions();
    let (n_real, apt_real, dpkg_real) =
        check_dpkg_corpus("real dpkg versions", real, 60_000, 60_000, 1);
    let generated = generated_dpkg_versions(&mut Rng(2), 5_000);
    let (n_gen, apt_gen, dpkg_gen) =
        check_dpkg_corpus("generated dpkg versions", generated, 40_000, 40_000, 3);
    assert!(
        n_real > 10_000,
        "expected tens of thousands of real versions, found {n_real}"
    );
    eprintln!(
        "dpkg oracle: {n_real} real + {n_gen} generated distinct versions; {} pairs checked with libapt, {} with dpkg --compare-versions; {:.1?}",
        apt_real + apt_gen,
        dpkg_real + dpkg_gen,
        started.elapsed()
    );
}

// ---------------------------------------------------------------------------
// rpm
// ---------------------------------------------------------------------------

/// EVRs as they appear in RHEL, AlmaLinux, Rocky, Fedora, SUSE and openSUSE
/// repositories and OSV records.
const REAL_RPM: &[&str] = &[
    "2.4.57-5.el9",
    "2.4.57-8.el9",
    "2.4.57-11.el9_4",
    "2.4.57-11.el9_4.1",
    "0:2.4.57-11.el9_4.1",
    "1:1.1.1k-12.el8_9",
    "1:3.0.7-27.el9",
    "1:3.0.7-27.el9_4",
    "1:3.0.7-28.el9_4",
    "1:3.0.7-28.el9_5.alma.1",
    "5.14.0-427.13.1.el9_4",
    "5.14.0-427.20.1.el9_4",
    "5.14.0-503.11.1.el9_5",
    "4.18.0-553.el8_10",
    "4.18.0-553.5.1.el8_10",
    "2.28-236.el9_3.1",
    "2.34-100.el9_4.2",
    "2.34-100.el9",
    "3.9.18-3.el9_4.5",
    "3.9.19-1.el9",
    "1.0~rc1-1.fc40",
    "1.0-1.fc40",
    "1.0^20230101git1234abc-1.fc40",
    "6.8.9-300.fc40",
    "6.10.3-200.fc40",
    "15.5-150500.3.3.1",
    "2.37.4-150500.9.3.1",
    "2.37.4-150500.9.6.1",
    "1.2.3+git20240101.abcdef-1.1",
    "7.76.1-29.el9_4.1",
    "7.76.1-26.el9_3.3",
    "8.0.30-1.module+el8.9.0+19781+1f1f1ab9",
    "8.0.32-1.module+el8.9.0+20001+2b2b2b2b",
    "2:8.2.2637-20.el9_1",
    "2:9.0.2081-1.fc40",
    "32:9.16.23-0.16.el9_3.6",
    "1.20.1-1.el9",
    "0.9.7-3.el9",
    "1.5~beta2-0.3.el9",
    "1.5-0.1.beta2.el9",
    "12.4.0-1.el9.ngx",
    "3.0.2-24.el9.x86_64v2",
    "11.0.0-1.module_el8.7.0+3386+5e3d1b1f",
    "5.3.28-53.el9",
    "1.2.13-6.el9",
    "1.2.13-6.el9_4.1",
];

/// Versions built to exercise every rule of `rpmvercmp`: tilde and caret in
/// all positions, leading zeros, letters against digits, runs of separators,
/// empty segments, huge numbers, epochs with leading zeros, and releases
/// present or absent.
fn generated_rpm_versions(rng: &mut Rng, count: usize) -> BTreeSet<String> {
    const NUMBERS: [&str; 11] = [
        "0",
        "00",
        "1",
        "01",
        "2",
        "9",
        "10",
        "010",
        "100",
        "007",
        "99999999999999999999999",
    ];
    const WORDS: [&str; 12] = [
        "a", "b", "z", "A", "Z", "rc", "beta", "alpha", "git", "el", "p", "fc",
    ];
    const SEPARATORS: [&str; 13] = [
        ".", ".", ".", "_", "+", "..", "._", "~", "^", "~~", "^^", "", "_+",
    ];
    let part = |rng: &mut Rng| -> String {
        let mut s = String::new();
        if rng.chance(8) {
            s.push_str(rng.pick(&["~", "^", ".", "_"]));
        }
        for i in 0..1 + rng.below(4) {
            if i > 0 {
                s.push_str(rng.pick(&SEPARATORS));
            }
            if rng.chance(60) {
                s.push_str(rng.pick(&NUMBERS));
            } else {
                s.push_str(rng.pick(&WORDS));
            }
        }
        if rng.chance(12) {
            s.push_str(rng.pick(&["~", "^", ".", "~1", "^1", "_"]));
        }
        s
    };
    let mut out = BTreeSet::new();
    while out.len() < count {
        let mut v = String::new();
        if rng.chance(25) {
            v.push_str(rng.pick(&["0:", "1:", "2:", "00:", "01:", "10:"]));
        }
        v.push_str(&part(rng));
        if rng.chance(75) {
            v.push('-');
            if rng.chance(40) {
                v.push_str(rng.pick(&[
                    "1.el9",
                    "1.el9_3",
                    "2.el9_4.1",
                    "0.1.rc1.fc40",
                    "150500.3.3.1",
                    "1",
                    "0",
                    "~1",
                    "^1",
                ]));
            } else {
                v.push_str(&part(rng));
            }
        }
        if parse_version(Ecosystem::Rpm, &v).is_ok() {
            out.insert(v);
        }
    }
    out
}

/// For each `a\tb` line: labelCompare on rpm's own split of each string,
/// then rpm.ver's ordering; and rpm's split of `a` (to check ours).
const RPM_COMPARE: &str = r#"
import sys, rpm
def sign(x):
    return (x > 0) - (x < 0)
out = []
for line in sys.stdin.read().splitlines():
    a, b = line.split("\t")
    va, vb = rpm.ver(a), rpm.ver(b)
    label = rpm.labelCompare((va.e, va.v, va.r), (vb.e, vb.v, vb.r))
    ver = (va > vb) - (va < vb)
    split = "\t".join("<none>" if x is None else x for x in (va.e, va.v, va.r))
    out.append("%d\t%d\t%s" % (sign(label), ver, split))
print("\n".join(out))
"#;

fn check_rpm_corpus(
    what: &str,
    strings: BTreeSet<String>,
    near: usize,
    random: usize,
    seed: u64,
) -> (usize, usize) {
    let mut versions: Vec<RpmVersion> = strings
        .iter()
        .map(|s| s.parse().unwrap_or_else(|e| panic!("{what}: {e}")))
        .collect();
    versions.sort();
    let n = versions.len();
    let pairs = pairs_to_check(n, near, random, &mut Rng(seed));
    let input: String = pairs
        .iter()
        .map(|&(i, j)| format!("{}\t{}\n", versions[i].as_str(), versions[j].as_str()))
        .collect();
    let lines = python_lines(RPM_COMPARE, input);
    assert_eq!(
        lines.len(),
        pairs.len(),
        "{what}: rpm answered {} of {} pairs",
        lines.len(),
        pairs.len()
    );
    let mut label = Vec::new();
    let mut ver = Vec::new();
    let mut split_mismatches = Vec::new();
    for (line, &(i, _)) in lines.iter().zip(&pairs) {
        let fields: Vec<&str> = line.split('\t').collect();
        assert_eq!(fields.len(), 5, "{what}: unexpected oracle line {line:?}");
        label.push(fields[0].to_owned());
        ver.push(fields[1].to_owned());
        let v = &versions[i];
        // rpm fills in epoch "0" for a bare ":"; we reject that, so only
        // absent and written epochs occur here.
        let ours = [
            v.epoch().unwrap_or("<none>"),
            v.version(),
            v.release().unwrap_or("<none>"),
        ];
        if ours != fields[2..] {
            split_mismatches.push(format!(
                "  {:?}: ours {ours:?}, rpm {:?}",
                v.as_str(),
                &fields[2..]
            ));
        }
    }
    assert!(
        split_mismatches.is_empty(),
        "{what}: our epoch/version/release split differs from rpm.ver:\n{}",
        split_mismatches[..split_mismatches.len().min(20)].join("\n")
    );
    let names: Vec<&str> = versions.iter().map(RpmVersion::as_str).collect();
    let ours = |i: usize, j: usize| versions[i].cmp(&versions[j]);
    assert_agreement(
        &format!("{what} (rpm.labelCompare)"),
        &names,
        &pairs,
        ours,
        &label,
    );
    assert_agreement(&format!("{what} (rpm.ver)"), &names, &pairs, ours, &ver);
    (n, pairs.len())
}

#[test]
fn rpm_ordering_matches_rpm_label_compare() {
    let started = Instant::now();
    ensure_python_module("rpm", "python3-rpm");
    let real: BTreeSet<String> = REAL_RPM.iter().map(|s| (*s).to_owned()).collect();
    let (n_real, p_real) = check_rpm_corpus("real-world EVRs", real, 2_000, 2_000, 4);
    let generated = generated_rpm_versions(&mut Rng(5), 6_000);
    let (n_gen, p_gen) = check_rpm_corpus("generated EVRs", generated, 60_000, 60_000, 6);
    eprintln!(
        "rpm oracle: {n_real} real-world + {n_gen} generated distinct versions, {} pairs checked, {:.1?}",
        p_real + p_gen,
        started.elapsed()
    );
}

// ---------------------------------------------------------------------------
// apk
// ---------------------------------------------------------------------------

/// Comparisons derived from apk-tools' `src/version.c` (apk-tools 3), one
/// rule at a time; `!` marks an operand apk rejects as invalid, for which only
/// the raw comparison ([`apk_version_compare`]) is checked.
const APK_TABLE: &str = "
# plain numbers: numeric, and a longer version is newer
1 < 2
2 < 10
1.0 < 1.0.1
1.0 = 1.0
1.0 < 1.0.0
1.2.3 < 1.2.3.0
0 < 0.0
0.0 < 0.00
1.2 < 1.10
10.0 > 9.9.9
# the first number ignores leading zeros, later ones compare as strings when
# either has a leading zero
007 = 7
010 > 9
1.09 < 1.1
1.010 < 1.09
1.0 < 1.00
1.00 < 1.000
1.01 < 1.1
1.10 > 1.01
# letters: after digits, above a bare end, below further digits
1.0a > 1.0
1.0a < 1.0b
1.0z < 1.0.1
1.0a > 1.0_p1
1a < 1.0
1.0b_p1 > 1.0b
1.0b_alpha < 1.0b
# pre-release suffixes sort below the release, post-release ones above
1.0_alpha < 1.0
1.0_alpha < 1.0_beta
1.0_beta < 1.0_pre
1.0_pre < 1.0_rc
1.0_rc < 1.0
1.0 < 1.0_cvs
1.0_cvs < 1.0_svn
1.0_svn < 1.0_git
1.0_git < 1.0_hg
1.0_hg < 1.0_p
1.0_p < 1.0_p1
1.0_p1 < 1.0_p2
1.0_p9 < 1.0_p10
1.0_alpha < 1.0_alpha1
1.0_alpha0 > 1.0_alpha
1.0_alpha1 < 1.0_alpha2
1.0_rc1 < 1.0.1
1.0_p1 < 1.0.1
1.0_p1 < 1.0a
1.0_alpha_pre < 1.0_alpha
1.0_alpha_p > 1.0_alpha
1.0_rc1_p1 > 1.0_rc1
1.0_pre20191002222144 < 1.0_pre20210530193627
1.0_git20240101 > 1.0_cvs20990101
1.0_p1-r1 > 1.0_p1
2.0_rc1-r0 < 2.0-r0
# commit hash: compared as a string, above the end and the revision, below suffixes
1.0~abc > 1.0
1.0~abc < 1.0~abd
1.0~ab < 1.0~abc
1.0~0f < 1.0~f
1.0~a < 1.0~a0
1.0~abc > 1.0-r9
1.0~abc-r1 > 1.0~abc
1.0~abc-r1 < 1.0~abc-r2
1.0~abc < 1.0_p1
1.0~abc > 1.0_rc1
1.0_rc1~abc < 1.0
# revisions
1.0-r0 > 1.0
1.0-r1 < 1.0-r2
1.0-r9 < 1.0-r10
1.0-r010 = 1.0-r10
1.0-r1 < 1.0.1
1.0-r1 < 1.0_p1
1.0-r1 > 1.0_rc1
1.0_rc1-r9 < 1.0
# numbers are uint64_t, which wraps
18446744073709551615 > 18446744073709551614
18446744073709551616 = 0
1.18446744073709551617 = 1.1
# invalid operands: the raw comparison still answers, as apk's does
1.0 < !1.0bc
!1.0bc = !1.0bd
!23_foo > 4_beta
!1.0-1 < 1.0
!1.0-1 = !1.0-2
!1..1 < 1.0
!a = !b
# an invalid tail sorts below the valid prefix (INVALID is the highest kind)
!1.0_ < 1.0
!1.0~ < 1.0
!1.0~XYZ < 1.0
!1.0-r < 1.0
!1.0-r1~ab < 1.0-r1
!1.0_rc1.1 < 1.0_rc1
!1.0A < 1.0
!1.0A > 0.9
";

#[test]
fn apk_ordering_follows_version_c() {
    let mut checked = 0;
    for line in APK_TABLE.lines().map(str::trim) {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let fields: Vec<&str> = line.split_whitespace().collect();
        let [a, op, b] = fields[..] else {
            panic!("bad table line {line:?}");
        };
        let want = match op {
            "<" => Ordering::Less,
            "=" => Ordering::Equal,
            ">" => Ordering::Greater,
            _ => panic!("bad operator in {line:?}"),
        };
        let (a_valid, a) = a.strip_prefix('!').map_or((true, a), |a| (false, a));
        let (b_valid, b) = b.strip_prefix('!').map_or((true, b), |b| (false, b));
        assert_eq!(apk_version_compare(a, b), want, "raw {line}");
        assert_eq!(
            apk_version_compare(b, a),
            want.reverse(),
            "raw reversed {line}"
        );
        for (valid, s) in [(a_valid, a), (b_valid, b)] {
            assert_eq!(
                parse_version(Ecosystem::Apk, s).is_ok(),
                valid,
                "validity of {s:?} in {line}"
            );
        }
        if a_valid && b_valid {
            assert_eq!(compare(Ecosystem::Apk, a, b), Ok(want), "{line}");
            let (va, vb): (ApkVersion, ApkVersion) = (a.parse().unwrap(), b.parse().unwrap());
            assert_eq!(va.cmp(&vb), want, "Ord {line}");
            assert_eq!(va == vb, want == Ordering::Equal, "Eq {line}");
        } else {
            let e = compare(Ecosystem::Apk, a, b).unwrap_err();
            assert!(e.to_string().starts_with("invalid apk version"), "{e}");
        }
        checked += 1;
    }
    assert!(checked > 80, "only {checked} apk cases");
}

// ---------------------------------------------------------------------------
// API-level behaviour
// ---------------------------------------------------------------------------

#[test]
fn errors_name_the_input_and_the_family() {
    let e = compare(Ecosystem::Dpkg, "1:", "1.0").unwrap_err();
    assert_eq!(
        e.to_string(),
        r#"invalid dpkg version "1:": nothing after the epoch's ':'"#
    );
    let e = parse_version(Ecosystem::Rpm, "1.0-").unwrap_err();
    assert_eq!(
        e.to_string(),
        r#"invalid rpm version "1.0-": release is empty (trailing '-')"#
    );
    let e = parse_version(Ecosystem::Apk, "1.0-1").unwrap_err();
    assert!(
        e.to_string()
            .starts_with(r#"invalid apk version "1.0-1": unexpected "-1" at byte 3"#),
        "{e}"
    );

    let deb = parse_version(Ecosystem::Dpkg, "1.0").unwrap();
    let apk = parse_version(Ecosystem::Apk, "1.0").unwrap();
    assert!(matches!(
        deb.compare(&apk),
        Err(VersionError::MixedFamilies {
            left: Ecosystem::Dpkg,
            right: Ecosystem::Apk,
            ..
        })
    ));
    assert_eq!(deb.compare(&deb), Ok(Ordering::Equal));
    assert_eq!(deb.family(), Ecosystem::Dpkg);
    assert_eq!(Version::parse(Ecosystem::Apk, "1.0").unwrap(), apk);

    let p = parse_platform("Ubuntu:Pro:18.04:LTS").unwrap();
    assert_eq!(
        (p.osv_ecosystem(), p.family),
        ("Ubuntu:Pro:18.04:LTS", Ecosystem::Dpkg)
    );
    let e = parse_platform("Slackware:15").unwrap_err();
    assert!(
        e.to_string()
            .contains(r#"unknown distribution "Slackware""#),
        "{e}"
    );
}

// ---------------------------------------------------------------------------
// Properties
// ---------------------------------------------------------------------------

/// Checks reflexivity, antisymmetry, transitivity and agreement of `==` over
/// every pair and triple of a small set (stronger than random triples, since
/// generated sets are full of near-equal versions).
fn assert_total_order(family: Ecosystem, strings: &[String]) -> Result<(), TestCaseError> {
    let versions: Vec<Version> = strings
        .iter()
        .filter_map(|s| parse_version(family, s).ok())
        .collect();
    let n = versions.len();
    let mut table = vec![Ordering::Equal; n * n];
    for i in 0..n {
        for j in 0..n {
            let c = versions[i]
                .compare(&versions[j])
                .map_err(|e| TestCaseError::fail(e.to_string()))?;
            table[i * n + j] = c;
            prop_assert_eq!(
                versions[i] == versions[j],
                c == Ordering::Equal,
                "{} vs {}",
                versions[i],
                versions[j]
            );
            prop_assert_eq!(
                compare(family, versions[i].as_str(), versions[j].as_str()),
                Ok(c)
            );
        }
        prop_assert_eq!(
            table[i * n + i],
            Ordering::Equal,
            "{} vs itself",
            versions[i]
        );
    }
    for i in 0..n {
        for j in 0..n {
            prop_assert_eq!(
                table[i * n + j],
                table[j * n + i].reverse(),
                "antisymmetry: {} vs {}",
                versions[i],
                versions[j]
            );
            for k in 0..n {
                let (ij, jk, ik) = (table[i * n + j], table[j * n + k], table[i * n + k]);
                if ij != Ordering::Greater && jk != Ordering::Greater {
                    prop_assert!(
                        ik != Ordering::Greater
                            && (ik == Ordering::Less)
                                == (ij == Ordering::Less || jk == Ordering::Less),
                        "transitivity: {} {:?} {} {:?} {} but {:?}",
                        versions[i],
                        ij,
                        versions[j],
                        jk,
                        versions[k],
                        ik
                    );
                }
            }
        }
    }
    Ok(())
}

const DPKG_LIKE: &str = "([0-2]{1,2}:)?[0-2][0-2a.+~:-]{0,5}(-[0-2a.+~]{1,3})?";
const RPM_LIKE: &str = "([0-1]{1,2}:)?[0-2aZ.~^_+]{1,6}(-[0-2a.~^_]{1,3})?";
const APK_LIKE: &str = "[0-2]{1,2}(\\.[0-2]{1,2}){0,2}[a-b]?(_(alpha|beta|pre|rc|cvs|svn|git|hg|p)[0-2]?){0,2}(~[0-9a-f]{1,2})?(-r[0-2]{1,2})?";

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    #[test]
    fn dpkg_is_a_total_order(strings in prop::collection::vec(DPKG_LIKE, 1..14)) {
        assert_total_order(Ecosystem::Dpkg, &strings)?;
    }

    #[test]
    fn rpm_is_a_total_order(strings in prop::collection::vec(RPM_LIKE, 1..14)) {
        assert_total_order(Ecosystem::Rpm, &strings)?;
    }

    #[test]
    fn apk_is_a_total_order(strings in prop::collection::vec(APK_LIKE, 1..14)) {
        assert_total_order(Ecosystem::Apk, &strings)?;
    }

    #[test]
    fn apk_strategy_yields_valid_versions(a in APK_LIKE) {
        // The apk strategy must exercise the ordering, not the validator.
        prop_assert!(parse_version(Ecosystem::Apk, &a).is_ok(), "{}", a);
    }

    #[test]
    fn nothing_panics_on_arbitrary_strings(a in any::<String>(), b in "[0-9a-zA-Z.:~^+_ -]{0,12}") {
        for family in Ecosystem::ALL {
            for s in [&a, &b] {
                if let Err(e) = parse_version(family, s) {
                    let shown = e.to_string();
                    let prefix = format!("invalid {family} version");
                    prop_assert!(shown.starts_with(&prefix), "{}", shown);
                }
            }
            let _ = compare(family, &a, &b);
            let _ = compare(family, &b, &b);
        }
        let _ = apk_version_compare(&a, &b);
        let _ = apk_version_compare(&b, &a);
        let _ = parse_platform(&a);
        let _ = parse_platform(&b);
    }

    #[test]
    fn huge_numbers_do_not_panic(digits in "[0-9]{18,80}", family in prop::sample::select(Ecosystem::ALL.to_vec())) {
        let a = format!("1.{digits}");
        let b = format!("{digits}:{digits}-{digits}");
        let _ = compare(family, &a, &a);
        let _ = compare(family, &b, &b);
        let _ = compare(family, &a, &b);
    }
}
