//! Version ordering per package ecosystem, and the platform strings that
//! select one.
//!
//! Deciding whether a machine is patched comes down to one question: is the
//! installed version of a package lower than the version an advisory says
//! fixes it? Each package family answers that with its own rules, and getting
//! them subtly wrong turns into false "compliant" verdicts, so this module
//! delegates to the reference algorithms and documents every place where it
//! is stricter than the tools themselves:
//!
//! - **dpkg** (Debian, Ubuntu): ordering from the `debversion` crate, which
//!   implements dpkg's `verrevcmp`. The *split* of a string into epoch,
//!   upstream version and revision is done here, following dpkg's
//!   `parseversion`, because `debversion`'s own parser accepts strings dpkg
//!   rejects (`"1:"`, `"1.0-"`, `"1.0:2"`); and one ordering bug of
//!   `debversion` 0.5.5 is corrected (a missing trailing number must equal
//!   0: dpkg has `2.0+dfsg-11 > 2.0+dfsg0-1`, see [`DpkgVersion`]).
//! - **rpm** (RHEL, AlmaLinux, Rocky, Fedora, SUSE, ...): segment ordering from
//!   the `rpm-version` crate, which implements `rpmvercmp`. The split into
//!   epoch, version and release is done here, following rpm's `parseEVR`, and
//!   an *absent* release is handled here too: rpm (`labelCompare`,
//!   `rpm.ver`) orders a missing release below every present one, while
//!   `rpm-version` models a missing release as `""`, which sorts *above* a
//!   release beginning with `~`.
//! - **apk** (Alpine): implemented here, following apk-tools' `version.c`
//!   (the token-based comparator of apk-tools 3, which also supports the
//!   `~hash` component).
//!
//! Versions of different families have unrelated orderings, so [`Version`]
//! deliberately has no `PartialOrd`: comparing goes through
//! [`Version::compare`], which returns [`VersionError::MixedFamilies`] for a
//! mixed pair. Within one family, [`DpkgVersion`], [`RpmVersion`] and
//! [`ApkVersion`] are `Ord`.
//!
//! Nothing here does I/O, and nothing panics on any input.

use std::cmp::Ordering;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// The version-ordering family of a package ecosystem.
///
/// This names the *ordering rules*, not the distribution: Debian and Ubuntu
/// share [`Ecosystem::Dpkg`], every RPM-based distribution shares
/// [`Ecosystem::Rpm`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Ecosystem {
    /// Debian package versions, ordered as `dpkg --compare-versions` does.
    Dpkg,
    /// RPM epoch:version-release strings, ordered as `rpm`'s `labelCompare` does.
    Rpm,
    /// Alpine package versions, ordered as `apk version -t` does.
    Apk,
}

impl Ecosystem {
    /// Every family, for iteration in tests and diagnostics.
    pub const ALL: [Ecosystem; 3] = [Ecosystem::Dpkg, Ecosystem::Rpm, Ecosystem::Apk];

    /// The lowercase name, identical to the serde form.
    pub fn as_str(self) -> &'static str {
        match self {
            Ecosystem::Dpkg => "dpkg",
            Ecosystem::Rpm => "rpm",
            Ecosystem::Apk => "apk",
        }
    }
}

impl fmt::Display for Ecosystem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Everything that can go wrong parsing a version or a platform string.
///
/// Messages quote the offending input (escaped, and shortened when huge) so a
/// status condition or log line points straight at the bad value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VersionError {
    /// The string is not a valid version of the family.
    #[error("invalid {family} version {}: {reason}", quoted(.input))]
    InvalidVersion {
        /// The family whose grammar was applied.
        family: Ecosystem,
        /// The rejected string.
        input: String,
        /// What is wrong with it.
        reason: String,
    },
    /// Two versions of different families were compared.
    #[error(
        "cannot compare {left} version {} with {right} version {}: different package families have unrelated orderings",
        quoted(.left_input),
        quoted(.right_input)
    )]
    MixedFamilies {
        /// Family of the left operand.
        left: Ecosystem,
        /// The left operand.
        left_input: String,
        /// Family of the right operand.
        right: Ecosystem,
        /// The right operand.
        right_input: String,
    },
    /// The distribution part of a platform string is not one we know.
    #[error(
        "unknown distribution {} in platform {}: expected one of {}",
        quoted_part(.distribution),
        quoted(.input),
        KNOWN_DISTRIBUTIONS
    )]
    UnknownDistribution {
        /// The whole platform string.
        input: String,
        /// The part before the first `:`.
        distribution: String,
    },
    /// The platform string names a distribution but no release.
    #[error("platform {} names no release: expected e.g. {}", quoted(.input), quoted(.example))]
    MissingRelease {
        /// The whole platform string.
        input: String,
        /// A valid platform string for the same distribution.
        example: &'static str,
    },
    /// The release part of a platform string is malformed for its distribution.
    #[error("invalid release {} in platform {}: {reason}", quoted_part(.release), quoted(.input))]
    InvalidRelease {
        /// The whole platform string.
        input: String,
        /// The part after the first `:`.
        release: String,
        /// What is wrong with it.
        reason: String,
    },
}

/// Shows a user-supplied string in an error message: Rust-escaped (so control
/// characters and quotes cannot garble a log line) and cut after `limit`
/// characters, so a pathological input cannot flood a status condition.
struct Quoted<'a> {
    text: &'a str,
    limit: usize,
}

/// A whole input, quoted for an error message.
fn quoted(text: &str) -> Quoted<'_> {
    Quoted { text, limit: 200 }
}

/// A part of an input, quoted more briefly (the whole input is shown too).
fn quoted_part(text: &str) -> Quoted<'_> {
    Quoted { text, limit: 40 }
}

impl fmt::Display for Quoted<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.text.char_indices().nth(self.limit) {
            None => write!(f, "{:?}", self.text),
            Some((cut, _)) => write!(
                f,
                "{:?}… ({} bytes in all)",
                &self.text[..cut],
                self.text.len()
            ),
        }
    }
}

const KNOWN_DISTRIBUTIONS: &str = "Debian, Ubuntu, AlmaLinux, Rocky Linux, Red Hat, Fedora, CentOS, Oracle Linux, openSUSE, SUSE, Mageia, Photon OS, openEuler, Azure Linux, Alpine";

