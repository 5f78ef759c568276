//! Controller benchmark against the real control plane (Kubernetes 1.20.2 from
//! the test harness): 2,000 Workloads with Inventories of 300 packages and a
//! feed of 5,000 OSV records.
//!
//! Run: `eval "$(scripts/testenv.sh --print-env)" && cargo bench --bench controller`
//! (release build). `PATCHLOOP_BENCH_STEADY` sets the steady-state window in
//! seconds (default 60), `PATCHLOOP_BENCH_RUNS` the number of runs (default 3).
//! Prints a report (lines starting with `bench:`); the figures recorded in
//! BENCHMARKS.md come from it.
//!
//! Each run, in a fresh namespace of the same control plane:
//!
//! 1. creates a PatchPolicy, 2,000 Workloads and 2,000 Inventories (server-side
//!    apply, 32 in flight) and an AdvisoryFeed (`path` source, one JSON array of
//!    5,000 OSV records) before the controller starts;
//! 2. starts `patchloop run` (log level `info`, output to a file) and times
//!    until every Workload has `status.observedGeneration ==
//!    metadata.generation` and a compliance state other than Unknown (a watch
//!    of the Workloads, started before the controller);
//! 3. waits 5 s, then watches a steady-state window: resourceVersion changes
//!    of all Workloads and the reconcile counter;
//! 4. reads the controller's peak RSS (`VmHWM`) and stops it;
//! 5. the floor: in another fresh namespace, creates 2,000 bare Workloads and
//!    times a minimal client server-side-applying the very statuses the
//!    controller wrote (32 in flight).

#[path = "../tests/support/mod.rs"]
mod support;

use std::collections::HashMap;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use futures::{StreamExt, stream};
use kube::Api;
use kube::api::{ListParams, Patch, PatchParams};
use kube::runtime::{WatchStreamExt, watcher};
use patchloop::api::{AdvisoryFeed, Inventory, PatchPolicy, Workload, WorkloadStatus};
use serde_json::{Value, json};
use support::patchloop::Patchloop;

const WORKLOADS: usize = 2_000;
const PACKAGES: usize = 300;
const SOURCES: usize = 3_000;
/// Sources with advisories; the others have none.
const FEED_SOURCES: usize = 2_500;
const ADVISORIES: usize = 2 * FEED_SOURCES;
const PROFILES: usize = 40;
const IN_FLIGHT: usize = 32;
const CONVERGE_TIMEOUT: Duration = Duration::from_secs(900);
const SETTLE: Duration = Duration::from_secs(5);

fn days_ago(days: i64) -> String {
    (jiff::Timestamp::now() - jiff::SignedDuration::from_hours(24 * days))
        .round(jiff::Unit::Second)
        .expect("time")
        .to_string()
}

/// Two advisories per source: a DSA fixed in `+deb12u2` (published 60 days
/// ago) and a CVE record fixed in `+deb12u3` (2 or 40 days ago).
fn feed_records() -> Vec<Value> {
    let old = days_ago(60);
    let mid = days_ago(40);
    let recent = days_ago(2);
    let vectors = [
        "CVSS:3.1/AV:L/AC:L/PR:L/UI:N/S:U/C:H/I:H/A:H",
        "CVSS:3.1/AV:N/AC:L/PR:N/UI:N/S:U/C:H/I:H/A:H",
        "CVSS:3.1/AV:N/AC:H/PR:N/UI:R/S:U/C:L/I:L/A:N",
    ];
    let mut out = Vec::with_capacity(ADVISORIES);
    for s in 0..FEED_SOURCES {
        let source = format!("src{s}");
        let cve = format!("CVE-2026-{:05}", 10_000 + s);
        let record = |id: &str, fixed: &str, published: &str, vector: &str, related: &[&str]| {
            json!({
                "schema_version": "1.6.0", "id": id,
                "published": published, "modified": published,
                "summary": format!("{source} security update"),
                "details": format!(
                    "Several vulnerabilities were discovered in {source}, which could result in \
                     denial of service, information disclosure or the execution of arbitrary \
                     code. For the stable distribution (bookworm), these problems have been \
                     fixed in version {fixed}. We recommend that you upgrade your {source} \
                     packages."
                ),
                "related": related,
                "severity": [{"type": "CVSS_V3", "score": vector}],
                "affected": [{
                    "package": {"ecosystem": "Debian:12", "name": source},
                    "ranges": [{"type": "ECOSYSTEM",
                                "events": [{"introduced": "0"}, {"fixed": fixed}]}],
                    "versions": ["1.0-1", "1.0-1+deb12u1"]
                }],
                "references": [{"type": "ADVISORY",
                                "url": format!("https://security-tracker.debian.org/tracker/{id}")}]
            })
        };
        out.push(record(
            &format!("DSA-{}-1", 10_000 + s),
            "1.0-1+deb12u2",
            &old,
            vectors[s % 3],
            &[cve.as_str()],
        ));
        out.push(record(
            &cve,
            "1.0-1+deb12u3",
            if s % 3 == 0 { &recent } else { &mid },
            vectors[(s + 1) % 3],
            &[],
        ));
    }
    out
}

