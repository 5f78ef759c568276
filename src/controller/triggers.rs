//! Cross-object wake-ups sent from inside a reconcile: "X was written →
//! wake these Ys". The watches' own wake-ups are wired in `run.rs` and
//! `scope.rs`; ARCHITECTURE.md's wake table lists every edge.

use std::sync::Arc;

use kube::ResourceExt;
use kube::runtime::reflector::ObjectRef;

use super::scope::{self, Scope};
use crate::api::inventory::SubjectKind;
use crate::api::{PatchException, PatchPolicy, Template, Workload, WorkloadStatus};

/// The Inventories naming a subject, which may have waited for it to
/// exist (their `Ready` says `SubjectNotFound` until it does).
pub fn inventories_of(scope: &Scope, ns: &str, kind: SubjectKind, name: &str) {
    let names = scope
        .subjects
        .read()
        .map(|s| s.inventories(&(ns.to_owned(), kind, name.to_owned())))
        .unwrap_or_default();
    for n in names {
        let _ = scope
            .triggers
            .inventories
            .unbounded_send(ObjectRef::new(&n).within(ns));
    }
}

/// A Workload's status was written: the policies it matched before and
/// matches now (they count it and plan from its record), the exceptions
/// matching it and its Template count it. They are woken once the Workload
/// cache shows `written`, or they would read the old status and not look
/// again.
pub fn workload_written(
    scope: &Arc<Scope>,
    wl: &Workload,
    written: WorkloadStatus,
    policies: impl IntoIterator<Item = String>,
    exceptions: &[Arc<PatchException>],
) {
    let ns = wl.namespace().unwrap_or_default();
    let policies: Vec<ObjectRef<PatchPolicy>> = policies
        .into_iter()
        .map(|p| ObjectRef::new(&p).within(&ns))
        .collect();
    let exceptions: Vec<ObjectRef<PatchException>> = exceptions
        .iter()
        .map(|e| ObjectRef::from_obj(e.as_ref()))
        .collect();
    let template = wl
        .spec
        .template_ref
        .as_ref()
        .map(|t| ObjectRef::<Template>::new(&t.name).within(&ns));
    let me = ObjectRef::<Workload>::from_obj(wl);
    let scope = Arc::clone(scope);
    tokio::spawn(async move {
        scope::cache_shows(&scope.workloads, &me, |w| {
            w.status.as_ref() == Some(&written)
        })
        .await;
        for p in policies {
            let _ = scope.triggers.policies.unbounded_send(p);
        }
        for e in exceptions {
            let _ = scope.triggers.exceptions.unbounded_send(e);
        }
        if let Some(t) = template {
            let _ = scope.triggers.templates.unbounded_send(t);
        }
    });
}

/// A PatchException's `Active` flipped: the Workloads it covers are judged
/// differently now.
pub fn exception_flipped(scope: &Scope, covered: &[Arc<Workload>]) {
    for w in covered {
        let _ = scope
            .triggers
            .workloads
            .unbounded_send(ObjectRef::from_obj(w.as_ref()));
    }
}
