//! Kubernetes glue: one reconciler per kind, thin, around the pure engine.
//!
//! Who writes what (one field manager each; the table is in ARCHITECTURE.md):
//! each reconciler writes its own kind's status — workload, policy,
//! exception, inventory, feed (and the shared advisory store), template
//! (except the published revision) and change (a request's status, and the
//! Template's revision, image and history when it publishes). Triggers, not
//! polling: each reconciler is woken by its own watch, by the objects it
//! depends on (through [`Triggers`]), and by the engine's next-change
//! instant (the wake table is in ARCHITECTURE.md).

pub mod advisories;
pub mod change;
pub mod crd_check;
pub mod dereference;
pub mod exception;
pub mod failpoint;
pub mod feed;
pub mod feed_source;
pub mod http;
pub mod inventory;
pub mod jobs;
pub mod leader;
pub mod metrics;
pub mod policy;
pub mod priority;
pub mod remediation;
pub mod run;
pub mod scope;
pub mod template;
pub mod triggers;
pub mod workload;

use std::borrow::Cow;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use futures::channel::mpsc::UnboundedSender;
use k8s_openapi::api::core::v1::ObjectReference;
use kube::api::{Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::reflector::ObjectRef;
use kube::{Api, Client, Resource};
use tracing::Instrument;

use self::advisories::AdvisoryStore;
use self::metrics::Metrics;
use self::priority::VerdictsFirst;
use crate::engine::backoff::{self, Backoff};
use crate::engine::outcome::Notice;

/// Errors of a reconcile; the error policy ([`retry_with_backoff`])
/// retries the object with per-object exponential backoff.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The apiserver refused or failed a request; `call` names the step and
    /// the request when the call site labelled it ([`InStep::step`]), and is
    /// `None` for a bare `?` on a `kube::Error`.
    #[error("{}", describe_failure(call.as_ref(), source))]
    Kube {
        /// The step of the reconcile and the request it made.
        call: Option<Call>,
        /// The apiserver's answer.
        source: kube::Error,
    },
    /// A status could not be serialized.
    #[error("serializing status: {0}")]
    Serialize(#[from] serde_json::Error),
    /// An object lacks a field the apiserver always sets.
    #[error("object without {0}")]
    Missing(&'static str),
    /// A reconcile took too long (a request never answered); it is retried.
    #[error("reconcile timed out after {0:?}")]
    Timeout(Duration),
}

/// An API request of a known step, named in errors, logs and Events.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Call {
    /// The step of the reconcile.
    pub step: Step,
    /// The request: a verb and a kind, e.g. `patch Workload/status` or
    /// `create remediation Job`.
    pub request: Cow<'static, str>,
}

/// A call site that did not name its step (any `?` on a `kube::Error`)
/// still converts; its errors say only that an API call failed.
impl From<kube::Error> for Error {
    fn from(source: kube::Error) -> Self {
        Error::Kube { call: None, source }
    }
}

/// Labels the failure of an API request with the step that made it:
/// `jobs.create(..).await.step(Step::Apply, "create remediation Job")?`.
pub trait InStep<T> {
    /// The result, its error naming `step` and `request`.
    fn step(self, step: Step, request: impl Into<Cow<'static, str>>) -> Result<T, Error>;
}

impl<T> InStep<T> for Result<T, kube::Error> {
    fn step(self, step: Step, request: impl Into<Cow<'static, str>>) -> Result<T, Error> {
        self.map_err(|source| Error::Kube {
            call: Some(Call {
                step,
                request: request.into(),
            }),
            source,
        })
    }
}

/// The steps of a reconcile, named in its errors, logs and Events.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Reading what the object refers to.
    Dereference,
    /// Creating or changing the objects it drives (Jobs, ChangeRequests).
    Apply,
    /// Writing its status.
    Status,
}

impl std::fmt::Display for Step {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Step::Dereference => "dereference",
            Step::Apply => "apply",
            Step::Status => "status",
        })
    }
}

/// The log message of a failed API request.
fn describe_failure(call: Option<&Call>, source: &kube::Error) -> String {
    match call {
        Some(Call { step, request }) => format!("{step}: {request} failed: {source}"),
        None => format!("Kubernetes API: {source}"),
    }
}