/// 300 packages (two binaries for each of 150 sources) of machine profile
/// `profile`: a quarter of the profiles fully patched, the others with 6
/// sources two updates behind and (every other one) 4 more one update behind.
fn packages(profile: usize) -> Vec<String> {
    let mut out = Vec::with_capacity(PACKAGES);
    for k in 0..PACKAGES / 2 {
        let s = (profile * 61 + k * 19) % SOURCES;
        let update = match (profile % 4, k) {
            (0, _) => 3,
            (_, 0..6) => 1,
            (1, 6..10) => 2,
            _ => 3,
        };
        let version = format!("1.0-1+deb12u{update}");
        out.push(format!("bin{s} {version} src{s}"));
        out.push(format!("lib{s}-1 {version} src{s}"));
    }
    out
}

fn workload_doc(name: &str) -> Value {
    json!({
        "apiVersion": "patchloop.dev/v1alpha1", "kind": "Workload",
        "metadata": {"name": name, "labels": {"app": "bench", "profile": name}},
        "spec": {"platform": "Debian:12", "target": {"address": "10.0.0.1"}}
    })
}

fn name(i: usize) -> String {
    format!("wl-{i:05}")
}

async fn create_workloads(client: &kube::Client, ns: &str) {
    let api: Api<Workload> = Api::namespaced(client.clone(), ns);
    let pp = PatchParams::apply("bench-reporter").force();
    stream::iter(0..WORKLOADS)
        .map(|i| {
            let (api, pp) = (&api, &pp);
            async move {
                let n = name(i);
                api.patch(&n, pp, &Patch::Apply(&workload_doc(&n)))
                    .await
                    .unwrap_or_else(|e| panic!("Workload {n}: {e}"));
            }
        })
        .buffer_unordered(IN_FLIGHT)
        .collect::<Vec<()>>()
        .await;
}

async fn create_inventories(client: &kube::Client, ns: &str) {
    let api: Api<Inventory> = Api::namespaced(client.clone(), ns);
    let pp = PatchParams::apply("bench-reporter").force();
    let profiles: Vec<Vec<String>> = (0..PROFILES).map(packages).collect();
    let reported = days_ago(0);
    stream::iter(0..WORKLOADS)
        .map(|i| {
            let (api, pp, profiles, reported) = (&api, &pp, &profiles, &reported);
            async move {
                let n = name(i);
                // Only the canonical name speaks for a Workload.
                let inventory = format!("workload-{n}");
                let doc = json!({
                    "apiVersion": "patchloop.dev/v1alpha1", "kind": "Inventory",
                    "metadata": {"name": inventory},
                    "spec": {
                        "subject": {"kind": "Workload", "name": n},
                        "reporter": "bench", "reportedAt": reported, "format": "dpkg",
                        "packages": profiles[i % PROFILES],
                    }
                });
                api.patch(&inventory, pp, &Patch::Apply(&doc))
                    .await
                    .unwrap_or_else(|e| panic!("Inventory {inventory}: {e}"));
            }
        })
        .buffer_unordered(IN_FLIGHT)
        .collect::<Vec<()>>()
        .await;
}

fn state_of(w: &Workload) -> Option<String> {
    w.status
        .as_ref()
        .and_then(|s| s.compliance.as_ref())
        .and_then(|c| c.state)
        .map(|s| s.to_string())
}

fn is_current(w: &Workload) -> bool {
    let observed = w.status.as_ref().and_then(|s| s.observed_generation);
    observed.is_some()
        && observed == w.metadata.generation
        && state_of(w).is_some_and(|s| s != "Unknown")
}

