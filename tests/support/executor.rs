//! A simulated executor, for the control planes without a node (`support::env()`): finishes
//! Patchloop's Jobs by setting their status as the Job controller would, sets a failed Pod's
//! termination message, and watches how many Jobs are in flight at once.
//!
//! Remediation is proven with real Pods, real machines and real apt in `tests/real_remediation.rs`,
//! `tests/chart_pods.rs` and `tests/node.rs`. This executor stays only where a test needs an
//! outcome a real Pod cannot give quickly or at all, and each test binary using it says which
//! (its module doc, "Why simulated"): a Job ending at an exact moment relative to a crash, a
//! watch lag or a lease; dozens of Jobs in a few seconds; a termination message or result line
//! an attacker forged; a build that pushed an image no registry here holds.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use futures::StreamExt;
use k8s_openapi::api::batch::v1::Job;
use kube::Api;
use kube::api::{ListParams, Patch, PatchParams};
use kube::runtime::watcher::{self, Event};
use serde_json::json;

/// The label selector of Patchloop's Jobs.
pub const OURS: &str = "app.kubernetes.io/managed-by=patchloop";

/// Patchloop's Jobs in a namespace, oldest first.
pub async fn jobs(client: &kube::Client, ns: &str) -> Vec<Job> {
    let api: Api<Job> = Api::namespaced(client.clone(), ns);
    let mut items = api
        .list(&ListParams::default().labels(OURS))
        .await
        .map(|l| l.items)
        .unwrap_or_default();
    items.sort_by_key(|j| {
        (
            j.metadata.creation_timestamp.clone(),
            j.metadata.name.clone(),
        )
    });
    items
}

/// True when a Job has neither a `Complete` nor a `Failed` condition.
pub fn unfinished(job: &Job) -> bool {
    !job.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| {
            cs.iter()
                .any(|c| (c.type_ == "Complete" || c.type_ == "Failed") && c.status == "True")
        })
}

/// A Job's label.
pub fn label<'a>(job: &'a Job, key: &str) -> &'a str {
    job.metadata
        .labels
        .as_ref()
        .and_then(|l| l.get(key))
        .map_or("", String::as_str)
}

fn complete_status(start: Option<&str>) -> serde_json::Value {
    let mut status = patchloop::demo::executor::complete_status();
    if let Some(start) = start {
        status["startTime"] = json!(start);
    }
    status
}

/// Marks a Job `Complete` (keeping the Job controller's `startTime`, or
/// setting `start` when given), and makes sure it stays so.
pub async fn complete(client: &kube::Client, ns: &str, job: &str, start: Option<&str>) {
    set_status(client, ns, job, complete_status(start)).await;
}

/// One status patch marking a Job `Complete`, unchecked: for a caller that
/// watches for the Job controller undoing it (the remediation benchmark).
pub async fn patch_complete(client: &kube::Client, ns: &str, job: &str, start: Option<&str>) {
    let api: Api<Job> = Api::namespaced(client.clone(), ns);
    api.patch_status(
        job,
        &PatchParams::default(),
        &Patch::Merge(&json!({"status": complete_status(start)})),
    )
    .await
    .unwrap_or_else(|e| panic!("setting Job {job}'s status: {e}"));
}

/// Marks a build Job `Complete` after ending its Pod with `result_line` as
/// its termination message, as a build container that reported its result
/// would (`patchloop::engine::change::result_line`).
pub async fn complete_build(client: &kube::Client, ns: &str, job: &str, result_line: &str) {
    end_pod(client, ns, job, 0, result_line).await;
    complete(client, ns, job, None).await;
}

/// Ends a Job's Pod as the kubelet would record it (see
/// `patchloop::demo::executor::end_pod`, shared with the demo): there is no
/// kubelet here, so the Pod's status is written through its subresource.
pub async fn end_pod(client: &kube::Client, ns: &str, job: &str, exit_code: i32, message: &str) {
    patchloop::demo::executor::end_pod(client, ns, job, exit_code, message, super::objects::WAIT)
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
}

/// Marks a Job `Failed`; with a message, first sets its Pod's container as
/// terminated with that termination message.
pub async fn fail(client: &kube::Client, ns: &str, job: &str, message: Option<&str>) {
    fail_with_exit_code(client, ns, job, message, 100).await;
}

/// Marks a Job `Failed` as a job script that refused to act would (exit
/// code 2 and a message that begins with `refused:`, the job contract's two
/// marks).
pub async fn refuse(client: &kube::Client, ns: &str, job: &str, message: &str) {
    fail_with_exit_code(client, ns, job, Some(message), 2).await;
}

