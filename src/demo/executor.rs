//! The demo's simulated executor. The local control plane has no kubelet,
//! so no container of a Patchloop Job ever runs; this plays them as their
//! containers would, through the job contract only (the Job's environment
//! and its contract files in the Pod template): a remediation Job "installs" at least the
//! minimum fixed versions and reports the Workload's new Inventory, a build
//! Job reports the rebuilt image's Inventory with the request's nonce and ends
//! its Pod with the result line in its termination message (as the kubelet
//! would record it), a test Job passes. Then it marks the Job `Complete` as
//! the Job controller would.
//!
//! The tests' executor uses [`set_job_status`] and [`end_pod`] too.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{ListParams, Patch, PatchParams};
use kube::{Api, Resource, ResourceExt};
use serde_json::json;
use sha2::{Digest, Sha256};

use crate::api::inventory::{InventorySubject, SubjectKind};
use crate::api::{Inventory, Template, Workload};
use crate::controller::jobs::{self, PACKAGES_FILE, PURPOSE_LABEL, Purpose};
use crate::engine::fixes::{FixPackage, parse_package_lines};
use crate::engine::inventory::{InstalledPackage, parse_compact_list, to_compact_list};
use crate::engine::version::{self, Ecosystem, VersionError};

/// The field manager of the Inventories the simulated executor writes.
pub const MANAGER: &str = "patchloop-demo-executor";
/// `spec.reporter` of those Inventories: nobody mistakes them for real ones.
pub const REPORTER: &str = "demo-executor (simulated)";
/// The nonce file among a build Job's contract files.
const NONCE_FILE: &str = "nonce";

/// Installs fixes as `apt-get install --only-upgrade` would with a
/// repository holding exactly the minimum fixed versions: every installed
/// package named by a fix and older than its minimum moves to it; the rest
/// stays. A package the machine lacks is not installed.
pub fn install(
    installed: &[InstalledPackage],
    fixes: &[FixPackage],
    family: Ecosystem,
) -> Result<Vec<InstalledPackage>, VersionError> {
    let by_name: BTreeMap<&str, &FixPackage> = fixes.iter().map(|f| (f.name.as_str(), f)).collect();
    installed
        .iter()
        .map(|p| {
            let Some(fix) = by_name.get(&*p.name) else {
                return Ok(p.clone());
            };
            // Fixed versions are the source's when the advisory names one.
            let current = p.source_version.as_deref().unwrap_or(&p.version);
            if version::compare(family, current, &fix.fixed)?.is_lt() {
                Ok(InstalledPackage {
                    version: fix.fixed.as_str().into(),
                    source_version: None,
                    ..p.clone()
                })
            } else {
                Ok(p.clone())
            }
        })
        .collect()
}

/// The image reference a simulated build reports: the template's registry
/// path and revision, pinned by a digest of the package list (as a real
/// build pins its image by digest).
pub fn built_image(template: &str, revision: &str, packages: &[String]) -> String {
    let digest: String = Sha256::digest(packages.join("\n").as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    format!("registry.example.com/golden/{template}:r{revision}@sha256:{digest}")
}

/// What the simulated executor did with one Job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Played {
    /// A remediation Job: the Workload's new Inventory is written.
    Remediated {
        /// The Workload.
        workload: String,
        /// How many installed packages moved to a fixed version.
        upgraded: usize,
    },
    /// A build Job: the result Inventory is written.
    Built {
        /// The Template.
        template: String,
        /// The image reported.
        image: String,
    },
    /// A test Job passed.
    Tested {
        /// The Template.
        template: String,
    },
}

/// Plays Jobs in one namespace.
#[derive(Clone)]
pub struct Executor {
    client: kube::Client,
    namespace: String,
    /// How long each simulated Job runs.
    pub duration: Duration,
    /// How long to wait for the Job controller's first sync of a Job.
    pub wait: Duration,
}

fn job_env(job: &Job) -> BTreeMap<String, String> {
    job.spec
        .as_ref()
        .and_then(|s| s.template.spec.as_ref())
        .and_then(|s| s.containers.first())
        .and_then(|c| c.env.as_ref())
        .map(|env| {
            env.iter()
                .filter_map(|e| Some((e.name.clone(), e.value.clone()?)))
                .collect()
        })
        .unwrap_or_default()
}

fn required<'a>(env: &'a BTreeMap<String, String>, name: &str) -> anyhow::Result<&'a str> {
    env.get(name)
        .map(String::as_str)
        .with_context(|| format!("the Job has no {name}: not a Patchloop contract Job"))
}

