//! The advisory model: what one record says affects one package of one
//! ecosystem, with its ranges parsed into ordered events.

use std::collections::HashSet;
use std::hash::Hash;
use std::sync::Arc;

use jiff::Timestamp;

use super::*;
use crate::api::common::Severity;
use crate::engine::version::{Ecosystem, Version};

/// The normalised CVE id an id stands for: `CVE-2023-4911` itself, and
/// Ubuntu's `UBUNTU-CVE-2023-4911`; other ids (DSA, USN, GHSA) are not CVEs.
pub fn cve_of(id: &str) -> Option<String> {
    let id = id.trim();
    let upper = id.to_ascii_uppercase();
    let cve = upper.strip_prefix("UBUNTU-").unwrap_or(&upper);
    let rest = cve.strip_prefix("CVE-")?;
    let (year, number) = rest.split_once('-')?;
    let valid = year.len() == 4
        && year.bytes().all(|b| b.is_ascii_digit())
        && number.len() >= 4
        && number.bytes().all(|b| b.is_ascii_digit());
    valid.then(|| cve.to_owned())
}

/// Where an advisory's severity came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SeveritySource {
    /// A CVSS vector in the record.
    Cvss,
    /// A distribution's rating (Debian urgency, Ubuntu priority).
    Distribution,
    /// The highest severity known for the record's CVEs in the loaded data
    /// (Debian DSA/DLA and Ubuntu USN records carry none of their own).
    RelatedCves,
    /// No source states one.
    None,
}

/// One range event with its version parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Event {
    /// `introduced`; `None` is `"0"`, before every version.
    Introduced(Option<Version>),
    Fixed(Version),
    LastAffected(Version),
    Limit(Version),
}

impl Event {
    fn version(&self) -> Option<&Version> {
        match self {
            Event::Introduced(v) => v.as_ref(),
            Event::Fixed(v) | Event::LastAffected(v) | Event::Limit(v) => Some(v),
        }
    }
}

/// One affected package of an advisory, ready to test versions against.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Affected {
    /// The OSV ecosystem (`Debian:12`).
    pub ecosystem: String,
    /// The package the advisory names (Debian/Ubuntu: a source package).
    pub package: String,
    /// The severity that applies to this package.
    pub severity: Severity,
    /// Where the severity came from.
    pub severity_source: SeveritySource,
    pub(super) ranges: Vec<Vec<Event>>,
    pub(super) versions: HashSet<String>,
}

/// Whether and how an installed version is affected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Match<'a> {
    /// The minimum version that fixes it, if one is published.
    pub fixed: Option<&'a Version>,
}

impl Affected {
    /// Tests an installed version (of this entry's ordering family): `None`
    /// when not affected, else the minimum fixed version above it, if any.
    ///
    /// OSV semantics: affected when listed in `versions`, or inside any
    /// ECOSYSTEM range (events applied in version order: `introduced` opens,
    /// `fixed` closes at, `last_affected` closes after; `limit` bounds the
    /// range). An open-ended range counts even when `versions` stops short.
    pub fn check(&self, installed: &Version) -> Option<Match<'_>> {
        // Each event's version is compared once (comparisons dominate the
        // cost of evaluating a fleet). Events are in version order, so the
        // first `fixed` above the installed version in a range is the
        // smallest one of that range.
        let mut affected = false;
        let mut fixed: Option<&Version> = None;
        for events in &self.ranges {
            let mut inside = false;
            let mut limited = false;
            let mut below_a_limit = false;
            let mut range_fix: Option<&Version> = None;
            for event in events {
                let order = event.version().and_then(|v| installed.compare(v).ok());
                match event {
                    Event::Introduced(None) => inside = true,
                    Event::Introduced(Some(_)) => inside |= order.is_some_and(|o| o.is_ge()),
                    Event::Fixed(v) => match order {
                        Some(o) if o.is_ge() => inside = false,
                        Some(_) if range_fix.is_none() => range_fix = Some(v),
                        _ => {}
                    },
                    Event::LastAffected(_) => {
                        if order.is_some_and(|o| o.is_gt()) {
                            inside = false;
                        }
                    }
                    Event::Limit(_) => {
                        limited = true;
                        below_a_limit |= order.is_some_and(|o| o.is_lt());
                    }
                }
            }
            if limited && !below_a_limit {
                inside = false;
            }
            affected |= inside;
            if let Some(candidate) = range_fix
                && fixed.is_none_or(|f| candidate.compare(f).is_ok_and(|o| o.is_lt()))
            {
                fixed = Some(candidate);
            }
        }
        // Explicit versions count too (consulted last: a hash probe into a
        // cold table costs more than the range comparisons above).
        affected = affected || self.versions.contains(installed.as_str());
        affected.then_some(Match { fixed })
    }
}

