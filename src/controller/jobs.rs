//! Jobs from user templates plus the job contract, created idempotently
//! under deterministic names, read back (finished? why did it fail?) and
//! cleaned up.
//!
//! The contract (README, "The job contract"): every container gets
//! `PATCHLOOP_*` environment variables naming the object, and the contract
//! files (`packages`: one `name minimum-fixed-version [source]` line each,
//! and whatever else the caller adds) are mounted read-only at
//! [`CONTRACT_DIR`] through a downward-API volume reading the Pod template's
//! `patchloop.dev/contract-<file>` annotations. The files live in the Job's
//! own Pod template, which is immutable once the Job exists: creating a Job
//! is one write (no window in which a Job waits for a second object), and no
//! one who may only write ConfigMaps (or Workloads) in the namespace can
//! change what a Job reads. The controller verifies a fix from the same
//! annotation in its Job cache.

use std::collections::BTreeMap;

use jiff::Timestamp;
use k8s_openapi::api::batch::v1::{Job, JobSpec, JobTemplateSpec};
use k8s_openapi::api::core::v1::{
    Container, DownwardAPIVolumeFile, DownwardAPIVolumeSource, EnvVar, ObjectFieldSelector, Pod,
    PodSpec, Volume, VolumeMount,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kube::api::{DeleteParams, ListParams, PostParams};
use kube::{Api, Client, ResourceExt};
use sha2::{Digest, Sha256};

/// Every object Patchloop creates carries this label (and the controller
/// watches only objects that do).
pub const MANAGED_BY_LABEL: &str = "app.kubernetes.io/managed-by";
/// The value of [`MANAGED_BY_LABEL`].
pub const MANAGED_BY: &str = "patchloop";
/// What a Job is for: `remediation`, `build` or `test`.
pub const PURPOSE_LABEL: &str = "patchloop.dev/purpose";
/// The PatchPolicy that created a remediation Job.
pub const POLICY_LABEL: &str = "patchloop.dev/policy";
/// The Workload a remediation Job patches.
pub const WORKLOAD_LABEL: &str = "patchloop.dev/workload";
/// The label carrying the Workload generation a remediation Job was created
/// for: after a refusal, a new attempt waits for a newer one.
pub const WORKLOAD_GENERATION_LABEL: &str = "patchloop.dev/workload-generation";
/// The attempt number of a remediation Job.
pub const ATTEMPT_LABEL: &str = "patchloop.dev/attempt";
/// The short digest of the fix set a Job installs.
pub const FIX_SET_LABEL: &str = "patchloop.dev/fix-set";
/// The label the 1.20 Job controller puts on a Job's Pods.
pub const POD_JOB_NAME_LABEL: &str = "job-name";

/// Where the contract files are mounted in every container.
pub const CONTRACT_DIR: &str = "/var/run/patchloop";
/// The package list among the contract files: one `name
/// minimum-fixed-version [source]` line per package.
pub const PACKAGES_FILE: &str = "packages";
/// The Pod template annotation holding contract file `<file>` is this
/// prefix followed by the file's name.
pub const CONTRACT_ANNOTATION_PREFIX: &str = "patchloop.dev/contract-";
/// The volume that mounts the contract files.
const CONTRACT_VOLUME: &str = "patchloop-contract";
/// The apiserver's limit on one object's annotations, keys and values
/// together (`TotalAnnotationSizeLimitB`), which the Pod template's
/// annotations, contract files included, must fit.
pub const MAX_ANNOTATION_BYTES: usize = 256 * 1024;
/// The longest Job name: a Job's Pods carry it as a label value.
pub const MAX_JOB_NAME: usize = 63;
/// Termination messages longer than this are cut in status.
const MAX_MESSAGE: usize = 1024;

/// What a Job is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Purpose {
    /// Installs fixes on a live Workload.
    Remediation,
    /// Rebuilds a Template's image.
    Build,
    /// Tests a rebuilt image.
    Test,
}

impl Purpose {
    /// Every purpose, for pre-creating metric series.
    pub const ALL: [Purpose; 3] = [Purpose::Remediation, Purpose::Build, Purpose::Test];

    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Purpose::Remediation => "remediation",
            Purpose::Build => "build",
            Purpose::Test => "test",
        }
    }
}

/// A user's job template could not be turned into a Job.
#[derive(Debug, thiserror::Error)]
#[error("{field}: {message}")]
pub struct TemplateError {
    /// The field at fault, e.g. `spec.remediation.jobTemplate.spec`.
    pub field: String,
    /// What is wrong.
    pub message: String,
}

/// Why no Job could be built from a request.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// The user's template is unusable.
    #[error(transparent)]
    Template(#[from] TemplateError),
    /// The contract files (with the template's own Pod annotations) exceed
    /// what one object's annotations may hold; a cut package list would
    /// install less than planned, so no Job is built.
    #[error(
        "the Job contract does not fit: the Pod template's annotations would hold {bytes} bytes \
         (contract files {files} bytes), over the apiserver's limit of {limit} bytes; split the \
         fix set (fewer advisories per policy) or shorten the template's own Pod annotations"
    )]
    ContractTooLarge {
        /// All Pod template annotations, keys and values.
        bytes: usize,
        /// The contract files' share.
        files: usize,
        /// [`MAX_ANNOTATION_BYTES`].
        limit: usize,
    },
}

/// Everything a contract Job is built from.
#[derive(Debug, Clone)]
pub struct JobRequest<'a> {
    /// The user's batch/v1 JobTemplateSpec, as stored.
    pub template: &'a serde_json::Value,
    /// The field the template came from, for errors.
    pub template_field: &'a str,
    /// The Job's name, from [`job_name`].
    pub name: String,
    /// The namespace.
    pub namespace: &'a str,
    /// Labels for the Job and its Pods (the managed-by label and the
    /// purpose are added).
    pub labels: BTreeMap<String, String>,
    /// What the Job is for.
    pub purpose: Purpose,
    /// The object that owns the Job (garbage collection removes the Job with it).
    pub owner: OwnerReference,
    /// `activeDeadlineSeconds`.
    pub deadline_seconds: i64,
    /// Contract environment variables (they replace same-named ones of the
    /// template); `$` is escaped, so the kubelet expands none of them.
    pub env: Vec<(String, String)>,
    /// Contract files, by name (mounted under [`CONTRACT_DIR`]).
    pub files: BTreeMap<String, String>,
}

/// What a contract Job is told beyond its template: its `PATCHLOOP_*`
/// environment and its contract files (see [`JobRequest::env`] and
/// [`JobRequest::files`]). [`Contract::new`] builds what every Job gets;
/// each purpose adds its own with [`Contract::with_env`] and
/// [`Contract::with_file`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Contract {
    /// The environment variables, in order.
    pub env: Vec<(String, String)>,
    /// The files, by name.
    pub files: BTreeMap<String, String>,
}

