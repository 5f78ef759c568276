//! Package inventories: reading what a package manager reports into one model,
//! and the compact line format the `Inventory` resource stores.
//!
//! # The compact format
//!
//! One package a line, fields separated by a space:
//!
//! ```text
//! name version [source [source-version]]
//! ```
//!
//! `source` is the source package when it differs from `name` (dpkg's
//! `Source:`, the name in rpm's `SOURCERPM`, apk's origin `o:`);
//! `source-version` is written only when the source version differs from
//! `version` (dpkg's `Source: name (version)`), and then `source` is written
//! even when it equals `name`. Names and versions never contain whitespace.
//! [`InstalledPackage::to_compact`] writes the canonical line (redundant fields
//! left out) and [`parse_compact_list`] reads an Inventory's lines back; reading
//! splits on runs of spaces and tabs, so it is lenient about spacing while
//! writing is canonical. Every other control character, more than four
//! fields and overlong lines are refused, and every name, `:arch` qualifier
//! and version is held to the grammar of the Inventory's family
//! ([`crate::engine::package_grammar`]); the format readers below apply the
//! same grammar. Errors name the entry, the field and the rule, never the
//! text, which may be an action word for apt or dnf.
//!
//! # Inputs
//!
//! | [`InputFormat`] | what | reader (file) |
//! | --- | --- | --- |
//! | `DpkgStatus` | `/var/lib/dpkg/status` | [`parse_dpkg_status`] (`dpkg.rs`) |
//! | `DpkgQuery` | output of [`DPKG_QUERY_COMMAND`] | [`parse_dpkg_query`] (`dpkg.rs`) |
//! | `RpmQa` | output of [`RPM_QA_COMMAND`] | [`parse_rpm_qa`] (`rpm.rs`) |
//! | `ApkInstalled` | Alpine's `/lib/apk/db/installed` | [`parse_apk_installed`] (`apk.rs`) |
//!
//! The compact format lives in `compact.rs`; what the readers share (the
//! grammar check, multi-arch qualification, stanzas) in `reader.rs`. The
//! readers' tests stay here, on fixtures several of them share.
//!
//! All readers tolerate CRLF line ends and return an empty list for empty
//! input. Every error names the input, the line (and for stanza formats the
//! stanza) and what is wrong.
//!
//! # Decisions
//!
//! - **Installed means on disk (dpkg).** A dpkg package counts when its
//!   *state* (the third word of `Status:`, the second letter of
//!   `${db:Status-Abbrev}`) is `installed`, whatever its selection: `install
//!   ok installed` and also `hold ok installed` (an `apt-mark hold` package is
//!   exactly the kind that stays unpatched) and `deinstall ok installed`
//!   (marked for removal but still there). `config-files`, `half-installed`,
//!   `unpacked`, `half-configured`, `triggers-*` and `not-installed` stanzas
//!   are skipped.
//! - **Multi-arch.** A package keeps its plain name (dpkg's `Package`, rpm's
//!   `NAME`, apk's `P:`). Only when the same name is installed for more than
//!   one architecture does every one of those entries get `:ARCH` appended
//!   (`libc6:amd64`, `libc6:i386`; `glibc:x86_64`, `glibc:i686`), and then the
//!   source is written explicitly so [`InstalledPackage::source_name`] still
//!   gives the unqualified package to match advisories against.
//!   [`InstalledPackage::base_name`] strips the qualifier.
//! - **Several versions of one name** (rpm's install-only packages: `kernel`,
//!   `kernel-core` with three kernels installed) are all kept: names are not
//!   unique keys. Exactly equal entries are merged.
//! - **rpm versions** are `[epoch:]version-release`, the epoch written only
//!   when it is not 0 — the form rpm-based OSV advisories (AlmaLinux, Rocky,
//!   Red Hat) give fixed versions in, and equal under rpm version comparison
//!   to the form with `0:`. The source version is the `SOURCERPM`'s
//!   version-release with the *binary's* epoch in front: a source rpm's file
//!   name carries no epoch, and sub-packages share their source's epoch
//!   unless their spec overrides it (rare: e.g. perl's sub-packages with
//!   their own `Version:`), so in the usual case the source version equals the
//!   binary version and is left out of the compact line.
//! - **gpg-pubkey** pseudo-packages (imported signing keys; their `SOURCERPM`
//!   and `ARCH` are `(none)`) are skipped. Any other package whose
//!   `SOURCERPM` is `(none)` or empty is kept with no source.
//! - **apk** sources are the origin (`o:`), which Alpine's secdb and OSV
//!   name; apk has no separate source version.
//! - Output is sorted (by name, then version) for stable diffs.

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use crate::api::inventory::PackageFormat;
use crate::engine::version::Ecosystem;

mod apk;
mod compact;
mod dpkg;
mod reader;
mod rpm;

use reader::numbered_lines;

pub use apk::{APK_INSTALLED_PATH, parse_apk_installed};
pub use compact::{
    COMPACT_SYNTAX, MAX_COMPACT_LINE_LEN, parse_compact, parse_compact_list, parse_subject_list,
    to_compact_list,
};
pub use dpkg::{
    DPKG_QUERY_ARGV, DPKG_QUERY_COMMAND, DPKG_QUERY_FORMAT, DPKG_STATUS_PATH, parse_dpkg_query,
    parse_dpkg_status,
};
pub use rpm::{RPM_QA_ARGV, RPM_QA_COMMAND, RPM_QA_FORMAT, parse_rpm_qa};

/// The inputs this module reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum InputFormat {
    /// dpkg's database file, `/var/lib/dpkg/status`.
    DpkgStatus,
    /// The output of [`DPKG_QUERY_COMMAND`].
    DpkgQuery,
    /// The output of [`RPM_QA_COMMAND`].
    RpmQa,
    /// Alpine's database file, `/lib/apk/db/installed`.
    ApkInstalled,
}