impl Executor {
    /// An executor for `namespace`, running each Job for `duration`.
    pub fn new(client: kube::Client, namespace: &str, duration: Duration) -> Executor {
        Executor {
            client,
            namespace: namespace.to_owned(),
            duration,
            wait: Duration::from_secs(60),
        }
    }

    /// Plays one Job to its end: waits for the Job controller to start it,
    /// "runs" for [`Executor::duration`], reports what the contract asks,
    /// then marks it `Complete`.
    pub async fn play(&self, job: &Job) -> anyhow::Result<Played> {
        let name = job.name_any();
        let purpose = job.labels().get(PURPOSE_LABEL).cloned().unwrap_or_default();
        let env = job_env(job);
        let jobs: Api<Job> = Api::namespaced(self.client.clone(), &self.namespace);
        wait_for_job_controller(&jobs, &name, self.wait).await?;
        tokio::time::sleep(self.duration).await;
        let played = match purpose.as_str() {
            p if p == Purpose::Remediation.as_str() => self.remediate(&name, &env).await?,
            p if p == Purpose::Build.as_str() => self.build(&name, &env).await?,
            p if p == Purpose::Test.as_str() => Played::Tested {
                template: required(&env, "PATCHLOOP_TEMPLATE")?.to_owned(),
            },
            other => bail!("Job {name}: unknown purpose {other:?}"),
        };
        set_job_status(&jobs, &name, complete_status(), self.wait).await?;
        Ok(played)
    }

    async fn contract_file(&self, job: &str, file: &str) -> anyhow::Result<String> {
        let jobs: Api<Job> = Api::namespaced(self.client.clone(), &self.namespace);
        let job = jobs
            .get(job)
            .await
            .with_context(|| format!("reading Job {job}"))?;
        jobs::contract_file(&job, file)
            .map(str::to_owned)
            .with_context(|| {
                format!(
                    "Job {}'s Pod template has no contract file {file}",
                    job.name_any()
                )
            })
    }

    async fn inventory(&self, name: &str) -> anyhow::Result<Inventory> {
        let api: Api<Inventory> = Api::namespaced(self.client.clone(), &self.namespace);
        api.get(name)
            .await
            .with_context(|| format!("reading Inventory {name}"))
    }

    async fn remediate(&self, job: &str, env: &BTreeMap<String, String>) -> anyhow::Result<Played> {
        let workload = required(env, "PATCHLOOP_WORKLOAD")?;
        let platform = version::parse_platform(required(env, "PATCHLOOP_PLATFORM")?)?;
        let fixes = parse_package_lines(&self.contract_file(job, PACKAGES_FILE).await?);
        let workloads: Api<Workload> = Api::namespaced(self.client.clone(), &self.namespace);
        let current = workloads
            .get(workload)
            .await
            .with_context(|| format!("reading Workload {workload}"))?
            .status
            .and_then(|s| s.inventory)
            .and_then(|i| i.name)
            .with_context(|| format!("Workload {workload} has no Inventory in its status"))?;
        let mut inventory = self.inventory(&current).await?;
        let before = parse_compact_list(inventory.spec.format.into(), &inventory.spec.packages)?;
        let after = install(&before, &fixes, platform.family)?;
        let upgraded = before.iter().zip(&after).filter(|(b, a)| b != a).count();
        inventory.spec.packages = to_compact_list(&after);
        inventory.spec.reporter = Some(REPORTER.to_owned());
        // The machine's own Inventory, under its canonical name (the one read
        // may be its template revision's, when it had none yet).
        inventory.spec.subject = InventorySubject {
            kind: SubjectKind::Workload,
            name: workload.to_owned(),
            revision: None,
        };
        let name = inventory.spec.subject.canonical_inventory_name();
        self.report(&name, inventory).await?;
        Ok(Played::Remediated {
            workload: workload.to_owned(),
            upgraded,
        })
    }

