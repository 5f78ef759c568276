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
//!
//! Layout: this file holds what every family shares (the [`Ecosystem`]
//! names, [`VersionError`], [`Version`] and the common character checks);
//! `dpkg.rs`, `rpm.rs` and `apk.rs` hold one family each, and `platform.rs`
//! the platform strings.
mod apk;
mod dpkg;
mod platform;
mod rpm;

use std::cmp::Ordering;
use std::fmt;

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

pub use apk::{ApkVersion, apk_version_compare};
pub use dpkg::DpkgVersion;
pub use platform::{Distribution, Platform, osv_ecosystem, parse_platform};
pub use rpm::RpmVersion;

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

fn all_digits(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit())
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

/// The message of parsing `s` as a `family` version, for tests that hold
/// messages to their wording.
#[cfg(test)]
fn err(family: Ecosystem, s: &str) -> String {
    match parse_version(family, s) {
        Ok(v) => panic!("{s:?} parsed as {family} version {v:?}"),
        Err(e) => e.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
    fn long_inputs_are_shortened_in_messages() {
        let long = format!("{}_", "x".repeat(9_999));
        let e = err(Ecosystem::Dpkg, &long);
        assert!(e.len() < 400, "{e}");
        assert!(e.contains("10000 bytes in all"), "{e}");
    }
}
