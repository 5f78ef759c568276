//! An advisory's severity: CVSS scores banded, distribution words
//! (Debian urgency, Ubuntu priority) mapped.

use super::*;
use crate::api::common::Severity;

fn cvss_severity(kind: &str, score: &str) -> Option<Severity> {
    let value = match kind {
        "CVSS_V2" => {
            let vector = score.strip_prefix("CVSS:2.0/").unwrap_or(score);
            let v: cvss::v2::Vector = vector.parse().ok()?;
            let s = v.score().value();
            // NVD's CVSS v2 bands have no "critical".
            return Some(if s >= 7.0 {
                Severity::High
            } else if s >= 4.0 {
                Severity::Medium
            } else {
                Severity::Low
            });
        }
        "CVSS_V3" | "CVSS_V4" => score.parse::<cvss::Cvss>().ok()?.score(),
        _ => return None,
    };
    Some(band(value))
}

/// The standard CVSS v3/v4 qualitative bands; a 0.0 score ("none") is low.
fn band(score: f64) -> Severity {
    if score >= 9.0 {
        Severity::Critical
    } else if score >= 7.0 {
        Severity::High
    } else if score >= 4.0 {
        Severity::Medium
    } else {
        Severity::Low
    }
}

/// A distribution's word for severity: Debian urgency, Ubuntu priority.
fn distribution_severity(word: &str) -> Option<Severity> {
    match word
        .trim()
        .trim_end_matches('*')
        .to_ascii_lowercase()
        .as_str()
    {
        "critical" => Some(Severity::Critical),
        "high" => Some(Severity::High),
        "medium" => Some(Severity::Medium),
        "low" | "unimportant" | "negligible" => Some(Severity::Low),
        _ => None, // "not yet assigned", "untriaged", "end-of-life"
    }
}

pub(super) fn record_cvss(severities: &[OsvSeverity]) -> Option<Severity> {
    severities
        .iter()
        .filter_map(|s| cvss_severity(&s.kind, &s.score))
        .max()
}

pub(super) fn record_distribution(severities: &[OsvSeverity]) -> Option<Severity> {
    severities
        .iter()
        .filter(|s| s.kind.eq_ignore_ascii_case("ubuntu"))
        .filter_map(|s| distribution_severity(&s.score))
        .max()
}

pub(super) fn affected_distribution(a: &OsvAffected) -> Option<Severity> {
    let specific = a.ecosystem_specific.as_ref();
    let word = |key: &str| {
        specific
            .and_then(|v| v.get(key))
            .and_then(|v| v.as_str())
            .and_then(distribution_severity)
    };
    word("urgency")
        .or_else(|| word("ubuntu_priority"))
        .or_else(|| word("priority"))
        .or_else(|| word("severity"))
        .or_else(|| record_distribution(&a.severity))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn severity_bands_and_distribution_words() {
        assert_eq!(
            cvss_severity("CVSS_V3", "CVSS:3.1/AV:L/AC:L/PR:L/UI:N/S:U/C:H/I:H/A:H"),
            Some(Severity::High)
        );
        assert_eq!(
            cvss_severity("CVSS_V3", "CVSS:3.1/AV:N/AC:L/PR:N/UI:N/S:U/C:H/I:H/A:H"),
            Some(Severity::Critical)
        );
        assert_eq!(
            cvss_severity("CVSS_V2", "AV:N/AC:L/Au:N/C:P/I:P/A:P"),
            Some(Severity::High)
        );
        assert_eq!(cvss_severity("CVSS_V3", "garbage"), None);
        assert_eq!(distribution_severity("unimportant"), Some(Severity::Low));
        assert_eq!(distribution_severity("not yet assigned"), None);
        assert_eq!(distribution_severity("negligible"), Some(Severity::Low));
    }
}
