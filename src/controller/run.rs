//! `patchloop run`: wires the caches, the trigger channels and one
//! kube-runtime controller per kind, serves metrics and health, and shuts
//! down gracefully.

use std::net::SocketAddr;
use std::sync::{Arc, RwLock};

use futures::{FutureExt, StreamExt, future};
use k8s_openapi::api::batch::v1::Job;
use kube::runtime::controller::{self, Controller};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher::{self, Event};
use kube::runtime::{WatchStreamExt, predicates, utils::Predicate};
use kube::{Api, Client, ResourceExt};
use tokio::sync::watch;

use super::advisories::AdvisoryStore;
use super::feed::FeedContext;
use super::http::{self, Health};
use super::jobs::{MANAGED_BY, MANAGED_BY_LABEL};
use super::metrics::Metrics;
use super::priority::VerdictsFirst;
use super::scope::{self, Scope, SubjectIndex, TriggerStreams};
use super::{
    Settings, Shared, change, event_queue, exception, failpoint, feed, feed_source, inventory,
    leader, policy, reconciled, recorder, retry_with_backoff, template, workload,
};
use crate::api::inventory::SubjectKind;
use crate::api::{
    AdvisoryFeed, ChangeRequest, Inventory, PatchException, PatchPolicy, Template, Workload,
};
use crate::engine::advisory::IndexDiff;
use crate::engine::inventory::parse_compact_list;
use crate::engine::version::parse_platform;

