//! Remediation benchmark against the real control plane (Kubernetes 1.20.2
//! from the test harness): 1,000 non-compliant Workloads under one
//! PatchPolicy (`mode: Remediate`, `maxConcurrent: 50`, `canary: 0`), a
//! maintenance window opened at once, and a simulated executor that finishes
//! each Job T seconds after it appears and writes the fixed Inventory.
//!
//! Run: `eval "$(scripts/testenv.sh --print-env)" && cargo bench --bench remediation`
//! (release build). Settings (environment):
//!
//! - `PATCHLOOP_BENCH_T`: seconds each Job takes (default 2);
//! - `PATCHLOOP_BENCH_RUNS`: runs (default 1: a run takes minutes of setup);
//! - `PATCHLOOP_BENCH_EXECUTORS`: executor requests in flight at most
//!   (default 16);
//! - `PATCHLOOP_BENCH_WORKLOADS`: fleet size (default 1,000; smaller only for
//!   a quick check of the benchmark itself);
//! - `PATCHLOOP_BENCH_CANARY`: the policy's `canary` (default 0);
//! - `PATCHLOOP_BENCH_LOG`: the controller's log level (default `info`, the
//!   production default; `info,patchloop::controller::remediation=debug`
//!   logs every "rollout planned" line, at a cost).
//!
//! Prints a report (lines starting with `bench:`); the figures recorded in
//! BENCHMARKS.md come from it.
//!
//! Each run, in a fresh namespace of the same control plane:
//!
//! 1. applies the real fixture feeds (OSV Debian, KEV), the PatchPolicy with
//!    its window closed (`0 0 1 1 *` for 1 minute), and N Workloads
//!    (`Debian:12`) with Inventories `OLD_GLIBC` (32 in flight);
//! 2. starts `patchloop run` and waits until every Workload shows installable
//!    fixes and the policy counts them all waiting for a window (no Job yet);
//! 3. starts its own watches of Patchloop's Jobs (the executor, the in-flight
//!    count) and of the Workloads (the verified count), reads kube-apiserver's
//!    `apiserver_request_total` and the controller's counters, then opens the
//!    window (`* * * * *` for 2 h) and starts the clock;
//! 4. the executor: every Job, T seconds after the watch first shows it, is
//!    marked Complete (status subresource) and its Workload's Inventory is
//!    server-side applied with `FIXED_GLIBC`, as a script reporting from
//!    inside the Job would; a Job the Job controller turns back to unfinished
//!    (its status update racing ours) is completed again;
//! 5. stops the clock when every Workload has `status.remediation.phase ==
//!    Verified` and compliance `Compliant`, reads the request counters again,
//!    the controller's peak RSS (`VmHWM`), and stops the controller.
//!
//! Requests made by the controller: the apiserver counts every request in
//! `apiserver_request_total{verb, group, resource, subresource, ...}` but not
//! by client. The control plane is this benchmark's own (no other client but
//! kube-controller-manager), so the controller's share of the difference is
//! the series of the kinds it works on (`patchloop.dev/*`, `jobs` but not
//! their `status` nor GET, `configmaps`, `events.k8s.io` events) minus the
//! requests this benchmark made in those series, which it counts itself.
//! kube-controller-manager writes Pods, Job status (PUT, after a GET), core
//! `events` and keeps its own watches: it is reported apart. WATCH requests
//! are left out of the per-workload figure: the apiserver counts a watch when
//! it ends, and a handful of long-lived watches is no per-workload cost.

#[path = "../tests/support/mod.rs"]
mod support;

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::{StreamExt, TryStreamExt, stream};
use k8s_openapi::api::batch::v1::Job;
use kube::Api;
use kube::api::{ListParams, Patch, PatchParams, WatchEvent, WatchParams};
use patchloop::api::workload::RemediationPhase;
use patchloop::api::{PatchPolicy, Workload};
use serde_json::json;
use support::executor::{self, OURS, label, unfinished};
use support::objects::{
    FIXED_GLIBC, OLD_GLIBC, apply, fixture_feeds, policy, workload, workload_inventory,
};
use support::patchloop::Patchloop;

const MAX_CONCURRENT: usize = 50;
const IN_FLIGHT: usize = 32;
const WORKLOAD_LABEL: &str = "patchloop.dev/workload";
const EVALUATE_TIMEOUT: Duration = Duration::from_secs(900);
const REMEDIATE_TIMEOUT: Duration = Duration::from_secs(600);

