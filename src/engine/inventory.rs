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
//! | [`InputFormat`] | what | reader |
//! | --- | --- | --- |
//! | `DpkgStatus` | `/var/lib/dpkg/status` | [`parse_dpkg_status`] |
//! | `DpkgQuery` | output of [`DPKG_QUERY_COMMAND`] | [`parse_dpkg_query`] |
//! | `RpmQa` | output of [`RPM_QA_COMMAND`] | [`parse_rpm_qa`] |
//! | `ApkInstalled` | Alpine's `/lib/apk/db/installed` | [`parse_apk_installed`] |
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

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use crate::api::inventory::PackageFormat;
use crate::engine::package_grammar::{
    MAX_NAME_LEN, MAX_VERSION_LEN, Rejection, check_arch, check_name, check_qualified_name,
    check_version, describe_char,
};
use crate::engine::version::Ecosystem;

/// The compact line's syntax, as error messages show it.
pub const COMPACT_SYNTAX: &str = "name version [source [source-version]]";

/// The `dpkg-query` format [`parse_dpkg_query`] reads (dpkg-query expands the
/// `\t` and `\n` escapes itself).
pub const DPKG_QUERY_FORMAT: &str = r"${db:Status-Abbrev}\t${Package}\t${Version}\t${source:Package}\t${source:Version}\t${Architecture}\n";

/// The command whose output [`parse_dpkg_query`] reads, as argv (no shell).
pub const DPKG_QUERY_ARGV: [&str; 4] = ["dpkg-query", "-W", "-f", DPKG_QUERY_FORMAT];

/// The command whose output [`parse_dpkg_query`] reads, as a shell line.
pub const DPKG_QUERY_COMMAND: &str = r"dpkg-query -W -f='${db:Status-Abbrev}\t${Package}\t${Version}\t${source:Package}\t${source:Version}\t${Architecture}\n'";

/// The `rpm` query format [`parse_rpm_qa`] reads (rpm expands `\t` and `\n`).
pub const RPM_QA_FORMAT: &str =
    r"%{NAME}\t%{EPOCHNUM}:%{VERSION}-%{RELEASE}\t%{SOURCERPM}\t%{ARCH}\n";

/// The command whose output [`parse_rpm_qa`] reads, as argv (no shell).
pub const RPM_QA_ARGV: [&str; 4] = ["rpm", "-qa", "--queryformat", RPM_QA_FORMAT];

/// The command whose output [`parse_rpm_qa`] reads, as a shell line.
pub const RPM_QA_COMMAND: &str =
    r"rpm -qa --queryformat '%{NAME}\t%{EPOCHNUM}:%{VERSION}-%{RELEASE}\t%{SOURCERPM}\t%{ARCH}\n'";

/// Where Alpine keeps the database [`parse_apk_installed`] reads.
pub const APK_INSTALLED_PATH: &str = "/lib/apk/db/installed";

/// Where dpkg keeps the database [`parse_dpkg_status`] reads.
pub const DPKG_STATUS_PATH: &str = "/var/lib/dpkg/status";

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

/// The longest compact line accepted: four fields at their limits.
pub const MAX_COMPACT_LINE_LEN: usize = 2 * MAX_NAME_LEN + 2 * MAX_VERSION_LEN + 3;

/// Reads one compact line's shape: 2 to 4 fields separated by spaces or
/// tabs, no other control character, at most [`MAX_COMPACT_LINE_LEN`]
/// bytes. The names and versions are not held to a family's grammar: use
/// [`parse_compact_list`] for anything a reporter wrote.
pub fn parse_compact(line: &str) -> Result<InstalledPackage, InventoryError> {
    compact_fields(line)
        .map(|(name, version, source, source_version)| {
            InstalledPackage::new(
                name,
                version,
                source.map(str::to_owned),
                source_version.map(str::to_owned),
            )
        })
        .map_err(|problem| InventoryError::Compact { problem })
}

