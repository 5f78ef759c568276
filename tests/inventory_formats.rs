//! Inventory readers against real data: this machine's dpkg database (read
//! both as the status file and through dpkg-query), a fixture status file,
//! and hand-written `rpm -qa` and Alpine `installed` samples.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::Command;

use patchloop::engine::inventory::*;
use patchloop::engine::version::Ecosystem;

/// Runs a command and returns its stdout; fails the test when it cannot run.
fn run(argv: &[&str]) -> String {
    let out = Command::new(argv[0])
        .args(&argv[1..])
        .output()
        .unwrap_or_else(|e| panic!("running {argv:?}: {e}"));
    assert!(
        out.status.success(),
        "{argv:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap_or_else(|e| panic!("{argv:?} printed non-UTF-8: {e}"))
}

fn this_machines_dpkg() -> Vec<InstalledPackage> {
    let status = std::fs::read_to_string(DPKG_STATUS_PATH)
        .unwrap_or_else(|e| panic!("reading {DPKG_STATUS_PATH}: {e}"));
    let from_status =
        parse_dpkg_status(&status).unwrap_or_else(|e| panic!("{DPKG_STATUS_PATH}: {e}"));
    let query = run(&DPKG_QUERY_ARGV);
    let from_query = parse_dpkg_query(&query).unwrap_or_else(|e| panic!("dpkg-query: {e}"));
    assert_eq!(
        from_status, from_query,
        "the status file and dpkg-query disagree"
    );
    assert_eq!(detect(&status), Some(InputFormat::DpkgStatus));
    assert_eq!(detect(&query), Some(InputFormat::DpkgQuery));
    from_status
}

#[test]
fn this_machines_dpkg_database() {
    let packages = this_machines_dpkg();
    assert!(
        packages.len() > 50,
        "only {} packages installed?",
        packages.len()
    );

    // The same set as dpkg-query's own status column says is installed.
    let listing = run(&[
        "dpkg-query",
        "-W",
        "-f",
        r"${db:Status-Abbrev} ${Package}\n",
    ]);
    let mut installed = Vec::new();
    let mut ii = BTreeSet::new();
    for line in listing.lines() {
        let (abbrev, name) = line.split_at(3);
        // Our rule: the state (second letter) is "installed".
        if abbrev.as_bytes()[1] == b'i' {
            installed.push(name.trim().to_owned());
        }
        if abbrev == "ii " {
            ii.insert(name.trim().to_owned());
        }
    }
    installed.sort();
    let mut ours: Vec<String> = packages.iter().map(|p| p.base_name().to_owned()).collect();
    ours.sort();
    assert_eq!(ours.len(), installed.len(), "package count");
    assert_eq!(ours, installed, "package names");
    assert!(
        ii.iter().all(|n| ours.binary_search(n).is_ok()),
        "every ii package is listed"
    );

    // Sources match dpkg-query's ${source:Package} ${source:Version}.
    let sources = run(&[
        "dpkg-query",
        "-W",
        "-f",
        r"${Package} ${source:Package} ${source:Version}\n",
    ]);
    let mut by_name: BTreeMap<&str, Vec<(&str, &str)>> = BTreeMap::new();
    for line in sources.lines() {
        let fields: Vec<&str> = line.split(' ').collect();
        let [name, source, source_version] = fields[..] else {
            panic!("unexpected dpkg-query line {line:?}");
        };
        by_name
            .entry(name)
            .or_default()
            .push((source, source_version));
    }
    let mut with_source = 0;
    let mut with_source_version = 0;
    for p in &packages {
        let known = by_name
            .get(p.base_name())
            .unwrap_or_else(|| panic!("{} not in dpkg-query's source listing", p.name));
        assert!(
            known.contains(&(p.source_name(), p.source_version())),
            "{}: we say source {} {}, dpkg-query says {known:?}",
            p.name,
            p.source_name(),
            p.source_version()
        );
        with_source += usize::from(p.source.is_some());
        with_source_version += usize::from(p.source_version.is_some());
    }

    // Compact round trip and size.
    let lines = to_compact_list(&packages);
    for (p, line) in packages.iter().zip(&lines) {
        assert_eq!(&parse_compact(line).expect(line), p, "{line}");
    }
    assert_eq!(
        parse_compact_list(Ecosystem::Dpkg, &lines).expect("compact list"),
        packages
    );
    let bytes: usize = lines.iter().map(String::len).sum();
    let status_bytes = std::fs::metadata(DPKG_STATUS_PATH).map_or(0, |m| m.len());
    println!(
        "this machine: {} installed dpkg packages ({} with a source package name, {} with a \
         source version); compact inventory {} bytes in lines ({} with newlines), \
         {DPKG_STATUS_PATH} {} bytes",
        packages.len(),
        with_source,
        with_source_version,
        bytes,
        bytes + lines.len(),
        status_bytes,
    );
}

/// The fixture copies of a Debian 12 machine's dpkg status file and of its
/// `DPKG_QUERY_COMMAND` output: facts checked by hand with grep and awk.
#[test]
fn dpkg_fixtures() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/dpkg");
    let read = |name: &str| {
        let path = dir.join(name);
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
    };
    let packages = parse_dpkg_status(&read("status")).unwrap_or_else(|e| panic!("status: {e}"));
    let queried =
        parse_dpkg_query(&read("dpkg-query.txt")).unwrap_or_else(|e| panic!("dpkg-query.txt: {e}"));
    assert_eq!(packages, queried, "status and dpkg-query.txt disagree");

    // 727 stanzas, all "install ok installed", all amd64 or all.
    assert_eq!(packages.len(), 727);
    // 589 have a Source: naming another package, 65 a "Source: name (version)"
    // whose version differs from the binary's.
    assert_eq!(packages.iter().filter(|p| p.source.is_some()).count(), 589);
    assert_eq!(
        packages
            .iter()
            .filter(|p| p.source_version.is_some())
            .count(),
        65
    );

    let compact = |name: &str| {
        packages
            .iter()
            .find(|p| &*p.name == name)
            .unwrap_or_else(|| panic!("{name} missing from the fixture"))
            .to_compact()
    };
    // Source: util-linux (2.38.1-5+deb12u3), Version: 1:2.38.1-5+deb12u3
    assert_eq!(
        compact("bsdutils"),
        "bsdutils 1:2.38.1-5+deb12u3 util-linux 2.38.1-5+deb12u3"
    );
    // Source: bash (5.2.15-2), Version: 5.2.15-2+b8 (a binNMU)
    assert_eq!(compact("bash"), "bash 5.2.15-2+b8 bash 5.2.15-2");
    // Source: gcc-defaults (1.203), Version: 4:12.2.0-3
    assert_eq!(compact("cpp"), "cpp 4:12.2.0-3 gcc-defaults 1.203");
    // Source: glibc
    assert_eq!(compact("libc6"), "libc6 2.36-9+deb12u14 glibc");
    assert_eq!(compact("libssl3"), "libssl3 3.0.19-1~deb12u2 openssl");
    assert_eq!(compact("zlib1g"), "zlib1g 1:1.2.13.dfsg-1 zlib");
    // No Source: field.
    assert_eq!(compact("adduser"), "adduser 3.134");
    assert_eq!(compact("openssl"), "openssl 3.0.19-1~deb12u2");

    let lines = to_compact_list(&packages);
    assert_eq!(
        parse_compact_list(Ecosystem::Dpkg, &lines).expect("compact"),
        packages
    );
    let bytes: usize = lines.iter().map(String::len).sum();
    println!(
        "fixture: {} packages, compact {} bytes ({} with newlines)",
        packages.len(),
        bytes,
        bytes + lines.len()
    );
}

