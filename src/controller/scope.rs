//! One watch scope (all namespaces, or one): the caches every namespaced
//! reconciler reads, the Inventory subject index, and the trigger channels
//! that wake reconcilers when something they depend on changes.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, RwLock};

use futures::channel::mpsc;
use futures::{Stream, StreamExt};
use jiff::Timestamp;
use k8s_openapi::api::batch::v1::Job;
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::watcher::{Config as WatcherConfig, Event, watcher};
use kube::runtime::{WatchStreamExt, reflector::store::Writer};
use kube::{Api, Client, ResourceExt};

use super::Shared;
use crate::api::inventory::{InventorySubject, SubjectKind};
use crate::api::workload::InventoryVersion;
use crate::api::{ChangeRequest, Inventory, PatchException, PatchPolicy, Template, Workload};
use crate::engine::selector;

/// (namespace, subject kind, subject name).
pub type SubjectKey = (String, SubjectKind, String);

/// The Inventory names naming a subject, each with whether it is the
/// subject's canonical one.
type BySubject = HashMap<SubjectKey, BTreeMap<String, bool>>;
type ByInventory = HashMap<(String, String), SubjectKey>;
/// Each Inventory's current version, and when this process first saw it.
type Seen = HashMap<(String, String), (InventoryVersion, Timestamp)>;

/// Whether an Inventory may speak for the subject it names: only under the
/// subject's canonical name ([`InventorySubject::canonical_inventory_name`]),
/// so who may write a subject's inventory is decided by RBAC on that one
/// name, not by whoever names the subject last.
pub fn speaks_for_subject(inv: &Inventory) -> bool {
    inv.metadata.name.as_deref() == Some(inv.spec.subject.canonical_inventory_name().as_str())
}

/// An Inventory's version in the apiserver's own terms: its uid and its
/// `metadata.generation` (bumped on every spec change, never on a status
/// write; no client can set either).
pub fn version_of(inv: &Inventory) -> InventoryVersion {
    InventoryVersion {
        uid: inv.metadata.uid.clone(),
        generation: inv.metadata.generation.unwrap_or(0),
    }
}

#[derive(Debug, Default)]
struct Maps {
    by_subject: BySubject,
    by_inventory: ByInventory,
    seen: Seen,
}

/// Inventories by the object they describe, rebuilt on every relist so
/// objects deleted during a disconnect do not linger. Every Inventory naming
/// a subject is indexed (its subject is woken when it changes, and its status
/// lists the ignored ones); only canonical ones are ever read as the
/// subject's inventory. It also records when this process first saw each
/// version of an Inventory (its own clock, never a time a client sent): a
/// remediation is verified only by a version seen after its Job started.
#[derive(Debug, Default)]
pub struct SubjectIndex {
    maps: Maps,
    building: Option<Maps>,
}

impl SubjectIndex {
    fn key_of(inv: &Inventory) -> Option<((String, String), SubjectKey)> {
        let ns = inv.namespace()?;
        let subject = &inv.spec.subject;
        Some((
            (ns.clone(), inv.name_any()),
            (ns, subject.kind, subject.name.clone()),
        ))
    }

    fn remove(by_subject: &mut BySubject, subject: &SubjectKey, name: &str) {
        if let Some(names) = by_subject.get_mut(subject) {
            names.remove(name);
            if names.is_empty() {
                by_subject.remove(subject);
            }
        }
    }

    /// When `seen` first saw `inv` at its current version.
    fn first_seen_in(seen: &Seen, inv: &Inventory) -> Option<Timestamp> {
        let (id, _) = Self::key_of(inv)?;
        let version = version_of(inv);
        seen.get(&id)
            .filter(|(v, _)| *v == version)
            .map(|(_, at)| *at)
    }

    /// Indexes `inv` into `maps`, first seen at `first_seen`; returns the
    /// subject it was indexed under before.
    fn insert(maps: &mut Maps, inv: &Inventory, first_seen: Timestamp) -> Option<SubjectKey> {
        let (id, subject) = Self::key_of(inv)?;
        maps.seen.insert(id.clone(), (version_of(inv), first_seen));
        let old = maps.by_inventory.insert(id.clone(), subject.clone());
        if let Some(old) = &old {
            Self::remove(&mut maps.by_subject, old, &id.1);
        }
        maps.by_subject
            .entry(subject)
            .or_default()
            .insert(id.1, speaks_for_subject(inv));
        old
    }