/// What a watch of one kind saw from the controller's start: when the
/// first, half and all of the objects were current, and their last state.
struct Convergence<K> {
    first: Option<f64>,
    half: Option<f64>,
    all: Option<f64>,
    current: usize,
    timeline: Vec<usize>,
    items: HashMap<String, K>,
}

/// Follows `WORKLOADS` objects of a kind with a watch (a list every second
/// would load the apiserver the controller is measured against) until every
/// one is current.
async fn watch_until_current<K>(
    api: Api<K>,
    start: Instant,
    is_current: fn(&K) -> bool,
) -> Convergence<K>
where
    K: kube::Resource + Clone + std::fmt::Debug + serde::de::DeserializeOwned + Send + 'static,
{
    let mut c = Convergence {
        first: None,
        half: None,
        all: None,
        current: 0,
        timeline: Vec::new(),
        items: HashMap::new(),
    };
    let mut current = std::collections::HashSet::new();
    let mut events = watcher::watcher(api, watcher::Config::default())
        .default_backoff()
        .boxed();
    let deadline = tokio::time::Instant::from_std(start + CONVERGE_TIMEOUT);
    while let Ok(Some(ev)) = tokio::time::timeout_at(deadline, events.next()).await {
        let Ok(ev) = ev else { continue };
        match ev {
            watcher::Event::Apply(o) | watcher::Event::InitApply(o) => {
                let name = o.meta().name.clone().unwrap_or_default();
                if is_current(&o) {
                    current.insert(name.clone());
                } else {
                    current.remove(&name);
                }
                c.items.insert(name, o);
            }
            watcher::Event::Delete(o) => {
                let name = o.meta().name.clone().unwrap_or_default();
                current.remove(&name);
                c.items.remove(&name);
            }
            watcher::Event::Init | watcher::Event::InitDone => {}
        }
        c.current = current.len();
        let t = start.elapsed().as_secs_f64();
        // A coarse timeline: how many were current at each 2 s mark.
        while t >= 2.0 * (c.timeline.len() + 1) as f64 {
            c.timeline.push(c.current);
        }
        if c.current > 0 && c.first.is_none() {
            c.first = Some(t);
        }
        if c.current >= WORKLOADS / 2 && c.half.is_none() {
            c.half = Some(t);
        }
        if c.items.len() == WORKLOADS && c.current == WORKLOADS {
            c.all = Some(t);
            break;
        }
    }
    c
}

/// An Inventory's status is current: its generation observed, `Ready` set.
fn inventory_current(i: &Inventory) -> bool {
    i.status.as_ref().is_some_and(|s| {
        s.observed_generation.is_some()
            && s.observed_generation == i.metadata.generation
            && s.conditions.iter().any(|c| c.type_ == "Ready")
    })
}

async fn resource_versions(api: &Api<Workload>) -> HashMap<String, String> {
    api.list(&ListParams::default())
        .await
        .expect("list Workloads")
        .items
        .into_iter()
        .map(|w| {
            (
                w.metadata.name.unwrap_or_default(),
                w.metadata.resource_version.unwrap_or_default(),
            )
        })
        .collect()
}

fn peak_rss_mib(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(f64::NAN, |kb| kb / 1024.0)
}

/// Starts `patchloop run` like the test harness does, but with log level
/// `info` (the production default) and its output in a file.
async fn start_controller(env: &support::TestEnv, ns: &str, label: &str, log: &Path) -> Patchloop {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port");
    let out = std::fs::File::create(log).expect("log file");
    let err = out.try_clone().expect("log file");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_patchloop"));
    cmd.arg("run")
        .arg("--kubeconfig")
        .arg(env.kubeconfig())
        .args(["--namespace", ns])
        .args(["--feed-selector", &format!("patchloop-test={label}")])
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .args(["--log-level", "info"])
        .env_remove("KUBECONFIG")
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err);
    let child = support::spawn_managed("patchloop", cmd);
    let pl = Patchloop { child, port };
    support::eventually(
        "patchloop to report ready",
        Duration::from_secs(120),
        async || {
            pl.get("/readyz")
                .await
                .filter(|(c, _)| *c == 200)
                .map(|_| ())
        },
    )
    .await;
    pl
}

#[derive(Debug, Default, Clone)]
struct RunResult {
    setup: f64,
    ready: f64,
    first: f64,
    half: f64,
    converge: f64,
    reconciles_at_converge: f64,
    writes_at_converge: f64,
    states: String,
    rss_mib: f64,
    rv_changes: usize,
    reconciles_steady: f64,
    writes_steady: f64,
    floor: f64,
    inventories_current: f64,
    floor_all: f64,
    status_bytes: usize,
}