// ---------------------------------------------------------------------------
// Platforms
// ---------------------------------------------------------------------------

/// A Linux distribution we can map to a version family and an OSV ecosystem.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Distribution {
    /// Debian (`Debian:12`).
    Debian,
    /// Ubuntu (`Ubuntu:22.04:LTS`, `Ubuntu:Pro:18.04:LTS`, `Ubuntu:24.10`).
    Ubuntu,
    /// AlmaLinux (`AlmaLinux:9`).
    AlmaLinux,
    /// Rocky Linux (`Rocky Linux:9`).
    RockyLinux,
    /// Red Hat Enterprise Linux and other Red Hat products, scoped by CPE
    /// (`Red Hat:enterprise_linux:9::appstream`).
    RedHat,
    /// Fedora (`Fedora:40`); OSV publishes no Fedora ecosystem.
    Fedora,
    /// CentOS (`CentOS:7`); OSV publishes no CentOS ecosystem.
    CentOs,
    /// Oracle Linux (`Oracle Linux:9`); OSV publishes no Oracle Linux ecosystem.
    OracleLinux,
    /// openSUSE (`openSUSE:Leap 15.5`, `openSUSE:Tumbleweed`).
    OpenSuse,
    /// SUSE products (`SUSE:Linux Enterprise Server 15 SP5`).
    Suse,
    /// Mageia (`Mageia:9`).
    Mageia,
    /// Photon OS (`Photon OS:5.0`).
    PhotonOs,
    /// openEuler (`openEuler:24.03-LTS`).
    OpenEuler,
    /// Azure Linux (`Azure Linux:3`).
    AzureLinux,
    /// Alpine Linux (`Alpine:v3.20`).
    Alpine,
}

impl Distribution {
    const ALL: [Distribution; 15] = [
        Distribution::Debian,
        Distribution::Ubuntu,
        Distribution::AlmaLinux,
        Distribution::RockyLinux,
        Distribution::RedHat,
        Distribution::Fedora,
        Distribution::CentOs,
        Distribution::OracleLinux,
        Distribution::OpenSuse,
        Distribution::Suse,
        Distribution::Mageia,
        Distribution::PhotonOs,
        Distribution::OpenEuler,
        Distribution::AzureLinux,
        Distribution::Alpine,
    ];

    /// The spelling OSV uses as the ecosystem prefix (before the `:`).
    pub fn osv_name(self) -> &'static str {
        match self {
            Distribution::Debian => "Debian",
            Distribution::Ubuntu => "Ubuntu",
            Distribution::AlmaLinux => "AlmaLinux",
            Distribution::RockyLinux => "Rocky Linux",
            Distribution::RedHat => "Red Hat",
            Distribution::Fedora => "Fedora",
            Distribution::CentOs => "CentOS",
            Distribution::OracleLinux => "Oracle Linux",
            Distribution::OpenSuse => "openSUSE",
            Distribution::Suse => "SUSE",
            Distribution::Mageia => "Mageia",
            Distribution::PhotonOs => "Photon OS",
            Distribution::OpenEuler => "openEuler",
            Distribution::AzureLinux => "Azure Linux",
            Distribution::Alpine => "Alpine",
        }
    }

    /// The version-ordering family the distribution's package manager uses.
    pub fn family(self) -> Ecosystem {
        match self {
            Distribution::Debian | Distribution::Ubuntu => Ecosystem::Dpkg,
            Distribution::Alpine => Ecosystem::Apk,
            Distribution::AlmaLinux
            | Distribution::RockyLinux
            | Distribution::RedHat
            | Distribution::Fedora
            | Distribution::CentOs
            | Distribution::OracleLinux
            | Distribution::OpenSuse
            | Distribution::Suse
            | Distribution::Mageia
            | Distribution::PhotonOs
            | Distribution::OpenEuler
            | Distribution::AzureLinux => Ecosystem::Rpm,
        }
    }

    /// Whether OSV publishes advisories under this distribution's name; for
    /// the others a lookup by [`Platform::osv_ecosystem`] finds nothing, which
    /// callers should report rather than read as "no known vulnerabilities".
    pub fn in_osv(self) -> bool {
        !matches!(
            self,
            Distribution::Fedora | Distribution::CentOs | Distribution::OracleLinux
        )
    }

    fn example(self) -> &'static str {
        match self {
            Distribution::Debian => "Debian:12",
            Distribution::Ubuntu => "Ubuntu:22.04:LTS",
            Distribution::AlmaLinux => "AlmaLinux:9",
            Distribution::RockyLinux => "Rocky Linux:9",
            Distribution::RedHat => "Red Hat:enterprise_linux:9::appstream",
            Distribution::Fedora => "Fedora:40",
            Distribution::CentOs => "CentOS:7",
            Distribution::OracleLinux => "Oracle Linux:9",
            Distribution::OpenSuse => "openSUSE:Leap 15.5",
            Distribution::Suse => "SUSE:Linux Enterprise Server 15 SP5",
            Distribution::Mageia => "Mageia:9",
            Distribution::PhotonOs => "Photon OS:5.0",
            Distribution::OpenEuler => "openEuler:24.03-LTS",
            Distribution::AzureLinux => "Azure Linux:3",
            Distribution::Alpine => "Alpine:v3.20",
        }
    }

    /// Matches a distribution name ignoring case, spaces, `-` and `_`, so
    /// `rocky linux`, `RockyLinux` and `Rocky-Linux` all mean OSV's
    /// `Rocky Linux`.
    fn from_name(name: &str) -> Option<Distribution> {
        fn squash(s: &str) -> String {
            s.chars()
                .filter(|c| !matches!(c, ' ' | '-' | '_'))
                .flat_map(char::to_lowercase)
                .collect()
        }
        let wanted = squash(name);
        Distribution::ALL
            .into_iter()
            .find(|d| squash(d.osv_name()) == wanted)
    }
}

impl fmt::Display for Distribution {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.osv_name())
    }
}

