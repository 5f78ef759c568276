//! `patchloop evaluate`: offline compliance for CI pipelines and image builds
//! (inventory + advisories + policy → findings), with an exit status to gate
//! on.

use std::fmt::Write as _;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, bail};
use jiff::Timestamp;
use patchloop::api::common::{ComplianceState, FindingState};
use patchloop::api::{Inventory, PatchException, PatchPolicy};
use patchloop::engine::advisory::{self, AdvisoryDb, KevCatalog};
use patchloop::engine::evaluate::{self, ExceptionRef, Input, InventoryInput, PolicyRef};
use patchloop::engine::inventory::{self, InputFormat, InstalledPackage};

/// Exit status when every finding is fixed or exempt.
const EXIT_COMPLIANT: u8 = 0;
/// Exit status when a fix is pending or overdue.
const EXIT_NON_COMPLIANT: u8 = 1;
/// Exit status when compliance cannot be told (no data for the platform,
/// unreadable versions).
const EXIT_UNKNOWN: u8 = 3;

/// Output formats.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum Output {
    /// A table for people.
    Table,
    /// Every finding as JSON.
    Json,
}

/// Arguments of `patchloop evaluate`.
#[derive(Debug, clap::Args)]
pub struct EvaluateArgs {
    /// The inventory: an Inventory manifest (YAML or JSON), a dpkg status
    /// file, `dpkg-query` or `rpm -qa` output in the documented formats, an
    /// Alpine installed database, or compact lines; `-` reads standard input.
    #[arg(long)]
    inventory: PathBuf,
    /// The inventory's format when it cannot be detected: dpkg-status,
    /// dpkg-query, rpm-qa, apk-installed.
    #[arg(long)]
    inventory_format: Option<InputFormat>,
    /// OSV advisories: JSON records, directories of them, or zip archives.
    #[arg(long, required = true, num_args = 1..)]
    advisories: Vec<PathBuf>,
    /// The CISA Known Exploited Vulnerabilities catalog (JSON).
    #[arg(long)]
    kev: Option<PathBuf>,
    /// PatchPolicy manifests (YAML or JSON, several documents allowed); the
    /// built-in default deadlines apply when none is given.
    #[arg(long)]
    policy: Vec<PathBuf>,
    /// PatchException manifests that apply.
    #[arg(long)]
    exception: Vec<PathBuf>,
    /// The platform in OSV ecosystem naming, e.g. Debian:12.
    #[arg(long)]
    platform: String,
    /// Judge the inventory as a live machine's collected at this instant
    /// (RFC 3339), so `inventoryMaxAge` applies; by default it is an image's
    /// inventory, which never ages.
    #[arg(long)]
    collected_at: Option<Timestamp>,
    /// Evaluate as of this instant (RFC 3339) instead of now.
    #[arg(long)]
    now: Option<Timestamp>,
    /// Output format.
    #[arg(long, value_enum, default_value = "table")]
    output: Output,
}

fn read_input(path: &Path) -> anyhow::Result<String> {
    if path == Path::new("-") {
        let mut text = String::new();
        std::io::stdin()
            .read_to_string(&mut text)
            .context("--inventory -: reading standard input")?;
        return Ok(text);
    }
    std::fs::read_to_string(path).with_context(|| format!("--inventory {}", path.display()))
}

