//! RPM epoch:version-release strings: rpm's `parseEVR` split and
//! `labelCompare` ordering.

use std::cmp::Ordering;
use std::fmt;
use std::str::FromStr;

use super::{
    Ecosystem, VersionError, all_digits, check_charset, check_common, invalid, quoted_part,
};

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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::version::{Ecosystem, compare, parse_version};

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
}
