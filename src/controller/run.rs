//! `patchloop run`: wires the caches, the trigger channels and one
//! kube-runtime controller per kind, serves metrics and health, and shuts
//! down gracefully.

use std::net::SocketAddr;
use std::sync::{Arc, RwLock};

use futures::{FutureExt, StreamExt, future};
use k8s_openapi::api::batch::v1::Job;
use kube::runtime::WatchStreamExt;
use kube::runtime::controller::{self, Controller};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::reflector::Store;
use kube::runtime::reflector::store::Writer;
use kube::runtime::watcher::{self, Event};
use kube::{Api, Client, ResourceExt};
use tokio::sync::watch;

use super::advisories::AdvisoryStore;
use super::feed::FeedContext;
use super::http::{self, Health};
use super::jobs::{MANAGED_BY, MANAGED_BY_LABEL};
use super::metrics::Metrics;
use super::priority::VerdictsFirst;
use super::scope::{self, Scope, SubjectIndex};
use super::{
    Settings, Shared, change, event_queue, exception, failpoint, feed, feed_source, inventory,
    leader, policy, reconciled, recorder, retry_with_backoff, template, triggers, workload,
};
use crate::api::{
    AdvisoryFeed, ChangeRequest, Inventory, PatchException, PatchPolicy, Template, Workload,
};

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
    let (stop_tx, stop_rx) = watch::channel(false);
    let stop = Stop(stop_rx);
    let (leadership, campaign) = elect(&client, &settings, &metrics, &stop).await?;
    let (shared, event_worker) = shared_state(client, settings, &metrics, &leadership);
    let (bound, server) = http::bind(listen, metrics.clone(), health.clone(), stop.signalled())
        .await
        .map_err(|source| RunError::Bind {
            addr: listen,
            source,
        })?;
    tracing::info!(address = %bound, "serving /metrics, /healthz and /readyz");
    let mut tasks: Vec<future::BoxFuture<'static, ()>> = vec![
        feed_controller(Arc::clone(&shared), stop.signalled())?.boxed(),
        campaign,
        until(event_worker, stop.signalled()),
    ];
    let (mut ready_checks, mut scopes) = (Vec::new(), Vec::new());
    for namespace in watch_scopes(&shared.settings) {
        let (task, ready, scope) = scope_controllers(Arc::clone(&shared), namespace, &stop);
        tasks.push(task);
        ready_checks.push(ready);
        scopes.push(scope);
    }
    if shared.settings.leader.is_some() {
        tasks.push(first_look_as_leader(
            leadership,
            metrics,
            scopes,
            stop.signalled(),
        ));
    }
    tasks.push(
        async move {
            future::join_all(ready_checks).await;
            health.set_ready(true);
            tracing::info!("caches synced; ready");
        }
        .boxed(),
    );
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

/// The controller's stop signal: every loop ends once it fires.
struct Stop(watch::Receiver<bool>);

impl Stop {
    /// Resolves once the controller stops.
    fn signalled(&self) -> impl Future<Output = ()> + Send + Sync + 'static {
        let mut rx = self.0.clone();
        async move {
            let _ = rx.wait_for(|stopped| *stopped).await;
        }
    }
}

/// `work` until `stop`.
fn until(
    work: impl Future<Output = ()> + Send + 'static,
    stop: impl Future<Output = ()> + Send + 'static,
) -> future::BoxFuture<'static, ()> {
    async move {
        tokio::select! {
            () = work => {}
            () = stop => {}
        }
    }
    .boxed()
}

/// Leadership and the campaign keeping it: with leader election, this
/// replica leads only while it holds the Lease; without, it always leads.
async fn elect(
    client: &Client,
    settings: &Settings,
    metrics: &Metrics,
    stop: &Stop,
) -> Result<(leader::Leadership, future::BoxFuture<'static, ()>), RunError> {
    let elected = match &settings.leader {
        Some(leader_settings) => {
            let (leadership, campaign) = leader::campaign(
                client.clone(),
                leader_settings.clone(),
                metrics.clone(),
                stop.signalled(),
            )
            .await?;
            (leadership, campaign.boxed())
        }
        None => (leader::Leadership::always(), future::ready(()).boxed()),
    };
    metrics.set_leader(elected.0.is_leader());
    Ok(elected)
}