fn env_or<T: std::str::FromStr>(var: &str, default: T) -> T {
    std::env::var(var)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn name(i: usize) -> String {
    format!("wl-{i:04}")
}

fn now_rfc3339() -> String {
    jiff::Timestamp::now()
        .round(jiff::Unit::Second)
        .map_or_else(|_| String::new(), |t| t.to_string())
}

/// Requests this benchmark made, by apiserver series (verb, group,
/// resource, subresource), as `apiserver_request_total` labels them.
#[derive(Default)]
struct OwnRequests(Mutex<BTreeMap<(String, String, String, String), f64>>);

impl OwnRequests {
    fn add(&self, verb: &str, group: &str, resource: &str, subresource: &str) {
        let key = (
            verb.into(),
            group.into(),
            resource.into(),
            subresource.into(),
        );
        *self.0.lock().expect("lock").entry(key).or_default() += 1.0;
    }

    fn snapshot(&self) -> BTreeMap<(String, String, String, String), f64> {
        self.0.lock().expect("lock").clone()
    }
}

type Series = BTreeMap<(String, String, String, String), f64>;

/// `apiserver_request_total` summed over the labels other than verb, group,
/// resource and subresource.
async fn apiserver_requests(client: &kube::Client) -> Series {
    let req = http::Request::get("/metrics")
        .body(Vec::new())
        .expect("request");
    let text = client.request_text(req).await.expect("apiserver /metrics");
    let mut out = Series::new();
    for line in text.lines() {
        let Some(rest) = line.strip_prefix("apiserver_request_total{") else {
            continue;
        };
        let Some((labels, value)) = rest.rsplit_once("} ") else {
            continue;
        };
        let Ok(value) = value.trim().parse::<f64>() else {
            continue;
        };
        let get = |k: &str| {
            labels
                .split(',')
                .find_map(|kv| kv.strip_prefix(&format!("{k}=\"")))
                .map(|v| v.trim_end_matches('"').to_owned())
                .unwrap_or_default()
        };
        let key = (
            get("verb"),
            get("group"),
            get("resource"),
            get("subresource"),
        );
        *out.entry(key).or_default() += value;
    }
    out
}

/// Series the controller may make requests in (see the module docs).
fn controller_series(verb: &str, group: &str, resource: &str, subresource: &str) -> bool {
    match (group, resource) {
        ("patchloop.dev", _) => true,
        ("batch", "jobs") => subresource.is_empty() && verb != "GET",
        ("", "configmaps") => true,
        ("events.k8s.io", "events") => true,
        _ => false,
    }
}

/// CPU seconds used so far by this process and its descendants (the control
/// plane, the controller), by command name; and the machine's busy and total
/// CPU seconds (`/proc/stat`).
fn cpu_seconds() -> (BTreeMap<String, f64>, f64, f64) {
    // SAFETY: sysconf has no preconditions.
    let tick = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    let mut procs: Vec<(u32, u32, String, f64)> = Vec::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else {
            continue;
        };
        let comm = stat[open + 1..close].to_owned();
        let fields: Vec<&str> = stat[close + 2..].split(' ').collect();
        // After "pid (comm) ": state ppid ... utime (14th field) stime (15th).
        let num = |i: usize| fields.get(i).and_then(|v| v.parse::<f64>().ok());
        let (Some(ppid), Some(utime), Some(stime)) = (num(1), num(11), num(12)) else {
            continue;
        };
        procs.push((pid, ppid as u32, comm, (utime + stime) / tick));
    }
    let me = std::process::id();
    let mut tree = std::collections::BTreeSet::from([me]);
    loop {
        let before = tree.len();
        for (pid, ppid, ..) in &procs {
            if tree.contains(ppid) {
                tree.insert(*pid);
            }
        }
        if tree.len() == before {
            break;
        }
    }
    let mut out = BTreeMap::new();
    for (pid, _, comm, cpu) in &procs {
        if tree.contains(pid) {
            let name = if *pid == me {
                "benchmark"
            } else {
                comm.as_str()
            };
            *out.entry(name.to_owned()).or_default() += cpu;
        }
    }
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let cpu: Vec<f64> = stat
        .lines()
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .skip(1)
        .filter_map(|v| v.parse().ok())
        .collect();
    let total: f64 = cpu.iter().take(8).sum::<f64>() / tick;
    let idle = (cpu.get(3).copied().unwrap_or(0.0) + cpu.get(4).copied().unwrap_or(0.0)) / tick;
    (out, total - idle, total)
}

fn peak_rss_mib(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(f64::NAN, |kb| kb / 1024.0)
}