/// One compact line of `family`: its shape as [`parse_compact`], then the
/// name (optionally `name:arch`), source name and both versions against the
/// family's grammar ([`crate::engine::package_grammar`]).
fn checked_compact(family: Ecosystem, line: &str) -> Result<InstalledPackage, String> {
    let (name, version, source, source_version) = compact_fields(line)?;
    let field = |n: usize, what: &str, result: Result<(), Rejection>| {
        result.map_err(|r| format!("field {n} ({what}) {r}"))
    };
    field(1, "name", check_qualified_name(family, name))?;
    field(2, "version", check_version(family, version))?;
    if let Some(source) = source {
        field(3, "source name", check_name(family, source))?;
    }
    if let Some(source_version) = source_version {
        field(4, "source version", check_version(family, source_version))?;
    }
    Ok(InstalledPackage::new(
        name,
        version,
        source.map(str::to_owned),
        source_version.map(str::to_owned),
    ))
}

/// Splits a compact line into its fields, checking its shape; the error
/// names the problem without quoting the line.
fn compact_fields(line: &str) -> Result<CompactFields<'_>, String> {
    if line.len() > MAX_COMPACT_LINE_LEN {
        return Err(format!(
            "is {} bytes, longer than the {MAX_COMPACT_LINE_LEN}-byte limit of \"{COMPACT_SYNTAX}\"",
            line.len()
        ));
    }
    if let Some((i, c)) = line
        .chars()
        .enumerate()
        .find(|&(_, c)| c.is_control() && c != '\t')
    {
        return Err(format!(
            "character {} is a control character ({}); expected \"{COMPACT_SYNTAX}\" on one line",
            i + 1,
            describe_char(c)
        ));
    }
    let fields: Vec<&str> = line.split([' ', '\t']).filter(|f| !f.is_empty()).collect();
    match fields[..] {
        [name, version] => Ok((name, version, None, None)),
        [name, version, source] => Ok((name, version, Some(source), None)),
        [name, version, source, source_version] => {
            Ok((name, version, Some(source), Some(source_version)))
        }
        _ => Err(format!(
            "expected \"{COMPACT_SYNTAX}\" (2 to 4 fields separated by spaces), got {} fields",
            fields.len()
        )),
    }
}

/// A compact line's name, version, source and source version.
type CompactFields<'a> = (&'a str, &'a str, Option<&'a str>, Option<&'a str>);

/// Reads a compact list (an `Inventory`'s `spec.packages`) of `family`,
/// every line held to the family's grammar; an error names the entry as
/// `packages[i]` and the field and rule it breaks, never the entry's text.
pub fn parse_compact_list<S: AsRef<str>>(
    family: Ecosystem,
    lines: &[S],
) -> Result<Vec<InstalledPackage>, InventoryError> {
    lines
        .iter()
        .enumerate()
        .map(|(index, line)| {
            checked_compact(family, line.as_ref())
                .map_err(|problem| InventoryError::InvalidPackage { index, problem })
        })
        .collect()
}