    async fn build(&self, job: &str, env: &BTreeMap<String, String>) -> anyhow::Result<Played> {
        let template = required(env, "PATCHLOOP_TEMPLATE")?;
        let request = required(env, "PATCHLOOP_CHANGE_REQUEST")?;
        let revision = required(env, "PATCHLOOP_REVISION")?;
        let platform = version::parse_platform(required(env, "PATCHLOOP_PLATFORM")?)?;
        let fixes = parse_package_lines(&self.contract_file(job, PACKAGES_FILE).await?);
        let nonce = self.contract_file(job, NONCE_FILE).await?;
        let templates: Api<Template> = Api::namespaced(self.client.clone(), &self.namespace);
        let current = templates
            .get(template)
            .await
            .with_context(|| format!("reading Template {template}"))?
            .status
            .and_then(|s| s.inventory)
            .and_then(|i| i.name)
            .with_context(|| format!("Template {template} has no Inventory in its status"))?;
        let base = self.inventory(&current).await?;
        let packages = to_compact_list(&install(
            &parse_compact_list(base.spec.format.into(), &base.spec.packages)?,
            &fixes,
            platform.family,
        )?);
        let image = built_image(template, revision, &packages);
        let report = crate::engine::change::BuildReport {
            image: image
                .rsplit_once('@')
                .map(|(_, d)| d.to_owned())
                .unwrap_or_default(),
            packages: crate::engine::change::packages_digest(&packages)
                .context("a package line holds a line break")?,
        };
        let subject = InventorySubject {
            kind: SubjectKind::ChangeRequest,
            name: request.to_owned(),
            revision: None,
        };
        let name = subject.canonical_inventory_name();
        let result = Inventory::new(
            &name,
            crate::api::InventorySpec {
                subject,
                reporter: Some(REPORTER.to_owned()),
                image: Some(image.clone()),
                nonce: Some(nonce.trim().to_owned()),
                packages,
                ..base.spec
            },
        );
        self.report(&name, result).await?;
        end_pod(
            &self.client,
            &self.namespace,
            job,
            0,
            &crate::engine::change::result_line(&report),
            self.wait,
        )
        .await?;
        Ok(Played::Built {
            template: template.to_owned(),
            image,
        })
    }

    /// Writes an Inventory (server-side apply, the executor's own manager),
    /// stamped with the time it is reported.
    async fn report(&self, name: &str, mut inventory: Inventory) -> anyhow::Result<()> {
        inventory.spec.reported_at =
            k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(crate::controller::now());
        let doc = json!({
            "apiVersion": Inventory::api_version(&()),
            "kind": Inventory::kind(&()),
            "metadata": {"name": name},
            "spec": inventory.spec,
        });
        let api: Api<Inventory> = Api::namespaced(self.client.clone(), &self.namespace);
        api.patch(
            name,
            &PatchParams::apply(MANAGER).force(),
            &Patch::Apply(&doc),
        )
        .await
        .with_context(|| format!("writing Inventory {name}"))?;
        Ok(())
    }
}

/// A `Complete` Job status as the Job controller writes it.
pub fn complete_status() -> serde_json::Value {
    let now = crate::controller::now().to_string();
    json!({
        "completionTime": now, "succeeded": 1, "active": 0,
        "conditions": [{"type": "Complete", "status": "True", "lastProbeTime": now, "lastTransitionTime": now}]
    })
}

