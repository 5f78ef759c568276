//! `rpm -qa` rows.

use super::reader::{Raw, finish, line_error, optional_token, rows, token};
use super::{InputFormat, InstalledPackage, InventoryError};

/// The `rpm` query format [`parse_rpm_qa`] reads (rpm expands `\t` and `\n`).
pub const RPM_QA_FORMAT: &str =
    r"%{NAME}\t%{EPOCHNUM}:%{VERSION}-%{RELEASE}\t%{SOURCERPM}\t%{ARCH}\n";

/// The command whose output [`parse_rpm_qa`] reads, as argv (no shell).
pub const RPM_QA_ARGV: [&str; 4] = ["rpm", "-qa", "--queryformat", RPM_QA_FORMAT];

/// The command whose output [`parse_rpm_qa`] reads, as a shell line.
pub const RPM_QA_COMMAND: &str =
    r"rpm -qa --queryformat '%{NAME}\t%{EPOCHNUM}:%{VERSION}-%{RELEASE}\t%{SOURCERPM}\t%{ARCH}\n'";

/// Reads the output of [`RPM_QA_COMMAND`]: `NAME`, `EPOCHNUM:VERSION-RELEASE`,
/// `SOURCERPM`, `ARCH`, tab-separated. The version drops a `0:` (or
/// `(none):`) epoch; a version with no `:` is taken as `VERSION-RELEASE`.
/// `SOURCERPM` (`openssl-3.0.7-27.el9.src.rpm`) gives the source name and
/// version-release, read from the right. gpg-pubkey rows are skipped.
pub fn parse_rpm_qa(text: &str) -> Result<Vec<InstalledPackage>, InventoryError> {
    const FORMAT: InputFormat = InputFormat::RpmQa;
    let mut raws = Vec::new();
    for (line_no, line) in rows(text) {
        let err = |message: String| line_error(FORMAT, line_no, message);
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
