//! The wake graph: every "X changed → wake these Ys" edge, in one place.
//!
//! Each reconciler is driven by its own kind's watch (a new generation,
//! labels or a first sighting) and by the trigger channels below. An edge is
//! a method of [`Graph`] that only reads the scope's caches and answers a
//! [`Wake`]: which objects of which kinds to reconcile. `run.rs` wires the
//! watch edges ([`on_policy_event`] and friends) into the reflectors; the
//! reconcilers call the write edges ([`workload_written`] and friends) after
//! their status write. Nothing else sends on a trigger channel.
//!
//! | X changed (edge) | wakes |
//! |---|---|
//! | PatchPolicy spec, labels, deleted ([`Graph::selection_changed`]) | every Workload and Template of its namespace |
//! | PatchException spec, labels, deleted ([`Graph::selection_changed`]) | every Workload and Template of its namespace |
//! | Template applied or deleted ([`Graph::template_changed`]) | its ChangeRequests, the Workloads provisioned from it; deleted: the policies that counted it |
//! | Inventory spec or uid ([`Graph::subjects_reported`]) | its subject: a Workload; a Template (and the Workloads provisioned from it); a ChangeRequest (and its Template) |
//! | Patchloop Job applied or deleted ([`Graph::job_changed`]) | the Workload or ChangeRequest owning it, the policy that created it |
//! | advisory index diff ([`Graph::advisories_changed`]) | every Template; the Workloads whose ecosystem or installed packages it touches (all of them after a lagged diff) |
//! | a subject's first status ([`Graph::subject_appeared`]) | the Inventories naming it (waiting with `SubjectNotFound`) |
//! | Workload status written ([`workload_written`]) | the policies it matched before and now, its exceptions, its Template — once the cache shows the write |
//! | Template status written ([`template_written`]) | the policies counting it; its open ChangeRequest |
//! | ChangeRequest phase moved ([`request_moved`]) | its Template — once the cache shows the phase |
//! | PatchException `Active` flipped ([`exception_flipped`]) | the Workloads it covers |
//! | this replica became the leader ([`Graph::everything`]) | every object of every kind |
//!
//! Which watch events count as a change at all is decided by [`ChangeFilter`]
//! with [`spec_or_labels`] or [`generation_and_uid`]: a status write is its
//! own reconciler's business and wakes nobody.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use k8s_openapi::api::batch::v1::Job;
use kube::ResourceExt;
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::watcher::Event;
use kube::runtime::{predicates, utils::Predicate};
use tokio::sync::broadcast::error::RecvError;

use super::dereference;
use super::scope::{self, Kind, Scope, SubjectIndex, SubjectKey, Wake};
use crate::api::inventory::SubjectKind;
use crate::api::{
    ChangeRequest, Inventory, PatchException, PatchPolicy, Template, Workload, WorkloadStatus,
};
use crate::engine::advisory::IndexDiff;
use crate::engine::inventory::parse_compact_list;
use crate::engine::version::parse_platform;

/// The caches the graph's edges read.
pub struct Graph<'a> {
    /// Workloads.
    pub workloads: &'a Store<Workload>,
    /// PatchPolicies.
    pub policies: &'a Store<PatchPolicy>,
    /// PatchExceptions.
    pub exceptions: &'a Store<PatchException>,
    /// Inventories.
    pub inventories: &'a Store<Inventory>,
    /// Templates.
    pub templates: &'a Store<Template>,
    /// ChangeRequests.
    pub change_requests: &'a Store<ChangeRequest>,
    /// Inventories by subject.
    pub subjects: &'a RwLock<SubjectIndex>,
}

impl Scope {
    /// The wake graph over this scope's caches.
    pub fn graph(&self) -> Graph<'_> {
        Graph {
            workloads: &self.workloads,
            policies: &self.policies,
            exceptions: &self.exceptions,
            inventories: &self.inventories,
            templates: &self.templates,
            change_requests: &self.change_requests,
            subjects: &self.subjects,
        }
    }
}

/// References to every object of `store` in `namespace` that `keep` keeps.
fn refs_in<K: Kind>(
    store: &Store<K>,
    namespace: &str,
    keep: impl Fn(&K) -> bool,
) -> Vec<ObjectRef<K>> {
    store
        .state()
        .iter()
        .filter(|o| o.meta().namespace.as_deref() == Some(namespace) && keep(o))
        .map(|o| ObjectRef::from_obj(o.as_ref()))
        .collect()
}

/// References to every object of `store`.
fn all<K: Kind>(store: &Store<K>) -> Vec<ObjectRef<K>> {
    store
        .state()
        .iter()
        .map(|o| ObjectRef::from_obj(o.as_ref()))
        .collect()
}