impl Contract {
    /// What every contract Job gets: `PATCHLOOP_PURPOSE`, `_NAMESPACE`,
    /// `_PLATFORM`, `_ADVISORIES` (comma-separated), `_JOB` and
    /// `_PACKAGES_FILE`, and the files [`PACKAGES_FILE`] (`packages`: the
    /// package lines) and `advisories` (one id a line).
    pub fn new(
        purpose: Purpose,
        namespace: &str,
        platform: &str,
        job: &str,
        advisories: &[impl AsRef<str>],
        packages: String,
    ) -> Contract {
        let advisories: Vec<&str> = advisories.iter().map(AsRef::as_ref).collect();
        Contract {
            env: Vec::new(),
            files: BTreeMap::from([
                (PACKAGES_FILE.to_owned(), packages),
                ("advisories".to_owned(), advisories.join("\n") + "\n"),
            ]),
        }
        .with_env("PATCHLOOP_PURPOSE", purpose.as_str())
        .with_env("PATCHLOOP_NAMESPACE", namespace)
        .with_env("PATCHLOOP_PLATFORM", platform)
        .with_env("PATCHLOOP_ADVISORIES", advisories.join(","))
        .with_env("PATCHLOOP_JOB", job)
        .with_env(
            "PATCHLOOP_PACKAGES_FILE",
            format!("{CONTRACT_DIR}/{PACKAGES_FILE}"),
        )
    }

    /// The contract with environment variable `name` added.
    pub fn with_env(mut self, name: &str, value: impl Into<String>) -> Contract {
        self.env.push((name.to_owned(), value.into()));
        self
    }

    /// The contract with file `name` added (or replaced).
    pub fn with_file(mut self, name: &str, text: impl Into<String>) -> Contract {
        self.files.insert(name.to_owned(), text.into());
        self
    }
}

/// A deterministic Job name of at most 63 characters: `base-suffix`, or,
/// when that is too long, a cut `base` with a 64-bit hash of the whole of
/// it. The hash is wide enough that nobody can search for a second name
/// (a Workload they may create) whose Jobs would take the names of another
/// object's Jobs; a narrower one could be found in seconds.
pub fn job_name(base: &str, suffix: &str) -> String {
    let full = format!("{base}-{suffix}");
    if full.len() <= MAX_JOB_NAME {
        return full;
    }
    let hash = short_hash(base, JOB_NAME_HASH_HEX);
    let room = MAX_JOB_NAME.saturating_sub(suffix.len() + hash.len() + 2);
    let cut: String = base.chars().take(room).collect();
    let cut = cut.trim_end_matches(['-', '.']);
    format!("{cut}-{hash}-{suffix}")
}

/// Hex digits of a long name's hash in a Job name: 64 bits.
const JOB_NAME_HASH_HEX: usize = 16;

/// A label value for an object name: the name when it fits in 63
/// characters, else a cut name with a short hash (names may be 253 long).
pub fn label_value(name: &str) -> String {
    if name.len() <= 63 {
        return name.to_owned();
    }
    let hash = short_hash(name, 8);
    let cut: String = name.chars().take(63 - hash.len() - 1).collect();
    format!("{}-{hash}", cut.trim_end_matches(['-', '.', '_']))
}

fn short_hash(s: &str, len: usize) -> String {
    Sha256::digest(s.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<String>()[..len]
        .to_owned()
}

/// The Pod template annotation that carries contract file `file`.
fn contract_annotation(file: &str) -> String {
    format!("{CONTRACT_ANNOTATION_PREFIX}{file}")
}

/// Contract file `file` of a Job as its Pods read it (from the Job's Pod
/// template, which nobody can change once the Job exists). `None` for a
/// Job of an earlier Patchloop, whose files were in a ConfigMap.
pub fn contract_file<'a>(job: &'a Job, file: &str) -> Option<&'a str> {
    job.spec
        .as_ref()?
        .template
        .metadata
        .as_ref()?
        .annotations
        .as_ref()?
        .get(&contract_annotation(file))
        .map(String::as_str)
}

/// A value the kubelet passes through unexpanded: it replaces `$(NAME)` in
/// an env `value` with earlier variables (the template's own, Secret-backed
/// ones included) and turns `$$` into `$`, so doubling every `$` makes any
/// value, `$(SSH_PASSPHRASE)` or `$$(X)` alike, arrive literally.
pub fn unexpandable(value: &str) -> String {
    value.replace('$', "$$")
}

/// The Job, contract included; pure.
pub fn build(req: &JobRequest<'_>) -> Result<Job, BuildError> {
    let (meta, mut spec) = parse_template(req)?;
    let mut labels = req.labels.clone();
    labels.insert(MANAGED_BY_LABEL.into(), MANAGED_BY.into());
    labels.insert(PURPOSE_LABEL.into(), req.purpose.as_str().into());

    // Retries belong to the controller (counted in its ledger), never to
    // the Job controller.
    spec.backoff_limit = Some(0);
    spec.active_deadline_seconds = Some(req.deadline_seconds);
    let pod_meta = spec.template.metadata.get_or_insert_with(Default::default);
    pod_meta
        .labels
        .get_or_insert_with(Default::default)
        .extend(labels.clone());
    annotate_contract_files(
        pod_meta.annotations.get_or_insert_with(Default::default),
        &req.files,
    )?;
    let pod = spec.template.spec.as_mut().ok_or_else(|| TemplateError {
        field: format!("{}.spec.template.spec", req.template_field),
        message: "missing".into(),
    })?;
    if pod.containers.is_empty() {
        return Err(TemplateError {
            field: format!("{}.spec.template.spec.containers", req.template_field),
            message: "empty".into(),
        }
        .into());
    }
    add_contract_to_pod(pod, req);
    Ok(Job {
        metadata: job_meta(meta, req, labels),
        spec: Some(spec),
        status: None,
    })
}

/// The template's metadata and Job spec; a template that is no
/// JobTemplateSpec, or has no spec, is the user's to fix.
fn parse_template(req: &JobRequest<'_>) -> Result<(ObjectMeta, JobSpec), TemplateError> {
    let template: JobTemplateSpec =
        serde_json::from_value(req.template.clone()).map_err(|e| TemplateError {
            field: req.template_field.to_owned(),
            message: format!("not a batch/v1 JobTemplateSpec: {e}"),
        })?;
    let spec = template.spec.ok_or_else(|| TemplateError {
        field: format!("{}.spec", req.template_field),
        message: "missing".into(),
    })?;
    Ok((template.metadata.unwrap_or_default(), spec))
}

