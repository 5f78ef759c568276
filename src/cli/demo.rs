//! `patchloop demo`: the whole loop on a cluster the kubeconfig points at
//! (`make demo` brings up a local one): installs the CRDs, loads real
//! advisories and the example fleet, starts the controller, plays the Jobs'
//! executors (a simulation, and it says so), walks the user through the
//! approval of a template rebuild, and ends with the fleet report.

use std::collections::BTreeSet;
use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::{ExitCode, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams};
use kube::{Api, ResourceExt};
use patchloop::api::{ChangeRequest, PatchPolicy, Template, Workload};
use patchloop::controller::jobs::{MANAGED_BY, MANAGED_BY_LABEL};
use patchloop::demo::executor::{Executor, Played};
use patchloop::demo::{fleet, progress};
use patchloop::report;
use tokio::sync::mpsc;

/// Arguments of `patchloop demo`.
#[derive(Debug, clap::Args)]
pub struct DemoArgs {
    /// The namespace the demo fleet lives in.
    #[arg(long, short = 'n', default_value = "patchloop-demo")]
    namespace: String,
    /// The fleet's manifests.
    #[arg(long, default_value = "examples/demo")]
    fleet: PathBuf,
    /// Real advisory data: `osv/**/*.json` and
    /// `kev/known_exploited_vulnerabilities.json` below it.
    #[arg(long, default_value = "tests/fixtures")]
    advisories: PathBuf,
    /// How long each simulated Job runs, in seconds.
    #[arg(long, default_value_t = 3)]
    job_seconds: u64,
    /// Give up after this many seconds.
    #[arg(long, default_value_t = 600)]
    timeout: u64,
    /// Approve template rebuilds without asking (runs the printed
    /// `patchloop approve` command itself).
    #[arg(long)]
    approve: bool,
    /// Leave the controller running after the demo, writing its process id
    /// here (`make demo-down` stops it); by default it stops with the demo.
    #[arg(long)]
    keep_controller: Option<PathBuf>,
    /// The controller's log file.
    #[arg(long, default_value = "patchloop-demo-controller.log")]
    controller_log: PathBuf,
    /// The kubeconfig to use; by default $KUBECONFIG or ~/.kube/config.
    #[arg(long, env = "KUBECONFIG")]
    kubeconfig: Option<PathBuf>,
}

/// Prints a timestamped progress line.
struct Clock(Instant);

impl Clock {
    fn say(&self, line: &str) {
        println!("[{:>4}s] {line}", self.0.elapsed().as_secs());
    }
}

fn heading(line: &str) {
    println!("==> {line}");
}

/// Runs the demo.
pub fn run(args: &DemoArgs) -> anyhow::Result<ExitCode> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(demo(args))
}