impl Graph<'_> {
    /// A PatchPolicy or PatchException of `namespace` changed what it
    /// selects or says: every Workload and Template there is judged anew.
    pub fn selection_changed(&self, namespace: &str) -> Wake {
        Wake {
            workloads: refs_in(self.workloads, namespace, |_| true),
            templates: refs_in(self.templates, namespace, |_| true),
            ..Wake::default()
        }
    }

    /// The Workloads of `namespace` provisioned from Template `template`.
    fn provisioned_from(&self, namespace: &str, template: &str) -> Vec<ObjectRef<Workload>> {
        refs_in(self.workloads, namespace, |w| {
            w.spec
                .template_ref
                .as_ref()
                .is_some_and(|r| r.name == template)
        })
    }

    /// A Template was applied or deleted: its ChangeRequests follow its
    /// findings and revision, Workloads provisioned from it are judged
    /// through its revision's inventory, and the policies that counted a
    /// deleted one count again.
    pub fn template_changed(&self, template: &Template, deleted: bool) -> Wake {
        let Some(ns) = template.namespace() else {
            return Wake::default();
        };
        let name = template.name_any();
        let policies = if deleted {
            scope::selecting(self.policies, &ns, template.labels(), |p| &p.spec.selector)
                .iter()
                .map(|p| ObjectRef::from_obj(p.as_ref()))
                .collect()
        } else {
            Vec::new()
        };
        Wake {
            change_requests: refs_in(self.change_requests, &ns, |c| c.spec.template == name),
            workloads: self.provisioned_from(&ns, &name),
            policies,
            ..Wake::default()
        }
    }

    /// Inventories changed what they say of these subjects.
    pub fn subjects_reported(&self, subjects: Vec<SubjectKey>) -> Wake {
        let mut wake = Wake::default();
        for (ns, kind, name) in subjects {
            match kind {
                SubjectKind::Workload => wake.workloads.push(ObjectRef::new(&name).within(&ns)),
                // A template revision's inventory judges new Workloads
                // provisionally.
                SubjectKind::Template => {
                    wake.templates.push(ObjectRef::new(&name).within(&ns));
                    wake.workloads.extend(self.provisioned_from(&ns, &name));
                }
                // A build result wakes its request (and the Template whose
                // history may name it).
                SubjectKind::ChangeRequest => {
                    let request = ObjectRef::<ChangeRequest>::new(&name).within(&ns);
                    if let Some(c) = self.change_requests.get(&request) {
                        wake.templates
                            .push(ObjectRef::new(&c.spec.template).within(&ns));
                    }
                    wake.change_requests.push(request);
                }
            }
        }
        wake
    }

    /// A Job Patchloop created changed: the Workload or ChangeRequest that
    /// owns it and the policy that created it.
    pub fn job_changed(&self, job: &Job) -> Wake {
        let Some(ns) = job.metadata.namespace.as_deref() else {
            return Wake::default();
        };
        let mut wake = Wake::default();
        for owner in job.owner_references() {
            match owner.kind.as_str() {
                "Workload" => wake.workloads.push(ObjectRef::new(&owner.name).within(ns)),
                // Build and test Jobs.
                "ChangeRequest" => wake
                    .change_requests
                    .push(ObjectRef::new(&owner.name).within(ns)),
                _ => {}
            }
        }
        // A name longer than 63 characters is cut and hashed in labels: the
        // label is mapped back through the cache rather than read as a name.
        if let Some(label) = job.labels().get(super::jobs::POLICY_LABEL) {
            wake.policies = refs_in(self.policies, ns, |p| {
                super::jobs::label_value(&p.name_any()) == *label
            });
        }
        wake
    }

    /// The advisory index changed by `diff` (`None`: diffs were missed, so
    /// anything may be affected). Templates are few: every one is judged
    /// anew.
    pub fn advisories_changed(&self, diff: Option<&IndexDiff>) -> Wake {
        Wake {
            templates: all(self.templates),
            workloads: match diff {
                Some(diff) => self.affected_workloads(diff),
                None => all(self.workloads),
            },
            ..Wake::default()
        }
    }

    /// The Workloads a diff touches: on an ecosystem that gained or lost all
    /// data, or with an installed (source) package whose advisories changed;
    /// a provisionally judged one on any change of its ecosystem.
    pub fn affected_workloads(&self, diff: &IndexDiff) -> Vec<ObjectRef<Workload>> {
        let touched = |eco: &str, w: &Workload, ns: &str| {
            let subject = dereference::workload_subject(w);
            scope::inventory_in(self.inventories, ns, &subject).is_some_and(|inv| {
                parse_compact_list(inv.spec.format.into(), &inv.spec.packages).is_ok_and(|pkgs| {
                    pkgs.iter().any(|p| {
                        [p.source_name(), p.base_name()]
                            .iter()
                            .any(|n| diff.changed.contains(&(eco.to_owned(), (*n).to_owned())))
                    })
                })
            })
        };
        let mut out = Vec::new();
        for w in self.workloads.state() {
            let (Ok(platform), Some(ns)) = (parse_platform(&w.spec.platform), w.namespace()) else {
                continue;
            };
            let eco = platform.osv_ecosystem();
            let provisional = w
                .status
                .as_ref()
                .and_then(|s| s.inventory.as_ref())
                .is_some_and(|i| i.provisional);
            if diff.ecosystems.contains(eco)
                || touched(eco, &w, &ns)
                || (provisional && diff.changed.iter().any(|(e, _)| e == eco))
            {
                out.push(ObjectRef::from_obj(w.as_ref()));
            }
        }
        out
    }

    /// A subject got its first status: the Inventories naming it may have
    /// waited for it to exist (their `Ready` says `SubjectNotFound`).
    pub fn subject_appeared(&self, namespace: &str, kind: SubjectKind, name: &str) -> Wake {
        let names = self
            .subjects
            .read()
            .map(|s| s.inventories(&(namespace.to_owned(), kind, name.to_owned())))
            .unwrap_or_default();
        Wake {
            inventories: names
                .iter()
                .map(|n| ObjectRef::new(n).within(namespace))
                .collect(),
            ..Wake::default()
        }
    }

    /// This replica became the leader: while it stood by, its reconcilers
    /// skipped every object.
    pub fn everything(&self) -> Wake {
        Wake {
            workloads: all(self.workloads),
            policies: all(self.policies),
            exceptions: all(self.exceptions),
            inventories: all(self.inventories),
            templates: all(self.templates),
            change_requests: all(self.change_requests),
        }
    }
}