#[test]
fn rpm_qa_rhel9_sample() {
    // As printed by RPM_QA_COMMAND on an AlmaLinux 9.4 host (two kernels
    // installed, glibc multilib, the distribution's signing key imported).
    let text = "\
gpg-pubkey\t0:b86b3716-61e69f29\t(none)\t(none)
openssl-libs\t1:3.0.7-27.el9\topenssl-3.0.7-27.el9.src.rpm\tx86_64
openssl\t1:3.0.7-27.el9\topenssl-3.0.7-27.el9.src.rpm\tx86_64
glibc\t0:2.34-100.el9_4.2\tglibc-2.34-100.el9_4.2.src.rpm\tx86_64
glibc\t0:2.34-100.el9_4.2\tglibc-2.34-100.el9_4.2.src.rpm\ti686
glibc-common\t0:2.34-100.el9_4.2\tglibc-2.34-100.el9_4.2.src.rpm\tx86_64
glibc-minimal-langpack\t0:2.34-100.el9_4.2\tglibc-2.34-100.el9_4.2.src.rpm\tx86_64
kernel\t0:5.14.0-427.13.1.el9_4\tkernel-5.14.0-427.13.1.el9_4.src.rpm\tx86_64
kernel-core\t0:5.14.0-427.13.1.el9_4\tkernel-5.14.0-427.13.1.el9_4.src.rpm\tx86_64
kernel\t0:5.14.0-362.24.1.el9_3\tkernel-5.14.0-362.24.1.el9_3.src.rpm\tx86_64
kernel-core\t0:5.14.0-362.24.1.el9_3\tkernel-5.14.0-362.24.1.el9_3.src.rpm\tx86_64
bash\t0:5.1.8-9.el9\tbash-5.1.8-9.el9.src.rpm\tx86_64
tzdata\t0:2024a-1.el9\ttzdata-2024a-1.el9.src.rpm\tnoarch
python3-libs\t0:3.9.18-3.el9_4.1\tpython3.9-3.9.18-3.el9_4.1.src.rpm\tx86_64
shadow-utils\t2:4.9-8.el9\tshadow-utils-4.9-8.el9.src.rpm\tx86_64
perl-libs\t4:5.32.1-481.el9\tperl-5.32.1-481.el9.src.rpm\tx86_64
perl-Errno\t0:1.30-481.el9\tperl-5.32.1-481.el9.src.rpm\tx86_64
libcurl\t0:7.76.1-29.el9_4\tcurl-7.76.1-29.el9_4.src.rpm\tx86_64
sudo\t0:1.9.5p2-10.el9_3\tsudo-1.9.5p2-10.el9_3.src.rpm\tx86_64
dbus-libs\t1:1.12.20-8.el9\tdbus-1.12.20-8.el9.src.rpm\tx86_64
gpg-pubkey\t0:fd431d51-4ae0493b\t(none)\t(none)
";
    assert_eq!(detect(text), Some(InputFormat::RpmQa));
    let packages = parse(InputFormat::RpmQa, text).expect("valid rpm -qa output");
    assert_eq!(
        to_compact_list(&packages),
        [
            "bash 5.1.8-9.el9",
            "dbus-libs 1:1.12.20-8.el9 dbus",
            "glibc-common 2.34-100.el9_4.2 glibc",
            "glibc-minimal-langpack 2.34-100.el9_4.2 glibc",
            "glibc:i686 2.34-100.el9_4.2 glibc",
            "glibc:x86_64 2.34-100.el9_4.2 glibc",
            "kernel 5.14.0-362.24.1.el9_3",
            "kernel 5.14.0-427.13.1.el9_4",
            "kernel-core 5.14.0-362.24.1.el9_3 kernel",
            "kernel-core 5.14.0-427.13.1.el9_4 kernel",
            "libcurl 7.76.1-29.el9_4 curl",
            "openssl 1:3.0.7-27.el9",
            "openssl-libs 1:3.0.7-27.el9 openssl",
            "perl-Errno 1.30-481.el9 perl 5.32.1-481.el9",
            "perl-libs 4:5.32.1-481.el9 perl",
            "python3-libs 3.9.18-3.el9_4.1 python3.9",
            "shadow-utils 2:4.9-8.el9",
            "sudo 1.9.5p2-10.el9_3",
            "tzdata 2024a-1.el9",
        ]
    );
    let openssl_libs = packages
        .iter()
        .find(|p| &*p.name == "openssl-libs")
        .expect("openssl-libs");
    assert_eq!(&*openssl_libs.version, "1:3.0.7-27.el9");
    assert_eq!(openssl_libs.source_name(), "openssl");
    assert_eq!(openssl_libs.source_version(), "1:3.0.7-27.el9");
    assert!(packages.iter().all(|p| p.base_name() != "gpg-pubkey"));
    let round_trip =
        parse_compact_list(Ecosystem::Rpm, &to_compact_list(&packages)).expect("compact");
    assert_eq!(round_trip, packages);
}