/// A parsed platform string: which distribution release a machine or template
/// runs, which version family orders its packages, and under which OSV
/// ecosystem its advisories are published.
///
/// Platform strings use OSV ecosystem naming (`Debian:12`,
/// `Ubuntu:22.04:LTS`, `Red Hat:enterprise_linux:9::appstream`,
/// `Alpine:v3.20`, ...). [`parse_platform`] also accepts a few everyday
/// spellings and normalises them to the exact OSV key, because a key that is
/// off by one character silently matches no advisory.
///
/// Serialises as its normalised string.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Platform {
    /// The normalised OSV ecosystem string, e.g. `"Debian:12"`. This is the
    /// value OSV records carry in `affected[].package.ecosystem`.
    pub ecosystem_name: String,
    /// The version-ordering family.
    pub family: Ecosystem,
    /// The distribution.
    pub distribution: Distribution,
    /// The normalised part after the distribution name, e.g. `"22.04:LTS"`.
    pub release: String,
}

impl Platform {
    /// The OSV ecosystem key under which advisories for this platform are
    /// published (`affected[].package.ecosystem`).
    ///
    /// For Red Hat the key names one product stream (a CPE such as
    /// `enterprise_linux:9::appstream`); a RHEL machine draws packages from
    /// several streams, so callers should hold one platform per stream.
    pub fn osv_ecosystem(&self) -> &str {
        &self.ecosystem_name
    }
}

impl fmt::Display for Platform {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.ecosystem_name)
    }
}

impl FromStr for Platform {
    type Err = VersionError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        parse_platform(s)
    }
}

impl TryFrom<String> for Platform {
    type Error = VersionError;

    fn try_from(s: String) -> Result<Self, Self::Error> {
        parse_platform(&s)
    }
}

impl From<Platform> for String {
    fn from(p: Platform) -> String {
        p.ecosystem_name
    }
}

/// Parses a platform string in OSV ecosystem naming and normalises it.
///
/// Accepted, with their normalised form:
///
/// | input | normalised |
/// | --- | --- |
/// | `Debian:12`, `Debian:12.5`, `debian:bookworm` | `Debian:12` |
/// | `Ubuntu:22.04:LTS`, `Ubuntu:22.04`, `Ubuntu:22.04.4` | `Ubuntu:22.04:LTS` |
/// | `Ubuntu:Pro:18.04:LTS`, `Ubuntu:Pro:18.04` | `Ubuntu:Pro:18.04:LTS` |
/// | `Ubuntu:24.10` | `Ubuntu:24.10` |
/// | `AlmaLinux:9`, `AlmaLinux:9.4` | `AlmaLinux:9` (same for Rocky Linux, Fedora, CentOS, Oracle Linux, Mageia, Azure Linux) |
/// | `Red Hat:enterprise_linux:9::appstream` | unchanged (the CPE is kept verbatim) |
/// | `openSUSE:Leap 15.5`, `SUSE:Linux Enterprise Server 15 SP5` | unchanged (OSV uses the os-release `PRETTY_NAME`) |
/// | `Photon OS:5.0`, `Photon OS:5` | `Photon OS:5.0` |
/// | `openEuler:24.03-LTS` | unchanged |
/// | `Alpine:v3.20`, `Alpine:3.20`, `Alpine:3.20.3` | `Alpine:v3.20` |
///
/// An unknown distribution, a missing release, or a release that cannot be
/// right (Ubuntu `23.10:LTS`, Alpine `edge`) is an error naming the value.
pub fn parse_platform(s: &str) -> Result<Platform, VersionError> {
    let trimmed = s.trim();
    let (name, release) = match trimmed.split_once(':') {
        Some((name, release)) => (name.trim(), release.trim()),
        None => (trimmed, ""),
    };
    let distribution =
        Distribution::from_name(name).ok_or_else(|| VersionError::UnknownDistribution {
            input: s.to_owned(),
            distribution: name.to_owned(),
        })?;
    if release.is_empty() {
        return Err(VersionError::MissingRelease {
            input: s.to_owned(),
            example: distribution.example(),
        });
    }
    let invalid = |reason: String| VersionError::InvalidRelease {
        input: s.to_owned(),
        release: release.to_owned(),
        reason,
    };
    let release = match distribution {
        Distribution::Debian => normalise_debian(release).map_err(invalid)?,
        Distribution::Ubuntu => normalise_ubuntu(release).map_err(invalid)?,
        Distribution::AlmaLinux
        | Distribution::RockyLinux
        | Distribution::Fedora
        | Distribution::CentOs
        | Distribution::OracleLinux
        | Distribution::Mageia
        | Distribution::AzureLinux => major_release(release).map_err(invalid)?,
        Distribution::PhotonOs => normalise_photon(release).map_err(invalid)?,
        Distribution::RedHat => validate_red_hat_cpe(release).map_err(invalid)?,
        Distribution::Alpine => normalise_alpine(release).map_err(invalid)?,
        Distribution::OpenSuse | Distribution::Suse | Distribution::OpenEuler => {
            if release.chars().any(char::is_control) {
                return Err(invalid("contains control characters".to_owned()));
            }
            release.to_owned()
        }
    };
    Ok(Platform {
        ecosystem_name: format!("{}:{}", distribution.osv_name(), release),
        family: distribution.family(),
        distribution,
        release,
    })
}

/// The OSV ecosystem key (`affected[].package.ecosystem`) for a platform
/// string: the platform string normalised by [`parse_platform`].
pub fn osv_ecosystem(platform: &str) -> Result<String, VersionError> {
    parse_platform(platform).map(|p| p.ecosystem_name)
}

fn all_digits(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit())
}

/// Splits `N`, `N.M`, `N.M.P`... into numeric components (at least one).
fn numeric_components(s: &str) -> Option<Vec<&str>> {
    let parts: Vec<&str> = s.split('.').collect();
    parts.iter().all(|p| all_digits(p)).then_some(parts)
}