impl InputFormat {
    /// Every input format.
    pub const ALL: [InputFormat; 4] = [
        InputFormat::DpkgStatus,
        InputFormat::DpkgQuery,
        InputFormat::RpmQa,
        InputFormat::ApkInstalled,
    ];

    /// The name `FromStr` reads and `Display` writes: `dpkg-status`,
    /// `dpkg-query`, `rpm-qa`, `apk-installed`.
    pub fn as_str(self) -> &'static str {
        match self {
            InputFormat::DpkgStatus => "dpkg-status",
            InputFormat::DpkgQuery => "dpkg-query",
            InputFormat::RpmQa => "rpm-qa",
            InputFormat::ApkInstalled => "apk-installed",
        }
    }

    /// The package family whose grammar and version ordering apply.
    pub fn family(self) -> Ecosystem {
        match self {
            InputFormat::DpkgStatus | InputFormat::DpkgQuery => Ecosystem::Dpkg,
            InputFormat::RpmQa => Ecosystem::Rpm,
            InputFormat::ApkInstalled => Ecosystem::Apk,
        }
    }

    /// The package manager: `dpkg`, `rpm` or `apk` (the names the
    /// `Inventory` resource's `spec.format` uses).
    pub fn package_manager(self) -> &'static str {
        match self {
            InputFormat::DpkgStatus | InputFormat::DpkgQuery => "dpkg",
            InputFormat::RpmQa => "rpm",
            InputFormat::ApkInstalled => "apk",
        }
    }
}

/// An Inventory's `spec.format` names the family its lines follow.
impl From<PackageFormat> for Ecosystem {
    fn from(format: PackageFormat) -> Self {
        match format {
            PackageFormat::Dpkg => Ecosystem::Dpkg,
            PackageFormat::Rpm => Ecosystem::Rpm,
            PackageFormat::Apk => Ecosystem::Apk,
        }
    }
}

impl fmt::Display for InputFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for InputFormat {
    type Err = InventoryError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        InputFormat::ALL
            .into_iter()
            .find(|f| f.as_str() == s)
            .ok_or_else(|| InventoryError::UnknownFormat(s.to_owned()))
    }
}

/// What went wrong reading an inventory.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum InventoryError {
    /// A compact line that is malformed or names a package or version
    /// outside its family's grammar. The message names the field and the
    /// rule, never the line itself.
    #[error("{problem}")]
    Compact {
        /// What is wrong, without the offending text.
        problem: String,
    },
    /// Entry `index` of a compact list (an Inventory's `spec.packages`) is
    /// malformed or invalid.
    #[error("packages[{index}]: {problem}")]
    InvalidPackage {
        /// Index into the list.
        index: usize,
        /// What is wrong, without the offending text.
        problem: String,
    },
    /// A line-oriented input (dpkg-query, rpm -qa) has a bad line.
    #[error("{format}: line {line}: {message}")]
    Line {
        /// The input being read.
        format: InputFormat,
        /// 1-based line number.
        line: usize,
        /// What is wrong.
        message: String,
    },
    /// A stanza-oriented input (dpkg status, apk installed) has a bad stanza.
    #[error("{format}: stanza {stanza} (line {line}): {message}")]
    Stanza {
        /// The input being read.
        format: InputFormat,
        /// 1-based stanza number.
        stanza: usize,
        /// 1-based line number of the offending line (the stanza's first line
        /// when a field is missing).
        line: usize,
        /// What is wrong.
        message: String,
    },
    /// An Inventory's `spec.format` names another family than its subject's
    /// platform: its lines would be held to another package manager's
    /// grammar and their versions ordered by another family's rules, so
    /// none of them is read.
    #[error(
        "format: is {format}, but the subject's platform is of the {platform} family; nothing from this Inventory is read"
    )]
    FormatMismatch {
        /// The Inventory's `spec.format`.
        format: Ecosystem,
        /// The family of the subject's `spec.platform`.
        platform: Ecosystem,
    },
    /// An input format name `InputFormat::from_str` does not know.
    #[error(
        "unknown inventory input format {0:?} (expected dpkg-status, dpkg-query, rpm-qa or apk-installed)"
    )]
    UnknownFormat(String),
}

/// One installed package.
///
/// Parsers return it *normalized*: `source` is `None` when it would equal
/// `name`, `source_version` is `None` when it would equal `version`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
///
/// The strings are shared (`Arc<str>`): findings name the packages and
/// versions they affect, and sharing the inventory's strings spares an
/// evaluation a copy of each.
pub struct InstalledPackage {
    /// Binary package name, `:ARCH`-qualified only for multi-arch duplicates.
    pub name: Arc<str>,
    /// Installed version, in the package manager's own syntax.
    pub version: Arc<str>,
    /// Source package, when it differs from `name`.
    pub source: Option<Arc<str>>,
    /// Source version, when it differs from `version`.
    pub source_version: Option<Arc<str>>,
}

impl InstalledPackage {
    /// A package, normalized (see [`InstalledPackage::normalized`]).
    pub fn new(
        name: impl Into<Arc<str>>,
        version: impl Into<Arc<str>>,
        source: Option<String>,
        source_version: Option<String>,
    ) -> Self {
        InstalledPackage {
            name: name.into(),
            version: version.into(),
            source: source.map(Arc::from),
            source_version: source_version.map(Arc::from),
        }
        .normalized()
    }

    /// The same package with redundant fields dropped: a source equal to the
    /// name, a source version equal to the version.
    pub fn normalized(mut self) -> Self {
        if self.source.as_deref() == Some(&*self.name) {
            self.source = None;
        }
        if self.source_version.as_deref() == Some(&*self.version) {
            self.source_version = None;
        }
        self
    }

    /// The source package: `source`, else `name`.
    pub fn source_name(&self) -> &str {
        self.source.as_deref().unwrap_or(&self.name)
    }

    /// The source version: `source_version`, else `version`.
    pub fn source_version(&self) -> &str {
        self.shared_source_version()
    }