/// Why the controller could not run.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The metrics/health address could not be bound.
    #[error("binding {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The error.
        source: std::io::Error,
    },
    /// The feed HTTP client could not be built.
    #[error("{0}")]
    Http(#[from] feed_source::FetchError),
    /// Leader election could not start.
    #[error("leader election: {0}")]
    Lease(#[from] kube_lease_manager::LeaseManagerError),
}

/// Runs until `shutdown` resolves (SIGTERM/SIGINT in the binary).
pub async fn run(
    client: Client,
    settings: Settings,
    listen: SocketAddr,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), RunError> {
    let metrics = Metrics::new();
    let health = Health::new();
    let started = super::now();

    let (stop_tx, stop_rx) = watch::channel(false);
    let stopped = {
        let rx = stop_rx.clone();
        move || {
            let mut rx = rx.clone();
            async move {
                let _ = rx.wait_for(|s| *s).await;
            }
        }
    };
    let (leadership, campaign) = match &settings.leader {
        Some(leader_settings) => {
            let (leadership, campaign) = leader::campaign(
                client.clone(),
                leader_settings.clone(),
                metrics.clone(),
                stopped(),
            )
            .await?;
            (leadership, campaign.boxed())
        }
        None => (leader::Leadership::always(), future::ready(()).boxed()),
    };
    metrics.set_leader(leadership.is_leader());
    let recorder = recorder(client.clone());
    let verdicts_first = Arc::new(VerdictsFirst::default());
    let (events, event_worker) = event_queue(recorder.clone(), Arc::clone(&verdicts_first));
    let shared = Arc::new(Shared {
        recorder,
        events,
        verdicts_first,
        advisories: Arc::new(AdvisoryStore::new(started, settings.grace)),
        metrics: metrics.clone(),
        settings: settings.clone(),
        client: client.clone(),
        leadership: leadership.clone(),
        backoff: Default::default(),
    });
    let (bound, server) = http::bind(listen, metrics.clone(), health.clone(), stopped())
        .await
        .map_err(|source| RunError::Bind {
            addr: listen,
            source,
        })?;
    tracing::info!(address = %bound, "serving /metrics, /healthz and /readyz");

    let feeds = feed_controller(Arc::clone(&shared), stopped())?;
    let event_worker = {
        let stop = stopped();
        async move {
            tokio::select! {
                () = event_worker => {}
                () = stop => {}
            }
        }
    };
    let mut tasks: Vec<future::BoxFuture<'static, ()>> =
        vec![feeds.boxed(), campaign, event_worker.boxed()];
    let mut ready_checks = Vec::new();
    let mut scopes_built = Vec::new();
    let scopes: Vec<Option<String>> = if settings.namespaces.is_empty() {
        vec![None]
    } else {
        settings.namespaces.iter().cloned().map(Some).collect()
    };
    for namespace in scopes {
        let (task, ready, scope) = scope_controllers(Arc::clone(&shared), namespace, &stopped);
        tasks.push(task);
        ready_checks.push(ready);
        scopes_built.push(scope);
    }
    // A new leader looks at everything once: while it stood by, its
    // reconcilers skipped every object.
    if settings.leader.is_some() {
        let metrics = metrics.clone();
        let stop = stopped();
        tasks.push(
            async move {
                tokio::select! {
                    () = leadership.acquired() => {
                        metrics.set_leader(true);
                        for scope in &scopes_built {
                            scope.caches_ready().await;
                            scope.wake_everything();
                        }
                    }
                    () = stop => {}
                }
            }
            .boxed(),
        );
    }
    let readiness = {
        let health = health.clone();
        async move {
            for r in ready_checks {
                r.await;
            }
            health.set_ready(true);
            tracing::info!("caches synced; ready");
        }
    };
    tasks.push(readiness.boxed());
    tasks.push(
        async move {
            if let Err(e) = server.await {
                tracing::error!(error = %e, "metrics server failed");
            }
        }
        .boxed(),
    );
    tasks.push(
        async move {
            shutdown.await;
            tracing::info!("shutting down");
            let _ = stop_tx.send(true);
        }
        .boxed(),
    );
    future::join_all(tasks).await;
    Ok(())
}

fn feed_controller(
    shared: Arc<Shared>,
    stopped: impl Future<Output = ()> + Send + Sync + 'static,
) -> Result<impl Future<Output = ()> + Send, RunError> {
    let http = feed_source::http_client()?;
    let ctx = Arc::new(FeedContext::new(Arc::clone(&shared), http));
    let mut config = watcher::Config::default();
    if let Some(sel) = &shared.settings.feed_selector {
        config = config.labels(sel);
    }
    let api: Api<AdvisoryFeed> = Api::all(shared.client.clone());
    // Deleted feeds take their data with them (removed in order, off the
    // watch: the index rebuild is slow).
    let (deleted_tx, mut deleted_rx) = tokio::sync::mpsc::unbounded_channel::<String>();
    let deletions = {
        let ctx = Arc::clone(&ctx);
        async move {
            while let Some(name) = deleted_rx.recv().await {
                ctx.forget(&name).await;
            }
        }
    };
    let (feeds, feed_writer) = scope::store::<AdvisoryFeed>();
    // A feed's own status write (and every other write that leaves its
    // spec and labels alone) comes back through this watch: only a new
    // generation or label set, or a first sighting, asks for a refresh;
    // refreshes are otherwise scheduled by the interval alone.
    let changed_feeds = scope::reflect_lagging(api, config, None, feed_writer, move |ev| {
        if let Event::Delete(f) = ev {
            let _ = deleted_tx.send(f.name_any());
        }
    })
    .predicate_filter(spec_or_labels, Default::default());
    let controller = Controller::for_stream(changed_feeds, feeds);
    // A standby loads feeds but writes no status: once it leads, every feed
    // is looked at again so its status is its own.
    let led = {
        let store = controller.store();
        let leadership = shared.leadership.clone();
        let elected = shared.settings.leader.is_some();
        futures::stream::once(async move {
            if elected {
                leadership.acquired().await;
                let _ = store.wait_until_ready().await;
                store.state()
            } else {
                Vec::new()
            }
        })
        .flat_map(|feeds| {
            futures::stream::iter(feeds.into_iter().map(|f| ObjectRef::from_obj(f.as_ref())))
        })
    };
    // The feeds present at start: verdicts wait until each was tried once.
    let startup = {
        let store = controller.store();
        let shared = Arc::clone(&shared);
        async move {
            if store.wait_until_ready().await.is_ok() {
                shared
                    .advisories
                    .expect_feeds(store.state().iter().map(|f| f.name_any()));
            }
        }
    };
    let controller = controller
        .with_config(controller::Config::default().concurrency(RECONCILE_CONCURRENCY))
        .reconcile_on(led)
        .graceful_shutdown_on(stopped)
        .run(
            |f, ctx: Arc<FeedContext>| async move {
                let result = feed::reconcile(Arc::clone(&f), Arc::clone(&ctx)).await;
                if result.is_ok() {
                    reconciled(&ctx.shared, f.as_ref());
                }
                result
            },
            retry_with_backoff,
            ctx,
        )
        .for_each(|r| {
            log_result(r.map(|(o, _)| o));
            future::ready(())
        });
    Ok(async move {
        tokio::select! {
            () = controller => {},
            () = deletions => {},
            () = async { startup.await; std::future::pending::<()>().await } => {},
        }
    })
}

/// Passes on watch events that change what dependents read of an object
/// (its `version`: e.g. generation and labels) or delete it, and drops the
/// rest: a policy's count changing must not wake every Workload it counts,
/// nor an Inventory's `Ready` the Workload it describes.
struct ChangeFilter<K, V> {
    version: fn(&K) -> V,
    seen: std::collections::HashMap<ObjectKey, V>,
}

/// An object's identity within the filter.
type ObjectKey = (Option<String>, String);

impl<K: kube::Resource, V: PartialEq> ChangeFilter<K, V> {
    fn new(version: fn(&K) -> V) -> Self {
        ChangeFilter {
            version,
            seen: Default::default(),
        }
    }

    fn changed<'a>(&mut self, ev: &'a Event<K>) -> Option<&'a K> {
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
fn generation_and_uid(inv: &Inventory) -> (Option<i64>, Option<String>) {
    (inv.metadata.generation, inv.metadata.uid.clone())
}

/// What of an object asks for a new reconcile of it, or of the objects it
/// judges, when its watch shows a change: its generation (spec) or its
/// labels — not a status write, which is its own reconciler's.
fn spec_or_labels<K: kube::Resource>(obj: &K) -> Option<u64> {
    predicates::generation
        .combine(predicates::labels)
        .hash_property(obj)
}

/// Reconciles in flight per controller. kube-runtime's default is
/// unbounded: at start every object of a large fleet would be evaluated at
/// once, each holding its parsed inventory and findings in memory while
/// thousands of status patches compete for the apiserver.
const RECONCILE_CONCURRENCY: u16 = 32;

/// The longest one reconcile of a namespaced object may take; it is
/// retried after that.
const RECONCILE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(20);

// An Inventory reconcile may wait this long for Workload verdicts before its
// own request: it must not use up the reconcile's time limit doing so.
const _: () =
    assert!(super::priority::BOOKKEEPING_PATIENCE.as_secs() * 2 <= RECONCILE_TIMEOUT.as_secs());

/// Runs a namespaced controller, also woken by `triggers`, until `stop`.
fn drive<K, Fut>(
    controller: Controller<K>,
    triggers: futures::channel::mpsc::UnboundedReceiver<ObjectRef<K>>,
    stop: impl Future<Output = ()> + Send + Sync + 'static,
    reconcile: fn(Arc<K>, Arc<Scope>) -> Fut,
    scope: Arc<Scope>,
) -> impl Future<Output = ()> + Send
where
    K: kube::Resource<DynamicType = ()>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug
        + Send
        + Sync
        + 'static,
    Fut: Future<Output = Result<kube::runtime::controller::Action, super::Error>> + Send + 'static,
{
    // Standbys keep their caches (the controllers' watches run) but skip
    // every object; the new leader wakes them all.
    let leading = move |obj: Arc<K>, scope: Arc<Scope>| {
        let skip = !scope.shared.leadership.is_leader();
        let work = (!skip).then(|| (reconcile(Arc::clone(&obj), Arc::clone(&scope)), obj, scope));
        async move {
            match work {
                // A request the apiserver never answers must not hold the
                // object (kube-runtime reconciles it only once at a time)
                // for the client's five-minute read timeout.
                Some((work, obj, scope)) => {
                    let result = tokio::time::timeout(RECONCILE_TIMEOUT, work)
                        .await
                        .unwrap_or(Err(super::Error::Timeout(RECONCILE_TIMEOUT)));
                    if result.is_ok() {
                        reconciled(&scope.shared, obj.as_ref());
                    }
                    result
                }
                None => Ok(kube::runtime::controller::Action::await_change()),
            }
        }
    };
    controller
        .with_config(controller::Config::default().concurrency(RECONCILE_CONCURRENCY))
        .reconcile_on(triggers)
        .graceful_shutdown_on(stop)
        .run(leading, retry_with_backoff, scope)
        .for_each(|r| {
            log_result(r.map(|(o, _)| o));
            future::ready(())
        })
}

fn log_result<K: std::fmt::Display, E: std::fmt::Display>(r: Result<K, E>) {
    if let Err(e) = r {
        tracing::debug!(error = %e, "reconcile stream");
    }
}

type Ready = future::BoxFuture<'static, ()>;

/// All namespaced controllers of one scope.
fn scope_controllers<F, Fut>(
    shared: Arc<Shared>,
    namespace: Option<String>,
    stopped: &F,
) -> (future::BoxFuture<'static, ()>, Ready, Arc<Scope>)
where
    F: Fn() -> Fut,
    Fut: Future<Output = ()> + Send + Sync + 'static,
{
    let client = shared.client.clone();
    let ns = namespace.as_deref();
    let (policies, policy_writer) = scope::store::<PatchPolicy>();
    let (exceptions, exception_writer) = scope::store::<PatchException>();
    let (templates, template_writer) = scope::store::<Template>();
    let (inventories, inventory_writer) = scope::store::<Inventory>();
    let (jobs, job_writer) = scope::store::<Job>();
    let (triggers, streams) = scope::triggers();
    let TriggerStreams {
        workloads: workload_refs,
        policies: policy_refs,
        exceptions: exception_refs,
        inventories: inventory_refs,
        templates: template_refs,
        change_requests: change_refs,
    } = streams;

    let (workloads, workload_writer) = scope::store::<Workload>();
    // A Workload's own status write comes back through its watch; only a
    // new generation or label set (or a first sighting) asks for a new
    // verdict. Everything else it depends on wakes it through triggers.
    let workload_controller = Controller::for_stream(
        scope::reflect(
            scope::api_in::<Workload>(&client, ns),
            workload_writer,
            |_| {},
        )
        .predicate_filter(spec_or_labels, Default::default()),
        workloads.clone(),
    );
    let change_controller = Controller::new(
        scope::api_in::<ChangeRequest>(&client, ns),
        watcher::Config::default(),
    );
    let change_requests = change_controller.store();
    let subjects = Arc::new(RwLock::new(SubjectIndex::default()));
    let (synced_tx, synced) = tokio::sync::watch::channel(false);
    let scope = Arc::new(Scope {
        synced,
        shared: Arc::clone(&shared),
        namespace: namespace.clone(),
        policies: policies.clone(),
        exceptions: exceptions.clone(),
        templates: templates.clone(),
        inventories: inventories.clone(),
        subjects: Arc::clone(&subjects),
        workloads: workloads.clone(),
        jobs: jobs.clone(),
        change_requests: change_requests.clone(),
        expected_jobs: Default::default(),
        triggers: triggers.clone(),
    });

    // Dependencies wake the reconcilers that read them; each stream also
    // drives the kind's own reconciler (one watch and one cache per kind).
    let policy_stream = {
        let scope = Arc::clone(&scope);
        let mut seen = ChangeFilter::new(spec_or_labels::<PatchPolicy>);
        scope::reflect(
            scope::api_in::<PatchPolicy>(&client, ns),
            policy_writer,
            move |ev| {
                // Only a changed spec or labels (or a deletion) changes what
                // Workloads are judged against; status writes do not.
                if let Some(p) = seen.changed(ev)
                    && let Some(pns) = p.namespace()
                {
                    if matches!(ev, Event::Delete(_)) {
                        scope.shared.metrics.forget_policy(&pns, &p.name_any());
                    }
                    scope.wake_workloads_in(&pns);
                    scope.wake_templates_in(&pns);
                }
            },
        )
    };
    let exception_stream = {
        let scope = Arc::clone(&scope);
        let mut seen = ChangeFilter::new(spec_or_labels::<PatchException>);
        scope::reflect(
            scope::api_in::<PatchException>(&client, ns),
            exception_writer,
            move |ev| {
                if let Some(e) = seen.changed(ev)
                    && let Some(ens) = e.namespace()
                {
                    scope.wake_workloads_in(&ens);
                    scope.wake_templates_in(&ens);
                }
            },
        )
    };
    let template_stream = {
        let scope = Arc::clone(&scope);
        scope::reflect(
            scope::api_in::<Template>(&client, ns),
            template_writer,
            move |ev| {
                if let Event::Apply(t) | Event::Delete(t) = ev {
                    let name = t.name_any();
                    if let Some(tns) = t.namespace() {
                        // Its ChangeRequests follow its findings and revision;
                        // policies count it.
                        scope.wake_change_requests_of(&tns, &name);
                        if matches!(ev, Event::Delete(_)) {
                            for p in scope.matching_policies(&tns, t.labels()) {
                                let _ = scope
                                    .triggers
                                    .policies
                                    .unbounded_send(ObjectRef::from_obj(p.as_ref()));
                            }
                        }
                    }
                    for w in scope.workloads.state() {
                        if w.namespace() == t.namespace()
                            && w.spec.template_ref.as_ref().is_some_and(|r| r.name == name)
                        {
                            let _ = scope
                                .triggers
                                .workloads
                                .unbounded_send(ObjectRef::from_obj(w.as_ref()));
                        }
                    }
                }
            },
        )
    };
    let inventory_stream = {
        let scope = Arc::clone(&scope);
        let mut seen = ChangeFilter::new(generation_and_uid);
        scope::reflect(
            scope::api_in::<Inventory>(&client, ns),
            inventory_writer,
            move |ev| {
                let mut changed = scope
                    .subjects
                    .write()
                    .map(|mut i| i.apply(ev))
                    .unwrap_or_default();
                // The Inventory reconciler's own status write changes
                // nothing its subject reads.
                if seen.changed(ev).is_none() {
                    changed.clear();
                }
                for (sns, kind, name) in changed {
                    match kind {
                        SubjectKind::Workload => {
                            let _ = scope
                                .triggers
                                .workloads
                                .unbounded_send(ObjectRef::new(&name).within(&sns));
                        }
                        // A template revision's inventory judges new Workloads
                        // provisionally.
                        SubjectKind::Template => {
                            let _ = scope
                                .triggers
                                .templates
                                .unbounded_send(ObjectRef::new(&name).within(&sns));
                            for w in scope.workloads.state() {
                                if w.namespace().as_deref() == Some(sns.as_str())
                                    && w.spec.template_ref.as_ref().is_some_and(|r| r.name == name)
                                {
                                    let _ = scope
                                        .triggers
                                        .workloads
                                        .unbounded_send(ObjectRef::from_obj(w.as_ref()));
                                }
                            }
                        }
                        // A build result wakes its request (and the Template
                        // whose history may name it).
                        SubjectKind::ChangeRequest => {
                            let cr = ObjectRef::<ChangeRequest>::new(&name).within(&sns);
                            if let Some(c) = scope.change_requests.get(&cr) {
                                let _ = scope
                                    .triggers
                                    .templates
                                    .unbounded_send(ObjectRef::new(&c.spec.template).within(&sns));
                            }
                            let _ = scope.triggers.change_requests.unbounded_send(cr);
                        }
                    }
                }
            },
        )
    };
    // Only Jobs Patchloop created; each change wakes the object that owns
    // the Job and the policy that created it.
    let job_loop = {
        let scope = Arc::clone(&scope);
        scope::reflect_lagging(
            scope::api_in::<Job>(&client, ns),
            watcher::Config::default().labels(&format!("{MANAGED_BY_LABEL}={MANAGED_BY}")),
            failpoint::delay(failpoint::JOB_WATCH_DELAY),
            job_writer,
            move |ev| {
                if let Event::Apply(job) | Event::Delete(job) = ev {
                    scope.wake_for_job(job);
                }
            },
        )
        .for_each(|_| future::ready(()))
    };
    let diff_loop = advisory_changes(Arc::clone(&scope));

    let workload_run = drive(
        workload_controller,
        workload_refs,
        stopped(),
        workload::reconcile,
        Arc::clone(&scope),
    );
    let policy_run = drive(
        Controller::for_stream(policy_stream, policies.clone()),
        policy_refs,
        stopped(),
        policy::reconcile,
        Arc::clone(&scope),
    );
    let exception_run = drive(
        Controller::for_stream(exception_stream, exceptions.clone()),
        exception_refs,
        stopped(),
        exception::reconcile,
        Arc::clone(&scope),
    );
    let template_run = drive(
        Controller::for_stream(template_stream, templates.clone()),
        template_refs,
        stopped(),
        template::reconcile,
        Arc::clone(&scope),
    );
    let change_run = drive(
        change_controller,
        change_refs,
        stopped(),
        change::reconcile,
        Arc::clone(&scope),
    );
    let inventory_run = drive(
        // Likewise its own status write does not wake an Inventory; its
        // subject appearing or going does, through triggers.
        Controller::for_stream(
            inventory_stream.predicate_filter(spec_or_labels, Default::default()),
            inventories.clone(),
        ),
        inventory_refs,
        stopped(),
        inventory::reconcile,
        Arc::clone(&scope),
    );

    let ready: Ready = {
        let (p, e, t, i, w, j) = (
            policies,
            exceptions,
            templates,
            inventories,
            workloads,
            jobs,
        );
        async move {
            let _ = p.wait_until_ready().await;
            let _ = e.wait_until_ready().await;
            let _ = t.wait_until_ready().await;
            let _ = i.wait_until_ready().await;
            let _ = w.wait_until_ready().await;
            let _ = j.wait_until_ready().await;
            let _ = change_requests.wait_until_ready().await;
            let _ = synced_tx.send(true);
        }
        .boxed()
    };

    // The auxiliary loops never end on their own: stop with the controllers.
    let stop = stopped();
    let task = async move {
        let aux = async {
            tokio::join!(job_loop, diff_loop);
        };
        let controllers = async {
            tokio::join!(
                workload_run,
                policy_run,
                exception_run,
                inventory_run,
                template_run,
                change_run
            );
        };
        tokio::select! {
            () = aux => {},
            ((), ()) = async { tokio::join!(controllers, stop) } => {},
        }
    }
    .boxed();
    (task, ready, scope)
}

/// Re-evaluates exactly the Workloads whose platform and packages a change
/// of the advisory index touches (and every Template: they are few).
async fn advisory_changes(scope: Arc<Scope>) {
    let mut changes = scope.shared.advisories.subscribe();
    loop {
        let received = changes.recv().await;
        if !matches!(
            received,
            Err(tokio::sync::broadcast::error::RecvError::Closed)
        ) {
            // Templates are few: any change re-evaluates them.
            for t in scope.templates.state() {
                let _ = scope
                    .triggers
                    .templates
                    .unbounded_send(ObjectRef::from_obj(t.as_ref()));
            }
        }
        let diff = match received {
            Ok(d) => d,
            Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {
                // Missed some: everything may be affected.
                for w in scope.workloads.state() {
                    let _ = scope
                        .triggers
                        .workloads
                        .unbounded_send(ObjectRef::from_obj(w.as_ref()));
                }
                continue;
            }
            Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
        };
        for w in affected_workloads(&scope, &diff) {
            let _ = scope.triggers.workloads.unbounded_send(w);
        }
    }
}

/// The Workloads a diff touches: on an ecosystem that gained or lost all
/// data, or with an installed (source) package whose advisories changed.
pub fn affected_workloads(scope: &Scope, diff: &IndexDiff) -> Vec<ObjectRef<Workload>> {
    let mut out = Vec::new();
    for w in scope.workloads.state() {
        let Ok(platform) = parse_platform(&w.spec.platform) else {
            continue;
        };
        let eco = platform.osv_ecosystem();
        let Some(ns) = w.namespace() else { continue };
        let hit = diff.ecosystems.contains(eco) || {
            let inventory = scope.inventory_for(
                &ns,
                &crate::api::inventory::InventorySubject {
                    kind: SubjectKind::Workload,
                    name: w.name_any(),
                    revision: None,
                },
            );
            inventory.is_some_and(|inv| {
                parse_compact_list(inv.spec.format.into(), &inv.spec.packages).is_ok_and(|pkgs| {
                    pkgs.iter().any(|p| {
                        diff.changed
                            .contains(&(eco.to_owned(), p.source_name().to_owned()))
                            || diff
                                .changed
                                .contains(&(eco.to_owned(), p.base_name().to_owned()))
                    })
                })
            })
        };
        // Provisional evaluation through a template inventory: re-evaluate
        // when unsure.
        let provisional = w
            .status
            .as_ref()
            .and_then(|s| s.inventory.as_ref())
            .is_some_and(|i| i.provisional);
        if hit || (provisional && diff.changed.iter().any(|(e, _)| e == eco)) {
            out.push(ObjectRef::from_obj(w.as_ref()));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

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