    /// Applies one watch event; returns the subjects whose inventory changed
    /// (old and new, when an Inventory moved to another subject).
    pub fn apply(&mut self, event: &Event<Inventory>) -> Vec<SubjectKey> {
        self.apply_at(event, Timestamp::now())
    }

    fn apply_at(&mut self, event: &Event<Inventory>, now: Timestamp) -> Vec<SubjectKey> {
        match event {
            Event::Init => {
                self.building = Some(Maps::default());
                Vec::new()
            }
            Event::InitApply(inv) => {
                // A relist keeps what was seen before of the same version.
                let first_seen = Self::first_seen_in(&self.maps.seen, inv).unwrap_or(now);
                if let Some(building) = self.building.as_mut() {
                    Self::insert(building, inv, first_seen);
                }
                Vec::new()
            }
            Event::InitDone => {
                if let Some(built) = self.building.take() {
                    self.maps = built;
                }
                Vec::new()
            }
            Event::Apply(inv) => {
                let first_seen = Self::first_seen_in(&self.maps.seen, inv).unwrap_or(now);
                let old = Self::insert(&mut self.maps, inv, first_seen);
                Self::key_of(inv)
                    .map(|(_, s)| s)
                    .into_iter()
                    .chain(old)
                    .collect()
            }
            Event::Delete(inv) => {
                let Some((id, subject)) = Self::key_of(inv) else {
                    return Vec::new();
                };
                self.maps.seen.remove(&id);
                // The subject it was indexed under (it may have moved).
                let indexed = self.maps.by_inventory.remove(&id).unwrap_or(subject);
                Self::remove(&mut self.maps.by_subject, &indexed, &id.1);
                vec![indexed]
            }
        }
    }

    /// The canonical Inventories naming a subject (one, or for a Template
    /// one per revision).
    pub fn inventories(&self, key: &SubjectKey) -> Vec<String> {
        self.names(key, true)
    }

    /// The Inventories naming a subject under another name than its
    /// canonical one: never read for it, listed so its status can say so.
    pub fn ignored(&self, key: &SubjectKey) -> Vec<String> {
        self.names(key, false)
    }