    /// [`InstalledPackage::source_version`] as the shared string itself, for
    /// findings that name it without a copy.
    pub fn shared_source_version(&self) -> &Arc<str> {
        self.source_version.as_ref().unwrap_or(&self.version)
    }

    /// The name without a multi-arch `:ARCH` qualifier.
    pub fn base_name(&self) -> &str {
        self.name
            .split_once(':')
            .map_or(&*self.name, |(base, _)| base)
    }

    /// The compact line, `name version [source [source-version]]`, without
    /// redundant fields.
    pub fn to_compact(&self) -> String {
        let source = self.source.as_deref().filter(|s| *s != &*self.name);
        let source_version = self
            .source_version
            .as_deref()
            .filter(|v| *v != &*self.version);
        let mut line = String::with_capacity(
            self.name.len()
                + self.version.len()
                + source.map_or(0, str::len)
                + source_version.map_or(0, str::len)
                + 3,
        );
        line.push_str(&self.name);
        line.push(' ');
        line.push_str(&self.version);
        if source.is_some() || source_version.is_some() {
            line.push(' ');
            line.push_str(source.unwrap_or(&self.name));
        }
        if let Some(v) = source_version {
            line.push(' ');
            line.push_str(v);
        }
        line
    }
}

impl fmt::Display for InstalledPackage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_compact())
    }
}

impl FromStr for InstalledPackage {
    type Err = InventoryError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        parse_compact(s)
    }
}

/// Reads `text` as `format`.
pub fn parse(format: InputFormat, text: &str) -> Result<Vec<InstalledPackage>, InventoryError> {
    match format {
        InputFormat::DpkgStatus => parse_dpkg_status(text),
        InputFormat::DpkgQuery => parse_dpkg_query(text),
        InputFormat::RpmQa => parse_rpm_qa(text),
        InputFormat::ApkInstalled => parse_apk_installed(text),
    }
}