impl Error {
    /// The step that failed, for logs (`api` when the call was not labelled).
    pub fn step(&self) -> String {
        match self {
            Error::Kube { call: None, .. } => "api".into(),
            Error::Kube {
                call: Some(call), ..
            } => call.step.to_string(),
            Error::Serialize(_) => Step::Status.to_string(),
            Error::Missing(_) => Step::Dereference.to_string(),
            Error::Timeout(_) => "timeout".into(),
        }
    }

    /// The error for an Event that the object's author and others read: the
    /// step, the call and the apiserver's code and reason, but not its
    /// message, which can quote the object's own fields back.
    pub fn summary(&self) -> String {
        match self {
            Error::Kube {
                call: Some(Call { step, request }),
                source,
            } => format!("step {step}: {request} failed: {}", answer(source)),
            Error::Kube { call: None, source } => match source {
                kube::Error::Api(s) => match s.details.as_ref().filter(|d| !d.kind.is_empty()) {
                    Some(d) => format!("an API call on {} failed: {}", d.kind, answer(source)),
                    None => format!("an API call failed: {}", answer(source)),
                },
                _ => format!("an API call failed: {}", answer(source)),
            },
            Error::Serialize(_) => "step status: the status could not be serialized".into(),
            Error::Missing(field) => format!("step dereference: the object has no {field}"),
            Error::Timeout(after) => format!("the reconcile timed out after {after:?}"),
        }
    }
}

/// The apiserver's answer, without its message.
fn answer(e: &kube::Error) -> String {
    match e {
        kube::Error::Api(s) => format!("the apiserver answered {} {}", s.code, s.reason),
        _ => "the apiserver could not be reached".to_owned(),
    }
}

/// Settings of `patchloop run` that reconcilers read.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Namespaces to watch; empty means all.
    pub namespaces: Vec<String>,
    /// Label selector of the AdvisoryFeeds to load.
    pub feed_selector: Option<String>,
    /// The most any AdvisoryFeed's `url.maxBytes` may ask for.
    pub feed_max_bytes: u64,
    /// How long after start an ecosystem without data keeps its compliance.
    pub grace: jiff::SignedDuration,
    /// The longest a reconciler sleeps when nothing is scheduled.
    pub max_requeue: Duration,
    /// Leader election; `None` runs as the only replica.
    pub leader: Option<leader::LeaderSettings>,
}

/// What every reconciler shares.
pub struct Shared {
    /// The API client.
    pub client: Client,
    /// Publishes Events (on transitions only).
    pub recorder: Recorder,
    /// Publishes Events in the background.
    pub events: EventQueue,
    /// Lets Workload verdicts go before bookkeeping writes and Events.
    pub verdicts_first: Arc<VerdictsFirst>,
    /// The advisory data of every feed.
    pub advisories: Arc<AdvisoryStore>,
    /// Prometheus metrics.
    pub metrics: Metrics,
    /// Settings.
    pub settings: Settings,
    /// Whether this process leads (only the leader reconciles and writes).
    pub leadership: leader::Leadership,
    /// Consecutive reconcile failures per object (`ObjectRef` as text:
    /// kind, name and namespace), for [`retry_with_backoff`].
    pub backoff: std::sync::Mutex<Backoff<String>>,
}

impl Shared {
    /// Publishes an Event about `obj`; a failure is logged, never fatal (an
    /// Event is a notification, the status is the record).
    pub async fn event<K>(&self, obj: &K, warning: bool, reason: &str, note: String)
    where
        K: Resource<DynamicType = ()>,
    {
        publish(&self.recorder, &obj.object_ref(&()), warning, reason, note).await;
    }

    /// Publishes Events about `obj`, in order, in the background (see
    /// [`EventQueue`]).
    pub fn events_later<K>(&self, obj: &K, notices: Vec<Notice>)
    where
        K: Resource<DynamicType = ()>,
    {
        if !notices.is_empty() {
            // The queue outlives every reconcile; a send fails only at
            // shutdown, when the Events are dropped with it.
            let _ = self.events.0.unbounded_send((obj.object_ref(&()), notices));
        }
    }
}

