//! Remediation with real Pods (the real-Pod mode of the remediation benchmark): 50 real test
//! machines on the real node (`tests/support/machines.rs`), the example `apt-over-ssh` policy
//! with the reference script in the runner image (`tests/support/fleet.rs`), `maxConcurrent:
//! 10`, `canary: 0`. The clock runs from the policy's creation with an open window until every
//! Workload is Compliant; the ideal is `ceil(machines / maxConcurrent) ×` the mean time one
//! Job's container ran (from its Pods' own start and finish times, measured in the same run).
//!
//! Run: `eval "$(scripts/testenv.sh --print-env)" && cargo bench --bench remediation_real`
//! (as root: the node). Settings: `PATCHLOOP_BENCH_MACHINES` (default 50, at most 50),
//! `PATCHLOOP_BENCH_CONCURRENT` (default 10). Prints lines starting with `bench:`.

#[path = "../tests/support/mod.rs"]
mod support;

use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{ContainerStateTerminated, Pod};
use kube::Api;
use kube::api::ListParams;
use serde_json::json;
use support::fleet::{
    all_in_state, apt_over_ssh_policy, assert_upgraded, installed_versions, machines_feed,
    own_pins, prepare,
};
use support::machines::{self, Machine};
use support::objects::apply;
use support::patchloop::Patchloop;

fn env_or<T: std::str::FromStr>(var: &str, default: T) -> T {
    std::env::var(var)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// How the Pod's (only) container ended, once it has.
fn terminated(pod: &Pod) -> Option<ContainerStateTerminated> {
    pod.status
        .as_ref()?
        .container_statuses
        .as_ref()?
        .first()?
        .state
        .as_ref()?
        .terminated
        .clone()
}

/// Seconds from each Pod's creation to its container's start (scheduling, the sandbox, the
/// container): what a real Job costs beyond its script.
fn start_seconds(pods: &[Pod]) -> Vec<f64> {
    pods.iter()
        .filter_map(|p| {
            let created = p.metadata.creation_timestamp.as_ref()?.0;
            let started = terminated(p)?.started_at?.0;
            Some(started.duration_since(created).as_secs_f64())
        })
        .collect()
}

fn average(v: &[f64]) -> f64 {
    v.iter().sum::<f64>() / v.len().max(1) as f64
}

/// Seconds each Pod's container ran (started → finished), from the Pods' statuses.
fn container_seconds(pods: &[Pod]) -> Vec<f64> {
    pods.iter()
        .filter_map(|p| {
            let state = terminated(p)?;
            Some(
                state
                    .finished_at?
                    .0
                    .duration_since(state.started_at?.0)
                    .as_secs_f64(),
            )
        })
        .collect()
}

fn main() {
    let machine_count: u8 = env_or("PATCHLOOP_BENCH_MACHINES", 50).min(50);
    let concurrent: usize = env_or("PATCHLOOP_BENCH_CONCURRENT", 10);
    let runtime = tokio::runtime::Runtime::new().expect("a tokio runtime");
    runtime.block_on(async {
        let env = support::env_with_node();
        let node = env.node().expect("the test node");
        let client = env.client().await;
        let ns = env.namespace("bench-real").await;
        let label = format!("bench-{}", support::random_suffix());
        let setup = Instant::now();
        let fleet = machines::start(node, machine_count, 0).unwrap_or_else(|e| panic!("{e}"));
        let client_key = machines::client_key(node);
        let names: Vec<String> = (0..fleet.len()).map(|i| format!("m-{i:02}")).collect();
        let members: Vec<(&str, &Machine)> = names.iter().map(String::as_str).zip(&fleet).collect();
        let before = installed_versions(&fleet, client_key);
        machines_feed(&client, node, &label).await;
        prepare(env, &client, &ns, client_key, &members, &own_pins(&members)).await;
        let _controller = Patchloop::start(env, &ns, &label, &[]).await;
        let name_refs: Vec<&str> = names.iter().map(String::as_str).collect();
        all_in_state(
            &client,
            &ns,
            &name_refs,
            "Overdue",
            Duration::from_secs(120),
        )
        .await;
        println!(
            "bench: setup ({machine_count} machines, Workloads, Inventories, controller): {:.1} s",
            setup.elapsed().as_secs_f64()
        );

        let mut policy = apt_over_ssh_policy(&node.runner_image, 2);
        policy["spec"]["remediation"]["maxConcurrent"] = json!(concurrent);
        policy["spec"]["remediation"]["canary"] = json!(0);
        let clock = Instant::now();
        apply(&client, &ns, policy).await;
        all_in_state(
            &client,
            &ns,
            &name_refs,
            "Compliant",
            Duration::from_secs(900),
        )
        .await;
        let took = clock.elapsed().as_secs_f64();
        assert_upgraded(&fleet, client_key, &before);

        let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
        let list =
            support::eventually("every Pod finished", Duration::from_secs(120), async || {
                let list = pods.list(&ListParams::default()).await.ok()?.items;
                (container_seconds(&list).len() == list.len()).then_some(list)
            })
            .await;
        let seconds = container_seconds(&list);
        let mean = average(&seconds);
        let start = average(&start_seconds(&list));
        let waves = (machine_count as usize).div_ceil(concurrent);
        let ideal = waves as f64 * mean;
        let mut sorted = seconds.clone();
        sorted.sort_by(f64::total_cmp);
        println!(
            "bench: {} Pods, container time mean {mean:.2} s (min {:.2}, max {:.2})",
            seconds.len(),
            sorted.first().copied().unwrap_or(0.0),
            sorted.last().copied().unwrap_or(0.0)
        );
        println!(
            "bench: window open -> fleet compliant: {took:.1} s; ideal {waves} x {mean:.2} s = \
             {ideal:.1} s; ratio {:.2}",
            took / ideal
        );
        let with_start = waves as f64 * (mean + start);
        println!(
            "bench: Pod creation -> container start mean {start:.2} s; ideal counting it \
             {waves} x {:.2} s = {with_start:.1} s; ratio {:.2}",
            mean + start,
            took / with_start
        );
    });
}