/// Marks a Job `Failed` with its container's `exit_code` and termination
/// `message`, as the Pod it ran would.
pub async fn fail_with_exit_code(
    client: &kube::Client,
    ns: &str,
    job: &str,
    message: Option<&str>,
    exit_code: i32,
) {
    if let Some(message) = message {
        end_pod(client, ns, job, exit_code, message).await;
    }
    let now = patchloop::controller::now().to_string();
    set_status(
        client,
        ns,
        job,
        json!({
            "failed": 1, "active": 0,
            "conditions": [{"type": "Failed", "status": "True", "reason": "BackoffLimitExceeded",
                            "message": "Job has reached the specified backoff limit",
                            "lastProbeTime": now, "lastTransitionTime": now}]
        }),
    )
    .await;
}

/// Sets a Job's outcome as its executor would (see
/// `patchloop::demo::executor::set_job_status`, shared with the demo).
async fn set_status(client: &kube::Client, ns: &str, job: &str, status: serde_json::Value) {
    let api: Api<Job> = Api::namespaced(client.clone(), ns);
    patchloop::demo::executor::set_job_status(&api, job, status, super::objects::WAIT)
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
}

/// Watches Patchloop's Jobs in a namespace for the whole test and keeps the
/// most ever in flight at once (created, neither Complete nor Failed).
pub struct InFlightWatch {
    history: Arc<std::sync::Mutex<Vec<String>>>,
    most: Arc<AtomicUsize>,
    created: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl InFlightWatch {
    /// Starts watching.
    pub fn start(client: &kube::Client, ns: &str) -> InFlightWatch {
        let api: Api<Job> = Api::namespaced(client.clone(), ns);
        let most = Arc::new(AtomicUsize::new(0));
        let created = Arc::new(AtomicUsize::new(0));
        let history = Arc::new(std::sync::Mutex::new(Vec::new()));
        let (m, c, h) = (
            Arc::clone(&most),
            Arc::clone(&created),
            Arc::clone(&history),
        );
        let task = tokio::spawn(async move {
            let mut state: BTreeMap<String, bool> = BTreeMap::new();
            let mut stream = watcher::watcher(api, watcher::Config::default().labels(OURS)).boxed();
            while let Some(ev) = stream.next().await {
                let Ok(ev) = ev else { continue };
                let line = match &ev {
                    Event::Apply(j) | Event::InitApply(j) => format!(
                        "apply {} rv={} unfinished={}",
                        j.metadata.name.as_deref().unwrap_or_default(),
                        j.metadata.resource_version.as_deref().unwrap_or_default(),
                        unfinished(j)
                    ),
                    Event::Delete(j) => {
                        format!("delete {}", j.metadata.name.as_deref().unwrap_or_default())
                    }
                    Event::Init => "init".to_owned(),
                    Event::InitDone => "init done".to_owned(),
                };
                match ev {
                    Event::Apply(j) | Event::InitApply(j) => {
                        let name = j.metadata.name.clone().unwrap_or_default();
                        if state.insert(name, unfinished(&j)).is_none() {
                            c.fetch_add(1, Ordering::SeqCst);
                        }
                    }
                    Event::Delete(j) => {
                        state.insert(j.metadata.name.clone().unwrap_or_default(), false);
                    }
                    // A relist: Jobs deleted while the watch was down must
                    // not linger as in flight.
                    Event::Init => state.clear(),
                    Event::InitDone => {}
                }
                let now = state.values().filter(|u| **u).count();
                m.fetch_max(now, Ordering::SeqCst);
                if let Ok(mut h) = h.lock() {
                    h.push(format!("{line} -> {now} in flight"));
                }
            }
        });
        InFlightWatch {
            history,
            most,
            created,
            task,
        }
    }

    /// The most Jobs seen in flight at once.
    pub fn most(&self) -> usize {
        self.most.load(Ordering::SeqCst)
    }

    /// What the watch saw, one line per event, to explain a failure.
    pub fn history(&self) -> String {
        self.history
            .lock()
            .map(|h| h.join("\n"))
            .unwrap_or_default()
    }

    /// Distinct Jobs seen.
    pub fn created(&self) -> usize {
        self.created.load(Ordering::SeqCst)
    }
}

impl Drop for InFlightWatch {
    fn drop(&mut self) {
        self.task.abort();
    }
}