/// Starts `patchloop run` like the test harness does, with log level `level`
/// and its output in a file.
async fn start_controller(
    env: &support::TestEnv,
    ns: &str,
    label: &str,
    level: &str,
    log: &Path,
) -> Patchloop {
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
        .args(["--log-level", level])
        .env_remove("KUBECONFIG")
        .env_remove("RUST_LOG")
        .env_remove("PATCHLOOP_FAILPOINTS")
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err);
    let child = support::spawn_managed("patchloop", cmd);
    let pl = Patchloop { child, port };
    pl.ready().await;
    pl
}

/// Lists, then watches, `api` (one LIST request, counted; re-lists after a
/// 410), calling `on` for every object added or modified.
async fn watch_all<K>(
    api: Api<K>,
    lp: ListParams,
    (group, resource): (&str, &str),
    own: Arc<OwnRequests>,
    mut on: impl FnMut(K),
) where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug + 'static,
{
    let mut wp = WatchParams::default().timeout(290);
    if let Some(l) = &lp.label_selector {
        wp = wp.labels(l);
    }
    'relist: loop {
        own.add("LIST", group, resource, "");
        let list = match api.list(&lp).await {
            Ok(l) => l,
            Err(e) => {
                println!("bench: list {resource}: {e}");
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
        };
        let mut rv = list.metadata.resource_version.unwrap_or_default();
        for o in list.items {
            on(o);
        }
        loop {
            own.add("WATCH", group, resource, "");
            let mut events = match api.watch(&wp, &rv).await {
                Ok(s) => s.boxed(),
                Err(e) => {
                    println!("bench: watch {resource}: {e}");
                    continue 'relist;
                }
            };
            loop {
                match events.try_next().await {
                    Ok(Some(WatchEvent::Added(o) | WatchEvent::Modified(o))) => {
                        rv = o.meta().resource_version.clone().unwrap_or(rv);
                        on(o);
                    }
                    Ok(Some(WatchEvent::Deleted(o))) => {
                        rv = o.meta().resource_version.clone().unwrap_or(rv);
                    }
                    Ok(Some(WatchEvent::Bookmark(b))) => rv = b.metadata.resource_version,
                    Ok(Some(WatchEvent::Error(e))) => {
                        if e.code != 410 {
                            println!("bench: watch {resource}: {e:?}");
                        }
                        continue 'relist;
                    }
                    Ok(None) => break,
                    Err(e) => {
                        println!("bench: watch {resource}: {e}");
                        break;
                    }
                }
            }
        }
    }
}

/// One Job as the executor saw it.
#[derive(Debug, Clone)]
struct JobSeen {
    workload: String,
    seen: Instant,
    due: Instant,
    /// When the watch first showed the Job controller's status (`active`).
    synced: Option<Instant>,
    /// A completion is scheduled.
    scheduled: bool,
    /// When the executor began the first completion.
    began: Option<Instant>,
    /// When the first completion (Job status, then Inventory) returned.
    completed: Option<Instant>,
    /// Completions issued (more than 1: the Job controller undid one).
    completions: u32,
    /// The watch last showed it unfinished.
    unfinished: bool,
    /// Unfinished again after a completion: the Job controller undid it.
    undone: bool,
}

#[derive(Default)]
struct Executor {
    jobs: HashMap<String, JobSeen>,
    /// Most Jobs unfinished at once, as the watch showed them.
    most_in_flight: usize,
    /// The same, without Jobs the Job controller had turned back to
    /// unfinished after their completion (the controller's own count).
    most_in_flight_not_undone: usize,
    recompleted: usize,
}

/// Completes `job` (started at `start`) and reports the fixed Inventory for
/// `workload`.
async fn finish(
    client: &kube::Client,
    ns: &str,
    (job, start): (&str, &str),
    workload: &str,
    own: &OwnRequests,
) -> Instant {
    own.add("PATCH", "batch", "jobs", "status");
    executor::patch_complete(client, ns, job, Some(start)).await;
    let mut doc = workload_inventory(workload, FIXED_GLIBC);
    doc["spec"]["reportedAt"] = json!(now_rfc3339());
    own.add("APPLY", "patchloop.dev", "inventories", "");
    apply(client, ns, doc).await;
    Instant::now()
}