/// Waits until the Job controller has synced a Job once (`startTime` set):
/// the executor's work starts after the Job did, as a container's would.
pub async fn wait_for_job_controller(
    api: &Api<Job>,
    job: &str,
    wait: Duration,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + wait;
    loop {
        let synced = api
            .get_status(job)
            .await
            .ok()
            .and_then(|j| j.status)
            // Its Pod may already have ended (its status set through the
            // Pod, which the Job controller then counts as succeeded).
            .is_some_and(|s| {
                let counted =
                    s.active.unwrap_or(0) + s.failed.unwrap_or(0) + s.succeeded.unwrap_or(0);
                s.start_time.is_some() && counted > 0
            });
        if synced {
            return Ok(());
        }
        if Instant::now() >= deadline {
            bail!(
                "the Job controller never started Job {job} (is kube-controller-manager running?)"
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Ends a Job's Pod as the kubelet would record it: its first container
/// terminated with `exit_code` and the termination message `message`, the
/// Pod `Succeeded` (exit 0) or `Failed`. The Pod is the one the Job
/// controls (a Pod of a deleted namesake may linger until garbage
/// collection); waits for the Job controller to have created it.
pub async fn end_pod(
    client: &kube::Client,
    namespace: &str,
    job: &str,
    exit_code: i32,
    message: &str,
    wait: Duration,
) -> anyhow::Result<()> {
    let jobs: Api<Job> = Api::namespaced(client.clone(), namespace);
    let pods: Api<Pod> = Api::namespaced(client.clone(), namespace);
    let uid = jobs
        .get(job)
        .await
        .with_context(|| format!("reading Job {job}"))?
        .metadata
        .uid
        .with_context(|| format!("Job {job} has no uid"))?;
    let deadline = Instant::now() + wait;
    let pod = loop {
        let listed = pods
            .list(&ListParams::default().labels(&format!("job-name={job}")))
            .await
            .with_context(|| format!("listing the Pods of Job {job}"))?;
        let controlled = listed.items.into_iter().find(|p| {
            p.owner_references()
                .iter()
                .any(|o| o.controller == Some(true) && o.uid == uid)
        });
        if let Some(pod) = controlled {
            break pod;
        }
        if Instant::now() >= deadline {
            bail!("Job {job} has no Pod (is kube-controller-manager running?)");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let name = pod.name_any();
    let (container, image) = pod
        .spec
        .as_ref()
        .and_then(|s| s.containers.first())
        .map(|c| (c.name.clone(), c.image.clone().unwrap_or_default()))
        .with_context(|| format!("Pod {name} has no container"))?;
    let now = crate::controller::now().to_string();
    let status = json!({"status": {
        "phase": if exit_code == 0 { "Succeeded" } else { "Failed" },
        "containerStatuses": [{
            "name": container, "image": image, "imageID": "", "ready": false, "restartCount": 0,
            "state": {"terminated": {
                "exitCode": exit_code, "reason": if exit_code == 0 { "Completed" } else { "Error" },
                "message": message, "startedAt": now, "finishedAt": now}}
        }]
    }});
    pods.patch_status(&name, &PatchParams::default(), &Patch::Merge(&status))
        .await
        .with_context(|| format!("setting Pod {name}'s status"))?;
    Ok(())
}

/// Sets a Job's outcome as the Job controller would, after its first sync.
/// The 1.20 Job controller, when one of its syncs races with this patch (a
/// Pod update it is still processing), replaces the whole status with what
/// it computed from its caches; so patch, and re-patch until the outcome
/// has stayed for a while (a finished Job is never synced again). A Job
/// deleted meanwhile was cleaned up after its outcome was recorded.
pub async fn set_job_status(
    api: &Api<Job>,
    job: &str,
    status: serde_json::Value,
    wait: Duration,
) -> anyhow::Result<()> {
    const STAYED: Duration = Duration::from_millis(1500);
    wait_for_job_controller(api, job, wait).await?;
    let deadline = Instant::now() + wait;
    let mut finished_since: Option<Instant> = None;
    while Instant::now() < deadline {
        match api.get_opt(job).await {
            Ok(None) => return Ok(()),
            Ok(Some(j)) if jobs::finished(&j).is_some() => {
                let since = *finished_since.get_or_insert_with(Instant::now);
                if since.elapsed() >= STAYED {
                    return Ok(());
                }
            }
            _ => {
                finished_since = None;
                api.patch_status(
                    job,
                    &PatchParams::default(),
                    &Patch::Merge(&json!({ "status": &status })),
                )
                .await
                .with_context(|| format!("setting Job {job}'s status"))?;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    bail!("Job {job}'s outcome did not stay")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::inventory::parse_compact;

    fn packages(lines: &[&str]) -> Vec<InstalledPackage> {
        lines
            .iter()
            .map(|l| parse_compact(l).expect("compact line"))
            .collect()
    }

    #[test]
    fn installs_at_least_the_minimum_and_leaves_the_rest() {
        let before = packages(&[
            "libc6 2.36-9+deb12u2 glibc",
            "bash 5.2.15-2+b8 bash 5.2.15-2",
            "rsync 3.2.7-1+deb12u3",
            "coreutils 9.1-1",
        ]);
        let fixes = parse_package_lines(
            "libc6 2.36-9+deb12u3 glibc\nbash 5.2.15-3\nrsync 3.2.7-1+deb12u2\nopenssl 3.0.15-1\n",
        );
        let after = install(&before, &fixes, Ecosystem::Dpkg).expect("install");
        assert_eq!(
            to_compact_list(&after),
            [
                "libc6 2.36-9+deb12u3 glibc",
                // A binNMU moves to the fixed source version.
                "bash 5.2.15-3",
                // Newer than the minimum already: untouched.
                "rsync 3.2.7-1+deb12u3",
                "coreutils 9.1-1",
            ]
        );
        // A fixed package the machine lacks is not installed.
        assert!(!after.iter().any(|p| &*p.name == "openssl"));
    }

    #[test]
    fn a_version_the_family_cannot_read_is_an_error() {
        let before = packages(&["libc6 2.36-9"]);
        let fixes = parse_package_lines("libc6 !!\n");
        assert!(install(&before, &fixes, Ecosystem::Dpkg).is_err());
    }

    #[test]
    fn built_images_are_pinned_by_a_digest_of_their_packages() {
        let a = built_image("base", "2", &["libc6 2.36-9+deb12u3 glibc".to_owned()]);
        let b = built_image("base", "2", &["libc6 2.36-9+deb12u4 glibc".to_owned()]);
        assert!(a.starts_with("registry.example.com/golden/base:r2@sha256:"));
        assert_eq!(
            a.len(),
            "registry.example.com/golden/base:r2@sha256:".len() + 64
        );
        assert_ne!(a, b);
    }
}
