//! `patchloop approve` / `patchloop reject`: set a ChangeRequest's
//! `spec.decision` with the scope digest the reviewer reviewed (`--digest`,
//! refused when it is no longer the current one) or else the current one,
//! bound to the request's uid, by server-side apply under
//! a field manager named after the caller's kubeconfig user. The controller
//! records that manager; it is what the client asserted, and the apiserver
//! audit log is the authoritative record of who decided.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, bail};
use kube::api::{Patch, PatchParams};
use kube::{Api, Resource};
use patchloop::api::ChangeRequest;
use patchloop::api::change_request::{ChangeRequestPhase, Decision, Verdict};

/// Arguments of `patchloop approve` and `patchloop reject`.
#[derive(Debug, clap::Args)]
pub struct DecideArgs {
    /// The ChangeRequest's name.
    change_request: String,
    /// Why, for the audit trail.
    #[arg(long)]
    reason: String,
    /// The scope digest reviewed (`status.scope.digest`, as `kubectl get`
    /// or the request's message shows it): refused unless it is still the
    /// request's current digest. Without it, the current digest is decided
    /// on and printed.
    #[arg(long)]
    digest: Option<String>,
    /// The namespace; by default the kubeconfig context's, else `default`.
    #[arg(long, short = 'n')]
    namespace: Option<String>,
    /// The kubeconfig to use; by default $KUBECONFIG or ~/.kube/config.
    #[arg(long, env = "KUBECONFIG")]
    kubeconfig: Option<PathBuf>,
}

/// The field manager prefix; the kubeconfig user follows it.
pub const MANAGER_PREFIX: &str = "patchloop-approve";

/// A field manager naming the user: `patchloop-approve:<user>`, with
/// characters outside `[A-Za-z0-9@._:-]` replaced, at most 128 bytes.
pub fn field_manager(user: &str) -> String {
    let clean: String = user
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "@._:-".contains(c) {
                c
            } else {
                '-'
            }
        })
        .collect();
    let mut m = format!("{MANAGER_PREFIX}:{clean}");
    m.truncate(128);
    m
}

/// Runs `approve` (`verdict` Approved) or `reject`.
pub fn run(args: &DecideArgs, verdict: Verdict) -> anyhow::Result<ExitCode> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(decide(args, verdict))
}

async fn decide(args: &DecideArgs, verdict: Verdict) -> anyhow::Result<ExitCode> {
    let conn = super::connect::connect(args.kubeconfig.as_deref()).await?;
    let user = conn
        .user
        .context("the kubeconfig's current context names no user")?;
    let namespace = args.namespace.clone().unwrap_or(conn.namespace);
    let client = conn.client;
    let api: Api<ChangeRequest> = Api::namespaced(client, &namespace);
    let name = &args.change_request;
    let Some(cr) = api
        .get_opt(name)
        .await
        .with_context(|| format!("reading ChangeRequest {name}"))?
    else {
        bail!("ChangeRequest {name} not found in namespace {namespace}");
    };
    let status = cr.status.clone().unwrap_or_default();
    match status.phase {
        Some(
            p @ (ChangeRequestPhase::Published
            | ChangeRequestPhase::Rejected
            | ChangeRequestPhase::Failed
            | ChangeRequestPhase::Obsolete),
        ) => bail!("ChangeRequest {name} is already closed ({p:?}): nothing to decide"),
        Some(p @ (ChangeRequestPhase::Building | ChangeRequestPhase::Testing)) => bail!(
            "ChangeRequest {name} is already past approval ({p:?}): a decision no longer changes it"
        ),
        _ => {}
    }
    let Some(scope) = status.scope else {
        bail!(
            "ChangeRequest {name} has no scope yet: the controller has not processed it (is `patchloop run` running?)"
        );
    };
    if let Some(reviewed) = &args.digest {
        check_reviewed(reviewed, &scope.digest)
            .map_err(|why| anyhow::anyhow!("ChangeRequest {name}: {why}"))?;
    }
    let request_uid = cr
        .metadata
        .uid
        .clone()
        .with_context(|| format!("ChangeRequest {name} has no metadata.uid"))?;
    let decision = Decision {
        verdict,
        digest: scope.digest.clone(),
        request_uid: Some(request_uid),
        decided_at: Some(patchloop::api::common::time(decision_time(
            jiff::Timestamp::now(),
            cr.spec
                .decision
                .as_ref()
                .and_then(|d| d.decided_at.as_ref())
                .map(|t| t.0),
        ))),
        reason: Some(args.reason.clone()),
    };
    let manager = field_manager(&user);
    let patch = serde_json::json!({
        "apiVersion": ChangeRequest::api_version(&()),
        "kind": ChangeRequest::kind(&()),
        "metadata": {"name": name, "namespace": namespace},
        "spec": {"decision": decision},
    });
    api.patch(
        name,
        &PatchParams::apply(&manager).force(),
        &Patch::Apply(&patch),
    )
    .await
    .with_context(|| format!("setting spec.decision of ChangeRequest {name}"))?;
    let what = match verdict {
        Verdict::Approved => "approved",
        Verdict::Rejected => "rejected",
    };
    println!(
        "changerequest/{name} {what} (scope digest {}, {} advisories, {} packages) as {manager}",
        scope.digest,
        scope.advisories.len(),
        scope.packages.len()
    );
    Ok(ExitCode::SUCCESS)
}