async fn one_run(
    env: &'static support::TestEnv,
    client: &kube::Client,
    feed_dir: &Path,
    run: usize,
    steady: Duration,
) -> RunResult {
    let mut r = RunResult::default();
    let ns = env.namespace("bench").await;
    let label = support::random_suffix();
    println!("bench: run {run}: namespace {ns}, feed label {label}");

    // Setup, before the controller starts.
    let t = Instant::now();
    let feeds: Api<AdvisoryFeed> = Api::all(client.clone());
    let feed_name = format!("bench-osv-{label}");
    let feed = json!({
        "apiVersion": "patchloop.dev/v1alpha1", "kind": "AdvisoryFeed",
        "metadata": {"name": feed_name, "labels": {"patchloop-test": label}},
        "spec": {"source": {"path": feed_dir.to_string_lossy()}, "format": "OSV", "interval": "1h"}
    });
    feeds
        .patch(
            &feed_name,
            &PatchParams::apply("bench").force(),
            &Patch::Apply(&feed),
        )
        .await
        .expect("feed");
    let policies: Api<PatchPolicy> = Api::namespaced(client.clone(), &ns);
    let policy = json!({
        "apiVersion": "patchloop.dev/v1alpha1", "kind": "PatchPolicy",
        "metadata": {"name": "fleet"},
        "spec": {"selector": {}, "priority": 1,
                 "deadlines": {"critical": "3d", "high": "7d", "medium": "30d", "low": "90d", "unknown": "30d"},
                 "knownExploited": "2d", "inventoryMaxAge": "30d"}
    });
    policies
        .patch(
            "fleet",
            &PatchParams::apply("bench").force(),
            &Patch::Apply(&policy),
        )
        .await
        .expect("policy");
    create_workloads(client, &ns).await;
    create_inventories(client, &ns).await;
    r.setup = t.elapsed().as_secs_f64();
    println!("bench: run {run}: setup {:.1} s", r.setup);

    // The controller, until every status is current.
    let workloads: Api<Workload> = Api::namespaced(client.clone(), &ns);
    let log = env.dir().join(format!("patchloop-bench-{run}.log"));
    let t = Instant::now();
    let watch = tokio::spawn(watch_until_current(workloads.clone(), t, is_current));
    let inventories: Api<Inventory> = Api::namespaced(client.clone(), &ns);
    let inventory_watch = tokio::spawn(watch_until_current(
        inventories.clone(),
        t,
        inventory_current,
    ));
    let pl = start_controller(env, &ns, &label, &log).await;
    r.ready = t.elapsed().as_secs_f64();
    let convergence = watch.await.expect("the Workload watch");
    let inventory_convergence = inventory_watch.await.expect("the Inventory watch");
    r.inventories_current = inventory_convergence.all.unwrap_or(f64::NAN);
    println!(
        "bench: run {run}: every Inventory status current after {:.1} s; current every 2 s: {:?}",
        r.inventories_current, inventory_convergence.timeline
    );
    let inventory_statuses: Vec<(String, Value)> = inventory_convergence
        .items
        .into_iter()
        .map(|(n, i)| (n, serde_json::to_value(i.status).expect("json")))
        .collect();
    if convergence.all.is_none() {
        println!(
            "bench: run {run}: NOT converged after {CONVERGE_TIMEOUT:?}: {} of {WORKLOADS}",
            convergence.current
        );
    }
    println!(
        "bench: run {run}: first status current after {:.1} s, half after {:.1} s; current every 2 s: {:?}",
        convergence.first.unwrap_or(f64::NAN),
        convergence.half.unwrap_or(f64::NAN),
        convergence.timeline
    );
    (r.first, r.half) = (
        convergence.first.unwrap_or(f64::NAN),
        convergence.half.unwrap_or(f64::NAN),
    );
    let items: Vec<Workload> = convergence.items.into_values().collect();
    r.converge = convergence.all.unwrap_or(t.elapsed().as_secs_f64());
    r.reconciles_at_converge = pl
        .metric("patchloop_reconciles_total{controller=\"workload\"}")
        .await;
    r.writes_at_converge = pl
        .metric("patchloop_status_writes_total{controller=\"workload\"}")
        .await;
    let mut others = Vec::new();
    for c in ["policy", "inventory", "feed"] {
        let reconciles = pl
            .metric(&format!("patchloop_reconciles_total{{controller=\"{c}\"}}"))
            .await;
        let writes = pl
            .metric(&format!(
                "patchloop_status_writes_total{{controller=\"{c}\"}}"
            ))
            .await;
        others.push(format!("{c} {reconciles}/{writes}"));
    }
    println!(
        "bench: run {run}: other reconciles/status writes until converged: {}",
        others.join(", ")
    );
    let mut states: HashMap<String, usize> = HashMap::new();
    for w in &items {
        *states.entry(state_of(w).unwrap_or("-".into())).or_default() += 1;
    }
    let mut states: Vec<_> = states.into_iter().collect();
    states.sort();
    r.states = states
        .iter()
        .map(|(s, n)| format!("{s} {n}"))
        .collect::<Vec<_>>()
        .join(", ");
    let statuses: Vec<(String, WorkloadStatus)> = items
        .into_iter()
        .map(|w| {
            (
                w.metadata.name.clone().unwrap_or_default(),
                w.status.unwrap_or_default(),
            )
        })
        .collect();
    r.status_bytes = statuses
        .iter()
        .map(|(_, s)| serde_json::to_vec(s).map(|v| v.len()).unwrap_or(0))
        .sum::<usize>()
        / statuses.len().max(1);
    println!(
        "bench: run {run}: ready after {:.1} s, converged after {:.1} s ({}), {} reconciles, {} status writes, mean status {} bytes",
        r.ready,
        r.converge,
        r.states,
        r.reconciles_at_converge,
        r.writes_at_converge,
        r.status_bytes
    );

    // Steady state.
    tokio::time::sleep(SETTLE).await;
    let rv_before = resource_versions(&workloads).await;
    let rec_before = pl
        .metric("patchloop_reconciles_total{controller=\"workload\"}")
        .await;
    let writes_before = pl
        .metric("patchloop_status_writes_total{controller=\"workload\"}")
        .await;
    tokio::time::sleep(steady).await;
    let rv_after = resource_versions(&workloads).await;
    r.reconciles_steady = pl
        .metric("patchloop_reconciles_total{controller=\"workload\"}")
        .await
        - rec_before;
    r.writes_steady = pl
        .metric("patchloop_status_writes_total{controller=\"workload\"}")
        .await
        - writes_before;
    r.rv_changes = rv_after
        .iter()
        .filter(|(n, rv)| rv_before.get(*n) != Some(*rv))
        .count();
    r.rss_mib = peak_rss_mib(pl.child.id());
    println!(
        "bench: run {run}: steady {:?}: {} resourceVersion changes, +{} reconciles, +{} status writes; peak RSS {:.1} MiB",
        steady, r.rv_changes, r.reconciles_steady, r.writes_steady, r.rss_mib
    );
    drop(pl);

    // The floor: the same statuses, applied by a minimal client.
    let floor_ns = env.namespace("floor").await;
    create_workloads(client, &floor_ns).await;
    let workload_patches: Vec<StatusPatch> = statuses
        .iter()
        .map(|(n, status)| StatusPatch {
            kind: "Workload",
            name: n.clone(),
            status: serde_json::to_value(status).expect("json"),
        })
        .collect();
    r.floor = apply_statuses(client, &floor_ns, &workload_patches).await;
    println!(
        "bench: run {run}: floor (2,000 Workload status applies, {IN_FLIGHT} in flight) {:.2} s",
        r.floor
    );
    // And the controller's whole write load: the Workload and the Inventory
    // statuses, interleaved, on fresh objects.
    let all_ns = env.namespace("floor-all").await;
    create_workloads(client, &all_ns).await;
    create_inventories(client, &all_ns).await;
    let mut all = Vec::with_capacity(2 * WORKLOADS);
    for (w, (n, status)) in workload_patches.into_iter().zip(inventory_statuses) {
        all.push(w);
        all.push(StatusPatch {
            kind: "Inventory",
            name: n,
            status,
        });
    }
    r.floor_all = apply_statuses(client, &all_ns, &all).await;
    println!(
        "bench: run {run}: floor (2,000 Workload + 2,000 Inventory status applies, {IN_FLIGHT} in flight) {:.2} s",
        r.floor_all
    );
    r
}