/// Wakes what [`Graph::subject_appeared`] names.
pub fn inventories_of(scope: &Scope, ns: &str, kind: SubjectKind, name: &str) {
    scope
        .triggers
        .send(scope.graph().subject_appeared(ns, kind, name));
}

/// Sends `wake` once `store` shows `key` as `written` says: dependents woken
/// before would read the old object from their cache and, woken no more,
/// keep what they read.
fn send_once_cached<K: Kind + Send + Sync>(
    scope: &Arc<Scope>,
    store: impl Fn(&Scope) -> &Store<K> + Send + 'static,
    key: ObjectRef<K>,
    written: impl Fn(&K) -> bool + Send + 'static,
    wake: Wake,
) where
    K::DynamicType: Eq + std::hash::Hash + Clone,
{
    let scope = Arc::clone(scope);
    tokio::spawn(async move {
        scope::cache_shows(store(&scope), &key, written).await;
        scope.triggers.send(wake);
    });
}

/// A Workload's status was written: the policies it matched before and
/// matches now (they count it and plan from its record), the exceptions
/// matching it and its Template count it.
pub fn workload_written(
    scope: &Arc<Scope>,
    wl: &Workload,
    written: WorkloadStatus,
    policies: impl IntoIterator<Item = String>,
    exceptions: &[Arc<PatchException>],
) {
    let ns = wl.namespace().unwrap_or_default();
    let wake = Wake {
        policies: policies
            .into_iter()
            .map(|p| ObjectRef::new(&p).within(&ns))
            .collect(),
        exceptions: exceptions
            .iter()
            .map(|e| ObjectRef::from_obj(e.as_ref()))
            .collect(),
        templates: wl
            .spec
            .template_ref
            .iter()
            .map(|t| ObjectRef::new(&t.name).within(&ns))
            .collect(),
        ..Wake::default()
    };
    let me = ObjectRef::from_obj(wl);
    send_once_cached(
        scope,
        |s| &s.workloads,
        me,
        move |w| w.status.as_ref() == Some(&written),
        wake,
    );
}

/// A Template's status was written (`counted`: what policies count of it
/// changed): the policies matching it count it, and its open request
/// follows its findings until the build.
pub fn template_written(
    scope: &Scope,
    counted_by: &[Arc<PatchPolicy>],
    open_request: Option<&ChangeRequest>,
) {
    scope.triggers.send(Wake {
        policies: counted_by
            .iter()
            .map(|p| ObjectRef::from_obj(p.as_ref()))
            .collect(),
        change_requests: open_request.map(ObjectRef::from_obj).into_iter().collect(),
        ..Wake::default()
    });
}