/// Events published in the background, a few at a time: a reconcile waits
/// only on its status write (the record), and a burst of transitions — a
/// fleet's first verdicts — cannot crowd out status writes at the apiserver.
#[derive(Clone)]
pub struct EventQueue(UnboundedSender<(ObjectReference, Vec<Notice>)>);

/// Event publications in flight.
const EVENTS_IN_FLIGHT: usize = 4;

/// The queue and the worker that drains it (run until shutdown).
pub fn event_queue(
    recorder: Recorder,
    verdicts_first: Arc<VerdictsFirst>,
) -> (EventQueue, impl Future<Output = ()> + Send) {
    let (tx, rx) = futures::channel::mpsc::unbounded::<(ObjectReference, Vec<Notice>)>();
    let worker = rx.for_each_concurrent(EVENTS_IN_FLIGHT, move |(reference, notices)| {
        let recorder = recorder.clone();
        let verdicts_first = Arc::clone(&verdicts_first);
        async move {
            // While a fleet is being judged, its Events wait their turn
            // behind the verdicts (they are published a little later).
            let _slot = verdicts_first.bookkeeping().await;
            for n in notices {
                publish(&recorder, &reference, n.warning, n.reason, n.message).await;
            }
        }
    });
    (EventQueue(tx), worker)
}

async fn publish(
    recorder: &Recorder,
    reference: &ObjectReference,
    warning: bool,
    reason: &str,
    note: String,
) {
    let ev = Event {
        type_: if warning {
            EventType::Warning
        } else {
            EventType::Normal
        },
        reason: reason.to_owned(),
        note: Some(note),
        action: "Reconcile".into(),
        secondary: None,
    };
    if let Err(e) = recorder.publish(&ev, reference).await {
        tracing::warn!(error = %e, reason, "could not publish an Event");
    }
}

/// The controller's reporter name in Events.
pub const REPORTER: &str = "patchloop";

/// Builds the Event recorder.
pub fn recorder(client: Client) -> Recorder {
    let reporter = Reporter {
        controller: REPORTER.into(),
        instance: std::env::var("POD_NAME").ok(),
    };
    Recorder::new(client, reporter)
}

/// A kind whose status [`write_status`] writes.
pub trait StatusObject:
    Resource<DynamicType = ()> + Clone + serde::de::DeserializeOwned + std::fmt::Debug
{
}

impl<K> StatusObject for K where
    K: Resource<DynamicType = ()> + Clone + serde::de::DeserializeOwned + std::fmt::Debug
{
}

/// Server-side-applies `status` to the status subresource of `name` under
/// the writer's own field manager, and counts the write. With
/// `resource_version`, both writes carry it as a precondition and a
/// conflict (the object changed since it was read: a stale cache) returns
/// `false` instead of an error; without, the status is written whatever
/// changed since it was read (and the answer is always `true`).
///
/// An object field that `previous` had and `status` drops is first removed
/// with a merge patch: on 1.20 a server-side apply that stops sending an
/// object field leaves it behind as `null`, which the schema then refuses
/// on every later write.
#[allow(clippy::too_many_arguments)]
pub async fn write_status<K: StatusObject, S: serde::Serialize>(
    shared: &Shared,
    api: &Api<K>,
    name: &str,
    controller: &'static str,
    manager: &str,
    status: &S,
    previous: &S,
    resource_version: Option<String>,
) -> Result<bool, Error> {
    let target = StatusTarget {
        shared,
        api,
        name,
        controller,
        precondition: resource_version.is_some(),
    };
    let request = || format!("patch {}/status", K::kind(&()));
    let desired = serde_json::to_value(status)?;
    let dropped = dropped_objects(&serde_json::to_value(previous)?, &desired);
    let mut version = resource_version;
    if !dropped.is_empty() {
        let patch = Patch::Merge(removal_patch(dropped, version.as_deref()));
        let removed = target.send(&PatchParams::default(), &patch).await;
        let Some(updated) = removed.step(Step::Status, request())? else {
            return Ok(false);
        };
        // The apply that follows must not conflict with this write.
        if version.is_some() {
            version = updated.meta().resource_version.clone();
        }
    }
    let patch = Patch::Apply(apply_patch::<K>(desired, version.as_deref()));
    let applied = target
        .send(&PatchParams::apply(manager).force(), &patch)
        .await;
    Ok(applied.step(Step::Status, request())?.is_some())
}