/// Puts the contract files into the Pod template's annotations (only the
/// controller writes them, even when the template names one itself),
/// refusing a contract the apiserver's annotation limit cannot hold.
fn annotate_contract_files(
    annotations: &mut BTreeMap<String, String>,
    files: &BTreeMap<String, String>,
) -> Result<(), BuildError> {
    annotations.retain(|k, _| !k.starts_with(CONTRACT_ANNOTATION_PREFIX));
    let mut files_bytes = 0;
    for (file, text) in files {
        let key = contract_annotation(file);
        files_bytes += key.len() + text.len();
        annotations.insert(key, text.clone());
    }
    let bytes: usize = annotations.iter().map(|(k, v)| k.len() + v.len()).sum();
    if bytes > MAX_ANNOTATION_BYTES {
        return Err(BuildError::ContractTooLarge {
            bytes,
            files: files_bytes,
            limit: MAX_ANNOTATION_BYTES,
        });
    }
    Ok(())
}

/// Never restarted in place; the contract volume, mounted with the
/// contract environment in every container (init containers included).
fn add_contract_to_pod(pod: &mut PodSpec, req: &JobRequest<'_>) {
    pod.restart_policy = Some("Never".into());
    let volumes = pod.volumes.get_or_insert_with(Vec::new);
    volumes.retain(|v| v.name != CONTRACT_VOLUME);
    volumes.push(contract_volume(&req.files));
    let containers = pod
        .containers
        .iter_mut()
        .chain(pod.init_containers.iter_mut().flatten());
    for c in containers {
        add_contract(c, &req.env);
    }
}

/// The downward-API volume presenting each contract file from its
/// annotation.
fn contract_volume(files: &BTreeMap<String, String>) -> Volume {
    let items = files
        .keys()
        .map(|file| DownwardAPIVolumeFile {
            path: file.clone(),
            field_ref: Some(ObjectFieldSelector {
                field_path: format!("metadata.annotations['{}']", contract_annotation(file)),
                api_version: None,
            }),
            ..Default::default()
        })
        .collect();
    Volume {
        name: CONTRACT_VOLUME.into(),
        downward_api: Some(DownwardAPIVolumeSource {
            items: Some(items),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// The Job's own metadata: the template's, under the request's name,
/// namespace, labels and owner.
fn job_meta(
    mut meta: ObjectMeta,
    req: &JobRequest<'_>,
    labels: BTreeMap<String, String>,
) -> ObjectMeta {
    meta.name = Some(req.name.clone());
    meta.generate_name = None;
    meta.namespace = Some(req.namespace.to_owned());
    meta.labels
        .get_or_insert_with(Default::default)
        .extend(labels);
    meta.owner_references = Some(vec![req.owner.clone()]);
    meta
}

fn add_contract(c: &mut Container, env: &[(String, String)]) {
    let vars = c.env.get_or_insert_with(Vec::new);
    vars.retain(|v| !env.iter().any(|(n, _)| *n == v.name));
    vars.extend(env.iter().map(|(name, value)| EnvVar {
        name: name.clone(),
        value: Some(unexpandable(value)),
        value_from: None,
    }));
    let mounts = c.volume_mounts.get_or_insert_with(Vec::new);
    mounts.retain(|m| m.name != CONTRACT_VOLUME && m.mount_path != CONTRACT_DIR);
    mounts.push(VolumeMount {
        name: CONTRACT_VOLUME.into(),
        mount_path: CONTRACT_DIR.into(),
        read_only: Some(true),
        ..Default::default()
    });
}

/// What a create found: the Job made, the same owner's Job made before
/// (a restart, or a duplicated controller, repeating work: nothing runs
/// twice), or a Job of that name that another owner controls.
#[derive(Debug, Clone, PartialEq)]
pub enum Created {
    /// This call created the Job.
    New,
    /// A Job of that name existed, controlled by the same owner (uid): the
    /// existing Job, for callers that check more than its owner.
    Existed(Box<Job>),
    /// A Job of that name existed that the request's owner does not control
    /// (made by someone else, or by an object of the same name since
    /// deleted): nothing was created, and the name is not this owner's.
    Taken(NameTaken),
}

/// A Job name held by a Job another owner controls.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "a Job named {job} already exists and is {holder}, not by this {kind} {owner}: nothing was \
     started under that name; delete that Job (after checking who created it) to let Patchloop \
     go on"
)]
pub struct NameTaken {
    /// The Job's name.
    pub job: String,
    /// Who controls it, in words: `controlled by Workload web-01 (uid …)`
    /// or `controlled by no object`.
    pub holder: String,
    /// The kind of the owner that wanted the name.
    pub kind: String,
    /// The owner that wanted the name.
    pub owner: String,
}

/// Creates the Job, contract and all, in one request. "Already exists" is
/// a repeat of a create that succeeded only when the existing Job is
/// controlled by the same owner (uid); otherwise the name is taken.
pub async fn create(client: &Client, job: &Job) -> Result<Created, kube::Error> {
    Ok(create_with_uid(client, job).await?.0)
}

/// Creates the Job as [`create`] does and, when this call created it, its
/// uid as the apiserver assigned it: what a caller records to tell its own
/// Job from one created under the same name by anyone else.
pub async fn create_with_uid(
    client: &Client,
    job: &Job,
) -> Result<(Created, Option<String>), kube::Error> {
    let jobs: Api<Job> = Api::namespaced(client.clone(), &job.namespace().unwrap_or_default());
    let conflict = match jobs.create(&PostParams::default(), job).await {
        Ok(created) => return Ok((Created::New, created.metadata.uid)),
        Err(e) if is_conflict(&e) => e,
        Err(e) => return Err(e),
    };
    // Deleted since the conflict: the caller's next pass creates it.
    let Some(existing) = jobs.get_opt(&job.name_any()).await? else {
        return Err(conflict);
    };
    Ok((classify_existing(job, existing), None))
}

/// Whether `existing`, found under `wanted`'s name, is the same owner's Job.
fn classify_existing(wanted: &Job, existing: Job) -> Created {
    let controller = |j: &Job| {
        j.owner_references()
            .iter()
            .find(|o| o.controller == Some(true))
            .cloned()
    };
    let want = controller(wanted);
    match (&want, controller(&existing)) {
        (Some(w), Some(h)) if w.uid == h.uid => Created::Existed(Box::new(existing)),
        (_, holder) => Created::Taken(NameTaken {
            job: wanted.name_any(),
            holder: holder.map_or_else(
                || "controlled by no object".to_owned(),
                |h| format!("controlled by {} {} (uid {})", h.kind, h.name, h.uid),
            ),
            kind: want.as_ref().map_or_else(String::new, |w| w.kind.clone()),
            owner: want.map_or_else(String::new, |w| w.name),
        }),
    }
}

/// Deletes a finished Job; garbage collection removes its Pods (owned by
/// it). Already gone is fine.
pub async fn delete(client: &Client, namespace: &str, name: &str) -> Result<(), kube::Error> {
    delete_with(client, namespace, name, DeleteParams::background()).await
}

/// Deletes the Job under `name` only if it is still the object with `uid`
/// (a precondition: a Job created under the name since is left alone), in
/// the background (its Pods follow by garbage collection). Already gone,
/// or replaced, is fine.
pub async fn delete_uid(
    client: &Client,
    namespace: &str,
    name: &str,
    uid: &str,
) -> Result<(), kube::Error> {
    let mut params = DeleteParams::background();
    params.preconditions = Some(kube::api::Preconditions {
        uid: Some(uid.to_owned()),
        resource_version: None,
    });
    match delete_with(client, namespace, name, params).await {
        Err(e) if is_conflict(&e) => Ok(()),
        done => done,
    }
}

async fn delete_with(
    client: &Client,
    namespace: &str,
    name: &str,
    params: DeleteParams,
) -> Result<(), kube::Error> {
    let jobs: Api<Job> = Api::namespaced(client.clone(), namespace);
    match jobs.delete(name, &params).await {
        Ok(_) => Ok(()),
        Err(e) if is_not_found(&e) => Ok(()),
        Err(e) => Err(e),
    }
}

fn is_conflict(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 409)
}

fn is_not_found(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 404)
}