/// OSV scopes Debian by major release (`Debian:12`), so point releases and
/// codenames are folded onto it.
fn normalise_debian(release: &str) -> Result<String, String> {
    const CODENAMES: [(&str, &str); 9] = [
        ("wheezy", "7"),
        ("jessie", "8"),
        ("stretch", "9"),
        ("buster", "10"),
        ("bullseye", "11"),
        ("bookworm", "12"),
        ("trixie", "13"),
        ("forky", "14"),
        ("duke", "15"),
    ];
    let lower = release.to_ascii_lowercase();
    if let Some((_, number)) = CODENAMES.iter().find(|(name, _)| *name == lower) {
        return Ok((*number).to_owned());
    }
    let major = match numeric_components(release).as_deref() {
        Some([major] | [major, _]) => major.trim_start_matches('0'),
        _ => {
            return Err(
                "expected a Debian release number such as \"12\" or a codename such as \"bookworm\" (OSV has no ecosystem for sid/unstable)"
                    .to_owned(),
            );
        }
    };
    if major.is_empty() {
        return Err("Debian releases start at 1".to_owned());
    }
    Ok(major.to_owned())
}

/// Ubuntu's OSV key carries a mandatory `:LTS` for LTS releases and an
/// optional `Pro:` prefix for ESM fixes. LTS releases are exactly the April
/// releases of even years (`YY.04`, YY even), so the suffix can be added, and
/// a wrong one rejected, without a table that would go stale.
fn normalise_ubuntu(release: &str) -> Result<String, String> {
    let mut parts: Vec<&str> = release.split(':').map(str::trim).collect();
    let pro = parts
        .first()
        .is_some_and(|first| first.eq_ignore_ascii_case("pro"));
    if pro {
        parts.remove(0);
    }
    let claimed_lts = match parts.as_slice() {
        [_] => false,
        [_, lts] if lts.eq_ignore_ascii_case("lts") => true,
        _ => {
            return Err(
                "expected \"YY.MM\", \"YY.MM:LTS\" or \"Pro:YY.MM:LTS\" (e.g. \"22.04:LTS\")"
                    .to_owned(),
            );
        }
    };
    let version = parts.first().copied().unwrap_or_default();
    let (year, month) = match numeric_components(version).as_deref() {
        Some([year, month] | [year, month, _]) if year.len() == 2 && month.len() == 2 => {
            (*year, *month)
        }
        _ => {
            return Err(format!(
                "expected an Ubuntu release number \"YY.MM\" (e.g. \"22.04\"), got {}",
                quoted_part(version)
            ));
        }
    };
    let is_lts = month == "04"
        && year
            .bytes()
            .last()
            .is_some_and(|d| matches!(d, b'0' | b'2' | b'4' | b'6' | b'8'));
    if claimed_lts && !is_lts {
        return Err(format!("Ubuntu {year}.{month} is not an LTS release"));
    }
    if pro && !is_lts {
        return Err(format!(
            "Ubuntu Pro covers LTS releases only; {year}.{month} is not one"
        ));
    }
    let mut out = String::new();
    if pro {
        out.push_str("Pro:");
    }
    out.push_str(year);
    out.push('.');
    out.push_str(month);
    if is_lts {
        out.push_str(":LTS");
    }
    Ok(out)
}

/// Distributions OSV scopes by major release number (`AlmaLinux:9`).
fn major_release(release: &str) -> Result<String, String> {
    match numeric_components(release) {
        Some(parts) => Ok(parts[0].to_owned()),
        None => Err("expected a release number such as \"9\" or \"9.4\"".to_owned()),
    }
}

/// OSV scopes Photon OS by `major.minor` (`Photon OS:5.0`).
fn normalise_photon(release: &str) -> Result<String, String> {
    match numeric_components(release).as_deref() {
        Some([major]) => Ok(format!("{major}.0")),
        Some([major, minor, ..]) => Ok(format!("{major}.{minor}")),
        _ => Err("expected a release number such as \"5.0\"".to_owned()),
    }
}

/// Red Hat ecosystems are CPE fragments (`enterprise_linux:9::appstream`, i.e.
/// `cpe:/a:redhat:enterprise_linux:9::appstream`), kept verbatim; this only
/// checks the product and version fields are present.
fn validate_red_hat_cpe(release: &str) -> Result<String, String> {
    let fields: Vec<&str> = release.split(':').collect();
    let product_ok = fields.first().is_some_and(|p| {
        !p.is_empty()
            && p.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
    });
    let version_ok = fields.get(1).is_some_and(|v| !v.is_empty());
    if product_ok && version_ok && !release.chars().any(|c| c.is_whitespace()) {
        Ok(release.to_owned())
    } else {
        Err("expected a Red Hat CPE fragment such as \"enterprise_linux:9::appstream\" or \"rhel_eus:9.2::baseos\"".to_owned())
    }
}

/// OSV scopes Alpine by release branch with a mandatory `v` (`Alpine:v3.20`).
fn normalise_alpine(release: &str) -> Result<String, String> {
    let bare = release
        .strip_prefix('v')
        .or_else(|| release.strip_prefix('V'))
        .unwrap_or(release);
    match numeric_components(bare).as_deref() {
        Some([major, minor, ..]) => Ok(format!("v{major}.{minor}")),
        _ => Err(
            "expected an Alpine release branch such as \"v3.20\" (OSV has no ecosystem for edge)"
                .to_owned(),
        ),
    }
}

// ---------------------------------------------------------------------------
// Versions
// ---------------------------------------------------------------------------

/// A version parsed under the rules of one family.
///
/// There is intentionally no `PartialOrd`: a `<` that quietly returned
/// `false` for a Debian version against an RPM one would read as "not
/// vulnerable". Use [`Version::compare`], or the `Ord` of the per-family
/// types.
///
/// Equality (`==`) is the family's notion of equal versions (`1.0` equals
/// `0:1.0-0` under dpkg); versions of different families are never equal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Version {
    /// A Debian package version.
    Dpkg(DpkgVersion),
    /// An RPM epoch:version-release.
    Rpm(RpmVersion),
    /// An Alpine package version.
    Apk(ApkVersion),
}

impl Version {
    /// Parses `s` under the rules of `family`; same as [`parse_version`].
    pub fn parse(family: Ecosystem, s: &str) -> Result<Version, VersionError> {
        parse_version(family, s)
    }

    /// The family whose rules this version follows.
    pub fn family(&self) -> Ecosystem {
        match self {
            Version::Dpkg(_) => Ecosystem::Dpkg,
            Version::Rpm(_) => Ecosystem::Rpm,
            Version::Apk(_) => Ecosystem::Apk,
        }
    }

