//! Kubernetes glue: one reconciler per kind, thin, around the pure engine.
//!
//! Who writes what (one field manager each): the workload reconciler writes
//! Workload status; the policy reconciler PatchPolicy status; the exception
//! reconciler PatchException status; the inventory reconciler Inventory
//! status; the feed reconciler AdvisoryFeed status and the shared advisory
//! store. Triggers, not polling: each reconciler is woken by its own watch,
//! by the objects it depends on (through [`Triggers`]), and by the engine's
//! next-change instant.

pub mod advisories;
pub mod exception;
pub mod feed;
pub mod feed_source;
pub mod http;
pub mod inventory;
pub mod metrics;
pub mod policy;
pub mod run;
pub mod scope;
pub mod workload;

use std::sync::Arc;
use std::time::Duration;

use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::{Client, Resource};

use self::advisories::AdvisoryStore;
use self::metrics::Metrics;

/// Errors of a reconcile; the error policy retries with backoff.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The apiserver refused or failed a request.
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    /// A status could not be serialized.
    #[error("serializing status: {0}")]
    Serialize(#[from] serde_json::Error),
    /// An object lacks a field the apiserver always sets.
    #[error("object without {0}")]
    Missing(&'static str),
}

/// Settings of `patchloop run` that reconcilers read.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Namespaces to watch; empty means all.
    pub namespaces: Vec<String>,
    /// Label selector of the AdvisoryFeeds to load.
    pub feed_selector: Option<String>,
    /// How long after start an ecosystem without data keeps its compliance.
    pub grace: jiff::SignedDuration,
    /// The longest a reconciler sleeps when nothing is scheduled.
    pub max_requeue: Duration,
}

/// What every reconciler shares.
pub struct Shared {
    /// The API client.
    pub client: Client,
    /// Publishes Events (on transitions only).
    pub recorder: Recorder,
    /// The advisory data of every feed.
    pub advisories: Arc<AdvisoryStore>,
    /// Prometheus metrics.
    pub metrics: Metrics,
    /// Settings.
    pub settings: Settings,
}

impl Shared {
    /// Publishes an Event about `obj`; a failure is logged, never fatal (an
    /// Event is a notification, the status is the record).
    pub async fn event<K>(&self, obj: &K, warning: bool, reason: &str, note: String)
    where
        K: Resource<DynamicType = ()>,
    {
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
        if let Err(e) = self.recorder.publish(&ev, &obj.object_ref(&())).await {
            tracing::warn!(error = %e, reason, "could not publish an Event");
        }
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