/// How a Job ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finished {
    /// `Complete` (true) or `Failed` (false).
    pub succeeded: bool,
    /// When (completionTime, else the condition's transition).
    pub at: Option<Timestamp>,
    /// The Failed condition's reason and message (e.g. DeadlineExceeded).
    pub message: Option<String>,
}

/// Whether a Job has a `Complete` or `Failed` condition; a Job without one
/// is in flight.
pub fn finished(job: &Job) -> Option<Finished> {
    let status = job.status.as_ref()?;
    let cond = status
        .conditions
        .iter()
        .flatten()
        .find(|c| (c.type_ == "Complete" || c.type_ == "Failed") && c.status == "True")?;
    let succeeded = cond.type_ == "Complete";
    let at = status
        .completion_time
        .as_ref()
        .filter(|_| succeeded)
        .or(cond.last_transition_time.as_ref())
        .map(|t| t.0);
    let message = (!succeeded).then(|| match (cond.reason.as_deref(), cond.message.as_deref()) {
        (Some(r), Some(m)) if !m.is_empty() => format!("{r}: {m}"),
        (Some(r), _) => r.to_owned(),
        (None, Some(m)) => m.to_owned(),
        (None, None) => "the Job failed".to_owned(),
    });
    Some(Finished {
        succeeded,
        at,
        message,
    })
}

/// When a Job started: `status.startTime` (server time, set by the Job
/// controller), else its creation.
pub fn started_at(job: &Job) -> Option<Timestamp> {
    job.status
        .as_ref()
        .and_then(|s| s.start_time.as_ref())
        .or(job.metadata.creation_timestamp.as_ref())
        .map(|t| t.0)
}

/// How a failed Job's Pod ended: its first container that exited non-zero.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodEnd {
    /// `container NAME: ` and its termination message (the container's
    /// `terminationMessagePath`, or its last log lines with
    /// `FallbackToLogsOnError`) as one sanitised line, else its reason and
    /// exit code.
    pub message: String,
    /// The container's exit code.
    pub exit_code: i32,
    /// The container refused to act, by the job contract's two marks
    /// ([`is_refusal`]).
    pub refused: bool,
}

/// The exit code with which a job script refuses to act (a configuration
/// error on its subject, e.g. an unpinned host key or invalid input).
pub const REFUSED_EXIT_CODE: i32 = 2;

/// How a refusing script's termination message begins.
pub const REFUSAL_MARK: &str = "refused:";

/// A container refused to act only when it says so twice: exit code 2 and
/// a termination message that begins with `refused:`. Exit code 2 alone
/// is too common to mean it (bash's own usage errors, `grep`, many tools
/// exit 2), and a refusal is not counted as a failed attempt: a Job that
/// merely crashed must not pass for one.
pub fn is_refusal(exit_code: i32, message: Option<&str>) -> bool {
    exit_code == REFUSED_EXIT_CODE
        && message.is_some_and(|m| m.trim_start().starts_with(REFUSAL_MARK))
}

/// How a failed Job's Pod ended, from a live list of its Pods; the newest
/// Pod with a failed container wins. Only Pods the Job controls count (the
/// `job-name` label narrows the list, the controller owner reference's uid
/// decides): anyone who may create Pods in the namespace can label one with
/// a Job's name, and its "termination message" must not become the Job's.
pub async fn failed_pod(client: &Client, job: &Job) -> Result<Option<PodEnd>, kube::Error> {
    Ok(newest_failure(pods_of(client, job).await?, job_uid(job)))
}

/// How a succeeded Job's Pod ended: the termination messages, as written,
/// of the containers of its newest succeeded Pod (phase `Succeeded`) that
/// exited 0; `None` when the Job controls no succeeded Pod. Only Pods the
/// Job controls count, as for [`failed_pod`]: a build Job's result line is
/// read here, and nobody else's Pod may speak for it.
pub async fn succeeded_pod(client: &Client, job: &Job) -> Result<Option<Vec<String>>, kube::Error> {
    Ok(newest_success(pods_of(client, job).await?, job_uid(job)))
}

fn job_uid(job: &Job) -> &str {
    job.metadata.uid.as_deref().unwrap_or_default()
}

/// The Pods labelled with the Job's name (a live list); [`controlled`]
/// decides which are the Job's.
async fn pods_of(client: &Client, job: &Job) -> Result<Vec<Pod>, kube::Error> {
    let Some(name) = job.metadata.name.as_deref() else {
        return Ok(Vec::new());
    };
    let pods: Api<Pod> = Api::namespaced(client.clone(), &job.namespace().unwrap_or_default());
    let list = pods
        .list(&ListParams::default().labels(&format!("{POD_JOB_NAME_LABEL}={name}")))
        .await?;
    Ok(list.items)
}

/// The `pods` controlled by the Job `job_uid` (a controller owner reference
/// with that uid; the `job-name` label anyone may set), newest first. A Job
/// without a uid controls nothing.
fn controlled(mut pods: Vec<Pod>, job_uid: &str) -> Vec<Pod> {
    pods.retain(|p| {
        !job_uid.is_empty()
            && p.owner_references()
                .iter()
                .any(|o| o.controller == Some(true) && o.uid == job_uid)
    });
    pods.sort_by_key(|p| std::cmp::Reverse(p.metadata.creation_timestamp.clone()));
    pods
}