async fn install_crds(client: &kube::Client) -> anyhow::Result<usize> {
    let api: Api<CustomResourceDefinition> = Api::all(client.clone());
    let crds = patchloop::api::crds();
    for crd in &crds {
        let name = crd.name_any();
        api.patch(
            &name,
            &PatchParams::apply(fleet::MANAGER).force(),
            &Patch::Apply(crd),
        )
        .await
        .with_context(|| format!("installing CRD {name}"))?;
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    for crd in &crds {
        let name = crd.name_any();
        loop {
            let established = api
                .get_opt(&name)
                .await?
                .and_then(|c| c.status)
                .is_some_and(|s| {
                    s.conditions
                        .unwrap_or_default()
                        .iter()
                        .any(|c| c.type_ == "Established" && c.status == "True")
                });
            if established {
                break;
            }
            if Instant::now() > deadline {
                bail!("CRD {name} was not established within 60 s");
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    Ok(crds.len())
}

/// Deletes the namespace a previous run left, and waits until it is gone
/// (its Workloads' Jobs and ChangeRequests with it). True if there was one.
async fn reset_namespace(client: &kube::Client, ns: &str) -> anyhow::Result<bool> {
    let api: Api<Namespace> = Api::all(client.clone());
    if api.get_opt(ns).await?.is_none() {
        return Ok(false);
    }
    api.delete(ns, &DeleteParams::default())
        .await
        .with_context(|| format!("deleting namespace {ns}"))?;
    let deadline = Instant::now() + Duration::from_secs(120);
    while api.get_opt(ns).await?.is_some() {
        if Instant::now() > deadline {
            bail!("namespace {ns} was not deleted within 120 s");
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    Ok(true)
}

/// Starts `patchloop run` for the demo namespace as a child process.
fn start_controller(args: &DemoArgs) -> anyhow::Result<std::process::Child> {
    let exe = std::env::current_exe().context("locating the patchloop binary")?;
    let log = std::fs::File::create(&args.controller_log)
        .with_context(|| format!("creating {}", args.controller_log.display()))?;
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .context("finding a free port for the controller's metrics")?
        .port();
    let mut cmd = std::process::Command::new(exe);
    cmd.args(["run", "--namespace", &args.namespace])
        .args(["--listen", &format!("127.0.0.1:{port}")])
        // The demo's advisories load within seconds: do not hold back
        // verdicts for long.
        .args(["--grace-period", "30s"])
        .stdin(Stdio::null())
        .stdout(log.try_clone().context("the controller's log")?)
        .stderr(log);
    if let Some(kubeconfig) = &args.kubeconfig {
        cmd.arg("--kubeconfig").arg(kubeconfig);
    }
    if args.keep_controller.is_some() {
        // Its own process group: a Ctrl-C of the demo does not reach it.
        std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
    }
    let child = cmd.spawn().context("starting patchloop run")?;
    heading(&format!(
        "Started the controller (patchloop run, pid {}; log: {}; metrics: http://127.0.0.1:{port}/metrics)",
        child.id(),
        args.controller_log.display()
    ));
    Ok(child)
}

async fn snapshot(client: &kube::Client, ns: &str) -> anyhow::Result<progress::Snapshot> {
    let lp = ListParams::default();
    let workloads = Api::<Workload>::namespaced(client.clone(), ns)
        .list(&lp)
        .await?;
    let templates = Api::<Template>::namespaced(client.clone(), ns)
        .list(&lp)
        .await?;
    let requests = Api::<ChangeRequest>::namespaced(client.clone(), ns)
        .list(&lp)
        .await?;
    let policies = Api::<PatchPolicy>::namespaced(client.clone(), ns)
        .list(&lp)
        .await?;
    let jobs = Api::<Job>::namespaced(client.clone(), ns)
        .list(&ListParams::default().labels(&format!("{MANAGED_BY_LABEL}={MANAGED_BY}")))
        .await?;
    Ok(progress::snapshot(
        &workloads.items,
        &templates.items,
        &requests.items,
        &policies.items,
        &jobs.items,
    ))
}

/// The approval command the demo prints (and runs, when asked to).
fn approve_args(args: &DemoArgs, request: &str) -> Vec<String> {
    let mut v = vec![
        "approve".to_owned(),
        request.to_owned(),
        "-n".to_owned(),
        args.namespace.clone(),
        "--reason".to_owned(),
        "demo: rebuild reviewed".to_owned(),
    ];
    if let Some(k) = &args.kubeconfig {
        v.push("--kubeconfig".to_owned());
        v.push(k.display().to_string());
    }
    v
}

fn shell_quote(arg: &str) -> String {
    if arg
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || "-_./:=@".contains(c))
    {
        arg.to_owned()
    } else {
        format!("'{}'", arg.replace('\'', r"'\''"))
    }
}

async fn run_approve(args: &DemoArgs, request: &str) -> anyhow::Result<()> {
    let exe = std::env::current_exe().context("locating the patchloop binary")?;
    let status = tokio::process::Command::new(exe)
        .args(approve_args(args, request))
        .status()
        .await
        .context("running patchloop approve")?;
    if !status.success() {
        bail!("patchloop approve {request} failed ({status})");
    }
    Ok(())
}

/// Spawns a task per new Patchloop Job that plays its executor, reporting
/// what it did on `done`.
fn play_new_jobs(
    executor: &Executor,
    jobs: &[String],
    seen: &mut BTreeSet<String>,
    done: &mpsc::UnboundedSender<(String, anyhow::Result<Played>)>,
    api: &Api<Job>,
) {
    for name in jobs {
        if !seen.insert(name.clone()) {
            continue;
        }
        let (executor, api, done, name) =
            (executor.clone(), api.clone(), done.clone(), name.clone());
        tokio::spawn(async move {
            let result = match api.get(&name).await {
                Ok(job) => executor.play(&job).await,
                Err(e) => Err(anyhow::Error::from(e).context(format!("reading Job {name}"))),
            };
            let _ = done.send((name, result));
        });
    }
}

async fn demo(args: &DemoArgs) -> anyhow::Result<ExitCode> {
    let conn = super::connect::connect(args.kubeconfig.as_deref()).await?;
    let client = conn.client;
    let ns = args.namespace.as_str();
    heading(&format!(
        "Patchloop demo in namespace {ns} (the cluster your kubeconfig names)"
    ));
    let n = install_crds(&client).await?;
    heading(&format!("Installed the {n} CustomResourceDefinitions"));

    if reset_namespace(&client, ns).await? {
        heading(&format!(
            "Removed the previous run's namespace {ns}: the demo starts afresh"
        ));
    }
    let mut manifests = fleet::load_dir(&args.fleet)?;
    fleet::stamp(&mut manifests, jiff::Timestamp::now())?;
    let advisories = fleet::load_advisories(&args.advisories)?;
    fleet::apply(&client, ns, &manifests).await?;
    fleet::load_feeds(&client, ns, &advisories).await?;
    let count = |kind: &str| manifests.iter().filter(|m| m.kind == kind).count();
    heading(&format!(
        "Applied the example fleet from {}: {} PatchPolicies, {} PatchException, {} Workloads, \
         {} Templates, {} Inventories",
        args.fleet.display(),
        count("PatchPolicy"),
        count("PatchException"),
        count("Workload"),
        count("Template"),
        count("Inventory"),
    ));
    heading(&format!(
        "Loaded {} real OSV records{} from {} into ConfigMaps read by AdvisoryFeeds {} and {}",
        advisories.osv.len(),
        if advisories.kev.is_some() {
            " and the CISA KEV catalog"
        } else {
            ""
        },
        args.advisories.display(),
        fleet::OSV_FEED,
        fleet::KEV_FEED,
    ));

    let mut controller = start_controller(args)?;
    let result = watch(args, &client).await;
    match &args.keep_controller {
        Some(pidfile) => {
            std::fs::write(pidfile, format!("{}\n", controller.id()))
                .with_context(|| format!("writing {}", pidfile.display()))?;
            heading(&format!(
                "The controller keeps running (pid {}, log {})",
                controller.id(),
                args.controller_log.display()
            ));
        }
        None => {
            let _ = controller.kill();
            let _ = controller.wait();
        }
    }
    let fleet_report = super::report::fleet_report(&client, Some(ns)).await?;
    heading("The fleet report (patchloop report):");
    print!("{}", report::render_table(&fleet_report));
    result?;
    Ok(ExitCode::SUCCESS)
}

/// Plays the executors and shows progress until the scenario is over.
async fn watch(args: &DemoArgs, client: &kube::Client) -> anyhow::Result<()> {
    let ns = args.namespace.as_str();
    heading(&format!(
        "SIMULATION: this control plane has no kubelet, so no Job's container runs. The demo plays \
         each Job's executor through the job contract: a remediation Job \"installs\" the fixed \
         versions after {} s and reports the Workload's new Inventory; a build Job reports the \
         rebuilt image's Inventory; a test Job passes. Everything else is the real controller.",
        args.job_seconds
    ));
    let clock = Clock(Instant::now());
    let executor = Executor::new(client.clone(), ns, Duration::from_secs(args.job_seconds));
    let jobs_api: Api<Job> = Api::namespaced(client.clone(), ns);
    let (done_tx, mut done_rx) = mpsc::unbounded_channel();
    let (enter_tx, mut enter_rx) = mpsc::unbounded_channel::<()>();
    let interactive = std::io::stdin().is_terminal() && !args.approve;
    if interactive {
        std::thread::spawn(move || {
            let mut line = String::new();
            while std::io::stdin().read_line(&mut line).is_ok_and(|n| n > 0) {
                if enter_tx.send(()).is_err() {
                    break;
                }
                line.clear();
            }
        });
    }
    let mut seen_jobs = BTreeSet::new();
    let mut prompted = BTreeSet::new();
    let mut before = progress::Snapshot::default();
    let mut last_line = Instant::now();
    let deadline = Instant::now() + Duration::from_secs(args.timeout);
    loop {
        let now = snapshot(client, ns).await?;
        play_new_jobs(
            &executor,
            &now.running_jobs,
            &mut seen_jobs,
            &done_tx,
            &jobs_api,
        );
        while let Ok((job, result)) = done_rx.try_recv() {
            match result {
                Ok(Played::Remediated { workload, upgraded }) => clock.say(&format!(
                    "(simulated) Job {job}: upgraded {upgraded} package(s) on {workload}, reported its Inventory, exited 0"
                )),
                Ok(Played::Built { template, image }) => clock.say(&format!(
                    "(simulated) Job {job}: rebuilt {template} as {image}, reported its Inventory, exited 0"
                )),
                Ok(Played::Tested { template }) => clock.say(&format!(
                    "(simulated) Job {job}: the rebuilt {template} passed its tests, exited 0"
                )),
                Err(e) => clock.say(&format!("(simulated) Job {job}: the executor failed: {e:#}")),
            }
            last_line = Instant::now();
        }
        for line in progress::changes(&before, &now) {
            clock.say(&line);
            last_line = Instant::now();
        }
        for (name, request) in progress::awaiting_approval(&now) {
            if prompted.insert(name.to_owned()) {
                let command: Vec<String> = std::iter::once("patchloop".to_owned())
                    .chain(approve_args(args, name))
                    .map(|a| shell_quote(&a))
                    .collect();
                clock.say(&format!(
                    "changerequest {name} waits for a person: PatchPolicy {} requires approval \
                     to rebuild template {} ({} advisories, {} packages; see `kubectl get \
                     changerequest {name} -n {ns} -o yaml`). Approve it with:\n\n    {}\n",
                    request.policy.as_deref().unwrap_or("?"),
                    request.template,
                    request.advisories,
                    request.packages,
                    command.join(" ")
                ));
                if args.approve {
                    clock.say("--approve: running that command now");
                    run_approve(args, name).await?;
                } else if interactive {
                    clock.say(
                        "(run it in another terminal, or press Enter and the demo runs it for you)",
                    );
                } else {
                    clock.say("(waiting for someone to run it)");
                }
                last_line = Instant::now();
            }
        }
        if enter_rx.try_recv().is_ok() {
            for (name, _) in progress::awaiting_approval(&now) {
                clock.say(&format!("running patchloop approve {name}"));
                run_approve(args, name).await?;
            }
        }
        if progress::finished(&now) {
            clock.say(&progress::summary(&now));
            heading(&format!(
                "Done in {} s: every live workload is compliant or exempt as its policy says, \
                 both templates were rebuilt, tested and published, and the workloads provisioned \
                 from the old revisions are flagged as stale.",
                clock.0.elapsed().as_secs()
            ));
            return Ok(());
        }
        if last_line.elapsed() >= Duration::from_secs(10) {
            let waiting: Vec<&str> = progress::awaiting_approval(&now)
                .into_iter()
                .map(|(name, _)| name)
                .collect();
            if waiting.is_empty() {
                clock.say(&progress::summary(&now));
            } else {
                clock.say(&format!(
                    "{} | waiting for the approval of changerequest {}",
                    progress::summary(&now),
                    waiting.join(", ")
                ));
            }
            last_line = Instant::now();
        }
        if Instant::now() >= deadline {
            clock.say(&progress::summary(&now));
            bail!(
                "the demo did not finish within {} s; see the controller log {} and \
                 `kubectl get patchloop -n {ns}`",
                args.timeout,
                args.controller_log.display()
            );
        }
        before = now;
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}