/// A ChangeRequest moved to `phase`: its Template shows the open request
/// (or none) as read from the request cache.
pub fn request_moved(
    scope: &Arc<Scope>,
    request: &ChangeRequest,
    phase: crate::api::change_request::ChangeRequestPhase,
) {
    let ns = request.namespace().unwrap_or_default();
    let wake = Wake {
        templates: vec![ObjectRef::new(&request.spec.template).within(&ns)],
        ..Wake::default()
    };
    send_once_cached(
        scope,
        |s| &s.change_requests,
        ObjectRef::from_obj(request),
        move |c| c.status.as_ref().and_then(|s| s.phase) == Some(phase),
        wake,
    );
}

/// A PatchException's `Active` flipped: the Workloads it covers are judged
/// differently now.
pub fn exception_flipped(scope: &Scope, covered: &[Arc<Workload>]) {
    scope.triggers.send(Wake {
        workloads: covered
            .iter()
            .map(|w| ObjectRef::from_obj(w.as_ref()))
            .collect(),
        ..Wake::default()
    });
}

/// The watch edge of Workloads: none. What depends on a Workload's status
/// is woken when it is written ([`workload_written`]); its spec and labels
/// are read only by its own reconciler.
pub fn on_workload_event(_: Arc<Scope>) -> impl FnMut(&Event<Workload>) + Send + 'static {
    |_| {}
}

/// The watch edge of PatchPolicies: a changed spec or labels (or a
/// deletion) changes what Workloads and Templates are judged against.
pub fn on_policy_event(scope: Arc<Scope>) -> impl FnMut(&Event<PatchPolicy>) + Send + 'static {
    let mut seen = ChangeFilter::new(spec_or_labels::<PatchPolicy>);
    move |ev| {
        if let Some(p) = seen.changed(ev)
            && let Some(ns) = p.namespace()
        {
            if matches!(ev, Event::Delete(_)) {
                scope.shared.metrics.forget_policy(&ns, &p.name_any());
                scope.template_checks.forget(&p.uid().unwrap_or_default());
            }
            scope.triggers.send(scope.graph().selection_changed(&ns));
        }
    }
}

/// The watch edge of PatchExceptions.
pub fn on_exception_event(
    scope: Arc<Scope>,
) -> impl FnMut(&Event<PatchException>) + Send + 'static {
    let mut seen = ChangeFilter::new(spec_or_labels::<PatchException>);
    move |ev| {
        if let Some(e) = seen.changed(ev)
            && let Some(ns) = e.namespace()
        {
            scope.triggers.send(scope.graph().selection_changed(&ns));
        }
    }
}

/// The watch edge of Templates (every applied event: their status is
/// what Workloads and requests read).
pub fn on_template_event(scope: Arc<Scope>) -> impl FnMut(&Event<Template>) + Send + 'static {
    move |ev| match ev {
        Event::Apply(t) => scope
            .triggers
            .send(scope.graph().template_changed(t, false)),
        Event::Delete(t) => scope.triggers.send(scope.graph().template_changed(t, true)),
        _ => {}
    }
}

/// The watch edge of Inventories: the subject index is kept here, and a
/// new report or a recreated Inventory wakes its subject. The Inventory
/// reconciler's own status write changes nothing its subject reads.
pub fn on_inventory_event(scope: Arc<Scope>) -> impl FnMut(&Event<Inventory>) + Send + 'static {
    let mut seen = ChangeFilter::new(generation_and_uid);
    move |ev| {
        let changed = scope
            .subjects
            .write()
            .map(|mut i| i.apply(ev))
            .unwrap_or_default();
        if seen.changed(ev).is_some() {
            scope
                .triggers
                .send(scope.graph().subjects_reported(changed));
        }
    }
}

/// The watch edge of the Jobs Patchloop created.
pub fn on_job_event(scope: Arc<Scope>) -> impl FnMut(&Event<Job>) + Send + 'static {
    move |ev| {
        if let Event::Apply(job) | Event::Delete(job) = ev {
            scope.triggers.send(scope.graph().job_changed(job));
        }
    }
}

/// The advisory edge: re-evaluates exactly what each change of the
/// advisory index touches, until the index is dropped.
pub async fn advisory_changes(scope: Arc<Scope>) {
    let mut changes = scope.shared.advisories.subscribe();
    loop {
        let diff = match changes.recv().await {
            Ok(diff) => Some(diff),
            Err(RecvError::Lagged(_)) => None,
            Err(RecvError::Closed) => return,
        };
        scope
            .triggers
            .send(scope.graph().advisories_changed(diff.as_deref()));
    }
}