/// What every reconciler shares, and the worker publishing its Events.
fn shared_state(
    client: Client,
    settings: Settings,
    metrics: &Metrics,
    leadership: &leader::Leadership,
) -> (Arc<Shared>, impl Future<Output = ()> + Send + 'static) {
    let recorder = recorder(client.clone());
    let verdicts_first = Arc::new(VerdictsFirst::default());
    let (events, event_worker) = event_queue(recorder.clone(), Arc::clone(&verdicts_first));
    let shared = Arc::new(Shared {
        recorder,
        events,
        verdicts_first,
        advisories: Arc::new(AdvisoryStore::new(super::now(), settings.grace)),
        metrics: metrics.clone(),
        settings,
        client,
        leadership: leadership.clone(),
        backoff: Default::default(),
    });
    (shared, event_worker)
}

/// The watch scopes: all namespaces, or each namespace named.
fn watch_scopes(settings: &Settings) -> Vec<Option<String>> {
    if settings.namespaces.is_empty() {
        vec![None]
    } else {
        settings.namespaces.iter().cloned().map(Some).collect()
    }
}

/// A new leader looks at everything once: while it stood by, its
/// reconcilers skipped every object.
fn first_look_as_leader(
    leadership: leader::Leadership,
    metrics: Metrics,
    scopes: Vec<Arc<Scope>>,
    stop: impl Future<Output = ()> + Send + 'static,
) -> future::BoxFuture<'static, ()> {
    let first_look = async move {
        leadership.acquired().await;
        metrics.set_leader(true);
        for scope in &scopes {
            scope.caches_ready().await;
            scope.triggers.send(scope.graph().everything());
        }
    };
    until(first_look, stop)
}

/// The AdvisoryFeed controller (cluster-scoped, on every replica: each
/// loads the feeds; only the leader writes their status).
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
    let api: Api<AdvisoryFeed> = Api::all(shared.client.clone());
    let changed_feeds = scope::reflect_lagging(api, config, None, feed_writer, move |ev| {
        if let Event::Delete(f) = ev {
            let _ = deleted_tx.send(f.name_any());
        }
    })
    .predicate_filter(triggers::spec_or_labels, Default::default());
    let controller = Controller::for_stream(changed_feeds, feeds);
    let startup = expect_startup_feeds(controller.store(), Arc::clone(&shared));
    let once_leading = feeds_once_leading(controller.store(), &shared);
    let controller = controller
        .with_config(controller::Config::default().concurrency(RECONCILE_CONCURRENCY))
        .reconcile_on(once_leading)
        .graceful_shutdown_on(stopped)
        .run(reconcile_feed, retry_with_backoff, ctx)
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

async fn reconcile_feed(
    feed: Arc<AdvisoryFeed>,
    ctx: Arc<FeedContext>,
) -> Result<kube::runtime::controller::Action, super::Error> {
    let result = feed::reconcile(Arc::clone(&feed), Arc::clone(&ctx)).await;
    if result.is_ok() {
        reconciled(&ctx.shared, feed.as_ref());
    }
    result
}

/// A standby loads feeds but writes no status: once it leads, every feed
/// is looked at again so its status is its own.
fn feeds_once_leading(
    store: Store<AdvisoryFeed>,
    shared: &Shared,
) -> impl futures::Stream<Item = ObjectRef<AdvisoryFeed>> + Send + 'static {
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
}

/// The feeds present at start: verdicts wait until each was tried once.
async fn expect_startup_feeds(store: Store<AdvisoryFeed>, shared: Arc<Shared>) {
    if store.wait_until_ready().await.is_ok() {
        shared
            .advisories
            .expect_feeds(store.state().iter().map(|f| f.name_any()));
    }
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
    stop: &Stop,
    reconcile: fn(Arc<K>, Arc<Scope>) -> Fut,
    scope: &Arc<Scope>,
) -> future::BoxFuture<'static, ()>
where
    K: scope::Watched,
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
        .graceful_shutdown_on(stop.signalled())
        .run(leading, retry_with_backoff, Arc::clone(scope))
        .for_each(|r| {
            log_result(r.map(|(o, _)| o));
            future::ready(())
        })
        .boxed()
}