/// Starts the executor: watches Patchloop's Jobs and finishes each T after
/// it first appears, at most `workers` completions at once.
///
/// Kubernetes 1.20's Job controller writes a Job's whole status from its own
/// copy (GET, then PUT): a completion written while its first sync of the Job
/// is under way is undone (a real Job's completion comes from that very
/// controller, which has no such race). The executor sets `startTime` to the
/// Job's creation (as a Job controller keeping up would have; a later one
/// would make the Inventory written before it prove nothing), completes again
/// (status only) a Job it sees undone, and notes when the Job controller's
/// status write (`active: 1`) showed up.
fn start_executor(
    client: &kube::Client,
    ns: &str,
    t: Duration,
    workers: usize,
    own: Arc<OwnRequests>,
) -> (Arc<Mutex<Executor>>, tokio::task::JoinHandle<()>) {
    let state = Arc::new(Mutex::new(Executor::default()));
    let permits = Arc::new(tokio::sync::Semaphore::new(workers));
    let api: Api<Job> = Api::namespaced(client.clone(), ns);
    let (client, ns, st) = (client.clone(), ns.to_owned(), Arc::clone(&state));
    let task = tokio::spawn(async move {
        let on = {
            let (st, own) = (Arc::clone(&st), Arc::clone(&own));
            move |job: Job| {
                let name = job.metadata.name.clone().unwrap_or_default();
                let open = unfinished(&job);
                // The Job controller's first status write: `active` (never
                // set by the executor).
                let synced = job
                    .status
                    .as_ref()
                    .is_some_and(|s| s.active.is_some_and(|a| a > 0));
                let now = Instant::now();
                let mut s = st.lock().expect("lock");
                let j = s.jobs.entry(name.clone()).or_insert_with(|| JobSeen {
                    workload: label(&job, WORKLOAD_LABEL).to_owned(),
                    seen: now,
                    due: now + t,
                    synced: None,
                    scheduled: false,
                    began: None,
                    completed: None,
                    completions: 0,
                    unfinished: open,
                    undone: false,
                });
                if synced && j.synced.is_none() {
                    j.synced = Some(now);
                }
                let undone = open && !j.unfinished && j.completions > 0;
                j.unfinished = open;
                j.undone = open && (j.undone || undone);
                let schedule = if undone {
                    Some(now)
                } else if open && !j.scheduled {
                    j.scheduled = true;
                    Some(j.due)
                } else {
                    None
                };
                let workload = j.workload.clone();
                let start = job
                    .metadata
                    .creation_timestamp
                    .as_ref()
                    .map_or_else(now_rfc3339, |t| t.0.to_string());
                if undone {
                    s.recompleted += 1;
                }
                let in_flight = s.jobs.values().filter(|j| j.unfinished).count();
                s.most_in_flight = s.most_in_flight.max(in_flight);
                let not_undone = s
                    .jobs
                    .values()
                    .filter(|j| j.unfinished && !j.undone)
                    .count();
                s.most_in_flight_not_undone = s.most_in_flight_not_undone.max(not_undone);
                drop(s);
                if let Some(at) = schedule {
                    let (client, ns, st, own, permits) = (
                        client.clone(),
                        ns.clone(),
                        Arc::clone(&st),
                        Arc::clone(&own),
                        Arc::clone(&permits),
                    );
                    tokio::spawn(async move {
                        tokio::time::sleep_until(at.into()).await;
                        let _permit = permits.acquire().await.expect("semaphore");
                        let began = Instant::now();
                        let first = st
                            .lock()
                            .expect("lock")
                            .jobs
                            .get_mut(&name)
                            .is_some_and(|j| {
                                j.began.get_or_insert(began);
                                j.completions += 1;
                                j.completions == 1
                            });
                        if !first {
                            own.add("PATCH", "batch", "jobs", "status");
                            executor::patch_complete(&client, &ns, &name, Some(&start)).await;
                            return;
                        }
                        let done = finish(&client, &ns, (&name, &start), &workload, &own).await;
                        if let Some(j) = st.lock().expect("lock").jobs.get_mut(&name) {
                            j.completed.get_or_insert(done);
                        }
                    });
                }
            }
        };
        watch_all(
            api,
            ListParams::default().labels(OURS),
            ("batch", "jobs"),
            own,
            on,
        )
        .await;
    });
    (state, task)
}

fn done(w: &Workload) -> bool {
    let Some(s) = w.status.as_ref() else {
        return false;
    };
    s.remediation.as_ref().and_then(|r| r.phase) == Some(RemediationPhase::Verified)
        && s.compliance
            .as_ref()
            .and_then(|c| c.state)
            .is_some_and(|c| c.to_string() == "Compliant")
}

/// Watches the Workloads: when each was first seen verified and compliant.
fn start_verified_watch(
    client: &kube::Client,
    ns: &str,
    own: Arc<OwnRequests>,
) -> (
    Arc<Mutex<HashMap<String, Instant>>>,
    tokio::task::JoinHandle<()>,
) {
    let verified = Arc::new(Mutex::new(HashMap::new()));
    let api: Api<Workload> = Api::namespaced(client.clone(), ns);
    let v = Arc::clone(&verified);
    let task = tokio::spawn(async move {
        watch_all(
            api,
            ListParams::default(),
            ("patchloop.dev", "workloads"),
            own,
            move |w: Workload| {
                if done(&w) {
                    v.lock()
                        .expect("lock")
                        .entry(w.metadata.name.clone().unwrap_or_default())
                        .or_insert_with(Instant::now);
                }
            },
        )
        .await;
    });
    (verified, task)
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[i]
}