#[test]
fn rpm_qa_real_rpm_output() {
    // Captured from rpm 4.18 running RPM_QA_COMMAND against a database holding
    // packages built by rpmbuild from one spec (Epoch: 1, a sub-package
    // overriding Version and Epoch) plus an imported key: the exact bytes
    // rpm prints, including gpg-pubkey's "(none)" fields.
    let text = "perl-Errno\t0:1.30-27.el9\tdemo-3.0.7-27.el9.src.rpm\tnoarch\n\
                demo-libs\t1:3.0.7-27.el9\tdemo-3.0.7-27.el9.src.rpm\tnoarch\n\
                demo\t1:3.0.7-27.el9\tdemo-3.0.7-27.el9.src.rpm\tnoarch\n\
                gpg-pubkey\t0:cdcbd15f-6b04e872\t(none)\t(none)\n";
    assert_eq!(
        to_compact_list(&parse_rpm_qa(text).expect("valid")),
        [
            "demo 1:3.0.7-27.el9",
            "demo-libs 1:3.0.7-27.el9 demo",
            "perl-Errno 1.30-27.el9 demo 3.0.7-27.el9",
        ]
    );
}

#[test]
fn apk_installed_alpine_sample() {
    // Stanzas of an Alpine 3.20 /lib/apk/db/installed (file lists trimmed).
    let text = "\
C:Q1iZ8Zb2xBnX3m5Bca5YSYl3vYz0o=
P:musl
V:1.2.5-r0
A:x86_64
S:411323
I:649216
T:the musl c library (libc) implementation
U:https://musl.libc.org/
L:MIT
o:musl
m:Natanael Copa <ncopa@alpinelinux.org>
t:1712152402
c:3bb21e5cbd83ea01e4d9f8aa2c2ab0a3a7f62e56
p:so:libc.musl-x86_64.so.1=1
F:lib
R:ld-musl-x86_64.so.1
a:0:0:755
Z:Q1X6dyw6Bb7QA8ttkhgJsDXs2DCxs=
R:libc.musl-x86_64.so.1
a:0:0:777
Z:Q17yJ3JFNypA4mxhJJr0ou6CzsJVI=

C:Q1KM8pXyR7D3bBaTjgpS2VqF4m3FA=
P:busybox
V:1.36.1-r29
A:x86_64
S:507831
I:924528
T:Size optimized toolbox of many common UNIX utilities
U:https://busybox.net/
L:GPL-2.0-only
o:busybox
m:Sören Tempel <soeren+alpine@soeren-tempel.net>
t:1717596096
c:1a1d2d5f2b39c8cd5f5d4d8b0a1e7c0c4cf0b2d4
D:so:libc.musl-x86_64.so.1
p:cmd:busybox=1.36.1-r29
r:busybox-initscripts
F:bin
R:busybox
a:0:0:755
Z:Q1y+0qgTt6tZk2YvB3N2vKmBfSxGo=

C:Q1xq2nD5bBtF2b0Zb9u3gWn0C9aPA=
P:busybox-binsh
V:1.36.1-r29
A:x86_64
S:1543
I:1
T:busybox ash /bin/sh
U:https://busybox.net/
L:GPL-2.0-only
o:busybox
m:Sören Tempel <soeren+alpine@soeren-tempel.net>
t:1717596096
c:1a1d2d5f2b39c8cd5f5d4d8b0a1e7c0c4cf0b2d4
D:busybox=1.36.1-r29
p:/bin/sh cmd:sh=1.36.1-r29
F:bin
R:sh
a:0:0:777
Z:Q1pcfTfDNEbNKQc2s1tia7da05M8Q=

C:Q1dG1e4u1k3tC8a2JG9Kf5gC5+1sA=
P:libcrypto3
V:3.3.1-r3
A:x86_64
S:1766512
I:4759552
T:Crypto library from openssl
U:https://www.openssl.org/
L:Apache-2.0
o:openssl
m:Natanael Copa <ncopa@alpinelinux.org>
t:1719588373
c:3df4d4a9e1e7f9c9ab4f0b1b9f2a9c0c4c7b3e0b
D:so:libc.musl-x86_64.so.1
p:so:libcrypto.so.3=3
F:lib
R:libcrypto.so.3
a:0:0:755
Z:Q1u2dL1kF8pXZg6j8FZQ1wq3d6Tz0=

C:Q1Yb8Xo3Gq3nM1k9R0bFqJ4fP8l9o=
P:libssl3
V:3.3.1-r3
A:x86_64
S:348745
I:786432
T:SSL shared libraries
U:https://www.openssl.org/
L:Apache-2.0
o:openssl
m:Natanael Copa <ncopa@alpinelinux.org>
t:1719588373
c:3df4d4a9e1e7f9c9ab4f0b1b9f2a9c0c4c7b3e0b
D:so:libc.musl-x86_64.so.1 so:libcrypto.so.3
p:so:libssl.so.3=3
F:lib
R:libssl.so.3

C:Q1n0R8Zg5j4z8M3pS9e1aH6Kf2c0k=
P:ca-certificates-bundle
V:20240705-r0
A:x86_64
S:130960
I:233472
T:Pre generated bundle of Mozilla certificates
U:https://www.mozilla.org/en-US/about/governance/policies/security-group/certs/
L:MPL-2.0 AND MIT
o:ca-certificates
m:Natanael Copa <ncopa@alpinelinux.org>
t:1720455400
c:5b4a5b1e2f0e9f7e3d0f3c2d1b6a5e4d3c2b1a0f
p:ca-certificates-cacert=20240705-r0
F:etc
F:etc/ssl
F:etc/ssl/certs
R:ca-certificates.crt

C:Q1Ez7dfr5bN2Q1hSOq5zB1pxkT3V4=
P:zlib
V:1.3.1-r1
A:x86_64
S:53754
I:102400
T:A compression/decompression Library
U:https://zlib.net/
L:Zlib
o:zlib
m:Natanael Copa <ncopa@alpinelinux.org>
t:1712652347
c:0d55a0cbc0f1d2e3f4a5b6c7d8e9f0a1b2c3d4e5
D:so:libc.musl-x86_64.so.1
p:so:libz.so.1=1.3.1
F:lib
R:libz.so.1.3.1
R:libz.so.1

C:Q1pY3a2f1Hh6W3qQ9mPzV1uYb0cT8=
P:ssl_client
V:1.36.1-r29
A:x86_64
S:4702
I:14336
T:EXternal ssl_client for busybox wget
U:https://busybox.net/
L:GPL-2.0-only
o:busybox
m:Sören Tempel <soeren+alpine@soeren-tempel.net>
t:1717596096
c:1a1d2d5f2b39c8cd5f5d4d8b0a1e7c0c4cf0b2d4
D:so:libc.musl-x86_64.so.1 so:libcrypto.so.3 so:libssl.so.3
i:busybox=1.36.1-r29 libssl3
F:usr
F:usr/bin
R:ssl_client
a:0:0:755
Z:Q1Vq3fH8r0YpX4kq2Ejx1ZcT9b0jA=
";
    assert_eq!(detect(text), Some(InputFormat::ApkInstalled));
    let packages = parse(InputFormat::ApkInstalled, text).expect("valid apk db");
    assert_eq!(
        to_compact_list(&packages),
        [
            "busybox 1.36.1-r29",
            "busybox-binsh 1.36.1-r29 busybox",
            "ca-certificates-bundle 20240705-r0 ca-certificates",
            "libcrypto3 3.3.1-r3 openssl",
            "libssl3 3.3.1-r3 openssl",
            "musl 1.2.5-r0",
            "ssl_client 1.36.1-r29 busybox",
            "zlib 1.3.1-r1",
        ]
    );
    let libcrypto = packages
        .iter()
        .find(|p| &*p.name == "libcrypto3")
        .expect("libcrypto3");
    assert_eq!(
        (libcrypto.source_name(), libcrypto.source_version()),
        ("openssl", "3.3.1-r3")
    );
    assert_eq!(
        parse_compact_list(Ecosystem::Apk, &to_compact_list(&packages)).expect("compact"),
        packages
    );
}