fn log_result<K: std::fmt::Display, E: std::fmt::Display>(r: Result<K, E>) {
    if let Err(e) = r {
        tracing::debug!(error = %e, "reconcile stream");
    }
}

type Ready = future::BoxFuture<'static, ()>;

/// The cache writers of one scope, each fed by its kind's watch.
struct Writers {
    policies: Writer<PatchPolicy>,
    exceptions: Writer<PatchException>,
    templates: Writer<Template>,
    inventories: Writer<Inventory>,
    workloads: Writer<Workload>,
}

/// All namespaced controllers of one scope: its caches, the watch edges of
/// the wake graph ([`triggers`]) and one controller per kind.
fn scope_controllers(
    shared: Arc<Shared>,
    namespace: Option<String>,
    stop: &Stop,
) -> (future::BoxFuture<'static, ()>, Ready, Arc<Scope>) {
    let change_controller = Controller::new(
        scope::api_in::<ChangeRequest>(&shared.client, namespace.as_deref()),
        watcher::Config::default(),
    );
    let (synced_tx, synced) = tokio::sync::watch::channel(false);
    let (triggers, streams) = scope::channels();
    let (scope, writers, jobs) = new_scope(
        shared,
        namespace,
        change_controller.store(),
        triggers,
        synced,
    );
    let ready = readiness(Arc::clone(&scope), synced_tx);
    let controllers = controllers(&scope, writers, streams, change_controller, stop);
    // The auxiliary loops never end on their own: stop with the controllers.
    let aux = auxiliary_loops(&scope, jobs).boxed();
    let stop = stop.signalled();
    let task = async move {
        tokio::select! {
            () = aux => {},
            ((), ()) = async { tokio::join!(controllers, stop) } => {},
        }
    }
    .boxed();
    (task, ready, scope)
}

/// A scope's caches (empty until their watches run) and their writers.
fn new_scope(
    shared: Arc<Shared>,
    namespace: Option<String>,
    change_requests: Store<ChangeRequest>,
    triggers: scope::Triggers,
    synced: watch::Receiver<bool>,
) -> (Arc<Scope>, Writers, Writer<Job>) {
    let (policies, policy_writer) = scope::store::<PatchPolicy>();
    let (exceptions, exception_writer) = scope::store::<PatchException>();
    let (templates, template_writer) = scope::store::<Template>();
    let (inventories, inventory_writer) = scope::store::<Inventory>();
    let (workloads, workload_writer) = scope::store::<Workload>();
    let (jobs, job_writer) = scope::store::<Job>();
    let scope = Arc::new(Scope {
        synced,
        shared,
        namespace,
        policies,
        exceptions,
        templates,
        inventories,
        subjects: Arc::new(RwLock::new(SubjectIndex::default())),
        workloads,
        jobs,
        change_requests,
        expected_jobs: Default::default(),
        template_checks: Default::default(),
        triggers,
    });
    let writers = Writers {
        policies: policy_writer,
        exceptions: exception_writer,
        templates: template_writer,
        inventories: inventory_writer,
        workloads: workload_writer,
    };
    (scope, writers, job_writer)
}