fn summary(mut v: Vec<f64>) -> String {
    v.sort_by(|a, b| a.total_cmp(b));
    let mean = v.iter().sum::<f64>() / v.len().max(1) as f64;
    format!(
        "mean {:.3} s, p50 {:.3} s, p90 {:.3} s, max {:.3} s (n={})",
        mean,
        percentile(&v, 0.5),
        percentile(&v, 0.9),
        percentile(&v, 1.0),
        v.len()
    )
}

#[derive(Debug, Default, Clone)]
struct RunResult {
    setup: f64,
    evaluate: f64,
    remediate: f64,
    ideal: f64,
    most_in_flight: usize,
    most_in_flight_not_undone: usize,
    mean_in_flight: f64,
    jobs: usize,
    recompleted: usize,
    controller_requests: f64,
    controller_requests_no_watch: f64,
    kcm_requests: f64,
    rss_mib: f64,
    executor_lag_max: f64,
}

#[allow(clippy::too_many_arguments)]
async fn one_run(
    env: &'static support::TestEnv,
    client: &kube::Client,
    run: usize,
    n: usize,
    t: Duration,
    workers: usize,
    canary: usize,
    level: &str,
) -> RunResult {
    let mut r = RunResult::default();
    let ns = env.namespace("remed").await;
    let feed_label = support::random_suffix();
    println!("bench: run {run}: namespace {ns}, feed label {feed_label}");

    // Setup, before the controller starts.
    let started = Instant::now();
    fixture_feeds(client, &feed_label).await;
    let mut p = policy("fleet", json!({"tier": "bench"}), 100);
    p["spec"]["maintenanceWindows"] =
        json!([{"schedule": "0 0 1 1 *", "duration": "1m", "timeZone": "UTC"}]);
    p["spec"]["remediation"] = json!({
        "mode": "Remediate", "maxConcurrent": MAX_CONCURRENT, "canary": canary,
        "maxFailures": 100, "attempts": 1,
        "jobTemplate": {"spec": {"template": {"spec": {
            "containers": [{"name": "patch", "image": "debian:12", "command": ["/scripts/patch.sh"]}]
        }}}}
    });
    apply(client, &ns, p).await;
    stream::iter(0..n)
        .map(|i| {
            let ns = &ns;
            async move {
                let w = name(i);
                apply(client, ns, workload(&w, json!({"tier": "bench"}))).await;
                apply(client, ns, workload_inventory(&w, OLD_GLIBC)).await;
            }
        })
        .buffer_unordered(IN_FLIGHT)
        .collect::<Vec<()>>()
        .await;
    r.setup = started.elapsed().as_secs_f64();
    println!(
        "bench: run {run}: setup ({n} Workloads + {n} Inventories) {:.1} s",
        r.setup
    );

    // The controller, until every Workload is judged and waits for the window.
    // Outside the control plane's scratch directory: other test binaries
    // sweep it once this process is gone.
    let log_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/bench-remediation");
    std::fs::create_dir_all(&log_dir).expect("log directory");
    let log = log_dir.join(format!("patchloop-{ns}.log"));
    let started = Instant::now();
    let pl = start_controller(env, &ns, &feed_label, level, &log).await;
    let workloads: Api<Workload> = Api::namespaced(client.clone(), &ns);
    let policies: Api<PatchPolicy> = Api::namespaced(client.clone(), &ns);
    loop {
        let items = workloads
            .list(&ListParams::default())
            .await
            .expect("list Workloads")
            .items;
        let judged = items
            .iter()
            .filter(|w| {
                w.status.as_ref().is_some_and(|s| {
                    s.installable.is_some()
                        && s.compliance
                            .as_ref()
                            .and_then(|c| c.state)
                            .is_some_and(|c| c.to_string() != "Unknown")
                })
            })
            .count();
        let waiting = policies
            .get_status("fleet")
            .await
            .ok()
            .and_then(|p| p.status)
            .and_then(|s| s.workloads)
            .map_or(0, |c| c.waiting_for_window);
        if judged == n && usize::try_from(waiting).unwrap_or(0) == n {
            break;
        }
        assert!(
            started.elapsed() < EVALUATE_TIMEOUT,
            "not evaluated after {EVALUATE_TIMEOUT:?}: {judged} judged, {waiting} waiting"
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    r.evaluate = started.elapsed().as_secs_f64();
    assert!(
        executor::jobs(client, &ns).await.is_empty(),
        "a Job started with the window closed"
    );
    println!(
        "bench: run {run}: controller start to {n} Workloads judged (installable fixes) and waiting for the window: {:.1} s",
        r.evaluate
    );

    // Watches, counters, then the window opens.
    let own = Arc::new(OwnRequests::default());
    let (exec, exec_task) = start_executor(client, &ns, t, workers, Arc::clone(&own));
    let (verified, verified_task) = start_verified_watch(client, &ns, Arc::clone(&own));
    tokio::time::sleep(Duration::from_secs(2)).await;
    let own_before = own.snapshot();
    let api_before = apiserver_requests(client).await;
    let metric = async |m: &str| pl.metric(m).await;
    let reconciles_before = (
        metric("patchloop_reconciles_total{controller=\"workload\"}").await,
        metric("patchloop_reconciles_total{controller=\"policy\"}").await,
    );
    let writes_before = (
        metric("patchloop_status_writes_total{controller=\"workload\"}").await,
        metric("patchloop_status_writes_total{controller=\"policy\"}").await,
    );

    let cpu_before = cpu_seconds();
    let loadavg = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let t0 = Instant::now();
    own.add("PATCH", "patchloop.dev", "patchpolicies", "");
    policies
        .patch(
            "fleet",
            &PatchParams::default(),
            &Patch::Merge(&json!({"spec": {"maintenanceWindows": [
                {"schedule": "* * * * *", "duration": "2h", "timeZone": "UTC"}
            ]}})),
        )
        .await
        .expect("open the window");
    println!("bench: run {run}: window opened, clock started");
    let mut last_print = Instant::now();
    let t_end = loop {
        let verified_now = verified.lock().expect("lock").len();
        if verified_now >= n {
            let v = verified.lock().expect("lock");
            break v.values().max().copied().unwrap_or_else(Instant::now);
        }
        if last_print.elapsed() >= Duration::from_secs(5) {
            last_print = Instant::now();
            let e = exec.lock().expect("lock");
            let in_flight = e.jobs.values().filter(|j| j.unfinished).count();
            let completed = e.jobs.values().filter(|j| j.completed.is_some()).count();
            println!(
                "bench: run {run}: t={:5.1} s: Jobs created {}, in flight {in_flight}, completed {completed}; verified {verified_now}",
                t0.elapsed().as_secs_f64(),
                e.jobs.len()
            );
        }
        if t0.elapsed() > REMEDIATE_TIMEOUT {
            let v = verified.lock().expect("lock");
            let missing: Vec<String> = (0..n).map(name).filter(|w| !v.contains_key(w)).collect();
            println!(
                "bench: run {run}: NOT remediated after {REMEDIATE_TIMEOUT:?}: {verified_now} verified; missing {missing:?}"
            );
            break Instant::now();
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let cpu_after = cpu_seconds();
    let wall = t0.elapsed().as_secs_f64();
    r.remediate = (t_end - t0).as_secs_f64();
    let waves = n.div_ceil(MAX_CONCURRENT);
    r.ideal = waves as f64 * t.as_secs_f64();
    // Let in-flight requests of the last round land before counting.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let api_after = apiserver_requests(client).await;
    let own_after = own.snapshot();
    let reconciles_after = (
        metric("patchloop_reconciles_total{controller=\"workload\"}").await,
        metric("patchloop_reconciles_total{controller=\"policy\"}").await,
    );
    let writes_after = (
        metric("patchloop_status_writes_total{controller=\"workload\"}").await,
        metric("patchloop_status_writes_total{controller=\"policy\"}").await,
    );
    let jobs_created = metric("patchloop_jobs_created_total{kind=\"remediation\"}").await;
    r.rss_mib = peak_rss_mib(pl.child.id());
    exec_task.abort();
    verified_task.abort();
    drop(pl);

    println!(
        "bench: run {run}: window open to fleet compliant: {:.1} s; ideal ⌈{n}/{MAX_CONCURRENT}⌉ × {:.1} s = {:.1} s; ratio {:.2}x (goal ≤ 1.2x)",
        r.remediate,
        t.as_secs_f64(),
        r.ideal,
        r.remediate / r.ideal
    );

    // The executor's view.
    let e = exec.lock().expect("lock");
    let v = verified.lock().expect("lock");
    r.jobs = e.jobs.len();
    r.most_in_flight = e.most_in_flight;
    r.most_in_flight_not_undone = e.most_in_flight_not_undone;
    r.recompleted = e.recompleted;
    let span = (t_end - t0).as_secs_f64();
    let busy: f64 = e
        .jobs
        .values()
        .map(|j| {
            let start = j.seen.max(t0);
            let end = j.completed.unwrap_or(t_end).min(t_end);
            end.saturating_duration_since(start).as_secs_f64()
        })
        .sum();
    r.mean_in_flight = busy / span;
    let mut seen: Vec<Instant> = e.jobs.values().map(|j| j.seen).collect();
    seen.sort();
    let mut completed: Vec<Instant> = e.jobs.values().filter_map(|j| j.completed).collect();
    completed.sort();
    let since = |i: Instant| (i - t0).as_secs_f64();
    let lags: Vec<f64> = e
        .jobs
        .values()
        .filter_map(|j| Some(j.began?.saturating_duration_since(j.due).as_secs_f64()))
        .collect();
    let kcm_late: Vec<f64> = e
        .jobs
        .values()
        .filter_map(|j| j.synced?.checked_duration_since(j.due))
        .map(|d| d.as_secs_f64())
        .collect();
    let kcm_sync: Vec<f64> = e
        .jobs
        .values()
        .filter_map(|j| Some((j.synced? - j.seen).as_secs_f64()))
        .collect();
    let took: Vec<f64> = e
        .jobs
        .values()
        .filter_map(|j| Some((j.completed? - j.began?).as_secs_f64()))
        .collect();
    r.executor_lag_max = lags.iter().copied().fold(0.0, f64::max);
    // The k-th completion frees a slot the (limit + k)-th Job fills.
    let refill: Vec<f64> = completed
        .iter()
        .zip(seen.iter().skip(MAX_CONCURRENT))
        .map(|(c, s)| s.saturating_duration_since(*c).as_secs_f64())
        .collect();
    let verify: Vec<f64> = e
        .jobs
        .values()
        .filter_map(|j| Some(v.get(&j.workload)?.saturating_duration_since(j.completed?)))
        .map(|d| d.as_secs_f64())
        .collect();
    println!(
        "bench: run {run}: Jobs: {} created (controller counter {jobs_created}), most in flight {} (limit {MAX_CONCURRENT}; {} without Jobs the Job controller turned back to unfinished), mean in flight {:.1}; first at {:.2} s, {}th at {:.2} s, last at {:.2} s; last completed at {:.2} s",
        r.jobs,
        r.most_in_flight,
        r.most_in_flight_not_undone,
        r.mean_in_flight,
        seen.first().map_or(f64::NAN, |i| since(*i)),
        MAX_CONCURRENT.min(seen.len()),
        seen.get(MAX_CONCURRENT - 1)
            .or(seen.last())
            .map_or(f64::NAN, |i| since(*i)),
        seen.last().map_or(f64::NAN, |i| since(*i)),
        completed.last().map_or(f64::NAN, |i| since(*i)),
    );
    println!(
        "bench: run {run}: executor ({workers} at once): lag behind the due time {}; completion (Job status + Inventory) took {}; Jobs completed again after the Job controller undid it: {}",
        summary(lags),
        summary(took),
        r.recompleted
    );
    println!(
        "bench: run {run}: kube-controller-manager's Job controller, first status write (active) after the Job appeared: {}; after the due time for {} Jobs",
        summary(kcm_sync),
        kcm_late.len()
    );
    println!(
        "bench: run {run}: slot refill (k-th completion → (limit+k)-th Job seen): {}",
        summary(refill)
    );
    println!(
        "bench: run {run}: verification (completion → Workload seen Verified+Compliant): {}; last verified {:.2} s after the last completion",
        summary(verify),
        completed.last().map_or(f64::NAN, |c| t_end
            .saturating_duration_since(*c)
            .as_secs_f64())
    );
    drop((e, v));

    // Requests.
    let mut controller = Series::new();
    let mut kcm = Series::new();
    for (key, after) in &api_after {
        let delta = after - api_before.get(key).copied().unwrap_or(0.0);
        let ours = own_after.get(key).copied().unwrap_or(0.0)
            - own_before.get(key).copied().unwrap_or(0.0);
        let (verb, group, resource, sub) = key;
        if delta - ours <= 0.0 || resource.is_empty() {
            continue;
        }
        if controller_series(verb, group, resource, sub) {
            controller.insert(key.clone(), delta - ours);
        } else {
            kcm.insert(key.clone(), delta - ours);
        }
    }
    let fmt = |s: &Series| {
        s.iter()
            .map(|((verb, group, resource, sub), v)| {
                let g = if group.is_empty() {
                    String::new()
                } else {
                    format!("{group}/")
                };
                let sub = if sub.is_empty() {
                    String::new()
                } else {
                    format!("/{sub}")
                };
                format!("{verb} {g}{resource}{sub} {v}")
            })
            .collect::<Vec<_>>()
            .join(", ")
    };
    r.controller_requests = controller.values().sum();
    r.controller_requests_no_watch = controller
        .iter()
        .filter(|((verb, ..), _)| verb != "WATCH")
        .map(|(_, v)| v)
        .sum();
    r.kcm_requests = kcm.values().sum();
    let own_total: f64 = own_after.values().sum::<f64>() - own_before.values().sum::<f64>();
    println!(
        "bench: run {run}: controller requests (window open → compliant): {} without WATCH = {:.2} per remediated Workload; by series: {}",
        r.controller_requests_no_watch,
        r.controller_requests_no_watch / n as f64,
        fmt(&controller)
    );
    println!(
        "bench: run {run}: this benchmark's requests (subtracted): {own_total}; other clients (kube-controller-manager): {} by series: {}",
        r.kcm_requests,
        fmt(&kcm)
    );
    println!(
        "bench: run {run}: controller counters: reconciles workload +{} policy +{}, status writes workload +{} policy +{}",
        reconciles_after.0 - reconciles_before.0,
        reconciles_after.1 - reconciles_before.1,
        writes_after.0 - writes_before.0,
        writes_after.1 - writes_before.1
    );
    let cpu: Vec<String> = cpu_after
        .0
        .iter()
        .map(|(comm, after)| {
            let used = after - cpu_before.0.get(comm).copied().unwrap_or(0.0);
            format!("{comm} {used:.1} s ({:.2} cores)", used / wall)
        })
        .collect();
    println!(
        "bench: run {run}: CPU over the {wall:.1} s from window open to compliant: {}; whole machine busy {:.2} of {:.0} cores (other sessions included); load average before: {}",
        cpu.join(", "),
        (cpu_after.1 - cpu_before.1) / wall,
        (cpu_after.2 - cpu_before.2) / wall,
        loadavg.trim()
    );
    println!(
        "bench: run {run}: controller peak RSS {:.1} MiB; log {}",
        r.rss_mib,
        log.display()
    );
    r
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn main() {
    let t = Duration::from_secs_f64(env_or("PATCHLOOP_BENCH_T", 2.0));
    let runs: usize = env_or("PATCHLOOP_BENCH_RUNS", 1);
    let workers: usize = env_or("PATCHLOOP_BENCH_EXECUTORS", 16);
    let n: usize = env_or("PATCHLOOP_BENCH_WORKLOADS", 1_000);
    let canary: usize = env_or("PATCHLOOP_BENCH_CANARY", 0);
    let level: String = env_or("PATCHLOOP_BENCH_LOG", "info".to_owned());
    let started = Instant::now();
    let env = support::env();
    println!(
        "bench: control plane (Kubernetes {}) up in {:.1} s",
        support::K8S_VERSION,
        started.elapsed().as_secs_f64()
    );
    println!(
        "bench: {n} Workloads, maxConcurrent {MAX_CONCURRENT}, canary {canary}, T = {:.1} s, executor {workers} at once, controller log level {level}, {runs} run(s)",
        t.as_secs_f64()
    );
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let results: Vec<RunResult> = rt.block_on(async {
        let client = env.client().await;
        let mut results = Vec::new();
        for run in 1..=runs {
            results.push(one_run(env, &client, run, n, t, workers, canary, &level).await);
        }
        results
    });

    let col = |f: fn(&RunResult) -> f64| median(results.iter().map(f).collect());
    let remediate = col(|r| r.remediate);
    let ideal = col(|r| r.ideal);
    println!("bench: --- medians of {runs} run(s) ---");
    println!("bench: setup: {:.1} s", col(|r| r.setup));
    println!(
        "bench: controller start to every Workload judged: {:.1} s",
        col(|r| r.evaluate)
    );
    println!(
        "bench: window open to fleet compliant: {remediate:.1} s vs ideal {ideal:.1} s: {:.2}x (goal ≤ 1.2x)",
        remediate / ideal
    );
    println!(
        "bench: most Jobs in flight: {} (limit {MAX_CONCURRENT}), {} without Jobs the Job controller turned back to unfinished; mean in flight {:.1}",
        col(|r| r.most_in_flight as f64),
        col(|r| r.most_in_flight_not_undone as f64),
        col(|r| r.mean_in_flight)
    );
    println!(
        "bench: controller requests per remediated Workload (no WATCH): {:.2}",
        col(|r| r.controller_requests_no_watch) / n as f64
    );
    println!("bench: controller peak RSS: {:.1} MiB", col(|r| r.rss_mib));
    for (i, r) in results.iter().enumerate() {
        println!("bench: run {}: {r:?}", i + 1);
    }
}