/// The status subresource one write goes to.
struct StatusTarget<'a, K> {
    shared: &'a Shared,
    api: &'a Api<K>,
    name: &'a str,
    controller: &'static str,
    /// The patches carry a `resourceVersion` precondition.
    precondition: bool,
}

impl<K: StatusObject> StatusTarget<'_, K> {
    /// Sends one status patch and counts it; `None` when the precondition
    /// failed (409 Conflict).
    async fn send(
        &self,
        params: &PatchParams,
        patch: &Patch<serde_json::Value>,
    ) -> Result<Option<K>, kube::Error> {
        match self.api.patch_status(self.name, params, patch).await {
            Ok(updated) => {
                self.shared.metrics.status_write(self.controller);
                Ok(Some(updated))
            }
            Err(kube::Error::Api(s)) if self.precondition && s.code == 409 => Ok(None),
            Err(e) => Err(e),
        }
    }
}

/// The merge patch setting each of `dropped` to `null` (removing it).
fn removal_patch(dropped: Vec<String>, version: Option<&str>) -> serde_json::Value {
    let nulls: serde_json::Map<String, serde_json::Value> = dropped
        .into_iter()
        .map(|k| (k, serde_json::Value::Null))
        .collect();
    with_precondition(serde_json::json!({ "status": nulls }), version)
}

/// The server-side apply patch of `K`'s status.
fn apply_patch<K: StatusObject>(
    desired: serde_json::Value,
    version: Option<&str>,
) -> serde_json::Value {
    let patch = serde_json::json!({
        "apiVersion": K::api_version(&()),
        "kind": K::kind(&()),
        "status": desired,
    });
    with_precondition(patch, version)
}

/// `patch`, carrying `version` as its `resourceVersion` precondition.
fn with_precondition(mut patch: serde_json::Value, version: Option<&str>) -> serde_json::Value {
    if let Some(v) = version {
        patch["metadata"] = serde_json::json!({ "resourceVersion": v });
    }
    patch
}

/// The object-valued top-level fields of `previous` that `desired` lacks.
fn dropped_objects(previous: &serde_json::Value, desired: &serde_json::Value) -> Vec<String> {
    let (Some(before), Some(after)) = (previous.as_object(), desired.as_object()) else {
        return Vec::new();
    };
    before
        .iter()
        .filter(|(k, v)| v.is_object() && !after.contains_key(*k))
        .map(|(k, _)| k.clone())
        .collect()
}

/// Runs one reconcile in a tracing span named after the object, counting it
/// (and its failure) and timing it.
pub async fn observed<K>(
    shared: &Shared,
    controller: &'static str,
    obj: &K,
    reconcile: impl Future<Output = Result<Action, Error>>,
) -> Result<Action, Error>
where
    K: Resource<DynamicType = ()>,
{
    let mut timer = shared.metrics.reconcile(controller);
    let span = tracing::info_span!("reconcile", controller, object = %ObjectRef::from_obj(obj));
    timer.observe(reconcile.instrument(span).await)
}

/// A reconciler's context: what it shares with the others.
pub trait Reconciles {
    /// The shared parts.
    fn shared(&self) -> &Shared;
}

impl Reconciles for scope::Scope {
    fn shared(&self) -> &Shared {
        &self.shared
    }
}

impl Reconciles for feed::FeedContext {
    fn shared(&self) -> &Shared {
        &self.shared
    }
}

fn backoff_key<K: Resource<DynamicType = ()>>(obj: &K) -> String {
    ObjectRef::from_obj(obj).to_string()
}