/// Reads the inventory, whatever form it comes in.
fn load_inventory(args: &EvaluateArgs) -> anyhow::Result<Vec<InstalledPackage>> {
    let text = read_input(&args.inventory)?;
    let origin = args.inventory.display();
    if let Some(format) = args.inventory_format {
        return inventory::parse(format, &text).with_context(|| format!("--inventory {origin}"));
    }
    if let Some(format) = inventory::detect(&text) {
        return inventory::parse(format, &text).with_context(|| format!("--inventory {origin}"));
    }
    if text.contains("kind:") || text.trim_start().starts_with('{') {
        let docs: Vec<serde_json::Value> = serde_saphyr::from_multiple(&text)
            .map_err(|e| anyhow::anyhow!("--inventory {origin}: not YAML or JSON: {e}"))?;
        let doc = docs
            .into_iter()
            .find(|d| d["kind"] == "Inventory")
            .with_context(|| format!("--inventory {origin}: no Inventory document"))?;
        let inv: Inventory = serde_json::from_value(doc)
            .with_context(|| format!("--inventory {origin}: not a valid Inventory"))?;
        let platform = patchloop::engine::version::parse_platform(&args.platform)
            .ok()
            .map(|p| p.family);
        return inventory::parse_subject_list(platform, inv.spec.format.into(), &inv.spec.packages)
            .map_err(|e| anyhow::anyhow!("--inventory {origin}: spec.{e}"));
    }
    // Bare compact lines follow the family of the platform they run on.
    let family = patchloop::engine::version::parse_platform(&args.platform)
        .with_context(|| format!("--platform {:?}", args.platform))?
        .family;
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    inventory::parse_compact_list(family, &lines).with_context(|| format!("--inventory {origin}"))
}

fn load_documents<T: serde::de::DeserializeOwned>(
    flag: &str,
    kind: &str,
    paths: &[PathBuf],
) -> anyhow::Result<Vec<T>> {
    let mut out = Vec::new();
    for path in paths {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("{flag} {}", path.display()))?;
        let docs: Vec<serde_json::Value> = serde_saphyr::from_multiple(&text)
            .map_err(|e| anyhow::anyhow!("{flag} {}: not YAML or JSON: {e}", path.display()))?;
        let before = out.len();
        for doc in docs.into_iter().filter(|d| d["kind"] == kind) {
            out.push(
                serde_json::from_value(doc)
                    .with_context(|| format!("{flag} {}: not a valid {kind}", path.display()))?,
            );
        }
        if out.len() == before {
            bail!("{flag} {}: no {kind} document", path.display());
        }
    }
    Ok(out)
}

fn load_advisories(args: &EvaluateArgs) -> anyhow::Result<AdvisoryDb> {
    let mut records = Vec::new();
    for path in &args.advisories {
        records.extend(
            patchloop::controller::feed_source::load_osv_path(path)
                .with_context(|| format!("--advisories {}", path.display()))?,
        );
    }
    let kev = match &args.kev {
        Some(path) => {
            let bytes = std::fs::read(path).with_context(|| format!("--kev {}", path.display()))?;
            advisory::parse_kev(&bytes, &path.display().to_string()).context("--kev")?
        }
        None => KevCatalog::default(),
    };
    let (db, report) = AdvisoryDb::build(records, kev, &[]);
    for (id, message) in &report.errors {
        eprintln!("patchloop: warning: advisory {id} skipped: {message}");
    }
    Ok(db)
}

