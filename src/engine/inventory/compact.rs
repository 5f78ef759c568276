//! The compact line format an `Inventory` stores (see the module's doc):
//! reading one line's shape, reading a list under a family's grammar, and
//! writing the canonical lines.

use super::{InstalledPackage, InventoryError};
use crate::engine::package_grammar::{
    MAX_NAME_LEN, MAX_VERSION_LEN, Rejection, check_name, check_qualified_name, check_version,
    describe_char,
};
use crate::engine::version::Ecosystem;

/// The compact line's syntax, as error messages show it.
pub const COMPACT_SYNTAX: &str = "name version [source [source-version]]";

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

/// Reads a subject's Inventory (`spec.format`, `spec.packages`): the format
/// must be the family of the subject's platform (`None` when the platform
/// cannot be read, which the evaluation reports by itself), then every line
/// is held to that family's grammar as in [`parse_compact_list`].
pub fn parse_subject_list<S: AsRef<str>>(
    platform: Option<Ecosystem>,
    format: Ecosystem,
    lines: &[S],
) -> Result<Vec<InstalledPackage>, InventoryError> {
    match platform {
        Some(platform) if platform != format => {
            Err(InventoryError::FormatMismatch { format, platform })
        }
        _ => parse_compact_list(format, lines),
    }
}

/// The compact lines of `packages`, in order.
pub fn to_compact_list(packages: &[InstalledPackage]) -> Vec<String> {
    packages.iter().map(InstalledPackage::to_compact).collect()
}