#[test]
fn compact_list_errors_name_the_entry() {
    let lines = vec![
        "libc6 2.36-9+deb12u10 glibc".to_string(),
        "libssl3 3.0.15-1~deb12u1 openssl".to_string(),
        "libssl3".to_string(),
    ];
    let err = parse_compact_list(Ecosystem::Dpkg, &lines).expect_err("entry 2 is malformed");
    assert_eq!(
        err.to_string(),
        r#"packages[2]: expected "name version [source [source-version]]" (2 to 4 fields separated by spaces), got 1 fields"#
    );
}

/// Every name and version apt, dnf or apk would read as more than a package
/// is refused where an Inventory is read, naming the entry, the field and
/// the rule, and never the text itself.
#[test]
fn action_words_are_refused_by_every_family() {
    let cases: &[(Ecosystem, &str, &str)] = &[
        (Ecosystem::Dpkg, "openssh-server-", "ends in '-'"),
        (Ecosystem::Dpkg, "pkg=1.0", "('=')"),
        (Ecosystem::Dpkg, "pkg/bookworm", "('/')"),
        (Ecosystem::Dpkg, "-pkg", "starts with '-'"),
        (Ecosystem::Dpkg, "--purge", "starts with '-'"),
        (Ecosystem::Dpkg, "pkg*", "('*')"),
        (Ecosystem::Dpkg, "?garbage", "('?')"),
        (Ecosystem::Dpkg, "~nfoo", "('~')"),
        (
            Ecosystem::Dpkg,
            "pkg:amd64-",
            "architecture starts or ends with '-'",
        ),
        (Ecosystem::Dpkg, "$(reboot)", "('$')"),
        (Ecosystem::Dpkg, "`reboot`", "('`')"),
        (Ecosystem::Dpkg, "pkg\"x", "('\"')"),
        (Ecosystem::Rpm, "@core", "('@')"),
        (Ecosystem::Rpm, "pkg@repo", "('@')"),
        (Ecosystem::Rpm, "glibc*", "('*')"),
        (Ecosystem::Rpm, "/usr/sbin/sshd", "('/')"),
        (Ecosystem::Rpm, "openssh-server-", "ends in '-'"),
        (Ecosystem::Rpm, "-y", "starts with '-'"),
        (
            Ecosystem::Rpm,
            "glibc:x86-64",
            "architecture character 4 ('-')",
        ),
        (Ecosystem::Apk, "musl-", "ends in '-'"),
        (
            Ecosystem::Apk,
            "so:libc.musl-x86_64.so.1=1",
            "architecture character",
        ),
        (Ecosystem::Apk, "!musl", "('!')"),
    ];
    for (family, name, want) in cases {
        let lines = [format!("{name} 1.0-1")];
        let err = parse_compact_list(*family, &lines).expect_err(name);
        let text = err.to_string();
        assert!(
            text.starts_with("packages[0]: field 1 (name) ") && text.contains(want),
            "{family} {name:?}: {text}"
        );
        assert!(!text.contains(name), "{name:?} is echoed: {text}");
    }
    let long = format!("{} 1.0", "a".repeat(201));
    let text = parse_compact_list(Ecosystem::Dpkg, &[long])
        .expect_err("long")
        .to_string();
    assert!(
        text.contains("201 bytes, longer than the 200-byte limit"),
        "{text}"
    );
}