/// The end of the newest of `pods` controlled by the Job `job_uid` that has
/// a failed container.
fn newest_failure(pods: Vec<Pod>, job_uid: &str) -> Option<PodEnd> {
    controlled(pods, job_uid).iter().find_map(pod_end)
}

/// The termination messages of the newest of `pods` controlled by the Job
/// `job_uid` that succeeded.
fn newest_success(pods: Vec<Pod>, job_uid: &str) -> Option<Vec<String>> {
    controlled(pods, job_uid).iter().find_map(pod_success)
}

/// A succeeded Pod's containers' termination messages (those that exited
/// 0), as written: a result line is parsed, never shown.
pub fn pod_success(pod: &Pod) -> Option<Vec<String>> {
    let status = pod
        .status
        .as_ref()
        .filter(|s| s.phase.as_deref() == Some("Succeeded"))?;
    Some(
        status
            .container_statuses
            .iter()
            .flatten()
            .filter_map(|cs| cs.state.as_ref()?.terminated.as_ref())
            .filter(|t| t.exit_code == 0)
            .filter_map(|t| t.message.clone())
            .collect(),
    )
}

/// The first container (init containers first) that terminated with a
/// non-zero exit code: its message (else reason and exit code) and code.
pub fn pod_end(pod: &Pod) -> Option<PodEnd> {
    let status = pod.status.as_ref()?;
    let statuses = status
        .init_container_statuses
        .iter()
        .flatten()
        .chain(status.container_statuses.iter().flatten());
    statuses.into_iter().find_map(|cs| {
        let t = cs
            .state
            .as_ref()
            .and_then(|s| s.terminated.as_ref())
            .or_else(|| cs.last_state.as_ref().and_then(|s| s.terminated.as_ref()))?;
        if t.exit_code == 0 {
            return None;
        }
        let text = match (t.message.as_deref().map(one_line), &t.reason) {
            (Some(m), _) if !m.is_empty() => m,
            (_, Some(r)) => format!("{r} (exit code {})", t.exit_code),
            _ => format!("exit code {}", t.exit_code),
        };
        Some(PodEnd {
            message: format!("container {}: {}", cs.name, cut(&text, MAX_MESSAGE)),
            exit_code: t.exit_code,
            refused: is_refusal(t.exit_code, t.message.as_deref()),
        })
    })
}

/// `text` as one line of printable characters: control characters
/// (newlines, escapes) and invisible bidirectional overrides, which could
/// make a status line read differently from what it holds, become spaces,
/// and runs of spaces one.
fn one_line(text: &str) -> String {
    let printable: String = text
        .chars()
        .map(|c| {
            let bidi = matches!(c, '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}');
            if c.is_control() || bidi { ' ' } else { c }
        })
        .collect();
    printable.split_whitespace().collect::<Vec<_>>().join(" ")
}