/// An advisory after normalisation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Advisory {
    /// The record id (shared with the findings that name it).
    pub id: Arc<str>,
    /// One-line summary.
    pub summary: Option<String>,
    /// The CVEs this advisory covers: itself, aliases, upstream and related
    /// ids that are CVEs (sorted, unique; shared with the findings).
    pub cves: Arc<[Arc<str>]>,
    /// Publication (else modification) time; deadlines run from here.
    pub published: Option<Timestamp>,
    /// Last modification.
    pub modified: Option<Timestamp>,
    /// The highest severity over the affected packages.
    pub severity: Severity,
    /// The affected packages on known platforms.
    pub affected: Vec<Affected>,
    /// The earliest KEV entry among its CVEs, linked when the database is
    /// built (ids, aliases, upstream and related all count).
    pub known_exploited: Option<KevEntry>,
}

/// What a load kept, skipped and could not read.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LoadReport {
    /// Advisories indexed.
    pub advisories: usize,
    /// Withdrawn records left out.
    pub withdrawn: usize,
    /// Affected entries without a package name (GIT-only), left out.
    pub empty_packages: usize,
    /// Affected entries on ecosystems Patchloop does not order (PyPI, ...) or
    /// not requested, left out.
    pub other_ecosystems: usize,
    /// Records superseded by a newer copy of the same id.
    pub duplicates: usize,
    /// Entries whose versions could not be parsed: `(record id, message)`.
    pub errors: Vec<(String, String)>,
}

/// One advisory's entry for one (ecosystem, package) key.
#[derive(Debug, Clone)]
pub struct IndexEntry {
    /// The advisory.
    pub advisory: Arc<Advisory>,
    /// Index into `advisory.affected`.
    pub affected: usize,
    /// The advisory's number in this database (dense, from 0): evaluations
    /// tell advisories apart by it without reaching into each one.
    pub ordinal: u32,
}

impl IndexEntry {
    /// The affected package this entry stands for.
    pub fn affected(&self) -> &Affected {
        &self.advisory.affected[self.affected]
    }
}

pub(super) fn parse_events(
    family: Ecosystem,
    range: &OsvRange,
) -> Result<Vec<Event>, crate::engine::version::VersionError> {
    let mut events = Vec::with_capacity(range.events.len());
    for e in &range.events {
        let parse = |s: &str| Version::parse(family, s);
        let event = if let Some(v) = &e.introduced {
            if v == "0" {
                Event::Introduced(None)
            } else {
                Event::Introduced(Some(parse(v)?))
            }
        } else if let Some(v) = &e.fixed {
            Event::Fixed(parse(v)?)
        } else if let Some(v) = &e.last_affected {
            Event::LastAffected(parse(v)?)
        } else if let Some(v) = &e.limit {
            if v == "*" {
                continue;
            }
            Event::Limit(parse(v)?)
        } else {
            continue;
        };
        events.push(event);
    }
    // Events apply in version order; `introduced: 0` comes first. Versions of
    // one family always compare.
    events.sort_by(|a, b| match (a.version(), b.version()) {
        (None, None) => std::cmp::Ordering::Equal,
        (None, Some(_)) => std::cmp::Ordering::Less,
        (Some(_), None) => std::cmp::Ordering::Greater,
        (Some(x), Some(y)) => x.compare(y).unwrap_or(std::cmp::Ordering::Equal),
    });
    Ok(events)
}