    /// The string the version was parsed from.
    pub fn as_str(&self) -> &str {
        match self {
            Version::Dpkg(v) => v.as_str(),
            Version::Rpm(v) => v.as_str(),
            Version::Apk(v) => v.as_str(),
        }
    }

    /// Orders two versions of the same family; a mixed pair is
    /// [`VersionError::MixedFamilies`].
    pub fn compare(&self, other: &Version) -> Result<Ordering, VersionError> {
        match (self, other) {
            (Version::Dpkg(a), Version::Dpkg(b)) => Ok(a.cmp(b)),
            (Version::Rpm(a), Version::Rpm(b)) => Ok(a.cmp(b)),
            (Version::Apk(a), Version::Apk(b)) => Ok(a.cmp(b)),
            _ => Err(VersionError::MixedFamilies {
                left: self.family(),
                left_input: self.as_str().to_owned(),
                right: other.family(),
                right_input: other.as_str().to_owned(),
            }),
        }
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Parses `s` as a version of `family`.
pub fn parse_version(family: Ecosystem, s: &str) -> Result<Version, VersionError> {
    match family {
        Ecosystem::Dpkg => s.parse().map(Version::Dpkg),
        Ecosystem::Rpm => s.parse().map(Version::Rpm),
        Ecosystem::Apk => s.parse().map(Version::Apk),
    }
}

/// Orders two version strings of `family`. Either string being invalid is an
/// error naming it.
pub fn compare(family: Ecosystem, a: &str, b: &str) -> Result<Ordering, VersionError> {
    parse_version(family, a)?.compare(&parse_version(family, b)?)
}

fn invalid(family: Ecosystem, input: &str, reason: impl Into<String>) -> VersionError {
    VersionError::InvalidVersion {
        family,
        input: input.to_owned(),
        reason: reason.into(),
    }
}

/// Rejects what no family's version may contain, with a precise reason.
fn check_common(family: Ecosystem, s: &str) -> Result<(), VersionError> {
    if s.is_empty() {
        return Err(invalid(family, s, "version string is empty"));
    }
    if let Some(c) = s.chars().find(|c| c.is_whitespace() || c.is_control()) {
        return Err(invalid(
            family,
            s,
            format!("contains whitespace or a control character ({c:?})"),
        ));
    }
    if let Some(c) = s.chars().find(|c| !c.is_ascii()) {
        return Err(invalid(
            family,
            s,
            format!("contains a non-ASCII character ({c:?})"),
        ));
    }
    Ok(())
}

fn check_charset(
    family: Ecosystem,
    s: &str,
    part_name: &str,
    part: &str,
    extra: &str,
) -> Result<(), VersionError> {
    match part
        .chars()
        .find(|c| !c.is_ascii_alphanumeric() && !extra.contains(*c))
    {
        None => Ok(()),
        Some(c) => Err(invalid(
            family,
            s,
            format!(
                "{part_name} {} contains {c:?}; allowed are letters, digits and {}",
                quoted_part(part),
                extra
                    .chars()
                    .map(|c| format!("{c:?}"))
                    .collect::<Vec<_>>()
                    .join(" ")
            ),
        )),
    }
}

// --- dpkg ------------------------------------------------------------------

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

// --- rpm -------------------------------------------------------------------

/// An RPM `[epoch:]version[-release]`.
///
/// Parsing follows rpm's `parseEVR`: the epoch is the digits before a `:`,
/// the release is what follows the last `-`. Stricter than rpm, which never
/// rejects anything: an epoch that is empty or not a number, an empty
/// version or release, and characters rpmbuild refuses in a Version or
/// Release tag (anything but letters, digits and `. _ + ~ ^`) are errors
/// rather than being reinterpreted (rpm would read `a:1.0` as a version
/// containing a colon).
///
/// Ordering is rpm's `labelCompare`: a missing epoch is 0; epoch, version
/// and release are compared with `rpmvercmp` (from the `rpm-version` crate);
/// a missing release sorts below any present release. (rpm's dependency
/// matching instead ignores a missing release; that is a matching rule, not an
/// ordering, and is left to callers.)
#[derive(Debug, Clone)]
pub struct RpmVersion {
    raw: String,
    epoch: Option<String>,
    version: String,
    release: Option<String>,
}

impl RpmVersion {
    /// The string this version was parsed from.
    pub fn as_str(&self) -> &str {
        &self.raw
    }

    /// The epoch as written (digits), if any.
    pub fn epoch(&self) -> Option<&str> {
        self.epoch.as_deref()
    }

    /// The version part.
    pub fn version(&self) -> &str {
        &self.version
    }

    /// The release, if one was written.
    pub fn release(&self) -> Option<&str> {
        self.release.as_deref()
    }

    fn evr<'a>(&'a self, with_release: bool) -> rpm_version::Evr<'a> {
        let release = if with_release {
            self.release.as_deref().unwrap_or_default()
        } else {
            ""
        };
        rpm_version::Evr::new(
            self.epoch.as_deref().unwrap_or("0"),
            self.version.as_str(),
            release,
        )
    }
}

impl FromStr for RpmVersion {
    type Err = VersionError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        const F: Ecosystem = Ecosystem::Rpm;
        const ALLOWED: &str = "._+~^";
        check_common(F, s)?;
        let (epoch, rest) = match s.split_once(':') {
            None => (None, s),
            Some(("", _)) => return Err(invalid(F, s, "epoch is empty (nothing before ':')")),
            Some((epoch, _)) if !all_digits(epoch) => {
                return Err(invalid(
                    F,
                    s,
                    format!("epoch {} is not a number", quoted_part(epoch)),
                ));
            }
            Some((epoch, rest)) => (Some(epoch.to_owned()), rest),
        };
        let (version, release) = match rest.rsplit_once('-') {
            None => (rest, None),
            Some((_, "")) => return Err(invalid(F, s, "release is empty (trailing '-')")),
            Some((version, release)) => (version, Some(release)),
        };
        if version.is_empty() {
            return Err(invalid(F, s, "version is empty"));
        }
        check_charset(F, s, "version", version, ALLOWED)?;
        if let Some(release) = release {
            check_charset(F, s, "release", release, ALLOWED)?;
        }
        Ok(RpmVersion {
            raw: s.to_owned(),
            epoch,
            version: version.to_owned(),
            release: release.map(str::to_owned),
        })
    }
}