/// The error policy of every reconciler: log which step failed, and retry
/// the object after its own exponential backoff (5 s doubling to 5 min;
/// kube-runtime 5 keeps no memory of earlier failures). Its first failure
/// (a transition) is also a Warning Event naming the step.
pub fn retry_with_backoff<K, C>(obj: Arc<K>, err: &Error, ctx: Arc<C>) -> Action
where
    K: Resource<DynamicType = ()>,
    C: Reconciles,
{
    let shared = ctx.shared();
    let key = backoff_key(obj.as_ref());
    let (failures, delay) = shared
        .backoff
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .failed(&key);
    tracing::warn!(
        error = %err, step = %err.step(), failures, retry_in = ?delay, object = %key,
        "reconcile failed; retrying with backoff"
    );
    if failures == 1 {
        shared.events_later(
            obj.as_ref(),
            vec![Notice {
                warning: true,
                reason: "ReconcileFailed",
                message: format!(
                    "{}; retrying after {}s, then less and less often (at most every {}s) until it succeeds",
                    err.summary(),
                    delay.as_secs(),
                    backoff::CAP.as_secs()
                ),
            }],
        );
    }
    Action::requeue(delay)
}

/// Records a successful reconcile of `obj`: its next failure is retried
/// after the first delay again.
pub fn reconciled<K: Resource<DynamicType = ()>>(shared: &Shared, obj: &K) {
    let recovered = shared
        .backoff
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .succeeded(&backoff_key(obj));
    if recovered {
        tracing::info!(object = %backoff_key(obj), "reconcile succeeded after failures");
    }
}

/// The requeue delay for an instant in the future, capped.
pub fn requeue_at(next: Option<jiff::Timestamp>, now: jiff::Timestamp, cap: Duration) -> Duration {
    let Some(next) = next else { return cap };
    let secs = (next.as_second() - now.as_second()).max(1);
    Duration::from_secs(u64::try_from(secs).unwrap_or(1)).min(cap)
}

/// Now, in whole seconds (status timestamps carry whole seconds).
pub fn now() -> jiff::Timestamp {
    crate::api::common::time(jiff::Timestamp::now()).0
}

#[cfg(test)]
mod tests {
    use super::{Error, InStep, Step, apply_patch, dropped_objects, removal_patch};
    use k8s_openapi::api::batch::v1::Job;
    use serde_json::json;

    fn refused(message: &str) -> kube::Error {
        kube::Error::Api(
            serde_json::from_value(json!({
                "status": "Failure", "code": 422, "reason": "Invalid", "message": message,
                "details": {"name": "web-01", "kind": "jobs"},
            }))
            .expect("a Status"),
        )
    }

    #[test]
    fn errors_name_their_step_and_call_but_events_do_not_quote_the_apiserver() {
        let secret = "Invalid value: \"$(SSH_PASSPHRASE)\"";
        let e = Err::<(), _>(refused(secret))
            .step(Step::Apply, "create Job")
            .expect_err("a failure");
        assert_eq!(e.step(), "apply");
        assert!(e.to_string().starts_with("apply: create Job failed: "));
        assert_eq!(
            e.summary(),
            "step apply: create Job failed: the apiserver answered 422 Invalid"
        );
        let unlabelled = Error::from(refused(secret));
        assert_eq!(unlabelled.step(), "api");
        assert!(unlabelled.to_string().starts_with("Kubernetes API: "));
        assert_eq!(
            unlabelled.summary(),
            "an API call on jobs failed: the apiserver answered 422 Invalid"
        );
        assert_eq!(Error::Missing("metadata.uid").step(), "dereference");
    }

    #[test]
    fn status_patches_carry_the_precondition_only_when_given() {
        let removal = removal_patch(vec!["rollout".into()], Some("42"));
        assert_eq!(
            removal,
            json!({"status": {"rollout": null}, "metadata": {"resourceVersion": "42"}})
        );
        let apply = apply_patch::<Job>(json!({"active": 1}), None);
        assert_eq!(
            apply,
            json!({"apiVersion": "batch/v1", "kind": "Job", "status": {"active": 1}})
        );
    }

    #[test]
    fn only_dropped_object_fields_need_removing() {
        let before = json!({"a": {"x": 1}, "b": 2, "c": {"y": 1}, "d": [1]});
        let after = json!({"c": {"y": 2}});
        assert_eq!(dropped_objects(&before, &after), ["a"]);
    }
}
