//! What the format readers share: a package before multi-arch
//! qualification ([`Raw`]), the last step every reader ends with
//! ([`finish`]), tokens, numbered lines and stanzas.

use std::collections::{BTreeMap, BTreeSet};

use super::{InputFormat, InstalledPackage, InventoryError};
use crate::engine::package_grammar::{Rejection, check_arch, check_name, check_version};

/// A parsed package and its architecture, before multi-arch qualification,
/// with the line it was read from.
pub(super) struct Raw {
    pub(super) package: InstalledPackage,
    pub(super) arch: String,
    pub(super) line: usize,
}

impl Raw {
    pub(super) fn new(
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
    pub(super) fn check(&self, format: InputFormat) -> Result<(), InventoryError> {
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
pub(super) fn finish(
    format: InputFormat,
    raws: Vec<Raw>,
) -> Result<Vec<InstalledPackage>, InventoryError> {
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
pub(super) fn token(value: &str) -> Option<&str> {
    let value = value.trim();
    (!value.is_empty() && !value.chars().any(|c| c.is_whitespace() || c.is_control()))
        .then_some(value)
}

/// `Some(None)` for an empty value, `Some(Some(token))` for a valid token,
/// `None` for an invalid one.
pub(super) fn optional_token(value: &str) -> Option<Option<&str>> {
    if value.trim().is_empty() {
        Some(None)
    } else {
        token(value).map(Some)
    }
}

/// Lines numbered from 1, without `\n` or `\r\n`.
pub(super) fn numbered_lines(text: &str) -> impl Iterator<Item = (usize, &str)> {
    text.split('\n')
        .map(|l| l.strip_suffix('\r').unwrap_or(l))
        .enumerate()
        .map(|(i, l)| (i + 1, l))
}

/// The non-blank lines of a line-oriented input, numbered from 1.
pub(super) fn rows(text: &str) -> impl Iterator<Item = (usize, &str)> {
    numbered_lines(text).filter(|(_, l)| !l.trim().is_empty())
}

/// An error at `line` of a line-oriented input of `format`.
pub(super) fn line_error(format: InputFormat, line: usize, message: String) -> InventoryError {
    InventoryError::Line {
        format,
        line,
        message,
    }
}

/// A blank-line-separated paragraph.
pub(super) struct Stanza<'a> {
    /// 1-based.
    pub(super) number: usize,
    /// Non-blank lines with their 1-based line numbers; never empty.
    pub(super) lines: Vec<(usize, &'a str)>,
}

impl Stanza<'_> {
    /// An error at `line` of this stanza of `format`.
    pub(super) fn error(
        &self,
        format: InputFormat,
        line: usize,
        message: String,
    ) -> InventoryError {
        InventoryError::Stanza {
            format,
            stanza: self.number,
            line,
            message,
        }
    }

    pub(super) fn first_line(&self) -> usize {
        self.lines.first().map_or(0, |&(n, _)| n)
    }
}

/// Splits `text` into paragraphs at lines that are empty or whitespace only.
pub(super) fn stanzas(text: &str) -> Vec<Stanza<'_>> {
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