impl Ord for RpmVersion {
    fn cmp(&self, other: &Self) -> Ordering {
        match (self.release.is_some(), other.release.is_some()) {
            (true, true) => self.evr(true).cmp(&other.evr(true)),
            (false, false) => self.evr(false).cmp(&other.evr(false)),
            // rpm's labelCompare: an absent release is below every present
            // one, even one `rpmvercmp` would put below "" (`~1`).
            (true, false) => self
                .evr(false)
                .cmp(&other.evr(false))
                .then(Ordering::Greater),
            (false, true) => self.evr(false).cmp(&other.evr(false)).then(Ordering::Less),
        }
    }
}

impl PartialOrd for RpmVersion {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl PartialEq for RpmVersion {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}

impl Eq for RpmVersion {}

impl fmt::Display for RpmVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.raw)
    }
}

// --- apk -------------------------------------------------------------------

/// An Alpine package version:
/// `digits{.digits}[letter]{_suffix[digits]}[~hash][-rdigits]`.
///
/// Valid exactly when apk-tools' `apk_version_validate` accepts it; suffixes
/// are `alpha beta pre rc` (below the release) and `cvs svn git hg p` (above
/// it); `~hash` is lowercase hex. Ordering is apk-tools'
/// `apk_version_compare`, reimplemented token by token (see
/// [`apk_version_compare`]); it includes apk's quirks: a number component
/// with a leading zero (after the first) compares as a string
/// (`1.09 < 1.1`), and numbers wrap modulo 2^64 like apk's `uint64_t`.
#[derive(Debug, Clone)]
pub struct ApkVersion {
    raw: String,
}

impl ApkVersion {
    /// The string this version was parsed from.
    pub fn as_str(&self) -> &str {
        &self.raw
    }
}

impl FromStr for ApkVersion {
    type Err = VersionError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        const F: Ecosystem = Ecosystem::Apk;
        if s.is_empty() {
            return Err(invalid(F, s, "version string is empty"));
        }
        let mut tokens = ApkTokens::new(s.as_bytes());
        while tokens.token.kind < TokenKind::End {
            tokens.advance();
        }
        if tokens.token.kind == TokenKind::End {
            return Ok(ApkVersion { raw: s.to_owned() });
        }
        let at = tokens.token.start;
        let near: String = s.get(at..).unwrap_or_default().chars().take(12).collect();
        Err(invalid(
            F,
            s,
            format!(
                "unexpected {near:?} at byte {at}: expected digits{{.digits}}[letter]{{_alpha|_beta|_pre|_rc|_cvs|_svn|_git|_hg|_p[N]}}[~hex][-rN]"
            ),
        ))
    }
}

impl Ord for ApkVersion {
    fn cmp(&self, other: &Self) -> Ordering {
        apk_version_compare(&self.raw, &other.raw)
    }
}

impl PartialOrd for ApkVersion {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl PartialEq for ApkVersion {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}

impl Eq for ApkVersion {}

impl fmt::Display for ApkVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.raw)
    }
}

/// apk-tools' token kinds, in apk's numeric order: the order matters, since
/// apk decides "may this token follow that one" and "which version is longer"
/// by comparing kinds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum TokenKind {
    InitialDigit,
    Digit,
    Letter,
    Suffix,
    SuffixNo,
    CommitHash,
    RevisionNo,
    End,
    Invalid,
}

/// apk's suffix values: pre-release suffixes sort below `NONE`, the others
/// above.
const SUFFIX_INVALID: u8 = 0;
const SUFFIX_NONE: u8 = 5;

fn apk_suffix_value(suffix: &[u8]) -> u8 {
    match suffix {
        b"alpha" => 1,
        b"beta" => 2,
        b"pre" => 3,
        b"rc" => 4,
        b"cvs" => 6,
        b"svn" => 7,
        b"git" => 8,
        b"hg" => 9,
        b"p" => 10,
        _ => SUFFIX_INVALID,
    }
}

#[derive(Debug, Clone, Copy)]
struct Token<'a> {
    kind: TokenKind,
    suffix: u8,
    number: u64,
    value: &'a [u8],
    /// Byte offset where the token starts, for error messages.
    start: usize,
}

/// apk-tools' `token_first`/`token_next` over a byte string.
struct ApkTokens<'a> {
    input: &'a [u8],
    pos: usize,
    token: Token<'a>,
}

impl<'a> ApkTokens<'a> {
    fn new(input: &'a [u8]) -> Self {
        let mut tokens = ApkTokens {
            input,
            pos: 0,
            token: Token {
                kind: TokenKind::InitialDigit,
                suffix: SUFFIX_INVALID,
                number: 0,
                value: &[],
                start: 0,
            },
        };
        tokens.parse_digits();
        tokens
    }

    fn rest(&self) -> &'a [u8] {
        self.input.get(self.pos..).unwrap_or_default()
    }

    /// `apk_blob_pull_uint` (wrapping `uint64_t` arithmetic) plus the
    /// "no digits means invalid" rule of `token_parse_digits`.
    fn parse_digits(&mut self) {
        let rest = self.rest();
        let len = rest.iter().take_while(|b| b.is_ascii_digit()).count();
        let digits = &rest[..len];
        self.token.value = digits;
        self.token.number = digits.iter().fold(0u64, |n, d| {
            n.wrapping_mul(10).wrapping_add(u64::from(d - b'0'))
        });
        self.pos += len;
        if len == 0 {
            self.token.kind = TokenKind::Invalid;
        }
    }

    fn span(&mut self, accept: impl Fn(u8) -> bool) -> &'a [u8] {
        let rest = self.rest();
        let len = rest.iter().take_while(|b| accept(**b)).count();
        self.pos += len;
        &rest[..len]
    }

    /// `token_next`: classify by the first byte, check the token may follow
    /// the previous one, and consume it.
    fn advance(&mut self) {
        let prev = self.token.kind;
        self.token.start = self.pos;
        let Some(&first) = self.rest().first() else {
            self.token.kind = TokenKind::End;
            return;
        };
        match first {
            b'a'..=b'z' if prev <= TokenKind::Digit => {
                self.token.value = &self.rest()[..1];
                self.token.kind = TokenKind::Letter;
                self.pos += 1;
            }
            b'.' | b'0'..=b'9' if prev <= TokenKind::Digit || first != b'.' => {
                if first == b'.' {
                    self.pos += 1;
                }
                self.token.kind = match prev {
                    TokenKind::InitialDigit | TokenKind::Digit => TokenKind::Digit,
                    TokenKind::Suffix => TokenKind::SuffixNo,
                    _ => {
                        self.token.kind = TokenKind::Invalid;
                        return;
                    }
                };
                self.parse_digits();
            }
            b'_' if prev <= TokenKind::SuffixNo => {
                self.pos += 1;
                let suffix = self.span(|b| b.is_ascii_lowercase());
                self.token.value = suffix;
                self.token.suffix = apk_suffix_value(suffix);
                self.token.kind = if self.token.suffix == SUFFIX_INVALID {
                    TokenKind::Invalid
                } else {
                    TokenKind::Suffix
                };
            }
            b'~' if prev < TokenKind::CommitHash => {
                self.pos += 1;
                let hash = self.span(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
                self.token.value = hash;
                self.token.kind = if hash.is_empty() {
                    TokenKind::Invalid
                } else {
                    TokenKind::CommitHash
                };
            }
            b'-' if prev < TokenKind::RevisionNo && self.rest().starts_with(b"-r") => {
                self.pos += 2;
                self.token.kind = TokenKind::RevisionNo;
                self.parse_digits();
            }
            _ => self.token.kind = TokenKind::Invalid,
        }
    }
}