/// The compact lines of `packages`, in order.
pub fn to_compact_list(packages: &[InstalledPackage]) -> Vec<String> {
    packages.iter().map(InstalledPackage::to_compact).collect()
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

/// Reads dpkg's status file (`/var/lib/dpkg/status`): RFC 822-style stanzas
/// separated by blank lines, continuation lines starting with a space or tab,
/// field names case-insensitive, unknown fields ignored. A stanza counts when
/// its `Status:` state is `installed` (see the module's decisions); its
/// `Source:` is `name` or `name (version)`.
pub fn parse_dpkg_status(text: &str) -> Result<Vec<InstalledPackage>, InventoryError> {
    const FORMAT: InputFormat = InputFormat::DpkgStatus;
    let mut raws = Vec::new();
    for stanza in stanzas(text) {
        let err = |line: usize, message: String| InventoryError::Stanza {
            format: FORMAT,
            stanza: stanza.number,
            line,
            message,
        };
        let mut package = None;
        let mut version = None;
        let mut status = None;
        let mut source = None;
        let mut arch = None;
        let mut seen_field = false;
        for &(line_no, line) in &stanza.lines {
            if line.starts_with([' ', '\t']) {
                if !seen_field {
                    return Err(err(
                        line_no,
                        format!("continuation line before any field: {line:?}"),
                    ));
                }
                continue;
            }
            let Some((field, value)) = line.split_once(':') else {
                return Err(err(
                    line_no,
                    format!("expected \"Field: value\", got {line:?}"),
                ));
            };
            if field.is_empty() || field.contains(char::is_whitespace) {
                return Err(err(line_no, format!("bad field name in {line:?}")));
            }
            seen_field = true;
            let slot = if field.eq_ignore_ascii_case("Package") {
                &mut package
            } else if field.eq_ignore_ascii_case("Version") {
                &mut version
            } else if field.eq_ignore_ascii_case("Status") {
                &mut status
            } else if field.eq_ignore_ascii_case("Source") {
                &mut source
            } else if field.eq_ignore_ascii_case("Architecture") {
                &mut arch
            } else {
                continue;
            };
            if slot.is_some() {
                return Err(err(line_no, format!("duplicate {field} field")));
            }
            *slot = Some((line_no, value.trim()));
        }
        let first = stanza.first_line();
        let Some((package_line, package)) = package else {
            return Err(err(first, "missing Package field".into()));
        };
        let package =
            token(package).ok_or_else(|| err(package_line, format!("bad Package {package:?}")))?;
        let in_package = |message: String| format!("package {package:?}: {message}");
        let Some((status_line, status)) = status else {
            return Err(err(first, in_package("missing Status field".into())));
        };
        let words: Vec<&str> = status.split_ascii_whitespace().collect();
        let [_want, _flag, state] = words[..] else {
            return Err(err(
                status_line,
                in_package(format!(
                    "expected Status \"want flag state\", got {status:?}"
                )),
            ));
        };
        if state != "installed" {
            continue;
        }
        let Some((version_line, version)) = version else {
            return Err(err(first, in_package("missing Version field".into())));
        };
        let version = token(version)
            .ok_or_else(|| err(version_line, in_package(format!("bad Version {version:?}"))))?;
        let (source, source_version) = match source {
            None => (None, None),
            Some((source_line, value)) => parse_dpkg_source(value)
                .ok_or_else(|| {
                    err(
                        source_line,
                        in_package(format!(
                            "expected Source \"name\" or \"name (version)\", got {value:?}"
                        )),
                    )
                })
                .map(|(s, v)| (Some(s), v))?,
        };
        let arch = match arch {
            None => "",
            Some((arch_line, value)) => token(value)
                .ok_or_else(|| err(arch_line, in_package(format!("bad Architecture {value:?}"))))?,
        };
        raws.push(Raw::new(
            package_line,
            package,
            version,
            source,
            source_version,
            arch,
        ));
    }
    finish(FORMAT, raws)
}

/// `name` or `name (version)`.
fn parse_dpkg_source(value: &str) -> Option<(&str, Option<&str>)> {
    match value.split_once('(') {
        None => Some((token(value)?, None)),
        Some((name, rest)) => {
            let version = rest.trim_end().strip_suffix(')')?;
            if version.contains(['(', ')']) {
                return None;
            }
            Some((token(name)?, Some(token(version)?)))
        }
    }
}

/// Reads the output of [`DPKG_QUERY_COMMAND`]: six tab-separated fields a
/// line; a row counts when its status abbreviation's second letter is `i`
/// (state installed: `ii `, `hi `, `ri `...). Blank lines are ignored.
pub fn parse_dpkg_query(text: &str) -> Result<Vec<InstalledPackage>, InventoryError> {
    const FORMAT: InputFormat = InputFormat::DpkgQuery;
    let mut raws = Vec::new();
    for (line_no, line) in numbered_lines(text) {
        if line.trim().is_empty() {
            continue;
        }
        let err = |message: String| InventoryError::Line {
            format: FORMAT,
            line: line_no,
            message,
        };
        let fields: Vec<&str> = line.split('\t').collect();
        let [abbrev, package, version, source, source_version, arch] = fields[..] else {
            return Err(err(format!(
                "expected 6 tab-separated fields \
                 (status, package, version, source, source version, architecture), \
                 got {} in {line:?}",
                fields.len()
            )));
        };
        let abbrev_bytes = abbrev.as_bytes();
        if !(2..=3).contains(&abbrev_bytes.len())
            || !abbrev_bytes[..2].iter().all(u8::is_ascii_alphabetic)
        {
            return Err(err(format!(
                "expected a status abbreviation like \"ii \", got {abbrev:?}"
            )));
        }
        if abbrev_bytes[1] != b'i' {
            continue;
        }
        let package = token(package).ok_or_else(|| err(format!("bad package {package:?}")))?;
        let in_package = |message: String| err(format!("package {package:?}: {message}"));
        let version =
            token(version).ok_or_else(|| in_package(format!("bad version {version:?}")))?;
        let source = optional_token(source)
            .ok_or_else(|| in_package(format!("bad source package {source:?}")))?;
        let source_version = optional_token(source_version)
            .ok_or_else(|| in_package(format!("bad source version {source_version:?}")))?;
        let arch =
            optional_token(arch).ok_or_else(|| in_package(format!("bad architecture {arch:?}")))?;
        raws.push(Raw::new(
            line_no,
            package,
            version,
            source,
            source_version,
            arch.unwrap_or(""),
        ));
    }
    finish(FORMAT, raws)
}

/// Reads the output of [`RPM_QA_COMMAND`]: `NAME`, `EPOCHNUM:VERSION-RELEASE`,
/// `SOURCERPM`, `ARCH`, tab-separated. The version drops a `0:` (or
/// `(none):`) epoch; a version with no `:` is taken as `VERSION-RELEASE`.
/// `SOURCERPM` (`openssl-3.0.7-27.el9.src.rpm`) gives the source name and
/// version-release, read from the right. gpg-pubkey rows are skipped.
pub fn parse_rpm_qa(text: &str) -> Result<Vec<InstalledPackage>, InventoryError> {
    const FORMAT: InputFormat = InputFormat::RpmQa;
    let mut raws = Vec::new();
    for (line_no, line) in numbered_lines(text) {
        if line.trim().is_empty() {
            continue;
        }
        let err = |message: String| InventoryError::Line {
            format: FORMAT,
            line: line_no,
            message,
        };
        let fields: Vec<&str> = line.split('\t').collect();
        let [name, evr, source_rpm, arch] = fields[..] else {
            return Err(err(format!(
                "expected 4 tab-separated fields (name, epoch:version-release, source rpm, arch), \
                 got {} in {line:?}",
                fields.len()
            )));
        };
        let name = token(name).ok_or_else(|| err(format!("bad name {name:?}")))?;
        if name == "gpg-pubkey" {
            continue;
        }
        let in_package = |message: String| err(format!("package {name:?}: {message}"));
        let bad_evr = || {
            in_package(format!(
                "expected version \"[epoch:]version-release\", got {evr:?}"
            ))
        };
        let (epoch, version_release) = match evr.trim().split_once(':') {
            None => (None, evr.trim()),
            Some((epoch, vr)) => {
                let epoch = epoch.trim();
                if epoch.is_empty() || epoch == "(none)" || epoch.bytes().all(|b| b == b'0') {
                    (None, vr)
                } else if epoch.bytes().all(|b| b.is_ascii_digit()) {
                    (Some(epoch), vr)
                } else {
                    return Err(bad_evr());
                }
            }
        };
        let version_release = token(version_release)
            .filter(|vr| !vr.contains(':'))
            .ok_or_else(bad_evr)?;
        let with_epoch = |vr: &str| match epoch {
            Some(e) => format!("{e}:{vr}"),
            None => vr.to_owned(),
        };
        let version = with_epoch(version_release);
        let source_rpm = source_rpm.trim();
        let (source, source_version) = if source_rpm.is_empty() || source_rpm == "(none)" {
            (None, None)
        } else {
            let (source, source_vr) = parse_source_rpm(source_rpm).ok_or_else(|| {
                in_package(format!(
                    "expected source rpm \"name-version-release.src.rpm\", got {source_rpm:?}"
                ))
            })?;
            (Some(source), Some(with_epoch(source_vr)))
        };
        let arch = match arch.trim() {
            "(none)" => "",
            a => optional_token(a)
                .ok_or_else(|| in_package(format!("bad arch {arch:?}")))?
                .unwrap_or(""),
        };
        raws.push(Raw {
            package: InstalledPackage::new(
                name,
                version,
                source.map(str::to_owned),
                source_version,
            ),
            arch: arch.to_owned(),
            line: line_no,
        });
    }
    finish(FORMAT, raws)
}

/// `openssl-3.0.7-27.el9.src.rpm` → (`openssl`, `3.0.7-27.el9`).
fn parse_source_rpm(file: &str) -> Option<(&str, &str)> {
    let nvr = token(file)?;
    let nvr = nvr
        .strip_suffix(".src.rpm")
        .or_else(|| nvr.strip_suffix(".nosrc.rpm"))?;
    let (nv, release) = nvr.rsplit_once('-')?;
    let (name, version) = nv.rsplit_once('-')?;
    if name.is_empty() || version.is_empty() || release.is_empty() {
        return None;
    }
    Some((name, &nvr[name.len() + 1..]))
}

/// Reads Alpine's `/lib/apk/db/installed`: stanzas of `X:value` lines
/// separated by blank lines; `P:` name, `V:` version, `o:` origin (the
/// source package), `A:` architecture; other keys (files, checksums,
/// dependencies...) are ignored.
pub fn parse_apk_installed(text: &str) -> Result<Vec<InstalledPackage>, InventoryError> {
    const FORMAT: InputFormat = InputFormat::ApkInstalled;
    let mut raws = Vec::new();
    for stanza in stanzas(text) {
        let err = |line: usize, message: String| InventoryError::Stanza {
            format: FORMAT,
            stanza: stanza.number,
            line,
            message,
        };
        let mut name = None;
        let mut version = None;
        let mut origin = None;
        let mut arch = None;
        for &(line_no, line) in &stanza.lines {
            let bytes = line.as_bytes();
            if bytes.len() < 2 || !bytes[0].is_ascii_alphanumeric() || bytes[1] != b':' {
                return Err(err(line_no, format!("expected \"X:value\", got {line:?}")));
            }
            let slot = match bytes[0] {
                b'P' => &mut name,
                b'V' => &mut version,
                b'o' => &mut origin,
                b'A' => &mut arch,
                _ => continue,
            };
            if slot.is_some() {
                return Err(err(line_no, format!("duplicate {}: line", &line[..1])));
            }
            *slot = Some((line_no, &line[2..]));
        }
        let first = stanza.first_line();
        let Some((name_line, name)) = name else {
            return Err(err(first, "missing P: (package name)".into()));
        };
        let name = token(name).ok_or_else(|| err(name_line, format!("bad P: {name:?}")))?;
        let in_package = |message: String| format!("package {name:?}: {message}");
        let Some((version_line, version)) = version else {
            return Err(err(first, in_package("missing V: (version)".into())));
        };
        let version = token(version)
            .ok_or_else(|| err(version_line, in_package(format!("bad V: {version:?}"))))?;
        let origin = match origin {
            None => None,
            Some((line, value)) => optional_token(value)
                .ok_or_else(|| err(line, in_package(format!("bad o: {value:?}"))))?,
        };
        let arch = match arch {
            None => None,
            Some((line, value)) => optional_token(value)
                .ok_or_else(|| err(line, in_package(format!("bad A: {value:?}"))))?,
        };
        raws.push(Raw::new(
            name_line,
            name,
            version,
            origin,
            None,
            arch.unwrap_or(""),
        ));
    }
    finish(FORMAT, raws)
}

/// A parsed package and its architecture, before multi-arch qualification,
/// with the line it was read from.
struct Raw {
    package: InstalledPackage,
    arch: String,
    line: usize,
}

impl Raw {
    fn new(
        line: usize,
        name: &str,
        version: &str,
        source: Option<&str>,
        source_version: Option<&str>,
        arch: &str,
    ) -> Self {
        Raw {
            package: InstalledPackage::new(
                name,
                version,
                source.map(str::to_owned),
                source_version.map(str::to_owned),
            ),
            arch: arch.to_owned(),
            line,
        }
    }

    /// Holds the name, architecture, source and versions to the family's
    /// grammar; the error names the line and the field, not the value.
    fn check(&self, format: InputFormat) -> Result<(), InventoryError> {
        let family = format.family();
        let p = &self.package;
        let field = |what: &str, result: Result<(), Rejection>| {
            result.map_err(|r| InventoryError::Line {
                format,
                line: self.line,
                message: format!("{what} {r}"),
            })
        };
        field("package name", check_name(family, &p.name))?;
        field("version", check_version(family, &p.version))?;
        if let Some(source) = &p.source {
            field("source package name", check_name(family, source))?;
        }
        if let Some(source_version) = &p.source_version {
            field("source version", check_version(family, source_version))?;
        }
        if !self.arch.is_empty() {
            field("package", check_arch(family, &self.arch))?;
        }
        Ok(())
    }
}

/// Checks every package against the format's grammar, qualifies names
/// installed for more than one architecture with `:ARCH`, merges equal
/// entries and sorts.
fn finish(format: InputFormat, raws: Vec<Raw>) -> Result<Vec<InstalledPackage>, InventoryError> {
    for raw in &raws {
        raw.check(format)?;
    }
    let mut arches: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
    for raw in &raws {
        if !raw.arch.is_empty() {
            arches
                .entry(&*raw.package.name)
                .or_default()
                .insert(raw.arch.as_str());
        }
    }
    let multi: BTreeSet<String> = arches
        .into_iter()
        .filter(|(_, set)| set.len() > 1)
        .map(|(name, _)| name.to_owned())
        .collect();
    let mut out: Vec<InstalledPackage> = raws
        .into_iter()
        .map(
            |Raw {
                 mut package, arch, ..
             }| {
                if !arch.is_empty() && multi.contains(&*package.name) {
                    package.source = Some(package.source_name().into());
                    package.name = format!("{}:{arch}", package.name).into();
                }
                package.normalized()
            },
        )
        .collect();
    out.sort();
    out.dedup();
    Ok(out)
}

/// A value that is one non-empty token without whitespace or control
/// characters, trimmed.
fn token(value: &str) -> Option<&str> {
    let value = value.trim();
    (!value.is_empty() && !value.chars().any(|c| c.is_whitespace() || c.is_control()))
        .then_some(value)
}

/// `Some(None)` for an empty value, `Some(Some(token))` for a valid token,
/// `None` for an invalid one.
fn optional_token(value: &str) -> Option<Option<&str>> {
    if value.trim().is_empty() {
        Some(None)
    } else {
        token(value).map(Some)
    }
}

/// Lines numbered from 1, without `\n` or `\r\n`.
fn numbered_lines(text: &str) -> impl Iterator<Item = (usize, &str)> {
    text.split('\n')
        .map(|l| l.strip_suffix('\r').unwrap_or(l))
        .enumerate()
        .map(|(i, l)| (i + 1, l))
}

/// A blank-line-separated paragraph.
struct Stanza<'a> {
    /// 1-based.
    number: usize,
    /// Non-blank lines with their 1-based line numbers; never empty.
    lines: Vec<(usize, &'a str)>,
}

impl Stanza<'_> {
    fn first_line(&self) -> usize {
        self.lines.first().map_or(0, |&(n, _)| n)
    }
}

