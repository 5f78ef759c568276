//! `os-release(5)` → platform: which OSV ecosystem a machine's advisories
//! are published under, read from the file every current distribution
//! ships (`/etc/os-release`, else `/usr/lib/os-release`).
//!
//! The distribution comes from `ID` (never from `ID_LIKE`: a derivative such
//! as Linux Mint is not covered by its parent's advisories), the release from
//! the field the distribution's OSV ecosystem is named after; the result goes
//! through [`parse_platform`], so it is normalised exactly like a platform a
//! user writes (`Ubuntu:22.04` → `Ubuntu:22.04:LTS`, `AlmaLinux:9.4` →
//! `AlmaLinux:9`, `Alpine:3.20.3` → `Alpine:v3.20`).
//!
//! | `ID` | release from | example |
//! | --- | --- | --- |
//! | `debian`, `ubuntu`, `almalinux`, `rocky`, `fedora`, `centos`, `ol`, `mageia`, `photon`, `azurelinux`, `alpine` | `VERSION_ID` | `Debian:12` |
//! | `rhel` | `CPE_NAME` (`cpe:/o:redhat:enterprise_linux:9::baseos`) | `Red Hat:enterprise_linux:9::baseos` |
//! | `opensuse-*` | `PRETTY_NAME` without `openSUSE ` | `openSUSE:Leap 15.5` |
//! | `sles`, `sled`, `sles_sap`, `sle-micro` | `PRETTY_NAME` without `SUSE ` | `SUSE:Linux Enterprise Server 15 SP5` |
//! | `openEuler` | `VERSION_ID` and the parenthesised part of `VERSION` | `openEuler:22.03-LTS-SP1` |
//!
//! Debian testing and unstable have no `VERSION_ID` and no OSV ecosystem:
//! they are refused, like any other `ID`, with a message that asks for the
//! platform to be given explicitly.

use std::collections::BTreeMap;

use super::version::{Distribution, Platform, VersionError, parse_platform};

/// Where `os-release(5)` says to look, in order.
pub const OS_RELEASE_PATHS: [&str; 2] = ["/etc/os-release", "/usr/lib/os-release"];

/// Why no platform could be read from an os-release file.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OsReleaseError {
    /// There is no `ID=` line.
    #[error("os-release has no ID field")]
    MissingId,
    /// `ID` names a distribution without an OSV ecosystem Patchloop knows.
    #[error(
        "os-release ID {id:?} ({pretty}) is not a distribution Patchloop maps to an OSV ecosystem (known IDs: {KNOWN_IDS})"
    )]
    UnknownId {
        /// The `ID` value.
        id: String,
        /// `PRETTY_NAME`, or `NAME`, for the message.
        pretty: String,
    },
    /// The field the release comes from is missing or empty.
    #[error("os-release of {id:?} has no {field} (Debian testing/unstable have no OSV ecosystem)")]
    MissingField {
        /// The `ID` value.
        id: String,
        /// The field that was needed.
        field: &'static str,
    },
    /// The field is there but is not what the distribution writes.
    #[error("os-release of {id:?}: unexpected {field} {value:?}")]
    UnexpectedField {
        /// The `ID` value.
        id: String,
        /// The field.
        field: &'static str,
        /// Its value.
        value: String,
    },
    /// The platform built from the fields was refused by [`parse_platform`].
    #[error(transparent)]
    Platform(#[from] VersionError),
}

const KNOWN_IDS: &str = "debian, ubuntu, almalinux, rocky, rhel, fedora, centos, ol, opensuse-*, sles, sled, sles_sap, sle-micro, mageia, photon, openEuler, azurelinux, alpine";

/// Reads the `KEY=value` assignments of an os-release file. Values may be
/// unquoted, `"double-quoted"` (with `\"`, `\\`, `` \` `` and `\$` escapes)
/// or `'single-quoted'`. Comments, blank lines and lines that are not an
/// assignment are ignored, as systemd does; a later assignment wins.
pub fn parse(text: &str) -> BTreeMap<String, String> {
    let mut fields = BTreeMap::new();
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let Some((key, value)) = line.split_once('=') else {
            continue;
        };
        let key = key.trim();
        if key.is_empty() || !key.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
            continue;
        }
        fields.insert(key.to_owned(), unquote(value.trim()));
    }
    fields
}