fn cut(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_owned();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn owner() -> OwnerReference {
        OwnerReference {
            api_version: "patchloop.dev/v1alpha1".into(),
            kind: "Workload".into(),
            name: "web-01".into(),
            uid: "1234".into(),
            controller: Some(true),
            block_owner_deletion: None,
        }
    }

    fn request(template: &serde_json::Value) -> JobRequest<'_> {
        JobRequest {
            template,
            template_field: "spec.remediation.jobTemplate",
            name: "web-01-abc-1".into(),
            namespace: "fleet",
            labels: BTreeMap::from([(WORKLOAD_LABEL.into(), "web-01".into())]),
            purpose: Purpose::Remediation,
            owner: owner(),
            deadline_seconds: 600,
            env: vec![
                ("PATCHLOOP_WORKLOAD".into(), "web-01".into()),
                (
                    "PATCHLOOP_TARGET".into(),
                    r#"{"address":"10.0.3.17"}"#.into(),
                ),
            ],
            files: BTreeMap::from([("packages".into(), "libc6 2.36-9+deb12u3 glibc\n".into())]),
        }
    }

    #[test]
    fn every_contract_names_the_job_its_purpose_and_what_it_installs() {
        let c = Contract::new(
            Purpose::Build,
            "fleet",
            "Debian:12",
            "base-build",
            &["CVE-1", "DSA-2"],
            "libc6 2.36-9\n".into(),
        )
        .with_env("PATCHLOOP_TEMPLATE", "base")
        .with_file("nonce", "n0");
        let env: Vec<(&str, &str)> = c
            .env
            .iter()
            .map(|(n, v)| (n.as_str(), v.as_str()))
            .collect();
        assert_eq!(
            env,
            [
                ("PATCHLOOP_PURPOSE", "build"),
                ("PATCHLOOP_NAMESPACE", "fleet"),
                ("PATCHLOOP_PLATFORM", "Debian:12"),
                ("PATCHLOOP_ADVISORIES", "CVE-1,DSA-2"),
                ("PATCHLOOP_JOB", "base-build"),
                ("PATCHLOOP_PACKAGES_FILE", "/var/run/patchloop/packages"),
                ("PATCHLOOP_TEMPLATE", "base"),
            ]
        );
        assert_eq!(
            c.files,
            BTreeMap::from([
                ("advisories".to_owned(), "CVE-1\nDSA-2\n".to_owned()),
                ("nonce".to_owned(), "n0".to_owned()),
                ("packages".to_owned(), "libc6 2.36-9\n".to_owned()),
            ])
        );
    }

    #[test]
    fn the_contract_is_added_and_retries_belong_to_the_controller() {
        let template = json!({
            "metadata": {"labels": {"team": "ops"}, "annotations": {"a": "b"}},
            "spec": {
                "backoffLimit": 6,
                "activeDeadlineSeconds": 99999,
                "template": {"spec": {
                    "restartPolicy": "OnFailure",
                    "initContainers": [{"name": "prep", "image": "busybox"}],
                    "containers": [{"name": "patch", "image": "debian:12",
                                    "env": [{"name": "PATCHLOOP_WORKLOAD", "value": "forged"},
                                            {"name": "KEEP", "value": "1"}]}],
                }}
            }
        });
        let job = build(&request(&template)).expect("a job");
        assert_eq!(job.metadata.name.as_deref(), Some("web-01-abc-1"));
        let labels = job.metadata.labels.as_ref().expect("labels");
        assert_eq!(labels["team"], "ops");
        assert_eq!(labels[MANAGED_BY_LABEL], MANAGED_BY);
        assert_eq!(labels[PURPOSE_LABEL], "remediation");
        assert_eq!(labels[WORKLOAD_LABEL], "web-01");
        assert_eq!(job.metadata.owner_references, Some(vec![owner()]));
        assert_eq!(
            job.metadata.annotations,
            Some(BTreeMap::from([("a".into(), "b".into())]))
        );
        let spec = job.spec.as_ref().expect("spec");
        assert_eq!(spec.backoff_limit, Some(0));
        assert_eq!(spec.active_deadline_seconds, Some(600));
        let pod = spec.template.spec.as_ref().expect("pod");
        assert_eq!(pod.restart_policy.as_deref(), Some("Never"));
        assert_eq!(
            spec.template
                .metadata
                .as_ref()
                .and_then(|m| m.labels.as_ref())
                .map(|l| l[WORKLOAD_LABEL].as_str()),
            Some("web-01")
        );
        for c in pod
            .containers
            .iter()
            .chain(pod.init_containers.iter().flatten())
        {
            let env: Vec<(&str, &str)> = c
                .env
                .iter()
                .flatten()
                .map(|e| (e.name.as_str(), e.value.as_deref().unwrap_or("")))
                .collect();
            assert!(env.contains(&("PATCHLOOP_WORKLOAD", "web-01")), "{env:?}");
            assert!(!env.contains(&("PATCHLOOP_WORKLOAD", "forged")));
            let mount = &c.volume_mounts.as_ref().expect("mounts")[0];
            assert_eq!(
                (
                    mount.name.as_str(),
                    mount.mount_path.as_str(),
                    mount.read_only
                ),
                (CONTRACT_VOLUME, CONTRACT_DIR, Some(true))
            );
        }
        assert!(
            pod.containers[0]
                .env
                .iter()
                .flatten()
                .any(|e| e.name == "KEEP")
        );
    }

    #[test]
    fn the_contract_files_are_pod_template_annotations_mounted_through_the_downward_api() {
        let template = json!({"spec": {"template": {
            "metadata": {"annotations": {"patchloop.dev/contract-packages": "forged 1", "keep": "1"}},
            "spec": {
                "volumes": [{"name": CONTRACT_VOLUME, "configMap": {"name": "forged"}}],
                "containers": [{"name": "patch", "image": "debian:12",
                                "volumeMounts": [{"name": "other", "mountPath": CONTRACT_DIR}]}]}}}});
        let mut req = request(&template);
        req.files.insert("nonce".into(), "n-1".into());
        let job = build(&req).expect("a job");
        assert_eq!(
            contract_file(&job, PACKAGES_FILE),
            Some("libc6 2.36-9+deb12u3 glibc\n")
        );
        assert_eq!(contract_file(&job, "nonce"), Some("n-1"));
        assert_eq!(contract_file(&job, "absent"), None);
        let spec = job.spec.as_ref().expect("spec");
        let annotations = spec
            .template
            .metadata
            .as_ref()
            .and_then(|m| m.annotations.as_ref())
            .expect("pod annotations");
        assert_eq!(annotations["keep"], "1");
        let pod = spec.template.spec.as_ref().expect("pod");
        let volumes = pod.volumes.as_ref().expect("volumes");
        assert_eq!(volumes.len(), 1, "{volumes:?}");
        assert!(volumes[0].config_map.is_none());
        let items: Vec<(&str, &str)> = volumes[0]
            .downward_api
            .as_ref()
            .and_then(|d| d.items.as_ref())
            .expect("downward API items")
            .iter()
            .map(|i| {
                (
                    i.path.as_str(),
                    i.field_ref.as_ref().map_or("", |f| f.field_path.as_str()),
                )
            })
            .collect();
        assert_eq!(
            items,
            vec![
                (
                    "nonce",
                    "metadata.annotations['patchloop.dev/contract-nonce']"
                ),
                (
                    "packages",
                    "metadata.annotations['patchloop.dev/contract-packages']"
                ),
            ]
        );
        let mounts = pod.containers[0].volume_mounts.as_ref().expect("mounts");
        assert_eq!(
            mounts.len(),
            1,
            "the template's own mount there is replaced"
        );
        // The Job itself carries no copy: verification reads the Pod template.
        assert!(job.metadata.annotations.is_none());
    }

    #[test]
    fn a_job_of_an_earlier_version_has_no_contract_files() {
        // Its list was in a ConfigMap (and a copy in a Job annotation),
        // neither of which is read back: anyone who may write ConfigMaps
        // could have replaced the one.
        let legacy: Job = serde_json::from_value(json!({
            "metadata": {"name": "web-01-abc-1",
                         "annotations": {"patchloop.dev/packages": "libc6 2.36-9+deb12u3 glibc\n"}},
            "spec": {"template": {"spec": {
                "volumes": [{"name": CONTRACT_VOLUME, "configMap": {"name": "web-01-abc-1"}}],
                "containers": [{"name": "patch", "image": "debian:12"}]}}}
        }))
        .expect("a Job");
        assert_eq!(contract_file(&legacy, PACKAGES_FILE), None);
        assert_eq!(contract_file(&Job::default(), PACKAGES_FILE), None);
    }

    /// The kubelet's expansion of an env `value` (third_party/forked/golang/
    /// expansion in Kubernetes): `$$` is a literal `$`, `$(NAME)` a defined
    /// variable's value, anything else is kept as written.
    fn kubelet_expand(value: &str, defined: &BTreeMap<&str, &str>) -> String {
        let mut out = String::new();
        let mut rest = value;
        while let Some(at) = rest.find('$') {
            out.push_str(&rest[..at]);
            let after = &rest[at + 1..];
            if let Some(tail) = after.strip_prefix('$') {
                out.push('$');
                rest = tail;
            } else if let Some(close) = after.strip_prefix('(').and_then(|a| a.find(')')) {
                let name = &after[1..=close];
                match defined.get(name) {
                    Some(v) => out.push_str(v),
                    None => out.push_str(&format!("$({name})")),
                }
                rest = &after[close + 2..];
            } else {
                out.push('$');
                rest = after;
            }
        }
        out.push_str(rest);
        out
    }

    #[test]
    fn no_contract_value_is_expanded_by_the_kubelet() {
        let defined = BTreeMap::from([
            ("SSH_PASSPHRASE", "sentinel-passphrase"),
            ("PATCHLOOP_NAMESPACE", "fleet"),
            ("X", "sentinel-x"),
        ]);
        // The model expands what the kubelet expands.
        assert_eq!(kubelet_expand("$(X)", &defined), "sentinel-x");
        assert_eq!(kubelet_expand("$$(X)", &defined), "$(X)");
        let values = [
            "$(SSH_PASSPHRASE)",
            "$(PATCHLOOP_NAMESPACE)",
            "$$(X)",
            "$$$(X)",
            "$(X",
            "$($(X))",
            "a$(X)b$",
            "$",
            r#"{"address":"$(SSH_PASSPHRASE)"}"#,
            "no dollar",
        ];
        for v in values {
            assert_eq!(kubelet_expand(&unexpandable(v), &defined), v, "{v}");
        }
        let template = json!({"spec": {"template": {"spec": {"containers": [
            {"name": "patch", "image": "debian:12",
             "env": [{"name": "SSH_PASSPHRASE", "value": "sentinel-passphrase"}]}]}}}});
        let mut req = request(&template);
        req.env = values
            .iter()
            .enumerate()
            .map(|(i, v)| (format!("PATCHLOOP_V{i}"), (*v).to_owned()))
            .collect();
        let job = build(&req).expect("a job");
        let pod = job.spec.and_then(|s| s.template.spec).expect("pod");
        let env = pod.containers[0].env.as_ref().expect("env");
        for (i, v) in values.iter().enumerate() {
            let var = env
                .iter()
                .find(|e| e.name == format!("PATCHLOOP_V{i}"))
                .expect("contract var");
            let value = var.value.as_deref().unwrap_or_default();
            assert_eq!(kubelet_expand(value, &defined), *v);
        }
    }

    #[test]
    fn a_contract_over_the_annotation_limit_builds_no_job() {
        let template = json!({"spec": {"template": {"spec": {
            "containers": [{"name": "patch", "image": "debian:12"}]}}}});
        let mut req = request(&template);
        let key = contract_annotation(PACKAGES_FILE).len();
        let fits = "p".repeat(MAX_ANNOTATION_BYTES - key);
        req.files = BTreeMap::from([(PACKAGES_FILE.into(), fits.clone())]);
        let job = build(&req).expect("exactly at the limit");
        assert_eq!(contract_file(&job, PACKAGES_FILE), Some(fits.as_str()));
        req.files.insert(
            PACKAGES_FILE.into(),
            "p".repeat(MAX_ANNOTATION_BYTES - key + 1),
        );
        match build(&req) {
            Err(BuildError::ContractTooLarge {
                bytes,
                files,
                limit,
            }) => assert_eq!((bytes, files, limit), (262_145, 262_145, 262_144)),
            other => panic!("expected ContractTooLarge, got {other:?}"),
        }
        // The template's own Pod annotations count against the same budget.
        let annotated = json!({"spec": {"template": {
            "metadata": {"annotations": {"big": "x".repeat(1000)}},
            "spec": {"containers": [{"name": "patch", "image": "debian:12"}]}}}});
        let mut req = request(&annotated);
        req.files = BTreeMap::from([(PACKAGES_FILE.into(), fits)]);
        let e = build(&req).expect_err("over with the template's annotations");
        assert!(e.to_string().contains("262144"), "{e}");
    }

    #[test]
    fn a_termination_message_is_one_line_of_printable_text() {
        assert_eq!(
            one_line("refused:\n\x1b[31mbad\x1b[0m\ttarget\u{202e}gnp.exe\r\n"),
            "refused: [31mbad [0m target gnp.exe"
        );
        assert_eq!(one_line(" \n\t "), "");
    }

    #[test]
    fn a_broken_template_names_the_field() {
        let no_spec = json!({"metadata": {}});
        let template_error = |template: &serde_json::Value| match build(&request(template)) {
            Err(BuildError::Template(e)) => e,
            other => panic!("expected a template error, got {other:?}"),
        };
        let e = template_error(&no_spec);
        assert_eq!(e.field, "spec.remediation.jobTemplate.spec");
        let no_containers = json!({"spec": {"template": {"spec": {"containers": []}}}});
        let e = template_error(&no_containers);
        assert_eq!(
            e.field,
            "spec.remediation.jobTemplate.spec.template.spec.containers"
        );
        let wrong_type = json!({"spec": {"backoffLimit": "many"}});
        let e = template_error(&wrong_type);
        assert_eq!(e.field, "spec.remediation.jobTemplate");
        assert!(e.message.contains("JobTemplateSpec"), "{e}");
    }

    #[test]
    fn job_names_are_deterministic_and_at_most_63_characters() {
        assert_eq!(job_name("web-01", "abcdef0123-1"), "web-01-abcdef0123-1");
        let long = "a".repeat(40) + "." + &"b".repeat(200);
        let other = "a".repeat(40) + "." + &"c".repeat(200);
        let n1 = job_name(&long, "abcdef0123-12");
        let n2 = job_name(&other, "abcdef0123-12");
        assert!(
            n1.len() <= MAX_JOB_NAME && n2.len() <= MAX_JOB_NAME,
            "{n1} {n2}"
        );
        assert_ne!(n1, n2);
        assert_eq!(n1, job_name(&long, "abcdef0123-12"));
        assert!(n1.ends_with("-abcdef0123-12"));
        // The hash of the whole base is 64 bits wide.
        let hash = n1
            .trim_end_matches("-abcdef0123-12")
            .rsplit('-')
            .next()
            .expect("a hash");
        assert_eq!(hash.len(), JOB_NAME_HASH_HEX, "{n1}");
        assert!(hash.bytes().all(|b| b.is_ascii_hexdigit()), "{n1}");
        let dashy = "x".repeat(48) + "-----" + &"y".repeat(30);
        assert!(
            !job_name(&dashy, "s-1").contains("--"),
            "{}",
            job_name(&dashy, "s-1")
        );
        assert_eq!(label_value("web-01"), "web-01");
        let v = label_value(&long);
        assert!(v.len() <= 63 && v != label_value(&other));
    }

    #[test]
    fn a_job_is_finished_by_its_complete_or_failed_condition() {
        let job: Job = serde_json::from_value(json!({
            "metadata": {"name": "j", "creationTimestamp": "2026-11-24T08:00:00Z"},
            "status": {"startTime": "2026-11-24T08:00:05Z", "active": 1}
        }))
        .expect("job");
        assert_eq!(finished(&job), None);
        assert_eq!(
            started_at(&job),
            Some("2026-11-24T08:00:05Z".parse().expect("ts"))
        );
        let failed: Job = serde_json::from_value(json!({
            "metadata": {"name": "j"},
            "status": {"conditions": [{"type": "Failed", "status": "True", "reason": "DeadlineExceeded",
                        "message": "Job was active longer than specified deadline",
                        "lastTransitionTime": "2026-11-24T09:00:00Z"}]}
        }))
        .expect("job");
        let f = finished(&failed).expect("finished");
        assert!(!f.succeeded);
        assert_eq!(f.at, Some("2026-11-24T09:00:00Z".parse().expect("ts")));
        assert_eq!(
            f.message.as_deref(),
            Some("DeadlineExceeded: Job was active longer than specified deadline")
        );
        let complete: Job = serde_json::from_value(json!({
            "metadata": {"name": "j"},
            "status": {"completionTime": "2026-11-24T08:10:00Z",
                       "conditions": [{"type": "Complete", "status": "True"}]}
        }))
        .expect("job");
        let c = finished(&complete).expect("finished");
        assert!(c.succeeded && c.message.is_none());
        assert_eq!(c.at, Some("2026-11-24T08:10:00Z".parse().expect("ts")));
    }

    #[test]
    fn a_failed_pods_end_explains_the_failure() {
        let pod: Pod = serde_json::from_value(json!({
            "metadata": {"name": "p"},
            "status": {"containerStatuses": [
                {"name": "sidecar", "ready": false, "restartCount": 0, "image": "x", "imageID": "",
                 "state": {"terminated": {"exitCode": 0}}},
                {"name": "patch", "ready": false, "restartCount": 0, "image": "x", "imageID": "",
                 "state": {"terminated": {"exitCode": 100, "reason": "Error",
                                          "message": "E: Unable to locate package libc6\n"}}}
            ]}
        }))
        .expect("pod");
        assert_eq!(
            pod_end(&pod),
            Some(PodEnd {
                message: "container patch: E: Unable to locate package libc6".into(),
                exit_code: 100,
                refused: false,
            })
        );
        let quiet: Pod = serde_json::from_value(json!({
            "metadata": {"name": "p"},
            "status": {"containerStatuses": [
                {"name": "patch", "ready": false, "restartCount": 0, "image": "x", "imageID": "",
                 "state": {"terminated": {"exitCode": 137, "reason": "OOMKilled"}}}
            ]}
        }))
        .expect("pod");
        assert_eq!(
            pod_end(&quiet).map(|e| e.message).as_deref(),
            Some("container patch: OOMKilled (exit code 137)")
        );
        assert_eq!(cut(&"é".repeat(10), 5), "éé…");
    }

    #[test]
    fn a_refusal_takes_exit_code_2_and_the_mark() {
        let cases: &[(i32, Option<&str>, bool)] = &[
            (2, Some("refused: unknown target web-1"), true),
            (
                2,
                Some("  refused: leading space is still the mark\n"),
                true,
            ),
            // bash's usage errors and many tools exit 2 without the mark.
            (2, Some("line 3: syntax error near unexpected token"), false),
            (2, Some("not refused: but says so late"), false),
            (2, None, false),
            (1, Some("refused: but exited 1"), false),
            (0, Some("refused:"), false),
        ];
        for &(code, message, refused) in cases {
            assert_eq!(is_refusal(code, message), refused, "{code} {message:?}");
        }
    }

    #[test]
    fn only_pods_the_job_controls_speak_for_it() {
        // A Pod that ended with `exit` (0: Succeeded) and `message`.
        let pod = |name: &str,
                   created: &str,
                   owner: Option<(&str, bool)>,
                   exit: i32,
                   message: &str|
         -> Pod {
            let owners: Vec<_> = owner
                .map(|(uid, controller)| {
                    json!({"apiVersion": "batch/v1", "kind": "Job", "name": "j", "uid": uid,
                           "controller": controller})
                })
                .into_iter()
                .collect();
            serde_json::from_value(json!({
                "metadata": {"name": name, "creationTimestamp": created, "ownerReferences": owners},
                "status": {"phase": if exit == 0 { "Succeeded" } else { "Failed" }, "containerStatuses": [
                    {"name": "patch", "ready": false, "restartCount": 0, "image": "x", "imageID": "",
                     "state": {"terminated": {"exitCode": exit, "message": message}}}
                ]}
            }))
            .expect("pod")
        };
        for exit in [2, 0] {
            let real = pod(
                "real",
                "2026-11-24T08:00:00Z",
                Some(("job-uid", true)),
                exit,
                "real end",
            );
            let decoys = [
                // Newer, labelled like the Job's Pods, but owned by nothing,
                // by another uid, or by the Job without being controlled by it.
                pod("unowned", "2026-11-24T09:00:00Z", None, exit, "forged"),
                pod(
                    "other",
                    "2026-11-24T09:00:00Z",
                    Some(("other-uid", true)),
                    exit,
                    "forged",
                ),
                pod(
                    "weak",
                    "2026-11-24T09:00:00Z",
                    Some(("job-uid", false)),
                    exit,
                    "forged",
                ),
            ];
            let mut all = decoys.to_vec();
            all.push(real);
            if exit == 0 {
                assert_eq!(
                    newest_success(all.clone(), "job-uid"),
                    Some(vec!["real end".to_owned()])
                );
                assert_eq!(newest_failure(all, "job-uid"), None);
                assert_eq!(newest_success(decoys.to_vec(), "job-uid"), None);
                // A Job without a uid controls nothing.
                assert_eq!(newest_success(decoys.to_vec(), ""), None);
            } else {
                let end = newest_failure(all.clone(), "job-uid").expect("the Job's own Pod");
                assert_eq!(end.message, "container patch: real end");
                assert_eq!(newest_success(all, "job-uid"), None);
                assert_eq!(newest_failure(decoys.to_vec(), "job-uid"), None);
            }
        }
    }

    #[test]
    fn an_existing_job_is_a_repeat_only_when_the_same_owner_controls_it() {
        let template = json!({"spec": {"template": {"spec": {
            "containers": [{"name": "patch", "image": "debian:12"}]}}}});
        let ours = build(&request(&template)).expect("job");
        assert!(matches!(
            classify_existing(&ours, ours.clone()),
            Created::Existed(_)
        ));
        let holder = |refs: serde_json::Value| {
            let mut j = ours.clone();
            j.metadata.owner_references = serde_json::from_value(refs).expect("refs");
            j
        };
        for (existing, says) in [
            (holder(json!(null)), "controlled by no object"),
            (
                holder(
                    json!([{"apiVersion": "patchloop.dev/v1alpha1", "kind": "Workload",
                               "name": "web-01", "uid": "1234", "controller": false}]),
                ),
                "controlled by no object",
            ),
            (
                holder(
                    json!([{"apiVersion": "patchloop.dev/v1alpha1", "kind": "Workload",
                               "name": "web-01", "uid": "old-uid", "controller": true}]),
                ),
                "controlled by Workload web-01 (uid old-uid)",
            ),
        ] {
            let Created::Taken(taken) = classify_existing(&ours, existing) else {
                panic!("a Job another owner controls is not ours: {says}");
            };
            assert_eq!(taken.holder, says);
            let text = taken.to_string();
            assert!(
                text.contains(&format!("a Job named {} already exists", ours.name_any()))
                    && text.contains("not by this Workload web-01"),
                "{text}"
            );
        }
    }
}