/// When a decision is taken: now, in whole seconds as the API stores it,
/// and always after the decision it replaces. Deciding again within the
/// same second would otherwise write an identical spec, which the
/// apiserver keeps as it was (no new generation): a decision the scope had
/// voided would stay void although the person decided again.
fn decision_time(now: jiff::Timestamp, previous: Option<jiff::Timestamp>) -> jiff::Timestamp {
    let now = jiff::Timestamp::from_second(now.as_second()).unwrap_or(now);
    match previous {
        Some(p) if p >= now => p
            .checked_add(jiff::SignedDuration::from_secs(1))
            .unwrap_or(p),
        _ => now,
    }
}

/// The digest a reviewer passed is the current one, in full: a prefix
/// would let whoever edits the build inputs search for an edit whose digest
/// shares it.
fn check_reviewed(reviewed: &str, current: &str) -> Result<(), String> {
    let reviewed = reviewed.trim();
    if reviewed == current {
        return Ok(());
    }
    let shown: String = if reviewed.bytes().all(|b| b.is_ascii_hexdigit()) {
        reviewed.chars().take(64).collect()
    } else {
        "(not a hex digest)".to_owned()
    };
    Err(format!(
        "the scope changed since it was reviewed: --digest {shown} but the current scope digest is {current}; review the current scope (kubectl get changerequest -o yaml) and decide again"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_decision_is_always_later_than_the_one_it_replaces() {
        let t = |s: &str| s.parse::<jiff::Timestamp>().expect("timestamp");
        let now = t("2026-12-04T20:46:24.5Z");
        assert_eq!(decision_time(now, None), t("2026-12-04T20:46:24Z"));
        assert_eq!(
            decision_time(now, Some(t("2026-12-04T20:40:00Z"))),
            t("2026-12-04T20:46:24Z")
        );
        // Decided again within the same second, or after a clock step back.
        assert_eq!(
            decision_time(now, Some(t("2026-12-04T20:46:24Z"))),
            t("2026-12-04T20:46:25Z")
        );
        assert_eq!(
            decision_time(now, Some(t("2026-12-04T20:50:00Z"))),
            t("2026-12-04T20:50:01Z")
        );
    }

    #[test]
    fn a_reviewed_digest_must_be_the_current_one() {
        let current = "ab".repeat(32);
        assert_eq!(check_reviewed(&current, &current), Ok(()));
        // A prefix names no scope for sure.
        assert!(check_reviewed(&current[..12], &current).is_err());
        assert!(check_reviewed(&current[..63], &current).is_err());
        assert!(check_reviewed(&current[..6], &current).is_err());
        let other = "cd".repeat(32);
        let why = check_reviewed(&other, &current).expect_err("refused");
        assert!(why.contains(&other) && why.contains(&current), "{why}");
        let why = check_reviewed("$(x)", &current).expect_err("refused");
        assert!(!why.contains("$(x)"), "{why}");
    }

    #[test]
    fn field_managers_name_the_user_safely() {
        assert_eq!(field_manager("alice"), "patchloop-approve:alice");
        assert_eq!(
            field_manager("system:admin@corp"),
            "patchloop-approve:system:admin@corp"
        );
        assert_eq!(field_manager("a b/c"), "patchloop-approve:a-b-c");
        assert_eq!(field_manager(&"x".repeat(300)).len(), 128);
    }
}