/// One status a minimal client applies.
struct StatusPatch {
    kind: &'static str,
    name: String,
    status: Value,
}

/// Server-side-applies `patches` to the status subresource, `IN_FLIGHT` at
/// once, and returns the seconds it took.
async fn apply_statuses(client: &kube::Client, ns: &str, patches: &[StatusPatch]) -> f64 {
    let workloads: Api<Workload> = Api::namespaced(client.clone(), ns);
    let inventories: Api<Inventory> = Api::namespaced(client.clone(), ns);
    let pp = PatchParams::apply("bench-floor").force();
    let t = Instant::now();
    stream::iter(patches)
        .map(|p| {
            let (workloads, inventories, pp) = (&workloads, &inventories, &pp);
            async move {
                let patch = json!({
                    "apiVersion": "patchloop.dev/v1alpha1", "kind": p.kind,
                    "status": p.status,
                });
                let result = match p.kind {
                    "Workload" => workloads
                        .patch_status(&p.name, pp, &Patch::Apply(&patch))
                        .await
                        .map(drop),
                    _ => inventories
                        .patch_status(&p.name, pp, &Patch::Apply(&patch))
                        .await
                        .map(drop),
                };
                result.unwrap_or_else(|e| panic!("status of {} {}: {e}", p.kind, p.name));
            }
        })
        .buffer_unordered(IN_FLIGHT)
        .collect::<Vec<()>>()
        .await;
    t.elapsed().as_secs_f64()
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn main() {
    let steady = Duration::from_secs(
        std::env::var("PATCHLOOP_BENCH_STEADY")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(60),
    );
    let runs: usize = std::env::var("PATCHLOOP_BENCH_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3);
    let t = Instant::now();
    let env = support::env();
    println!(
        "bench: control plane (Kubernetes {}) up in {:.1} s",
        support::K8S_VERSION,
        t.elapsed().as_secs_f64()
    );
    let feed_dir = env.dir().join("bench-feed");
    std::fs::create_dir_all(&feed_dir).expect("feed dir");
    let body = serde_json::to_vec(&feed_records()).expect("json");
    std::fs::write(feed_dir.join("osv.json"), &body).expect("feed file");
    println!(
        "bench: feed: {ADVISORIES} OSV records, {:.1} MB; {WORKLOADS} Workloads × {PACKAGES} packages ({PROFILES} profiles)",
        body.len() as f64 / 1e6
    );

    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let results: Vec<RunResult> = rt.block_on(async {
        let client = env.client().await;
        let mut results = Vec::new();
        for run in 1..=runs {
            results.push(one_run(env, &client, &feed_dir, run, steady).await);
        }
        results
    });

    let col = |f: fn(&RunResult) -> f64| median(results.iter().map(f).collect());
    let converge = col(|r| r.converge);
    let floor = col(|r| r.floor);
    println!("bench: --- medians of {runs} runs ---");
    println!(
        "bench: setup (create 2,000 + 2,000 objects): {:.1} s",
        col(|r| r.setup)
    );
    println!(
        "bench: controller start to ready: {:.1} s",
        col(|r| r.ready)
    );
    println!("bench: controller start to every status current: {converge:.1} s");
    println!("bench: floor (minimal client, 2,000 status applies): {floor:.2} s");
    println!("bench: ratio controller / floor: {:.2}x", converge / floor);
    let all = col(|r| r.converge.max(r.inventories_current));
    let floor_all = col(|r| r.floor_all);
    println!(
        "bench: controller start to every Workload and Inventory status current: {all:.1} s; floor for both (4,000 applies): {floor_all:.2} s; ratio {:.2}x",
        all / floor_all
    );
    println!(
        "bench: ratio per run: {}",
        results
            .iter()
            .map(|r| format!("{:.1}x", r.converge / r.floor))
            .collect::<Vec<_>>()
            .join(", ")
    );
    println!("bench: controller peak RSS: {:.1} MiB", col(|r| r.rss_mib));
    println!(
        "bench: reconciles / status writes until converged: {} / {}",
        col(|r| r.reconciles_at_converge),
        col(|r| r.writes_at_converge)
    );
    println!(
        "bench: steady state ({steady:?}): resourceVersion changes {}, reconciles +{}, status writes +{}",
        col(|r| r.rv_changes as f64),
        col(|r| r.reconciles_steady),
        col(|r| r.writes_steady)
    );
    for (i, r) in results.iter().enumerate() {
        println!("bench: run {}: {r:?}", i + 1);
    }
}
