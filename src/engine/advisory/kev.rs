//! The CISA Known Exploited Vulnerabilities catalog.

use std::collections::HashMap;
use std::hash::Hash;

use jiff::civil::Date;
use serde::Deserialize;

use super::*;

/// One KEV catalog entry.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct KevEntry {
    /// The CVE.
    pub cve: String,
    /// When CISA added it to the catalog (the KEV deadline clock starts here).
    pub date_added: Date,
    /// CISA's due date for federal agencies.
    pub due_date: Option<Date>,
}

/// The KEV catalog, by CVE id.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KevCatalog {
    /// Entries by CVE id.
    pub entries: HashMap<String, KevEntry>,
}

#[derive(Deserialize)]
struct KevWire {
    vulnerabilities: Vec<KevWireEntry>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct KevWireEntry {
    #[serde(rename = "cveID")]
    cve_id: String,
    date_added: String,
    #[serde(default)]
    due_date: Option<String>,
}

/// Parses the CISA KEV catalog JSON (`known_exploited_vulnerabilities.json`).
pub fn parse_kev(bytes: &[u8], origin: &str) -> Result<KevCatalog, AdvisoryError> {
    let wire: KevWire = serde_json::from_slice(bytes).map_err(|source| AdvisoryError::Json {
        origin: origin.to_owned(),
        what: "KEV catalog",
        source,
    })?;
    let mut entries = HashMap::with_capacity(wire.vulnerabilities.len());
    for v in wire.vulnerabilities {
        let date = |field: &'static str, value: &str| {
            value.parse::<Date>().map_err(|_| AdvisoryError::KevDate {
                origin: origin.to_owned(),
                cve: v.cve_id.clone(),
                field,
                value: value.to_owned(),
            })
        };
        let date_added = date("dateAdded", &v.date_added)?;
        let due_date = match v.due_date.as_deref() {
            Some(d) if !d.is_empty() => Some(date("dueDate", d)?),
            _ => None,
        };
        let cve = v.cve_id.trim().to_uppercase();
        entries.insert(
            cve.clone(),
            KevEntry {
                cve,
                date_added,
                due_date,
            },
        );
    }
    Ok(KevCatalog { entries })
}

impl KevCatalog {
    /// Merges another catalog in (the earliest `dateAdded` wins).
    pub fn merge(&mut self, other: KevCatalog) {
        for (cve, entry) in other.entries {
            match self.entries.get(&cve) {
                Some(old) if old.date_added <= entry.date_added => {}
                _ => {
                    self.entries.insert(cve, entry);
                }
            }
        }
    }
}