/// Splits `text` into paragraphs at lines that are empty or whitespace only.
fn stanzas(text: &str) -> Vec<Stanza<'_>> {
    let mut out: Vec<Stanza<'_>> = Vec::new();
    let mut current = Vec::new();
    for (line_no, line) in numbered_lines(text) {
        if line.trim().is_empty() {
            if !current.is_empty() {
                out.push(Stanza {
                    number: out.len() + 1,
                    lines: std::mem::take(&mut current),
                });
            }
        } else {
            current.push((line_no, line));
        }
    }
    if !current.is_empty() {
        out.push(Stanza {
            number: out.len() + 1,
            lines: current,
        });
    }
    out
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
    fn source_rpm_names() {
        let cases: &[(&str, Option<(&str, &str)>)] = &[
            (
                "openssl-3.0.7-27.el9.src.rpm",
                Some(("openssl", "3.0.7-27.el9")),
            ),
            (
                "python3.11-3.11.7-1.el9.src.rpm",
                Some(("python3.11", "3.11.7-1.el9")),
            ),
            (
                "xorg-x11-server-Xwayland-22.1.9-5.el9.src.rpm",
                Some(("xorg-x11-server-Xwayland", "22.1.9-5.el9")),
            ),
            ("foo-1-2.nosrc.rpm", Some(("foo", "1-2"))),
            ("foo-1-2.x86_64.rpm", None),
            ("foo-1.src.rpm", None),
            ("-1-2.src.rpm", None),
            ("foo--2.src.rpm", None),
            ("foo-1-.src.rpm", None),
            (".src.rpm", None),
        ];
        for (file, want) in cases {
            assert_eq!(parse_source_rpm(file), *want, "{file}");
        }
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