/// The namespaced controllers of a scope, one per kind: each kind's watch
/// fills its cache, sends its wake-graph edge and drives its reconciler,
/// which its trigger stream also wakes.
fn controllers(
    scope: &Arc<Scope>,
    w: Writers,
    s: scope::TriggerStreams,
    change_controller: Controller<ChangeRequest>,
    stop: &Stop,
) -> future::BoxFuture<'static, ()> {
    use OwnStatus::{Ignored, Reconciled};
    use triggers::{
        on_exception_event, on_inventory_event, on_policy_event, on_template_event,
        on_workload_event,
    };
    // One row per kind: (cache and trigger field, watch edge, whether its
    // own status write reconciles it again, reconciler).
    macro_rules! wired {
        ($kind:ident, $edge:ident, $own:ident, $reconcile:path) => {
            drive(
                watched(scope, (&scope.$kind, w.$kind), $edge, $own),
                s.$kind,
                stop,
                $reconcile,
                scope,
            )
        };
    }
    // A Workload's or an Inventory's own status write comes back through its
    // watch and asks for nothing: only a new generation or label set (or a
    // first sighting) does. Everything else they depend on wakes them
    // through triggers.
    #[rustfmt::skip]
    let runs = [
        wired!(workloads, on_workload_event, Ignored, workload::reconcile),
        wired!(inventories, on_inventory_event, Ignored, inventory::reconcile),
        wired!(policies, on_policy_event, Reconciled, policy::reconcile),
        wired!(exceptions, on_exception_event, Reconciled, exception::reconcile),
        wired!(templates, on_template_event, Reconciled, template::reconcile),
        drive(change_controller, s.change_requests, stop, change::reconcile, scope),
    ];
    future::join_all(runs).map(|_| ()).boxed()
}

/// Whether an object's own status write (seen on its watch) reconciles it
/// again.
#[derive(Clone, Copy, PartialEq)]
enum OwnStatus {
    Reconciled,
    Ignored,
}

/// A controller over `K`'s watch in the scope: the watch fills the scope's
/// cache of `K` through `writer` and sends `K`'s wake-graph edges
/// (`on_event`); its applied objects drive the controller.
fn watched<K, E>(
    scope: &Arc<Scope>,
    (cache, writer): (&Store<K>, Writer<K>),
    edge: fn(Arc<Scope>) -> E,
    own_status: OwnStatus,
) -> Controller<K>
where
    K: scope::Watched + kube::Resource<Scope = k8s_openapi::NamespaceResourceScope>,
    E: FnMut(&Event<K>) + Send + 'static,
{
    let api = scope::api_in(&scope.shared.client, scope.namespace.as_deref());
    let applied = scope::reflect(api, writer, edge(Arc::clone(scope)));
    let applied = match own_status {
        OwnStatus::Reconciled => applied.boxed(),
        OwnStatus::Ignored => applied
            .predicate_filter(triggers::spec_or_labels, Default::default())
            .boxed(),
    };
    Controller::for_stream(applied, cache.clone())
}

/// The loops beside the controllers: the Job watch (only Jobs Patchloop
/// created) and the advisory index's diffs, each sending its edges.
fn auxiliary_loops(
    scope: &Arc<Scope>,
    jobs: Writer<Job>,
) -> impl Future<Output = ()> + Send + use<> {
    let job_loop = scope::reflect_lagging(
        scope::api_in::<Job>(&scope.shared.client, scope.namespace.as_deref()),
        watcher::Config::default().labels(&format!("{MANAGED_BY_LABEL}={MANAGED_BY}")),
        failpoint::delay(failpoint::JOB_WATCH_DELAY),
        jobs,
        triggers::on_job_event(Arc::clone(scope)),
    )
    .for_each(|_| future::ready(()));
    let diff_loop = triggers::advisory_changes(Arc::clone(scope));
    async move {
        tokio::join!(job_loop, diff_loop);
    }
}

/// Resolves once every cache of the scope has listed once, and tells the
/// reconcilers waiting in [`Scope::caches_ready`].
fn readiness(scope: Arc<Scope>, synced: watch::Sender<bool>) -> Ready {
    async move {
        let _ = scope.policies.wait_until_ready().await;
        let _ = scope.exceptions.wait_until_ready().await;
        let _ = scope.templates.wait_until_ready().await;
        let _ = scope.inventories.wait_until_ready().await;
        let _ = scope.workloads.wait_until_ready().await;
        let _ = scope.jobs.wait_until_ready().await;
        let _ = scope.change_requests.wait_until_ready().await;
        let _ = synced.send(true);
    }
    .boxed()
}