fn unquote(value: &str) -> String {
    if let Some(inner) = value.strip_prefix('\'').and_then(|v| v.strip_suffix('\'')) {
        return inner.to_owned();
    }
    let Some(inner) = value.strip_prefix('"').and_then(|v| v.strip_suffix('"')) else {
        return value.to_owned();
    };
    let mut out = String::with_capacity(inner.len());
    let mut chars = inner.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            match chars.next() {
                Some(e @ ('"' | '\\' | '`' | '$')) => out.push(e),
                Some(other) => {
                    out.push('\\');
                    out.push(other);
                }
                None => out.push('\\'),
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// The platform the os-release `fields` describe (see the module's table).
pub fn platform(fields: &BTreeMap<String, String>) -> Result<Platform, OsReleaseError> {
    let field = |name: &str| fields.get(name).map(|v| v.trim()).filter(|v| !v.is_empty());
    let id = field("ID").ok_or(OsReleaseError::MissingId)?;
    let lower = id.to_ascii_lowercase();
    let need = |name: &'static str| {
        field(name).ok_or_else(|| OsReleaseError::MissingField {
            id: id.to_owned(),
            field: name,
        })
    };
    let unexpected = |name: &'static str, value: &str| OsReleaseError::UnexpectedField {
        id: id.to_owned(),
        field: name,
        value: value.to_owned(),
    };
    let by_version_id = |distribution: Distribution| -> Result<String, OsReleaseError> {
        Ok(format!(
            "{}:{}",
            distribution.osv_name(),
            need("VERSION_ID")?
        ))
    };
    let candidate = match lower.as_str() {
        "debian" => by_version_id(Distribution::Debian)?,
        "ubuntu" => by_version_id(Distribution::Ubuntu)?,
        "almalinux" => by_version_id(Distribution::AlmaLinux)?,
        "rocky" => by_version_id(Distribution::RockyLinux)?,
        "fedora" => by_version_id(Distribution::Fedora)?,
        "centos" => by_version_id(Distribution::CentOs)?,
        "ol" => by_version_id(Distribution::OracleLinux)?,
        "mageia" => by_version_id(Distribution::Mageia)?,
        "photon" => by_version_id(Distribution::PhotonOs)?,
        "azurelinux" => by_version_id(Distribution::AzureLinux)?,
        "alpine" => by_version_id(Distribution::Alpine)?,
        "rhel" => {
            let cpe = need("CPE_NAME")?;
            let product = cpe
                .strip_prefix("cpe:/o:redhat:")
                .ok_or_else(|| unexpected("CPE_NAME", cpe))?;
            format!("{}:{product}", Distribution::RedHat.osv_name())
        }
        "openeuler" => {
            let version_id = need("VERSION_ID")?;
            // VERSION="22.03 (LTS-SP1)" → 22.03-LTS-SP1; no parentheses: VERSION_ID.
            let qualifier = field("VERSION")
                .and_then(|v| v.split_once('(')?.1.strip_suffix(')'))
                .map(str::trim)
                .filter(|q| !q.is_empty());
            match qualifier {
                Some(q) => format!("{}:{version_id}-{q}", Distribution::OpenEuler.osv_name()),
                None => format!("{}:{version_id}", Distribution::OpenEuler.osv_name()),
            }
        }
        _ if lower.starts_with("opensuse") => {
            let pretty = need("PRETTY_NAME")?;
            let product = pretty
                .strip_prefix("openSUSE ")
                .ok_or_else(|| unexpected("PRETTY_NAME", pretty))?;
            format!("{}:{product}", Distribution::OpenSuse.osv_name())
        }
        "sles" | "sled" | "sles_sap" | "sle-micro" => {
            let pretty = need("PRETTY_NAME")?;
            let product = pretty
                .strip_prefix("SUSE ")
                .ok_or_else(|| unexpected("PRETTY_NAME", pretty))?;
            format!("{}:{product}", Distribution::Suse.osv_name())
        }
        _ => {
            return Err(OsReleaseError::UnknownId {
                id: id.to_owned(),
                pretty: field("PRETTY_NAME")
                    .or_else(|| field("NAME"))
                    .unwrap_or("no PRETTY_NAME")
                    .to_owned(),
            });
        }
    };
    Ok(parse_platform(&candidate)?)
}