/// Passes on watch events that change what dependents read of an object
/// (its `version`: e.g. generation and labels) or delete it, and drops the
/// rest: a policy's count changing must not wake every Workload it counts,
/// nor an Inventory's `Ready` the Workload it describes.
pub struct ChangeFilter<K, V> {
    version: fn(&K) -> V,
    seen: HashMap<ObjectKey, V>,
}

/// An object's identity within the filter.
type ObjectKey = (Option<String>, String);

impl<K: kube::Resource, V: PartialEq> ChangeFilter<K, V> {
    /// A filter comparing objects by `version`.
    pub fn new(version: fn(&K) -> V) -> Self {
        ChangeFilter {
            version,
            seen: HashMap::new(),
        }
    }

    /// The object of `ev` if it counts as a change.
    pub fn changed<'a>(&mut self, ev: &'a Event<K>) -> Option<&'a K> {
        match ev {
            Event::Init | Event::InitDone => None,
            Event::InitApply(o) => {
                self.seen.insert(Self::key(o), (self.version)(o));
                None
            }
            Event::Apply(o) => {
                let (key, version) = (Self::key(o), (self.version)(o));
                let changed = self.seen.get(&key) != Some(&version);
                self.seen.insert(key, version);
                changed.then_some(o)
            }
            Event::Delete(o) => {
                self.seen.remove(&Self::key(o));
                Some(o)
            }
        }
    }

    fn key(o: &K) -> ObjectKey {
        (
            o.meta().namespace.clone(),
            o.meta().name.clone().unwrap_or_default(),
        )
    }
}

/// What a subject reads of its Inventory: its spec (generation) of this
/// object (uid: a recreated one starts again at 1); the Inventory's own
/// status is not read, and a new report always changes the spec
/// (`reportedAt`).
pub fn generation_and_uid(inv: &Inventory) -> (Option<i64>, Option<String>) {
    (inv.metadata.generation, inv.metadata.uid.clone())
}