/// Runs the evaluation and prints it.
pub fn run(args: &EvaluateArgs) -> anyhow::Result<ExitCode> {
    patchloop::engine::version::parse_platform(&args.platform)
        .with_context(|| format!("--platform {:?}", args.platform))?;
    let packages = load_inventory(args)?;
    let db = load_advisories(args)?;
    let policies: Vec<PatchPolicy> = load_documents("--policy", "PatchPolicy", &args.policy)?;
    let exceptions: Vec<PatchException> =
        load_documents("--exception", "PatchException", &args.exception)?;
    let now = args.now.unwrap_or_else(Timestamp::now);
    let policy_refs: Vec<PolicyRef<'_>> = policies
        .iter()
        .map(|p| PolicyRef {
            name: p.metadata.name.as_deref().unwrap_or("policy"),
            spec: &p.spec,
        })
        .collect();
    let exception_refs: Vec<ExceptionRef<'_>> = exceptions
        .iter()
        .map(|e| ExceptionRef {
            name: e.metadata.name.as_deref().unwrap_or("exception"),
            spec: &e.spec,
            created: e.metadata.creation_timestamp.as_ref().map(|t| t.0),
        })
        .collect();
    let evaluation = evaluate::evaluate(&Input {
        detail: evaluate::Detail::All,
        platform: &args.platform,
        policies: &policy_refs,
        exceptions: &exception_refs,
        inventory: Some(InventoryInput {
            packages: &packages,
            collected_at: args.collected_at.unwrap_or(now),
            ages: args.collected_at.is_some(),
            provisional: false,
        }),
        advisories: &db,
        now,
    });

    let text = match args.output {
        Output::Json => {
            let findings: Vec<_> = evaluation.findings.iter().map(|f| &f.finding).collect();
            let doc = serde_json::json!({
                "platform": args.platform,
                "packages": packages.len(),
                "advisoriesLoaded": db.len(),
                "compliance": evaluation.summary(),
                "findings": findings,
            });
            let mut s = serde_json::to_string_pretty(&doc).context("serializing the result")?;
            s.push('\n');
            s
        }
        Output::Table => table(&evaluation, packages.len(), db.len()),
    };
    print!("{text}");
    Ok(ExitCode::from(match evaluation.state {
        ComplianceState::Compliant | ComplianceState::Exempt => EXIT_COMPLIANT,
        ComplianceState::Pending | ComplianceState::Overdue => EXIT_NON_COMPLIANT,
        ComplianceState::Unknown => EXIT_UNKNOWN,
    }))
}

fn table(e: &evaluate::Evaluation, packages: usize, advisories: usize) -> String {
    let mut out = String::new();
    let rows: Vec<[String; 5]> = e
        .findings
        .iter()
        .map(|f| {
            let f = &f.finding;
            let state = match f.state {
                FindingState::Pending => "Pending",
                FindingState::Overdue => "Overdue",
                FindingState::Exempt => "Exempt",
                FindingState::Blocked => "Blocked",
                FindingState::NoFixYet => "NoFixYet",
            };
            let due = f
                .due
                .as_ref()
                .map(|t| t.0.strftime("%Y-%m-%d").to_string())
                .unwrap_or_else(|| "-".into());
            let pkgs = f
                .packages
                .iter()
                .map(|p| match &p.fixed {
                    Some(fixed) => format!("{} {} -> {fixed}", p.name, p.installed),
                    None => format!("{} {} (no fix)", p.name, p.installed),
                })
                .collect::<Vec<_>>()
                .join(", ");
            let severity = if f.known_exploited {
                format!("{} KEV", f.severity)
            } else {
                f.severity.to_string()
            };
            [
                f.advisory.to_string(),
                severity,
                state.to_owned(),
                due,
                pkgs,
            ]
        })
        .collect();
    let header = ["ADVISORY", "SEVERITY", "STATE", "DUE", "PACKAGES"];
    let widths: Vec<usize> = (0..4)
        .map(|i| {
            rows.iter()
                .map(|r| r[i].len())
                .chain([header[i].len()])
                .max()
                .unwrap_or(0)
        })
        .collect();
    if !rows.is_empty() {
        let _ = writeln!(
            out,
            "{:w0$}  {:w1$}  {:w2$}  {:w3$}  {}",
            header[0],
            header[1],
            header[2],
            header[3],
            header[4],
            w0 = widths[0],
            w1 = widths[1],
            w2 = widths[2],
            w3 = widths[3]
        );
        for r in &rows {
            let _ = writeln!(
                out,
                "{:w0$}  {:w1$}  {:w2$}  {:w3$}  {}",
                r[0],
                r[1],
                r[2],
                r[3],
                r[4],
                w0 = widths[0],
                w1 = widths[1],
                w2 = widths[2],
                w3 = widths[3]
            );
        }
        out.push('\n');
    }
    let _ = writeln!(
        out,
        "{}: {} ({} packages, {} advisories loaded)",
        e.state,
        e.reason(),
        packages,
        advisories
    );
    out
}
