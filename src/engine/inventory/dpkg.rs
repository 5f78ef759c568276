//! dpkg's two inputs: its status file and `dpkg-query` rows.

use super::reader::{Raw, finish, line_error, optional_token, rows, stanzas, token};
use super::{InputFormat, InstalledPackage, InventoryError};

/// The `dpkg-query` format [`parse_dpkg_query`] reads (dpkg-query expands the
/// `\t` and `\n` escapes itself).
pub const DPKG_QUERY_FORMAT: &str = r"${db:Status-Abbrev}\t${Package}\t${Version}\t${source:Package}\t${source:Version}\t${Architecture}\n";

/// The command whose output [`parse_dpkg_query`] reads, as argv (no shell).
pub const DPKG_QUERY_ARGV: [&str; 4] = ["dpkg-query", "-W", "-f", DPKG_QUERY_FORMAT];

/// The command whose output [`parse_dpkg_query`] reads, as a shell line.
pub const DPKG_QUERY_COMMAND: &str = r"dpkg-query -W -f='${db:Status-Abbrev}\t${Package}\t${Version}\t${source:Package}\t${source:Version}\t${Architecture}\n'";

/// Where dpkg keeps the database [`parse_dpkg_status`] reads.
pub const DPKG_STATUS_PATH: &str = "/var/lib/dpkg/status";

/// Reads dpkg's status file (`/var/lib/dpkg/status`): RFC 822-style stanzas
/// separated by blank lines, continuation lines starting with a space or tab,
/// field names case-insensitive, unknown fields ignored. A stanza counts when
/// its `Status:` state is `installed` (see the module's decisions); its
/// `Source:` is `name` or `name (version)`.
pub fn parse_dpkg_status(text: &str) -> Result<Vec<InstalledPackage>, InventoryError> {
    const FORMAT: InputFormat = InputFormat::DpkgStatus;
    let mut raws = Vec::new();
    for stanza in stanzas(text) {
        let err = |line: usize, message: String| stanza.error(FORMAT, line, message);
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
    for (line_no, line) in rows(text) {
        let err = |message: String| line_error(FORMAT, line_no, message);
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