/// What of an object asks for a new reconcile of it, or of the objects it
/// judges, when its watch shows a change: its generation (spec) or its
/// labels — not a status write, which is its own reconciler's.
pub fn spec_or_labels<K: kube::Resource>(obj: &K) -> Option<u64> {
    predicates::generation
        .combine(predicates::labels)
        .hash_property(obj)
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::runtime::reflector::store::Writer;
    use serde_json::{Value, json};

    /// The scope's caches, filled in memory as a watch would fill them.
    struct Caches {
        workloads: (Store<Workload>, Writer<Workload>),
        policies: (Store<PatchPolicy>, Writer<PatchPolicy>),
        exceptions: (Store<PatchException>, Writer<PatchException>),
        inventories: (Store<Inventory>, Writer<Inventory>),
        templates: (Store<Template>, Writer<Template>),
        change_requests: (Store<ChangeRequest>, Writer<ChangeRequest>),
        subjects: RwLock<SubjectIndex>,
    }

    fn object<K: serde::de::DeserializeOwned>(kind: &str, ns: &str, name: &str, rest: Value) -> K {
        let mut doc = json!({
            "apiVersion": "patchloop.dev/v1alpha1",
            "kind": kind,
            "metadata": {"name": name, "namespace": ns, "uid": format!("uid-{ns}-{name}")},
        });
        if let (Some(d), Some(r)) = (doc.as_object_mut(), rest.as_object()) {
            for (k, v) in r {
                if k == "labels" {
                    d["metadata"]["labels"] = v.clone();
                } else {
                    d.insert(k.clone(), v.clone());
                }
            }
        }
        serde_json::from_value(doc).unwrap_or_else(|e| panic!("a valid {kind}: {e}"))
    }

    fn put<K: Kind>(cache: &mut (Store<K>, Writer<K>), obj: K) {
        cache.1.apply_watcher_event(&Event::Apply(obj));
    }

    impl Caches {
        fn new() -> Self {
            Caches {
                workloads: scope::store(),
                policies: scope::store(),
                exceptions: scope::store(),
                inventories: scope::store(),
                templates: scope::store(),
                change_requests: scope::store(),
                subjects: RwLock::default(),
            }
        }

        fn graph(&self) -> Graph<'_> {
            Graph {
                workloads: &self.workloads.0,
                policies: &self.policies.0,
                exceptions: &self.exceptions.0,
                inventories: &self.inventories.0,
                templates: &self.templates.0,
                change_requests: &self.change_requests.0,
                subjects: &self.subjects,
            }
        }

        fn workload(&mut self, ns: &str, name: &str, template: Option<&str>) {
            let mut spec = json!({"platform": "Debian:12", "target": {"address": "198.18.0.10"}});
            if let Some(t) = template {
                spec["templateRef"] = json!({"name": t});
            }
            put(
                &mut self.workloads,
                object("Workload", ns, name, json!({"spec": spec})),
            );
        }

        fn policy(&mut self, ns: &str, name: &str, tier: &str) {
            let spec = json!({"selector": {"matchLabels": {"tier": tier}}});
            put(
                &mut self.policies,
                object("PatchPolicy", ns, name, json!({"spec": spec})),
            );
        }

        fn template(&mut self, ns: &str, name: &str) {
            put(&mut self.templates, template(ns, name));
        }

        fn request(&mut self, ns: &str, name: &str, template: &str) {
            let spec = json!({"template": template});
            put(
                &mut self.change_requests,
                object("ChangeRequest", ns, name, json!({"spec": spec})),
            );
        }

        fn inventory(&mut self, ns: &str, workload: &str, packages: &[&str]) {
            let inv: Inventory = object(
                "Inventory",
                ns,
                &format!("workload-{workload}"),
                json!({
                    "spec": {
                        "subject": {"kind": "Workload", "name": workload},
                        "reportedAt": "2026-12-05T10:00:00Z",
                        "format": "dpkg",
                        "packages": packages,
                    },
                }),
            );
            if let Ok(mut index) = self.subjects.write() {
                index.apply(&Event::Apply(inv.clone()));
            }
            put(&mut self.inventories, inv);
        }
    }

    fn template(ns: &str, name: &str) -> Template {
        object(
            "Template",
            ns,
            name,
            json!({
                "labels": {"tier": "gold"},
                "spec": {"platform": "Debian:12", "image": "registry.example/base:1"},
            }),
        )
    }

    /// The `ns/name` of each object, sorted.
    fn names<K: Kind>(refs: &[ObjectRef<K>]) -> Vec<String> {
        let mut out: Vec<String> = refs
            .iter()
            .map(|r| format!("{}/{}", r.namespace.as_deref().unwrap_or(""), r.name))
            .collect();
        out.sort();
        out
    }

    fn nothing_else(wake: &Wake, of: &[&str]) {
        let sizes = [
            ("workloads", wake.workloads.len()),
            ("policies", wake.policies.len()),
            ("exceptions", wake.exceptions.len()),
            ("inventories", wake.inventories.len()),
            ("templates", wake.templates.len()),
            ("change_requests", wake.change_requests.len()),
        ];
        for (kind, n) in sizes {
            if !of.contains(&kind) {
                assert_eq!(n, 0, "{kind} woken");
            }
        }
    }

    #[test]
    fn a_policy_or_exception_change_wakes_its_namespaces_workloads_and_templates() {
        let mut c = Caches::new();
        c.workload("prod", "web-1", None);
        c.workload("prod", "web-2", Some("base"));
        c.workload("dev", "web-3", None);
        c.template("prod", "base");
        c.template("dev", "base");
        let wake = c.graph().selection_changed("prod");
        assert_eq!(names(&wake.workloads), ["prod/web-1", "prod/web-2"]);
        assert_eq!(names(&wake.templates), ["prod/base"]);
        nothing_else(&wake, &["workloads", "templates"]);
    }

    #[test]
    fn a_template_change_wakes_its_requests_and_workloads_and_on_deletion_its_policies() {
        let mut c = Caches::new();
        c.workload("prod", "web-1", Some("base"));
        c.workload("prod", "web-2", Some("other"));
        c.workload("dev", "web-3", Some("base"));
        c.request("prod", "base-1", "base");
        c.request("prod", "other-1", "other");
        c.policy("prod", "gold", "gold");
        c.policy("prod", "silver", "silver");
        c.policy("dev", "gold", "gold");
        let base = template("prod", "base");
        let applied = c.graph().template_changed(&base, false);
        assert_eq!(names(&applied.workloads), ["prod/web-1"]);
        assert_eq!(names(&applied.change_requests), ["prod/base-1"]);
        nothing_else(&applied, &["workloads", "change_requests"]);
        let deleted = c.graph().template_changed(&base, true);
        assert_eq!(names(&deleted.policies), ["prod/gold"]);
        assert_eq!(names(&deleted.workloads), ["prod/web-1"]);
    }

    #[test]
    fn an_inventory_wakes_its_subject_by_kind() {
        let mut c = Caches::new();
        c.workload("prod", "web-1", Some("base"));
        c.workload("prod", "web-2", None);
        c.request("prod", "base-7", "base");
        let of = |kind, name: &str| ("prod".to_owned(), kind, name.to_owned());
        let wake = c
            .graph()
            .subjects_reported(vec![of(SubjectKind::Workload, "web-2")]);
        assert_eq!(names(&wake.workloads), ["prod/web-2"]);
        nothing_else(&wake, &["workloads"]);
        // A revision's inventory judges Workloads provisioned from it.
        let wake = c
            .graph()
            .subjects_reported(vec![of(SubjectKind::Template, "base")]);
        assert_eq!(names(&wake.templates), ["prod/base"]);
        assert_eq!(names(&wake.workloads), ["prod/web-1"]);
        nothing_else(&wake, &["workloads", "templates"]);
        // A build result: its request and the request's Template.
        let wake = c
            .graph()
            .subjects_reported(vec![of(SubjectKind::ChangeRequest, "base-7")]);
        assert_eq!(names(&wake.change_requests), ["prod/base-7"]);
        assert_eq!(names(&wake.templates), ["prod/base"]);
        nothing_else(&wake, &["change_requests", "templates"]);
    }

    #[test]
    fn a_job_wakes_its_owner_and_the_policy_named_by_its_label_even_when_hashed() {
        let mut c = Caches::new();
        let long = "a".repeat(70);
        c.policy("prod", &long, "gold");
        c.policy("prod", "short", "gold");
        c.policy("dev", &long, "gold");
        let job = |owner_kind: &str, owner: &str, policy: &str| -> Job {
            serde_json::from_value(json!({
                "metadata": {
                    "name": "j", "namespace": "prod",
                    "labels": {(super::super::jobs::POLICY_LABEL): super::super::jobs::label_value(policy)},
                    "ownerReferences": [{
                        "apiVersion": "patchloop.dev/v1alpha1", "kind": owner_kind,
                        "name": owner, "uid": "u",
                    }],
                },
            }))
            .expect("a valid Job")
        };
        let wake = c.graph().job_changed(&job("Workload", "web-1", &long));
        assert_eq!(names(&wake.workloads), ["prod/web-1"]);
        assert_eq!(names(&wake.policies), [format!("prod/{long}")]);
        nothing_else(&wake, &["workloads", "policies"]);
        let wake = c
            .graph()
            .job_changed(&job("ChangeRequest", "base-1", "short"));
        assert_eq!(names(&wake.change_requests), ["prod/base-1"]);
        assert_eq!(names(&wake.policies), ["prod/short"]);
        nothing_else(&wake, &["change_requests", "policies"]);
    }

    #[test]
    fn an_advisory_diff_wakes_every_template_and_only_the_workloads_it_touches() {
        let mut c = Caches::new();
        c.workload("prod", "ssl", None);
        c.workload("prod", "zlib", None);
        c.workload("prod", "bare", None);
        c.template("prod", "base");
        c.inventory("prod", "ssl", &["libssl3 3.0.15-1~deb12u1 openssl"]);
        c.inventory("prod", "zlib", &["zlib1g 1:1.2.13.dfsg-1 zlib"]);
        let eco = crate::engine::version::osv_ecosystem("Debian:12").expect("a platform");
        let diff = IndexDiff {
            changed: [(eco.clone(), "openssl".to_owned())].into(),
            ecosystems: Default::default(),
        };
        let wake = c.graph().advisories_changed(Some(&diff));
        assert_eq!(names(&wake.workloads), ["prod/ssl"]);
        assert_eq!(names(&wake.templates), ["prod/base"]);
        nothing_else(&wake, &["workloads", "templates"]);
        // An ecosystem gaining or losing all data touches all of its
        // Workloads; missed diffs touch everything.
        let all_data = IndexDiff {
            changed: Default::default(),
            ecosystems: [eco].into(),
        };
        let every = ["prod/bare", "prod/ssl", "prod/zlib"];
        assert_eq!(
            names(&c.graph().advisories_changed(Some(&all_data)).workloads),
            every
        );
        assert_eq!(names(&c.graph().advisories_changed(None).workloads), every);
    }

    #[test]
    fn a_subject_appearing_wakes_the_inventories_naming_it() {
        let mut c = Caches::new();
        c.inventory("prod", "web-1", &[]);
        c.inventory("prod", "web-2", &[]);
        let wake = c
            .graph()
            .subject_appeared("prod", SubjectKind::Workload, "web-1");
        assert_eq!(names(&wake.inventories), ["prod/workload-web-1"]);
        nothing_else(&wake, &["inventories"]);
    }

    #[test]
    fn a_new_leader_wakes_everything() {
        let mut c = Caches::new();
        c.workload("prod", "web-1", None);
        c.policy("dev", "gold", "gold");
        c.template("prod", "base");
        c.request("prod", "base-1", "base");
        c.inventory("prod", "web-1", &[]);
        let wake = c.graph().everything();
        assert_eq!(names(&wake.workloads), ["prod/web-1"]);
        assert_eq!(names(&wake.policies), ["dev/gold"]);
        assert_eq!(names(&wake.templates), ["prod/base"]);
        assert_eq!(names(&wake.change_requests), ["prod/base-1"]);
        assert_eq!(names(&wake.inventories), ["prod/workload-web-1"]);
    }

    #[test]
    fn sent_wakes_reach_their_streams() {
        let (triggers, mut streams) = scope::channels();
        let mut c = Caches::new();
        c.workload("prod", "web-1", None);
        c.template("prod", "base");
        triggers.send(c.graph().selection_changed("prod"));
        let w = streams.workloads.try_recv().expect("a Workload woken");
        assert_eq!(w.name, "web-1");
        let t = streams.templates.try_recv().expect("a Template woken");
        assert_eq!(t.name, "base");
        assert!(streams.policies.try_recv().is_err(), "no policy woken");
    }

    /// An Inventory as a watch shows it: object uid, generation, the
    /// reporter's write and perhaps the controller's status write (times in
    /// managedFields, which clients can set and the filter ignores).
    fn inventory(uid: &str, generation: i64, status_written: Option<&str>) -> Inventory {
        let mut managed = vec![serde_json::json!({
            "manager": "node-agent", "operation": "Apply", "time": "2026-11-24T10:00:00Z",
        })];
        if let Some(t) = status_written {
            managed.push(serde_json::json!({
                "manager": super::super::inventory::MANAGER, "operation": "Apply",
                "subresource": "status", "time": t,
            }));
        }
        serde_json::from_value(serde_json::json!({
            "apiVersion": "patchloop.dev/v1alpha1",
            "kind": "Inventory",
            "metadata": {
                "name": "workload-web-1", "namespace": "prod", "uid": uid,
                "generation": generation, "managedFields": managed,
            },
            "spec": {
                "subject": {"kind": "Workload", "name": "web-1"},
                "reportedAt": "2026-11-24T10:00:00Z",
                "format": "dpkg",
                "packages": ["libc6 2.36-9+deb12u7 glibc"],
            },
        }))
        .expect("a valid Inventory")
    }

    #[test]
    fn an_inventorys_own_status_write_does_not_pass_the_filter() {
        let mut filter = ChangeFilter::new(generation_and_uid);
        let listed = inventory("a", 1, None);
        assert!(filter.changed(&Event::InitApply(listed)).is_none());
        // The controller writes its status: same object, same generation.
        let ready = inventory("a", 1, Some("2026-11-24T10:00:05Z"));
        assert!(filter.changed(&Event::Apply(ready)).is_none());
    }

    #[test]
    fn a_new_report_or_a_recreated_inventory_passes_the_filter() {
        let mut filter = ChangeFilter::new(generation_and_uid);
        let first = inventory("a", 1, None);
        // A first sighting outside the initial list passes.
        assert!(filter.changed(&Event::Apply(first.clone())).is_some());
        assert!(filter.changed(&Event::Apply(first)).is_none());
        // A new report changes the spec (at least `reportedAt`).
        let reported = inventory("a", 2, None);
        assert!(filter.changed(&Event::Apply(reported)).is_some());
        // Deleted and created again: generation 1 again, but a new object.
        let recreated = inventory("b", 1, None);
        assert!(filter.changed(&Event::Apply(recreated.clone())).is_some());
        assert!(filter.changed(&Event::Delete(recreated)).is_some());
    }

    #[test]
    fn policies_pass_the_filter_on_spec_or_label_changes_only() {
        let policy = |generation: i64, tier: &str, counted: i64| -> PatchPolicy {
            serde_json::from_value(serde_json::json!({
                "apiVersion": "patchloop.dev/v1alpha1",
                "kind": "PatchPolicy",
                "metadata": {
                    "name": "baseline", "namespace": "prod", "generation": generation,
                    "labels": {"tier": tier},
                },
                "spec": {"selector": {}},
                "status": {"observedGeneration": generation, "counts": {"matched": counted}},
            }))
            .expect("a valid PatchPolicy")
        };
        let mut filter = ChangeFilter::new(spec_or_labels::<PatchPolicy>);
        assert!(
            filter
                .changed(&Event::InitApply(policy(1, "a", 0)))
                .is_none()
        );
        assert!(filter.changed(&Event::Apply(policy(1, "a", 5))).is_none());
        assert!(filter.changed(&Event::Apply(policy(1, "b", 5))).is_some());
        assert!(filter.changed(&Event::Apply(policy(2, "b", 5))).is_some());
    }
}