/// Guesses the format of `text` from its first non-blank line: six
/// tab-separated fields are `dpkg-query` output, four are `rpm -qa` output, a
/// one-letter key (`P:musl`) is apk's database, a `Package:` line is dpkg's
/// status file. `None` for empty or unrecognised input.
pub fn detect(text: &str) -> Option<InputFormat> {
    let (_, first) = numbered_lines(text).find(|(_, l)| !l.trim().is_empty())?;
    if first.contains('\t') {
        return match first.split('\t').count() {
            6 => Some(InputFormat::DpkgQuery),
            4 => Some(InputFormat::RpmQa),
            _ => None,
        };
    }
    let bytes = first.as_bytes();
    if bytes.len() >= 2 && bytes[0].is_ascii_alphabetic() && bytes[1] == b':' {
        return Some(InputFormat::ApkInstalled);
    }
    // Every dpkg status stanza starts with its Package field; anything else
    // shaped `key: value` (a YAML manifest's `apiVersion:`) is not one.
    let (field, _) = first.split_once(':')?;
    field
        .eq_ignore_ascii_case("Package")
        .then_some(InputFormat::DpkgStatus)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn pkg(name: &str, version: &str, source: Option<&str>, sv: Option<&str>) -> InstalledPackage {
        InstalledPackage {
            name: name.into(),
            version: version.into(),
            source: source.map(Into::into),
            source_version: sv.map(Into::into),
        }
    }

    #[test]
    fn compact_lines() {
        let cases: &[(&str, InstalledPackage, &str)] = &[
            (
                "zlib1g 1:1.2.13.dfsg-1",
                pkg("zlib1g", "1:1.2.13.dfsg-1", None, None),
                "zlib1g 1:1.2.13.dfsg-1",
            ),
            (
                "libc6 2.36-9 glibc",
                pkg("libc6", "2.36-9", Some("glibc"), None),
                "libc6 2.36-9 glibc",
            ),
            (
                "bash 5.2.15-2+b8 bash 5.2.15-2",
                pkg("bash", "5.2.15-2+b8", None, Some("5.2.15-2")),
                "bash 5.2.15-2+b8 bash 5.2.15-2",
            ),
            (
                "cpp 4:12.2.0-3 gcc-defaults 1.203",
                pkg("cpp", "4:12.2.0-3", Some("gcc-defaults"), Some("1.203")),
                "cpp 4:12.2.0-3 gcc-defaults 1.203",
            ),
            // Redundant fields are dropped.
            ("bash 5.2 bash", pkg("bash", "5.2", None, None), "bash 5.2"),
            (
                "bash 5.2 bash 5.2",
                pkg("bash", "5.2", None, None),
                "bash 5.2",
            ),
            (
                "libc6 2.36 glibc 2.36",
                pkg("libc6", "2.36", Some("glibc"), None),
                "libc6 2.36 glibc",
            ),
            // Lenient spacing when reading.
            (
                "  libc6\t2.36   glibc \t",
                pkg("libc6", "2.36", Some("glibc"), None),
                "libc6 2.36 glibc",
            ),
        ];
        for (line, want, canonical) in cases {
            let got = parse_compact(line).unwrap_or_else(|e| panic!("{line:?}: {e}"));
            assert_eq!(&got, want, "{line:?}");
            assert_eq!(got.to_compact(), *canonical, "{line:?}");
            assert_eq!(got.to_string(), *canonical);
            assert_eq!(canonical.parse::<InstalledPackage>().as_ref(), Ok(want));
        }
    }

    #[test]
    fn compact_unnormalized_struct_writes_canonical_line() {
        assert_eq!(pkg("a", "1", Some("a"), None).to_compact(), "a 1");
        assert_eq!(pkg("a", "1", Some("a"), Some("1")).to_compact(), "a 1");
        assert_eq!(pkg("a", "1", None, Some("0.9")).to_compact(), "a 1 a 0.9");
        assert_eq!(pkg("a:i386", "1", None, None).base_name(), "a");
        assert_eq!(pkg("a", "1", None, None).base_name(), "a");
        assert_eq!(pkg("a", "1", None, Some("0.9")).source_name(), "a");
        assert_eq!(pkg("a", "1", Some("b"), None).source_version(), "1");
    }

    #[test]
    fn compact_errors() {
        for (line, want) in [
            ("", "got 0 fields"),
            ("   ", "got 0 fields"),
            ("libssl3", "got 1 fields"),
            ("a b c d e", "got 5 fields"),
            (
                "libc6 1.0\nreboot 1",
                "character 10 is a control character (U+000A)",
            ),
            (
                "libc6 1.0\r",
                "character 10 is a control character (U+000D)",
            ),
            (
                "libc6 1.0 \u{1b}[2J",
                "character 11 is a control character (U+001B)",
            ),
        ] {
            let err = parse_compact(line).expect_err(line);
            assert!(err.to_string().contains(want), "{line:?}: {err}");
        }
        let huge = format!("libc6 {}", "1".repeat(MAX_COMPACT_LINE_LEN));
        let err = parse_compact(&huge).expect_err("huge");
        assert!(err.to_string().starts_with(&format!(
            "is {} bytes, longer than the {MAX_COMPACT_LINE_LEN}-byte limit",
            huge.len()
        )));
        let list = ["libc6 2.36".to_string(), "xz 1".into(), "libssl3".into()];
        let err = parse_compact_list(Ecosystem::Dpkg, &list).expect_err("bad entry");
        assert_eq!(
            err.to_string(),
            "packages[2]: expected \"name version [source [source-version]]\" (2 to 4 fields separated by spaces), got 1 fields"
        );
        assert_eq!(parse_compact_list::<&str>(Ecosystem::Dpkg, &[]), Ok(vec![]));
        let ok = parse_compact_list(Ecosystem::Dpkg, &["bc 1", "ab 2 src"]).expect("valid");
        assert_eq!(to_compact_list(&ok), ["bc 1", "ab 2 src"]);
    }

    #[test]
    fn a_subject_list_is_read_only_in_its_platform_family() {
        // Valid rpm, invalid dpkg (capitals): read as rpm for a Debian
        // machine it would pass the wrong grammar, and its versions would
        // be ordered by rpm's rules against Debian's advisories.
        let lines = ["NetworkManager 1.0-1"];
        assert_eq!(
            parse_subject_list(Some(Ecosystem::Dpkg), Ecosystem::Rpm, &lines),
            Err(InventoryError::FormatMismatch {
                format: Ecosystem::Rpm,
                platform: Ecosystem::Dpkg,
            })
        );
        let message = parse_subject_list(Some(Ecosystem::Apk), Ecosystem::Dpkg, &lines)
            .expect_err("dpkg lines for an apk platform")
            .to_string();
        assert!(message.starts_with("format: is dpkg"), "{message}");
        assert!(message.contains("apk family"), "{message}");
        assert!(!message.contains("NetworkManager"), "{message}");
        assert!(parse_subject_list(Some(Ecosystem::Dpkg), Ecosystem::Dpkg, &lines).is_err());
        assert_eq!(
            parse_subject_list(Some(Ecosystem::Rpm), Ecosystem::Rpm, &lines),
            parse_compact_list(Ecosystem::Rpm, &lines),
        );
        // An unreadable platform is the evaluation's own finding.
        assert!(parse_subject_list(None, Ecosystem::Rpm, &lines).is_ok());
    }

    #[test]
    fn compact_lists_hold_each_field_to_the_family_grammar() {
        let cases: &[(Ecosystem, &str, &str)] = &[
            (
                Ecosystem::Dpkg,
                "openssh-server- 1:9.2p1-2",
                "field 1 (name) ends in '-' (apt reads a trailing '-' as \"remove this package\")",
            ),
            (Ecosystem::Dpkg, "openssh-server+ 1:9.2p1-2+x", "ok"),
            (Ecosystem::Dpkg, "g++ 4:12.2.0-3 gcc-defaults 1.203", "ok"),
            (
                Ecosystem::Dpkg,
                "pkg=1.0 1.0",
                "field 1 (name) character 4 ('=')",
            ),
            (
                Ecosystem::Dpkg,
                "pkg/bookworm 1.0",
                "field 1 (name) character 4 ('/')",
            ),
            (
                Ecosystem::Dpkg,
                "-pkg 1.0",
                "field 1 (name) starts with '-'",
            ),
            (
                Ecosystem::Dpkg,
                "pkg:amd64- 1.0",
                "field 1 (name) architecture starts or ends with '-'",
            ),
            (Ecosystem::Dpkg, "libc6:amd64 2.36-9 glibc", "ok"),
            (
                Ecosystem::Dpkg,
                "libc6 2.36-9 glibc:amd64",
                "field 3 (source name) character 6 (':')",
            ),
            (
                Ecosystem::Dpkg,
                "libc6 2.36;reboot",
                "field 2 (version) character 5 (';')",
            ),
            (
                Ecosystem::Dpkg,
                "libc6 2.36 glibc 2.36-",
                "field 4 (source version) does not parse",
            ),
            (Ecosystem::Rpm, "glibc:x86_64 2.34-100.el9 glibc", "ok"),
            (
                Ecosystem::Rpm,
                "@core 1.0-1",
                "field 1 (name) character 1 ('@')",
            ),
            (
                Ecosystem::Rpm,
                "glibc* 1.0-1",
                "field 1 (name) character 6 ('*')",
            ),
            (
                Ecosystem::Rpm,
                "pkg@repo 1.0-1",
                "field 1 (name) character 4 ('@')",
            ),
            (Ecosystem::Apk, "musl 1.2.4-r2", "ok"),
            (
                Ecosystem::Apk,
                "musl 1.2.4-r2-",
                "field 2 (version) does not parse",
            ),
            (
                Ecosystem::Apk,
                "musl- 1.2.4-r2",
                "field 1 (name) ends in '-'",
            ),
        ];
        for (family, line, want) in cases {
            let got = parse_compact_list(*family, &[*line]);
            match (*want, got) {
                ("ok", Ok(p)) => assert_eq!(p.len(), 1),
                ("ok", Err(e)) => panic!("{line:?}: {e}"),
                (want, Ok(_)) => panic!("{line:?} accepted, wanted {want:?}"),
                (want, Err(e)) => {
                    let text = e.to_string();
                    assert!(text.starts_with("packages[0]: "), "{text}");
                    assert!(text.contains(want), "{line:?}: {text} lacks {want:?}");
                    let name = line.split(' ').next().unwrap_or_default();
                    assert!(!text.contains(name), "{line:?}: {text} echoes {name:?}");
                }
            }
        }
    }

    const STATUS: &str = "\
Package: libc6
Status: install ok installed
Priority: optional
Section: libs
Installed-Size: 12985
Maintainer: GNU Libc Maintainers <debian-glibc@lists.debian.org>
Architecture: amd64
Multi-Arch: same
Source: glibc
Version: 2.36-9+deb12u10
Depends: libgcc-s1
Description: GNU C Library: Shared libraries
 Contains the standard libraries that are used by nearly all programs on
 the system.
 .
 Package: not-a-field
Homepage: https://www.gnu.org/software/libc/libc.html

Package: bsdutils
Status: install ok installed
Architecture: amd64
Source: util-linux (2.38.1-5+deb12u3)
Version: 1:2.38.1-5+deb12u3
Conffiles:
 /etc/foo 0123456789abcdef
Description: basic utilities from 4.4BSD-Lite

Package: removed-pkg
Status: deinstall ok config-files
Architecture: amd64
Version: 1.0-1
Conffiles:
 /etc/removed.conf 00

Package: broken
Status: install reinstreq half-installed
Architecture: amd64
Version: 2.0-1

Package: unpacked-only
Status: install ok unpacked
Version: 3.0-1

Package: gone
Status: purge ok not-installed
Architecture: amd64

Package: held
Status: hold ok installed
Architecture: all
Version: 0.5
";

    #[test]
    fn dpkg_status_reads_installed_stanzas_only() {
        let got = parse_dpkg_status(STATUS).expect("valid");
        assert_eq!(
            got,
            [
                pkg(
                    "bsdutils",
                    "1:2.38.1-5+deb12u3",
                    Some("util-linux"),
                    Some("2.38.1-5+deb12u3")
                ),
                pkg("held", "0.5", None, None),
                pkg("libc6", "2.36-9+deb12u10", Some("glibc"), None),
            ]
        );
        // CRLF line ends give the same result.
        let crlf = STATUS.replace('\n', "\r\n");
        assert_eq!(parse_dpkg_status(&crlf).expect("valid"), got);
        assert_eq!(detect(STATUS), Some(InputFormat::DpkgStatus));
    }

    #[test]
    fn dpkg_status_source_forms_and_case() {
        let text = "package: aa\nstatus: install ok installed\nversion: 1.0-1+b1\nsource: aa (1.0-1)\n\n\
                    Package: bb\nStatus: install ok installed\nVersion: 2\nSource: bb\n\n\
                    Package: cc\nStatus: install ok installed\nVersion: 3\nSource:   csrc   (3)  \n";
        assert_eq!(
            parse_dpkg_status(text).expect("valid"),
            [
                pkg("aa", "1.0-1+b1", None, Some("1.0-1")),
                pkg("bb", "2", None, None),
                pkg("cc", "3", Some("csrc"), None),
            ]
        );
    }

    #[test]
    fn format_readers_hold_names_and_versions_to_the_grammar() {
        let cases: &[(InputFormat, &str, &str)] = &[
            (
                InputFormat::DpkgStatus,
                "Package: ok\nStatus: install ok installed\nVersion: 1\n\n\
                 Package: openssh-server-\nStatus: install ok installed\nVersion: 1:9.2p1-2\n",
                "dpkg-status: line 5: package name ends in '-'",
            ),
            (
                InputFormat::DpkgQuery,
                "ii \tpkg=1.0\t1.0\tpkg\t1.0\tamd64\n",
                "dpkg-query: line 1: package name character 4 ('=')",
            ),
            (
                InputFormat::DpkgQuery,
                "ii \tlibc6\t2.36\tglibc\t2.36\tamd64-\n",
                "dpkg-query: line 1: package architecture starts or ends with '-'",
            ),
            (
                InputFormat::RpmQa,
                "glibc*\t0:2.34-1\tglibc-2.34-1.src.rpm\tx86_64\n",
                "rpm-qa: line 1: package name character 6 ('*')",
            ),
            (
                InputFormat::ApkInstalled,
                "P:musl\nV:1.2.4-r2;id\n",
                "apk-installed: line 1: version character 9 (';')",
            ),
        ];
        for (format, text, want) in cases {
            let err = parse(*format, text).expect_err(text);
            assert!(err.to_string().starts_with(want), "{text:?}: {err}");
        }
    }

    #[test]
    fn dpkg_status_blank_and_empty_inputs() {
        for text in ["", "\n", "\n\n   \n\t\n", "\r\n\r\n"] {
            assert_eq!(parse_dpkg_status(text), Ok(vec![]), "{text:?}");
            assert_eq!(parse_dpkg_query(text), Ok(vec![]), "{text:?}");
            assert_eq!(parse_rpm_qa(text), Ok(vec![]), "{text:?}");
            assert_eq!(parse_apk_installed(text), Ok(vec![]), "{text:?}");
            assert_eq!(detect(text), None);
        }
    }

    #[test]
    fn dpkg_status_errors() {
        let cases: &[(&str, &str)] = &[
            (
                "Package: a\nStatus: install ok installed\n",
                "dpkg-status: stanza 1 (line 1): package \"a\": missing Version field",
            ),
            (
                "Package: a\nVersion: 1\n",
                "dpkg-status: stanza 1 (line 1): package \"a\": missing Status field",
            ),
            (
                "Package: a\nStatus: installed\nVersion: 1\n",
                "dpkg-status: stanza 1 (line 2): package \"a\": expected Status \"want flag state\", got \"installed\"",
            ),
            (
                "Status: install ok installed\nVersion: 1\n",
                "dpkg-status: stanza 1 (line 1): missing Package field",
            ),
            (
                "Package: ok\nStatus: install ok installed\nVersion: 1\n\nPackage: a\nStatus: install ok installed\nVersion: 1\nSource: b (2\n",
                "dpkg-status: stanza 2 (line 8): package \"a\": expected Source \"name\" or \"name (version)\", got \"b (2\"",
            ),
            (
                "Package: a\nStatus: install ok installed\nVersion: 1\nSource: b c\n",
                "dpkg-status: stanza 1 (line 4): package \"a\": expected Source \"name\" or \"name (version)\", got \"b c\"",
            ),
            (
                "Package: a\nStatus: install ok installed\nVersion: 1 2\n",
                "dpkg-status: stanza 1 (line 3): package \"a\": bad Version \"1 2\"",
            ),
            (
                " leading continuation\nPackage: a\n",
                "dpkg-status: stanza 1 (line 1): continuation line before any field: \" leading continuation\"",
            ),
            (
                "Package: a\nno colon here\n",
                "dpkg-status: stanza 1 (line 2): expected \"Field: value\", got \"no colon here\"",
            ),
            (
                "Package: a\nPackage: b\n",
                "dpkg-status: stanza 1 (line 2): duplicate Package field",
            ),
            (
                "Package: \nStatus: install ok installed\n",
                "dpkg-status: stanza 1 (line 1): bad Package \"\"",
            ),
        ];
        for (text, want) in cases {
            let err = parse_dpkg_status(text).expect_err(text);
            assert_eq!(err.to_string(), *want, "{text:?}");
        }
    }

    #[test]
    fn dpkg_status_missing_version_is_fine_when_not_installed() {
        let text = "Package: gone\nStatus: deinstall ok config-files\n";
        assert_eq!(parse_dpkg_status(text), Ok(vec![]));
    }

    #[test]
    fn dpkg_multi_arch_duplicates_are_qualified() {
        let text = "\
Package: libc6
Status: install ok installed
Architecture: amd64
Source: glibc
Version: 2.36-9

Package: libc6
Status: install ok installed
Architecture: i386
Source: glibc
Version: 2.36-9

Package: zlib1g
Status: install ok installed
Architecture: i386
Source: zlib
Version: 1:1.2.13.dfsg-1

Package: libgcc-s1
Status: install ok installed
Architecture: amd64
Version: 12.2.0-14

Package: libgcc-s1
Status: install ok installed
Architecture: i386
Version: 12.2.0-14
";
        let got = parse_dpkg_status(text).expect("valid");
        assert_eq!(
            to_compact_list(&got),
            [
                "libc6:amd64 2.36-9 glibc",
                "libc6:i386 2.36-9 glibc",
                "libgcc-s1:amd64 12.2.0-14 libgcc-s1",
                "libgcc-s1:i386 12.2.0-14 libgcc-s1",
                "zlib1g 1:1.2.13.dfsg-1 zlib",
            ]
        );
        assert_eq!(got[2].source_name(), "libgcc-s1");
        assert_eq!(got[2].base_name(), "libgcc-s1");
    }

    #[test]
    fn dpkg_query_rows() {
        let text = "ii \tlibc6\t2.36-9\tglibc\t2.36-9\tamd64\n\
                    ii \tbash\t5.2.15-2+b8\tbash\t5.2.15-2\tamd64\r\n\
                    rc \told\t1.0\told\t1.0\tamd64\n\
                    un \tnever\t\t\t\t\n\
                    hi \theld\t0.5\theld\t0.5\tall\n\
                    \n\
                    iU \tunpacked\t1\tunpacked\t1\tamd64\n";
        assert_eq!(
            parse_dpkg_query(text).expect("valid"),
            [
                pkg("bash", "5.2.15-2+b8", None, Some("5.2.15-2")),
                pkg("held", "0.5", None, None),
                pkg("libc6", "2.36-9", Some("glibc"), None),
            ]
        );
        assert_eq!(detect(text), Some(InputFormat::DpkgQuery));
    }

    #[test]
    fn dpkg_query_multi_arch_matches_status() {
        let query = "ii \tlibc6\t2.36-9\tglibc\t2.36-9\tamd64\n\
                     ii \tlibc6\t2.36-9\tglibc\t2.36-9\ti386\n\
                     ii \tlibgcc-s1\t12.2.0-14\tgcc-12\t12.2.0-14\tamd64\n";
        let status = "Package: libc6\nStatus: install ok installed\nArchitecture: i386\n\
                      Source: glibc\nVersion: 2.36-9\n\n\
                      Package: libgcc-s1\nStatus: install ok installed\nArchitecture: amd64\n\
                      Source: gcc-12\nVersion: 12.2.0-14\n\n\
                      Package: libc6\nStatus: install ok installed\nArchitecture: amd64\n\
                      Source: glibc\nVersion: 2.36-9\n";
        let got = parse_dpkg_query(query).expect("valid");
        assert_eq!(
            to_compact_list(&got),
            [
                "libc6:amd64 2.36-9 glibc",
                "libc6:i386 2.36-9 glibc",
                "libgcc-s1 12.2.0-14 gcc-12",
            ]
        );
        assert_eq!(parse_dpkg_status(status), Ok(got));
    }

    #[test]
    fn dpkg_query_errors() {
        let cases: &[(&str, &str)] = &[
            (
                "ii \ta\t1\n",
                "dpkg-query: line 1: expected 6 tab-separated fields (status, package, version, source, source version, architecture), got 3 in \"ii \\ta\\t1\"",
            ),
            (
                "ii \ta\t1\ta\t1\tamd64\nii  a 1 a 1 amd64\n",
                "dpkg-query: line 2: expected 6 tab-separated fields (status, package, version, source, source version, architecture), got 1 in \"ii  a 1 a 1 amd64\"",
            ),
            (
                "installed\ta\t1\ta\t1\tamd64\n",
                "dpkg-query: line 1: expected a status abbreviation like \"ii \", got \"installed\"",
            ),
            (
                "ii \ta\t\ta\t1\tamd64\n",
                "dpkg-query: line 1: package \"a\": bad version \"\"",
            ),
        ];
        for (text, want) in cases {
            let err = parse_dpkg_query(text).expect_err(text);
            assert_eq!(err.to_string(), *want, "{text:?}");
        }
    }

    #[test]
    fn rpm_rows() {
        let text = "openssl-libs\t1:3.0.7-27.el9\topenssl-3.0.7-27.el9.src.rpm\tx86_64\n\
                    glibc\t0:2.34-100.el9_4.2\tglibc-2.34-100.el9_4.2.src.rpm\tx86_64\n\
                    gpg-pubkey\t0:b86b3716-61e69f29\t(none)\t(none)\n\
                    tzdata\t(none):2024a-1.el9\ttzdata-2024a-1.el9.src.rpm\tnoarch\n\
                    perl-Errno\t0:1.30-481.el9\tperl-5.32.1-481.el9.src.rpm\tx86_64\n\
                    oddball\t2.0-1\t(none)\tx86_64\n\
                    nosrc-thing\t0:1.0-1\tnosrc-thing-1.0-1.nosrc.rpm\tx86_64\n";
        assert_eq!(
            to_compact_list(&parse_rpm_qa(text).expect("valid")),
            [
                "glibc 2.34-100.el9_4.2",
                "nosrc-thing 1.0-1",
                "oddball 2.0-1",
                "openssl-libs 1:3.0.7-27.el9 openssl",
                "perl-Errno 1.30-481.el9 perl 5.32.1-481.el9",
                "tzdata 2024a-1.el9",
            ]
        );
        assert_eq!(detect(text), Some(InputFormat::RpmQa));
    }

    #[test]
    fn rpm_multilib_and_install_only() {
        let text = "glibc\t0:2.34-100.el9\tglibc-2.34-100.el9.src.rpm\tx86_64\n\
                    glibc\t0:2.34-100.el9\tglibc-2.34-100.el9.src.rpm\ti686\n\
                    kernel-core\t0:5.14.0-427.13.1.el9_4\tkernel-5.14.0-427.13.1.el9_4.src.rpm\tx86_64\n\
                    kernel-core\t0:5.14.0-362.8.1.el9_3\tkernel-5.14.0-362.8.1.el9_3.src.rpm\tx86_64\n";
        assert_eq!(
            to_compact_list(&parse_rpm_qa(text).expect("valid")),
            [
                "glibc:i686 2.34-100.el9 glibc",
                "glibc:x86_64 2.34-100.el9 glibc",
                "kernel-core 5.14.0-362.8.1.el9_3 kernel",
                "kernel-core 5.14.0-427.13.1.el9_4 kernel",
            ]
        );
    }

    #[test]
    fn rpm_errors() {
        let cases: &[(&str, &str)] = &[
            (
                "a\t1\n",
                "rpm-qa: line 1: expected 4 tab-separated fields (name, epoch:version-release, source rpm, arch), got 2 in \"a\\t1\"",
            ),
            (
                "a\tx:1-1\ta-1-1.src.rpm\tx86_64\n",
                "rpm-qa: line 1: package \"a\": expected version \"[epoch:]version-release\", got \"x:1-1\"",
            ),
            (
                "a\t1:\ta-1-1.src.rpm\tx86_64\n",
                "rpm-qa: line 1: package \"a\": expected version \"[epoch:]version-release\", got \"1:\"",
            ),
            (
                "a\t0:1-1\ta-1-1.rpm\tx86_64\n",
                "rpm-qa: line 1: package \"a\": expected source rpm \"name-version-release.src.rpm\", got \"a-1-1.rpm\"",
            ),
        ];
        for (text, want) in cases {
            let err = parse_rpm_qa(text).expect_err(text);
            assert_eq!(err.to_string(), *want, "{text:?}");
        }
    }

    const APK: &str = "\
C:Q1EXAMPLEchecksumAAAAAAAAAAAAAAAAAA=
P:musl
V:1.2.4-r2
A:x86_64
S:407278
I:662528
T:the musl c library (libc) implementation
U:https://musl.libc.org/
L:MIT
o:musl
m:Timo Teräs <timo.teras@iki.fi>
t:1697559131
c:c6fdf8aa4f0e7a8a5d0a0e9c8fb2a6c5d1a1b0c2
p:so:libc.musl-x86_64.so.1=1
F:lib
R:ld-musl-x86_64.so.1
a:0:0:755
Z:Q1aaaaaaaaaaaaaaaaaaaaaaaaaaaa=
R:libc.musl-x86_64.so.1

C:Q1EXAMPLEchecksumBBBBBBBBBBBBBBBBBB=
P:libcrypto3
V:3.1.4-r5
A:x86_64
o:openssl
D:so:libc.musl-x86_64.so.1
F:lib
R:libcrypto.so.3
";

    #[test]
    fn apk_stanzas() {
        let got = parse_apk_installed(APK).expect("valid");
        assert_eq!(
            got,
            [
                pkg("libcrypto3", "3.1.4-r5", Some("openssl"), None),
                pkg("musl", "1.2.4-r2", None, None),
            ]
        );
        assert_eq!(
            parse_apk_installed(&APK.replace('\n', "\r\n")).expect("crlf"),
            got
        );
        assert_eq!(detect(APK), Some(InputFormat::ApkInstalled));
    }

    #[test]
    fn apk_errors() {
        let cases: &[(&str, &str)] = &[
            (
                "P:a\n",
                "apk-installed: stanza 1 (line 1): package \"a\": missing V: (version)",
            ),
            (
                "V:1\n",
                "apk-installed: stanza 1 (line 1): missing P: (package name)",
            ),
            (
                "P:a\nV:1\n\nP:b\nbogus\n",
                "apk-installed: stanza 2 (line 5): expected \"X:value\", got \"bogus\"",
            ),
            (
                "P:a\nP:b\nV:1\n",
                "apk-installed: stanza 1 (line 2): duplicate P: line",
            ),
            (
                "P:a\nV:1 2\n",
                "apk-installed: stanza 1 (line 2): package \"a\": bad V: \"1 2\"",
            ),
            ("P:\nV:1\n", "apk-installed: stanza 1 (line 1): bad P: \"\""),
        ];
        for (text, want) in cases {
            let err = parse_apk_installed(text).expect_err(text);
            assert_eq!(err.to_string(), *want, "{text:?}");
        }
    }

    #[test]
    fn formats_and_commands() {
        for f in InputFormat::ALL {
            assert_eq!(f.as_str().parse::<InputFormat>(), Ok(f));
            assert_eq!(f.to_string(), f.as_str());
        }
        assert_eq!(
            "dpkg".parse::<InputFormat>().map_err(|e| e.to_string()),
            Err("unknown inventory input format \"dpkg\" (expected dpkg-status, dpkg-query, rpm-qa or apk-installed)".into())
        );
        assert_eq!(InputFormat::DpkgQuery.package_manager(), "dpkg");
        assert_eq!(InputFormat::RpmQa.package_manager(), "rpm");
        assert_eq!(InputFormat::ApkInstalled.package_manager(), "apk");
        assert_eq!(
            DPKG_QUERY_COMMAND,
            format!(
                "{} {} {}='{}'",
                DPKG_QUERY_ARGV[0], DPKG_QUERY_ARGV[1], DPKG_QUERY_ARGV[2], DPKG_QUERY_ARGV[3]
            )
        );
        assert_eq!(
            RPM_QA_COMMAND,
            format!(
                "{} {} {} '{}'",
                RPM_QA_ARGV[0], RPM_QA_ARGV[1], RPM_QA_ARGV[2], RPM_QA_ARGV[3]
            )
        );
        assert_eq!(detect("garbage"), None);
        assert_eq!(detect("a\tb\tc\n"), None);
        let samples = [
            (InputFormat::DpkgStatus, STATUS),
            (InputFormat::ApkInstalled, APK),
            (InputFormat::RpmQa, "a\t0:1-1\ta-1-1.src.rpm\tx86_64\n"),
            (InputFormat::DpkgQuery, "ii \ta\t1\ta\t1\tamd64\n"),
        ];
        for (format, text) in samples {
            assert_eq!(
                parse(format, text),
                parse(detect(text).expect("detected"), text)
            );
        }
    }

    fn token_strategy() -> impl Strategy<Value = String> {
        "[a-zA-Z0-9.+~:_-]{1,20}"
    }

    fn package_strategy() -> impl Strategy<Value = InstalledPackage> {
        (
            token_strategy(),
            token_strategy(),
            proptest::option::of(token_strategy()),
            proptest::option::of(token_strategy()),
        )
            .prop_map(|(n, v, s, sv)| InstalledPackage::new(n, v, s, sv))
    }

    /// Text built from the characters the formats give meaning to.
    fn structured_text() -> impl Strategy<Value = String> {
        proptest::collection::vec(
            prop_oneof![
                Just("\n".to_owned()),
                Just("\r\n".to_owned()),
                Just("\t".to_owned()),
                Just(" ".to_owned()),
                Just(":".to_owned()),
                Just("(".to_owned()),
                Just(")".to_owned()),
                Just("-".to_owned()),
                Just(".src.rpm".to_owned()),
                Just("Package: ".to_owned()),
                Just("Status: install ok installed".to_owned()),
                Just("Version: ".to_owned()),
                Just("Source: ".to_owned()),
                Just("Architecture: ".to_owned()),
                Just("ii ".to_owned()),
                Just("P:".to_owned()),
                Just("V:".to_owned()),
                Just("o:".to_owned()),
                Just("A:".to_owned()),
                Just("gpg-pubkey".to_owned()),
                Just("(none)".to_owned()),
                "[a-z0-9é]{1,4}",
            ],
            0..60,
        )
        .prop_map(|parts| parts.concat())
    }

    proptest! {
        #[test]
        fn compact_round_trip(p in package_strategy()) {
            let line = p.to_compact();
            prop_assert_eq!(parse_compact(&line), Ok(p));
        }

        #[test]
        fn compact_round_trip_normalizes(
            n in token_strategy(), v in token_strategy(),
            s in proptest::option::of(token_strategy()),
            sv in proptest::option::of(token_strategy()),
        ) {
            let raw = InstalledPackage {
                name: n.into(), version: v.into(), source: s.map(Into::into), source_version: sv.map(Into::into),
            };
            let back = parse_compact(&raw.to_compact()).expect("valid line");
            prop_assert_eq!(back.source_name(), raw.source_name());
            prop_assert_eq!(back.source_version(), raw.source_version());
            prop_assert_eq!(back, raw.normalized());
        }

        #[test]
        fn parsers_never_panic_on_any_text(text in any::<String>()) {
            for f in InputFormat::ALL {
                let _ = parse(f, &text);
            }
            let _ = detect(&text);
            let _ = parse_compact(&text);
        }

        #[test]
        fn parsers_never_panic_on_structured_text(text in structured_text()) {
            for f in InputFormat::ALL {
                if let Ok(packages) = parse(f, &text) {
                    // Whatever parses gives valid compact lines.
                    for p in &packages {
                        prop_assert_eq!(parse_compact(&p.to_compact()), Ok(p.clone()));
                    }
                }
            }
            let _ = detect(&text);
        }
    }
}