    fn names(&self, key: &SubjectKey, canonical: bool) -> Vec<String> {
        self.maps
            .by_subject
            .get(key)
            .map(|s| {
                s.iter()
                    .filter(|(_, c)| **c == canonical)
                    .map(|(n, _)| n.clone())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// When this process first saw `inv` at its current version (`None`:
    /// the index has not caught up with the cache yet; the subject is woken
    /// when it does).
    pub fn first_seen(&self, inv: &Inventory) -> Option<Timestamp> {
        Self::first_seen_in(&self.maps.seen, inv)
    }
}

/// Jobs this process created that its cache may not show yet: counted as
/// in flight until the cache has them, so a burst of reconciles under a
/// lagging watch never exceeds `maxConcurrent`. After a restart the cache
/// is listed before anything reconciles, so nothing created earlier is
/// missed.
#[derive(Debug, Default)]
pub struct JobExpectations {
    /// (namespace, Job name) → (owner uid, when created).
    created: std::sync::Mutex<HashMap<(String, String), (String, std::time::Instant)>>,
}

/// How long an expectation waits for the cache before it is dropped (the
/// Job was deleted before the cache saw it, or the watch is broken: the
/// watch's own errors are logged).
const EXPECTATION_TTL: std::time::Duration = std::time::Duration::from_secs(300);

impl JobExpectations {
    /// Records a Job just created for `owner_uid`.
    pub fn created(&self, namespace: &str, job: &str, owner_uid: &str) {
        if let Ok(mut m) = self.created.lock() {
            m.insert(
                (namespace.to_owned(), job.to_owned()),
                (owner_uid.to_owned(), std::time::Instant::now()),
            );
        }
    }

    /// The owners with a created Job the cache does not show yet; drops the
    /// expectations the cache has met.
    pub fn pending_owners(&self, jobs: &Store<Job>) -> BTreeSet<String> {
        let Ok(mut m) = self.created.lock() else {
            return BTreeSet::new();
        };
        m.retain(|(ns, name), (_, at)| {
            at.elapsed() < EXPECTATION_TTL && jobs.get(&ObjectRef::new(name).within(ns)).is_none()
        });
        m.values().map(|(uid, _)| uid.clone()).collect()
    }
}

/// The server-side dry-run verdicts of policies' Job templates, per policy
/// uid and generation: the check costs a request, so it runs once per
/// generation (and once after a restart). `Err` holds the apiserver's
/// refusal; a check that could not be made is not kept.
#[derive(Debug, Default)]
pub struct TemplateChecks {
    verdicts: std::sync::Mutex<HashMap<String, (i64, TemplateVerdict)>>,
}

/// A kept dry-run verdict: `Err` holds the apiserver's refusal.
pub type TemplateVerdict = Result<(), String>;

impl TemplateChecks {
    /// The verdict kept for this generation of the policy with `uid`.
    pub fn get(&self, uid: &str, generation: i64) -> Option<TemplateVerdict> {
        let verdicts = self.verdicts.lock().ok()?;
        verdicts
            .get(uid)
            .filter(|(g, _)| *g == generation)
            .map(|(_, v)| v.clone())
    }

    /// Keeps the verdict for this generation.
    pub fn set(&self, uid: &str, generation: i64, verdict: TemplateVerdict) {
        if let Ok(mut m) = self.verdicts.lock() {
            m.insert(uid.to_owned(), (generation, verdict));
        }
    }

    /// Drops a deleted policy's verdict.
    pub fn forget(&self, uid: &str) {
        if let Ok(mut m) = self.verdicts.lock() {
            m.remove(uid);
        }
    }
}

/// How long [`Scope::cached`] waits for the watch to echo a write.
const CACHE_ECHO_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// A kind a reconciler is woken for.
pub trait Kind: kube::Resource<DynamicType = ()> + Clone + 'static {}
impl<K: kube::Resource<DynamicType = ()> + Clone + 'static> Kind for K {}

/// What [`PerKind`] holds for each kind.
pub trait Slot {
    /// The value held for kind `K`.
    type Of<K: Kind>;
}

/// Trigger senders.
pub struct Senders;
impl Slot for Senders {
    type Of<K: Kind> = mpsc::UnboundedSender<ObjectRef<K>>;
}

/// Trigger receivers, consumed by the controllers.
pub struct Receivers;
impl Slot for Receivers {
    type Of<K: Kind> = mpsc::UnboundedReceiver<ObjectRef<K>>;
}

/// Objects to wake.
pub struct Refs;
impl Slot for Refs {
    type Of<K: Kind> = Vec<ObjectRef<K>>;
}

/// One value per namespaced kind a reconciler handles.
pub struct PerKind<S: Slot> {
    /// Workloads.
    pub workloads: S::Of<Workload>,
    /// PatchPolicies.
    pub policies: S::Of<PatchPolicy>,
    /// PatchExceptions.
    pub exceptions: S::Of<PatchException>,
    /// Inventories.
    pub inventories: S::Of<Inventory>,
    /// Templates.
    pub templates: S::Of<Template>,
    /// ChangeRequests.
    pub change_requests: S::Of<ChangeRequest>,
}

/// Senders that wake reconcilers.
pub type Triggers = PerKind<Senders>;
/// Receivers matching [`Triggers`].
pub type TriggerStreams = PerKind<Receivers>;
/// The objects an edge of the wake graph (`triggers.rs`) wakes.
pub type Wake = PerKind<Refs>;

impl Default for Wake {
    fn default() -> Self {
        PerKind {
            workloads: Vec::new(),
            policies: Vec::new(),
            exceptions: Vec::new(),
            inventories: Vec::new(),
            templates: Vec::new(),
            change_requests: Vec::new(),
        }
    }
}

/// Trigger senders and their streams.
pub fn channels() -> (Triggers, TriggerStreams) {
    let (workloads, workload_refs) = mpsc::unbounded();
    let (policies, policy_refs) = mpsc::unbounded();
    let (exceptions, exception_refs) = mpsc::unbounded();
    let (inventories, inventory_refs) = mpsc::unbounded();
    let (templates, template_refs) = mpsc::unbounded();
    let (change_requests, change_refs) = mpsc::unbounded();
    let senders = PerKind {
        workloads,
        policies,
        exceptions,
        inventories,
        templates,
        change_requests,
    };
    let receivers = PerKind {
        workloads: workload_refs,
        policies: policy_refs,
        exceptions: exception_refs,
        inventories: inventory_refs,
        templates: template_refs,
        change_requests: change_refs,
    };
    (senders, receivers)
}

impl Triggers {
    /// Wakes every object of `wake`. A closed channel means the controller
    /// is shutting down: nothing is left to wake.
    pub fn send(&self, wake: Wake) {
        fn each<K: Kind>(to: &mpsc::UnboundedSender<ObjectRef<K>>, refs: Vec<ObjectRef<K>>) {
            for r in refs {
                let _ = to.unbounded_send(r);
            }
        }
        each(&self.workloads, wake.workloads);
        each(&self.policies, wake.policies);
        each(&self.exceptions, wake.exceptions);
        each(&self.inventories, wake.inventories);
        each(&self.templates, wake.templates);
        each(&self.change_requests, wake.change_requests);
    }
}

/// Everything a namespaced reconciler reads, for one scope.
pub struct Scope {
    /// Shared client, recorder, advisories, metrics, settings.
    pub shared: Arc<Shared>,
    /// `None`: all namespaces.
    pub namespace: Option<String>,
    /// PatchPolicies.
    pub policies: Store<PatchPolicy>,
    /// PatchExceptions.
    pub exceptions: Store<PatchException>,
    /// Templates.
    pub templates: Store<Template>,
    /// Inventories (with their packages).
    pub inventories: Store<Inventory>,
    /// Inventories by subject.
    pub subjects: Arc<RwLock<SubjectIndex>>,
    /// Workloads (the workload controller's own cache).
    pub workloads: Store<Workload>,
    /// Jobs Patchloop created (labelled managed-by patchloop).
    pub jobs: Store<Job>,
    /// ChangeRequests (the change controller's own cache).
    pub change_requests: Store<ChangeRequest>,
    /// Jobs created but perhaps not in `jobs` yet.
    pub expected_jobs: JobExpectations,
    /// Policies' Job template dry-run verdicts.
    pub template_checks: TemplateChecks,
    /// Wakes reconcilers.
    pub triggers: Triggers,
    /// True once every cache above has listed once.
    pub synced: tokio::sync::watch::Receiver<bool>,
}

impl Scope {
    /// An `Api` for `K` in this scope.
    pub fn api<K>(&self) -> Api<K>
    where
        K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>,
    {
        api_in(&self.shared.client, self.namespace.as_deref())
    }

    /// The policies of `namespace` whose selector matches `labels`.
    pub fn matching_policies(
        &self,
        namespace: &str,
        labels: &std::collections::BTreeMap<String, String>,
    ) -> Vec<Arc<PatchPolicy>> {
        selecting(&self.policies, namespace, labels, |p| &p.spec.selector)
    }

    /// The exceptions of `namespace` whose selector matches `labels`.
    pub fn matching_exceptions(
        &self,
        namespace: &str,
        labels: &std::collections::BTreeMap<String, String>,
    ) -> Vec<Arc<PatchException>> {
        selecting(&self.exceptions, namespace, labels, |e| &e.spec.selector)
    }

    /// The Inventory that speaks for `subject` in `namespace`: the one under
    /// its canonical name, if that one names it (a Template's revision
    /// included). Inventories under other names are never read for it.
    pub fn inventory_for(
        &self,
        namespace: &str,
        subject: &InventorySubject,
    ) -> Option<Arc<Inventory>> {
        inventory_in(&self.inventories, namespace, subject)
    }

    /// Waits until every cache of the scope has listed once: deciding on a
    /// half-filled cache would write a wrong status (e.g. "no inventory")
    /// right after a restart.
    ///
    /// The run loop flips `synced` once every store is ready (one waiter on
    /// the stores; reconcilers wait on this channel).
    pub async fn caches_ready(&self) {
        let mut rx = self.synced.clone();
        let _ = rx.wait_for(|ready| *ready).await;
    }

    /// The Jobs Patchloop created for (owned by) an object, by its uid.
    pub fn jobs_owned_by(&self, namespace: &str, uid: &str) -> Vec<Arc<Job>> {
        self.jobs
            .state()
            .into_iter()
            .filter(|j| j.metadata.namespace.as_deref() == Some(namespace))
            .filter(|j| j.owner_references().iter().any(|o| o.uid == uid))
            .collect()
    }
}

/// Waits (at most a few seconds) until `store` shows `key` as `written`
/// says: dependents woken before would read the old object from their cache
/// and, woken no more, keep what they read.
pub async fn cache_shows<K>(store: &Store<K>, key: &ObjectRef<K>, written: impl Fn(&K) -> bool)
where
    K: kube::Resource + Clone + 'static,
    K::DynamicType: Eq + std::hash::Hash + Clone,
{
    let deadline = std::time::Instant::now() + CACHE_ECHO_WAIT;
    while std::time::Instant::now() < deadline {
        if store.get(key).is_some_and(|o| written(&o)) {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

/// The objects of `namespace` in `store` whose selector matches `labels`, by
/// name (an invalid selector matches nothing; its owner reports it).
pub fn selecting<K>(
    store: &Store<K>,
    namespace: &str,
    labels: &std::collections::BTreeMap<String, String>,
    selector_of: impl Fn(&K) -> &k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector,
) -> Vec<Arc<K>>
where
    K: kube::Resource<DynamicType = ()> + Clone + 'static,
{
    let mut out: Vec<_> = store
        .state()
        .into_iter()
        .filter(|o| o.meta().namespace.as_deref() == Some(namespace))
        .filter(|o| selector::matches(selector_of(o), labels).unwrap_or(false))
        .collect();
    out.sort_by_key(|o| o.meta().name.clone());
    out
}

/// [`Scope::inventory_for`] over an Inventory cache.
pub fn inventory_in(
    inventories: &Store<Inventory>,
    namespace: &str,
    subject: &InventorySubject,
) -> Option<Arc<Inventory>> {
    let name = subject.canonical_inventory_name();
    inventories
        .get(&ObjectRef::new(&name).within(namespace))
        .filter(|inv| {
            let named = &inv.spec.subject;
            named.kind == subject.kind
                && named.name == subject.name
                && (subject.kind != SubjectKind::Template
                    || named.revision.unwrap_or(1) == subject.revision.unwrap_or(1))
        })
}

/// An `Api` in one namespace, or across all.
pub fn api_in<K>(client: &Client, namespace: Option<&str>) -> Api<K>
where
    K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>,
{
    match namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    }
}

/// A kind a scope watches and caches.
pub trait Watched:
    kube::Resource<DynamicType = ()>
    + Clone
    + std::fmt::Debug
    + serde::de::DeserializeOwned
    + Send
    + Sync
    + 'static
{
}

impl<K> Watched for K where
    K: kube::Resource<DynamicType = ()>
        + Clone
        + std::fmt::Debug
        + serde::de::DeserializeOwned
        + Send
        + Sync
        + 'static
{
}

/// Runs a reflector for `K` feeding `writer`, calling `on_event` for every
/// event after the cache saw it, and yields each object applied (listed,
/// added or changed). One watch and one cache serve both the scope (which
/// reads the store and wakes dependents in `on_event`) and the object's own
/// reconciler (`Controller::for_stream` over this stream with the same
/// store): a second watch would hold a second copy of every object.
pub fn reflect<K>(
    api: Api<K>,
    writer: Writer<K>,
    on_event: impl FnMut(&Event<K>) + Send + 'static,
) -> impl Stream<Item = Result<K, kube::runtime::watcher::Error>> + Send
where
    K: Watched,
{
    reflect_lagging(api, WatcherConfig::default(), None, writer, on_event)
}

/// [`reflect`] with a watcher config, and (test failpoint only) every event
/// reaching the cache `lag` late, in order.
pub fn reflect_lagging<K>(
    api: Api<K>,
    config: WatcherConfig,
    lag: Option<std::time::Duration>,
    writer: Writer<K>,
    mut on_event: impl FnMut(&Event<K>) + Send + 'static,
) -> impl Stream<Item = Result<K, kube::runtime::watcher::Error>> + Send
where
    K: Watched,
{
    watcher(api, config)
        .default_backoff()
        .modify(slim)
        .map(move |ev| async move {
            if let Some(lag) = lag {
                tokio::time::sleep(lag).await;
            }
            ev
        })
        .buffered(1024)
        .reflect(writer)
        .filter_map(move |ev| {
            let applied = match ev {
                Ok(e) => {
                    on_event(&e);
                    match e {
                        Event::Apply(o) | Event::InitApply(o) => Some(Ok(o)),
                        _ => None,
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "watch error; retrying with backoff");
                    None
                }
            };
            futures::future::ready(applied)
        })
}

/// Drops the field sets of an object's managedFields before it is cached:
/// they are most of the metadata of a status-heavy object (every condition
/// and finding, per writer) and no reader of these caches needs them. (The
/// ChangeRequest cache, whose decision's writer is read from its field
/// set, has its own watch and is not slimmed.)
pub fn slim<K: kube::Resource>(obj: &mut K) {
    for entry in obj.meta_mut().managed_fields.iter_mut().flatten() {
        entry.fields_v1 = None;
    }
}

/// A store and its writer.
pub fn store<K>() -> (Store<K>, Writer<K>)
where
    K: kube::Resource<DynamicType = ()> + Clone + 'static,
{
    reflector::store()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_template_verdict_holds_for_its_generation_only() {
        let checks = TemplateChecks::default();
        assert_eq!(checks.get("uid-a", 1), None);
        checks.set("uid-a", 1, Err("spec.remediation.jobTemplate: bad".into()));
        checks.set("uid-b", 4, Ok(()));
        assert_eq!(
            checks.get("uid-a", 1),
            Some(Err("spec.remediation.jobTemplate: bad".into()))
        );
        // A new generation is checked again.
        assert_eq!(checks.get("uid-a", 2), None);
        assert_eq!(checks.get("uid-b", 4), Some(Ok(())));
        checks.forget("uid-b");
        assert_eq!(checks.get("uid-b", 4), None);
    }

    fn ts(s: &str) -> Timestamp {
        s.parse().expect("timestamp literal")
    }

    fn inventory(name: &str, uid: &str, generation: i64, subject: serde_json::Value) -> Inventory {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "patchloop.dev/v1alpha1", "kind": "Inventory",
            "metadata": {"name": name, "namespace": "prod", "uid": uid, "generation": generation},
            "spec": {"subject": subject, "reportedAt": "2026-11-24T08:00:00Z",
                     "format": "dpkg", "packages": []},
        }))
        .expect("a valid Inventory")
    }

    fn workload(name: &str) -> serde_json::Value {
        serde_json::json!({"kind": "Workload", "name": name})
    }

    fn key(kind: SubjectKind, name: &str) -> SubjectKey {
        ("prod".into(), kind, name.into())
    }

    #[test]
    fn only_the_canonical_name_speaks_for_a_subject_and_others_are_listed_as_ignored() {
        let mut index = SubjectIndex::default();
        let now = ts("2026-11-24T08:00:00Z");
        let own = inventory("workload-web-01", "a", 1, workload("web-01"));
        let forged = inventory("cmdb-web-01", "b", 1, workload("web-01"));
        // Speaking for another Workload from one's own canonical name does
        // not work either: the name is web-02's, the subject web-01.
        let borrowed = inventory("workload-web-02", "c", 1, workload("web-01"));
        for inv in [&own, &forged, &borrowed] {
            let woken = index.apply_at(&Event::Apply(inv.clone()), now);
            assert_eq!(woken, [key(SubjectKind::Workload, "web-01")]);
        }
        assert_eq!(
            index.inventories(&key(SubjectKind::Workload, "web-01")),
            ["workload-web-01"]
        );
        assert_eq!(
            index.ignored(&key(SubjectKind::Workload, "web-01")),
            ["cmdb-web-01", "workload-web-02"]
        );
        assert!(
            index
                .inventories(&key(SubjectKind::Workload, "web-02"))
                .is_empty()
        );

        // Template revisions: one canonical Inventory each.
        let t = |name: &str, revision: i64| {
            inventory(
                name,
                name,
                1,
                serde_json::json!({"kind": "Template", "name": "base", "revision": revision}),
            )
        };
        for inv in [
            t("template-base-r1", 1),
            t("template-base-r2", 2),
            t("base-r2", 2),
        ] {
            index.apply_at(&Event::Apply(inv), now);
        }
        assert_eq!(
            index.inventories(&key(SubjectKind::Template, "base")),
            ["template-base-r1", "template-base-r2"]
        );
        assert_eq!(
            index.ignored(&key(SubjectKind::Template, "base")),
            ["base-r2"]
        );
    }

    #[test]
    fn a_moved_or_deleted_inventory_leaves_its_old_subject() {
        let mut index = SubjectIndex::default();
        let now = ts("2026-11-24T08:00:00Z");
        index.apply_at(
            &Event::Apply(inventory("workload-web-01", "a", 1, workload("web-01"))),
            now,
        );
        // The same object now names web-02: both subjects are woken, and it
        // speaks for neither (its name is web-01's).
        let moved = inventory("workload-web-01", "a", 2, workload("web-02"));
        let woken = index.apply_at(&Event::Apply(moved.clone()), now);
        assert_eq!(
            woken,
            [
                key(SubjectKind::Workload, "web-02"),
                key(SubjectKind::Workload, "web-01")
            ]
        );
        assert!(
            index
                .inventories(&key(SubjectKind::Workload, "web-01"))
                .is_empty()
        );
        assert!(
            index
                .ignored(&key(SubjectKind::Workload, "web-01"))
                .is_empty()
        );
        assert_eq!(
            index.ignored(&key(SubjectKind::Workload, "web-02")),
            ["workload-web-01"]
        );
        let woken = index.apply_at(&Event::Delete(moved.clone()), now);
        assert_eq!(woken, [key(SubjectKind::Workload, "web-02")]);
        assert!(
            index
                .ignored(&key(SubjectKind::Workload, "web-02"))
                .is_empty()
        );
        assert_eq!(index.first_seen(&moved), None);
    }

    #[test]
    fn a_version_is_first_seen_once_and_a_relist_keeps_it() {
        let mut index = SubjectIndex::default();
        let v1 = inventory("workload-web-01", "a", 1, workload("web-01"));
        index.apply_at(&Event::Apply(v1.clone()), ts("2026-11-24T08:00:00Z"));
        // The same version again (a status write, a resync): still first
        // seen when it was.
        index.apply_at(&Event::Apply(v1.clone()), ts("2026-11-24T09:00:00Z"));
        assert_eq!(index.first_seen(&v1), Some(ts("2026-11-24T08:00:00Z")));
        // A relist of an unchanged version keeps its time; a new generation
        // found by the relist is seen now.
        let v2 = inventory("workload-web-02", "b", 2, workload("web-02"));
        index.apply_at(
            &Event::Apply(inventory("workload-web-02", "b", 1, workload("web-02"))),
            ts("2026-11-24T08:00:00Z"),
        );
        let relist = ts("2026-11-24T10:00:00Z");
        for e in [
            Event::Init,
            Event::InitApply(v1.clone()),
            Event::InitApply(v2.clone()),
            Event::InitDone,
        ] {
            index.apply_at(&e, relist);
        }
        assert_eq!(index.first_seen(&v1), Some(ts("2026-11-24T08:00:00Z")));
        assert_eq!(index.first_seen(&v2), Some(relist));
        // A version the index has not seen yet (the cache is ahead).
        let v3 = inventory("workload-web-01", "a", 3, workload("web-01"));
        assert_eq!(index.first_seen(&v3), None);
        // Recreated under the same name: a new object, seen anew.
        let recreated = inventory("workload-web-01", "z", 1, workload("web-01"));
        assert_eq!(index.first_seen(&recreated), None);
    }
}
