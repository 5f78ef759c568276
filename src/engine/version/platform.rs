//! Platform strings (`Debian:12`, `Alpine:v3.20`, a Red Hat CPE, ...): the
//! distribution they name, its version family, and the OSV ecosystem string
//! its advisories are published under.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use super::{Ecosystem, VersionError, all_digits, quoted_part};

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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::version::Ecosystem;

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
}