/// [`parse`] then [`platform`].
pub fn platform_from_os_release(text: &str) -> Result<Platform, OsReleaseError> {
    platform(&parse(text))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn platform_of(text: &str) -> String {
        match platform_from_os_release(text) {
            Ok(p) => p.ecosystem_name,
            Err(e) => format!("error: {e}"),
        }
    }

    /// Debian 12's `/usr/lib/os-release`, as `base-files` ships it (the same
    /// text as `tests/fixtures/os-release/debian-12`).
    const DEBIAN_12: &str = r#"PRETTY_NAME="Debian GNU/Linux 12 (bookworm)"
NAME="Debian GNU/Linux"
VERSION_ID="12"
VERSION="12 (bookworm)"
VERSION_CODENAME=bookworm
ID=debian
HOME_URL="https://www.debian.org/"
SUPPORT_URL="https://www.debian.org/support"
BUG_REPORT_URL="https://bugs.debian.org/"
"#;

    #[test]
    fn debian_and_ubuntu_releases() {
        assert_eq!(platform_of(DEBIAN_12), "Debian:12");
        let ubuntu = "PRETTY_NAME=\"Ubuntu 22.04.4 LTS\"\nNAME=\"Ubuntu\"\nVERSION_ID=\"22.04\"\n\
                      VERSION=\"22.04.4 LTS (Jammy Jellyfish)\"\nVERSION_CODENAME=jammy\nID=ubuntu\n\
                      ID_LIKE=debian\nUBUNTU_CODENAME=jammy\n";
        assert_eq!(platform_of(ubuntu), "Ubuntu:22.04:LTS");
        let interim = "NAME=\"Ubuntu\"\nVERSION_ID=\"24.10\"\nID=ubuntu\n";
        assert_eq!(platform_of(interim), "Ubuntu:24.10");
    }

    #[test]
    fn debian_testing_has_no_platform() {
        let sid = "PRETTY_NAME=\"Debian GNU/Linux trixie/sid\"\nNAME=\"Debian GNU/Linux\"\n\
                   VERSION_CODENAME=trixie\nID=debian\n";
        assert_eq!(
            platform_from_os_release(sid),
            Err(OsReleaseError::MissingField {
                id: "debian".into(),
                field: "VERSION_ID"
            })
        );
    }

    #[test]
    fn rpm_distributions_keep_the_major_release() {
        let alma = "NAME=\"AlmaLinux\"\nVERSION=\"9.4 (Seafoam Ocelot)\"\nID=\"almalinux\"\n\
                    ID_LIKE=\"rhel centos fedora\"\nVERSION_ID=\"9.4\"\nPLATFORM_ID=\"platform:el9\"\n\
                    PRETTY_NAME=\"AlmaLinux 9.4 (Seafoam Ocelot)\"\n\
                    CPE_NAME=\"cpe:/o:almalinux:almalinux:9::baseos\"\n";
        assert_eq!(platform_of(alma), "AlmaLinux:9");
        let rocky =
            "NAME=\"Rocky Linux\"\nVERSION=\"9.4 (Blue Onyx)\"\nID=\"rocky\"\nVERSION_ID=\"9.4\"\n";
        assert_eq!(platform_of(rocky), "Rocky Linux:9");
        let oracle =
            "NAME=\"Oracle Linux Server\"\nVERSION=\"8.10\"\nID=\"ol\"\nVERSION_ID=\"8.10\"\n";
        assert_eq!(platform_of(oracle), "Oracle Linux:8");
        let azure = "NAME=\"Microsoft Azure Linux\"\nVERSION=\"3.0.20240727\"\nID=azurelinux\n\
                     VERSION_ID=\"3.0\"\n";
        assert_eq!(platform_of(azure), "Azure Linux:3");
    }

    #[test]
    fn red_hat_is_scoped_by_its_cpe() {
        let rhel = "NAME=\"Red Hat Enterprise Linux\"\nVERSION=\"9.4 (Plow)\"\nID=\"rhel\"\n\
                    ID_LIKE=\"fedora\"\nVERSION_ID=\"9.4\"\n\
                    CPE_NAME=\"cpe:/o:redhat:enterprise_linux:9::baseos\"\n";
        assert_eq!(platform_of(rhel), "Red Hat:enterprise_linux:9::baseos");
        let no_cpe = "ID=rhel\nVERSION_ID=9.4\n";
        assert!(matches!(
            platform_from_os_release(no_cpe),
            Err(OsReleaseError::MissingField {
                field: "CPE_NAME",
                ..
            })
        ));
    }

    #[test]
    fn suse_products_use_the_pretty_name() {
        let leap = "NAME=\"openSUSE Leap\"\nVERSION=\"15.5\"\nID=\"opensuse-leap\"\n\
                    VERSION_ID=\"15.5\"\nPRETTY_NAME=\"openSUSE Leap 15.5\"\n";
        assert_eq!(platform_of(leap), "openSUSE:Leap 15.5");
        let tumbleweed = "NAME=\"openSUSE Tumbleweed\"\nID=\"opensuse-tumbleweed\"\n\
                          PRETTY_NAME=\"openSUSE Tumbleweed\"\n";
        assert_eq!(platform_of(tumbleweed), "openSUSE:Tumbleweed");
        let sles = "NAME=\"SLES\"\nVERSION=\"15-SP5\"\nVERSION_ID=\"15.5\"\n\
                    PRETTY_NAME=\"SUSE Linux Enterprise Server 15 SP5\"\nID=\"sles\"\n";
        assert_eq!(platform_of(sles), "SUSE:Linux Enterprise Server 15 SP5");
    }

    #[test]
    fn open_euler_carries_its_lts_qualifier() {
        let lts = "NAME=\"openEuler\"\nVERSION=\"22.03 (LTS-SP1)\"\nID=\"openEuler\"\n\
                   VERSION_ID=\"22.03\"\nPRETTY_NAME=\"openEuler 22.03 (LTS-SP1)\"\n";
        assert_eq!(platform_of(lts), "openEuler:22.03-LTS-SP1");
        let plain =
            "NAME=\"openEuler\"\nVERSION=\"24.09\"\nID=\"openEuler\"\nVERSION_ID=\"24.09\"\n";
        assert_eq!(platform_of(plain), "openEuler:24.09");
    }

    #[test]
    fn alpine_becomes_its_release_branch() {
        let alpine = "NAME=\"Alpine Linux\"\nID=alpine\nVERSION_ID=3.20.3\n\
                      PRETTY_NAME=\"Alpine Linux v3.20\"\nHOME_URL=\"https://alpinelinux.org/\"\n";
        assert_eq!(platform_of(alpine), "Alpine:v3.20");
        let edge = "NAME=\"Alpine Linux\"\nID=alpine\nVERSION_ID=3.21.0_alpha20240807\n";
        let err = platform_of(edge);
        assert!(err.contains("OSV has no ecosystem for edge"), "{err}");
    }

    #[test]
    fn unknown_and_missing_ids_are_refused_naming_the_system() {
        let mint = "NAME=\"Linux Mint\"\nVERSION=\"21.3 (Virginia)\"\nID=linuxmint\n\
                    ID_LIKE=\"ubuntu debian\"\nPRETTY_NAME=\"Linux Mint 21.3\"\nVERSION_ID=\"21.3\"\n";
        let err = platform_from_os_release(mint).expect_err("derivatives are not their parent");
        assert_eq!(
            err,
            OsReleaseError::UnknownId {
                id: "linuxmint".into(),
                pretty: "Linux Mint 21.3".into()
            }
        );
        assert!(err.to_string().contains("known IDs: debian, ubuntu"));
        assert_eq!(
            platform_from_os_release("NAME=Something\n"),
            Err(OsReleaseError::MissingId)
        );
        assert_eq!(platform_from_os_release(""), Err(OsReleaseError::MissingId));
    }

    #[test]
    fn quoting_comments_and_junk_lines() {
        let fields = parse(
            "# comment\n\nID='debian'\nNAME=\"A \\\"quoted\\\" \\$name\\\\\"\nnot an assignment\n\
             =nokey\nBAD KEY=x\n  VERSION_ID = \"11\" \nVERSION_ID=12\n",
        );
        assert_eq!(fields["ID"], "debian");
        assert_eq!(fields["NAME"], "A \"quoted\" $name\\");
        assert_eq!(fields["VERSION_ID"], "12", "the later assignment wins");
        assert_eq!(fields.len(), 3);
        assert_eq!(
            platform(&fields).map(|p| p.ecosystem_name),
            Ok("Debian:12".into())
        );
    }
}