/// apk's `token_cmp`, for two tokens of the same kind.
fn apk_token_cmp(a: &Token<'_>, b: &Token<'_>) -> Ordering {
    match a.kind {
        TokenKind::Digit if a.value.first() == Some(&b'0') || b.value.first() == Some(&b'0') => {
            // A leading zero makes both compare as strings (Gentoo's rule).
            a.value.cmp(b.value)
        }
        TokenKind::Digit
        | TokenKind::InitialDigit
        | TokenKind::SuffixNo
        | TokenKind::RevisionNo => a.number.cmp(&b.number),
        TokenKind::Letter => a.value.first().cmp(&b.value.first()),
        TokenKind::Suffix => a.suffix.cmp(&b.suffix),
        // apk_blob_sort: bytewise, then shorter first.
        TokenKind::CommitHash | TokenKind::End | TokenKind::Invalid => a.value.cmp(b.value),
    }
}

/// apk-tools' `apk_version_compare`, for any two strings, valid or not.
///
/// This is the raw algorithm, kept for fidelity (and tested against
/// apk-tools' own `test/version.data`, which includes invalid versions):
/// tokens are compared pairwise until they differ or either side ends or
/// turns invalid. If both then stop at the same kind of token the versions
/// are equal (so `1.0bc` equals `1.0bd`: both turn invalid at `c`/`d`);
/// otherwise a pre-release suffix (`_alpha`, `_beta`, `_pre`, `_rc`) sorts
/// low, and otherwise the version whose next token has the lower kind sorts
/// high (a further `.digits` beats a letter beats a suffix ... beats the
/// end). On invalid input the result is not a total order; [`ApkVersion`]
/// only admits valid versions, on which it is.
pub fn apk_version_compare(a: &str, b: &str) -> Ordering {
    let mut ta = ApkTokens::new(a.as_bytes());
    let mut tb = ApkTokens::new(b.as_bytes());
    while ta.token.kind == tb.token.kind && ta.token.kind < TokenKind::End {
        let r = apk_token_cmp(&ta.token, &tb.token);
        if r != Ordering::Equal {
            return r;
        }
        ta.advance();
        tb.advance();
    }
    let (ka, kb) = (ta.token.kind, tb.token.kind);
    if ka == kb {
        return Ordering::Equal;
    }
    if ka == TokenKind::Suffix && ta.token.suffix < SUFFIX_NONE {
        return Ordering::Less;
    }
    if kb == TokenKind::Suffix && tb.token.suffix < SUFFIX_NONE {
        return Ordering::Greater;
    }
    // A higher kind (e.g. End) means "less follows", which sorts lower.
    kb.cmp(&ka)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(family: Ecosystem, s: &str) -> String {
        match parse_version(family, s) {
            Ok(v) => panic!("{s:?} parsed as {family} version {v:?}"),
            Err(e) => e.to_string(),
        }
    }

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

    #[test]
    fn rpm_parse_and_order() {
        let v: RpmVersion = "2:1.2.3-4.el9_3".parse().unwrap();
        assert_eq!(
            (v.epoch(), v.version(), v.release()),
            (Some("2"), "1.2.3", Some("4.el9_3"))
        );
        for bad in [
            "",
            ":1",
            "a:1.0",
            "1.0-",
            "-1",
            "1.0-1-2",
            "1.0%{dist}",
            "1:",
        ] {
            assert!(parse_version(Ecosystem::Rpm, bad).is_err(), "{bad:?}");
        }
        let cases = [
            ("1.0", "0:1.0", Ordering::Equal),
            ("1.0~rc1", "1.0", Ordering::Less),
            ("1.0^git1", "1.0", Ordering::Greater),
            ("1.0", "1.0-1", Ordering::Less),
            // rpm: a missing release is below even "~1"; rpm-version alone says otherwise.
            ("1.0", "1.0-~1", Ordering::Less),
            ("1.0-1.el9", "1.0-1.el9_3", Ordering::Less),
            ("1.0a", "1.0.1", Ordering::Less),
            ("01:1", "1:1", Ordering::Equal),
        ];
        for (a, b, want) in cases {
            assert_eq!(compare(Ecosystem::Rpm, a, b), Ok(want), "{a} vs {b}");
        }
        // The crate on its own, documenting why absent releases are handled here.
        assert_eq!(
            rpm_version::rpm_evr_compare("1.0", "1.0-~1"),
            Ordering::Greater
        );
    }

    #[test]
    fn apk_validity_matches_version_c() {
        for good in [
            "1",
            "1.0",
            "1.0a",
            "1.0_alpha",
            "1.0_alpha1_pre2",
            "1.0_p1-r3",
            "1.0~abc123-r0",
            "0.1",
            "1a_rc1~0f-r10",
            "18446744073709551616",
        ] {
            assert!(parse_version(Ecosystem::Apk, good).is_ok(), "{good:?}");
        }
        for bad in [
            "",
            "a",
            ".1",
            "1.",
            "1..2",
            "1a.2",
            "1ab",
            "1_foo",
            "1_",
            "1-r",
            "1-r1-r2",
            "1-1",
            "1~",
            "1~ABC",
            "1~g",
            "1-r1_p1",
            "1.0_alpha.1",
            "1A",
            "1 ",
            "1\0",
        ] {
            assert!(parse_version(Ecosystem::Apk, bad).is_err(), "{bad:?}");
        }
        assert_eq!(
            err(Ecosystem::Apk, "1.0bc"),
            "invalid apk version \"1.0bc\": unexpected \"c\" at byte 4: expected digits{.digits}[letter]{_alpha|_beta|_pre|_rc|_cvs|_svn|_git|_hg|_p[N]}[~hex][-rN]"
        );
    }

    #[test]
    fn mixed_families_are_an_error() {
        let a = parse_version(Ecosystem::Dpkg, "1.0").unwrap();
        let b = parse_version(Ecosystem::Rpm, "1.0").unwrap();
        let e = a.compare(&b).unwrap_err();
        assert!(matches!(e, VersionError::MixedFamilies { .. }));
        assert!(e.to_string().contains("dpkg version \"1.0\""), "{e}");
        assert_ne!(a, b);
    }

    #[test]
    fn platforms() {
        let cases = [
            ("Debian:12", "Debian:12", Ecosystem::Dpkg),
            ("Debian:11", "Debian:11", Ecosystem::Dpkg),
            ("debian:bookworm", "Debian:12", Ecosystem::Dpkg),
            ("Debian:12.5", "Debian:12", Ecosystem::Dpkg),
            ("Ubuntu:22.04:LTS", "Ubuntu:22.04:LTS", Ecosystem::Dpkg),
            ("Ubuntu:24.04:LTS", "Ubuntu:24.04:LTS", Ecosystem::Dpkg),
            ("Ubuntu:22.04", "Ubuntu:22.04:LTS", Ecosystem::Dpkg),
            ("Ubuntu:24.10", "Ubuntu:24.10", Ecosystem::Dpkg),
            (
                "Ubuntu:Pro:18.04:LTS",
                "Ubuntu:Pro:18.04:LTS",
                Ecosystem::Dpkg,
            ),
            ("Ubuntu:pro:16.04", "Ubuntu:Pro:16.04:LTS", Ecosystem::Dpkg),
            ("AlmaLinux:9", "AlmaLinux:9", Ecosystem::Rpm),
            ("AlmaLinux:9.4", "AlmaLinux:9", Ecosystem::Rpm),
            ("Rocky Linux:9", "Rocky Linux:9", Ecosystem::Rpm),
            ("RockyLinux:8", "Rocky Linux:8", Ecosystem::Rpm),
            (
                "Red Hat:enterprise_linux:9::appstream",
                "Red Hat:enterprise_linux:9::appstream",
                Ecosystem::Rpm,
            ),
            ("Fedora:40", "Fedora:40", Ecosystem::Rpm),
            ("openSUSE:Leap 15.5", "openSUSE:Leap 15.5", Ecosystem::Rpm),
            (
                "SUSE:Linux Enterprise Server 15 SP5",
                "SUSE:Linux Enterprise Server 15 SP5",
                Ecosystem::Rpm,
            ),
            ("CentOS:7", "CentOS:7", Ecosystem::Rpm),
            ("Oracle Linux:9", "Oracle Linux:9", Ecosystem::Rpm),
            ("Photon OS:5", "Photon OS:5.0", Ecosystem::Rpm),
            ("Alpine:v3.20", "Alpine:v3.20", Ecosystem::Apk),
            ("Alpine:3.20.3", "Alpine:v3.20", Ecosystem::Apk),
        ];
        for (input, key, family) in cases {
            let p = parse_platform(input).unwrap_or_else(|e| panic!("{input}: {e}"));
            assert_eq!((p.osv_ecosystem(), p.family), (key, family), "{input}");
            assert_eq!(osv_ecosystem(input).as_deref(), Ok(key));
            // Normalisation is idempotent.
            assert_eq!(parse_platform(key).unwrap(), p);
        }
        let errors = [
            (
                "Gentoo:2.15",
                "unknown distribution \"Gentoo\" in platform \"Gentoo:2.15\"",
            ),
            (
                "Debian",
                "platform \"Debian\" names no release: expected e.g. \"Debian:12\"",
            ),
            ("Alpine:", "platform \"Alpine:\" names no release"),
            ("Ubuntu:23.10:LTS", "Ubuntu 23.10 is not an LTS release"),
            ("Ubuntu:Pro:23.10", "Ubuntu Pro covers LTS releases only"),
            (
                "Alpine:edge",
                "invalid release \"edge\" in platform \"Alpine:edge\"",
            ),
            ("Debian:sid", "invalid release \"sid\""),
            (
                "Red Hat:9",
                "invalid release \"9\" in platform \"Red Hat:9\"",
            ),
            ("", "unknown distribution \"\""),
        ];
        for (input, want) in errors {
            let e = parse_platform(input).unwrap_err().to_string();
            assert!(e.contains(want), "{input:?}: {e}");
        }
    }

    #[test]
    fn platform_serde_round_trip() {
        let p: Platform = serde_json::from_str("\"Ubuntu:22.04\"").unwrap();
        assert_eq!(serde_json::to_string(&p).unwrap(), "\"Ubuntu:22.04:LTS\"");
        assert!(serde_json::from_str::<Platform>("\"Nope:1\"").is_err());
        assert_eq!(serde_json::to_string(&Ecosystem::Dpkg).unwrap(), "\"dpkg\"");
        assert_eq!(
            serde_json::from_str::<Ecosystem>("\"apk\"").unwrap(),
            Ecosystem::Apk
        );
    }

    #[test]
    fn long_inputs_are_shortened_in_messages() {
        let long = format!("{}_", "x".repeat(9_999));
        let e = err(Ecosystem::Dpkg, &long);
        assert!(e.len() < 400, "{e}");
        assert!(e.contains("10000 bytes in all"), "{e}");
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
