//! Starting etcd + kube-apiserver + kube-controller-manager (Kubernetes 1.20.2) on free loopback
//! ports in a scratch directory. Runs on a thread of its own; processes are spawned through the
//! supervisor thread of `process.rs`.

use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::ServiceAccount;
use kube::Api;

use super::node::{self, Credentials, Network, Node};
use super::process::{self, ManagedChild};
use super::{crds, kubeconfig};

pub const K8S_VERSION: &str = "1.20.2";
const SCRATCH_PREFIX: &str = "patchloop-testenv-";
const ATTEMPTS: usize = 3;
const ETCD_TIMEOUT: Duration = Duration::from_secs(30);
const APISERVER_TIMEOUT: Duration = Duration::from_secs(120);
const READYZ_REQUEST_TIMEOUT: Duration = Duration::from_secs(3);
const CONTROLLER_MANAGER_TIMEOUT: Duration = Duration::from_secs(90);
pub const SERVICE_ACCOUNT_ISSUER: &str = "https://kubernetes.default.svc.cluster.local";
pub const SERVICE_CLUSTER_IP_RANGE: &str = "10.0.0.0/24";
pub const ADMIN_USER: &str = "patchloop-admin";

/// Where the binaries are, from `scripts/testenv.sh --print-env` or the same defaults.
#[derive(Debug, Clone)]
pub struct Binaries {
    pub k8s_bin: PathBuf,
    pub etcd: PathBuf,
    pub kube_apiserver: PathBuf,
    pub kube_controller_manager: PathBuf,
}

fn non_empty_env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

impl Binaries {
    pub fn locate() -> Result<Binaries, String> {
        let k8s_bin = non_empty_env("PATCHLOOP_K8S_BIN")
            .map(PathBuf::from)
            .unwrap_or_else(|| {
                let cache = non_empty_env("PATCHLOOP_CACHE")
                    .map(PathBuf::from)
                    .unwrap_or_else(|| {
                        let xdg = non_empty_env("XDG_CACHE_HOME")
                            .map(PathBuf::from)
                            .unwrap_or_else(|| {
                                PathBuf::from(non_empty_env("HOME").unwrap_or_default())
                                    .join(".cache")
                            });
                        xdg.join("patchloop")
                    });
                cache.join(format!("k8s-{K8S_VERSION}")).join("bin")
            });
        let bins = Binaries {
            etcd: non_empty_env("PATCHLOOP_ETCD")
                .map(PathBuf::from)
                .unwrap_or_else(|| PathBuf::from("/usr/bin/etcd")),
            kube_apiserver: k8s_bin.join("kube-apiserver"),
            kube_controller_manager: k8s_bin.join("kube-controller-manager"),
            k8s_bin,
        };
        let missing: Vec<String> = [
            &bins.etcd,
            &bins.kube_apiserver,
            &bins.kube_controller_manager,
        ]
        .into_iter()
        .filter(|p| !p.is_file())
        .map(|p| p.display().to_string())
        .collect();
        if missing.is_empty() {
            Ok(bins)
        } else {
            Err(format!(
                "the Kubernetes {K8S_VERSION} test control plane is not installed: missing {}.\n\
                 Run `make testenv` (or `scripts/testenv.sh`; the first run builds Kubernetes, \
                 about 5 minutes) and, if you used custom locations, \
                 `eval \"$(scripts/testenv.sh --print-env)\"` before `cargo test`.",
                missing.join(", ")
            ))
        }
    }
}

/// What `start` produced; wrapped by `super::TestEnv`.
pub struct Started {
    pub dir: PathBuf,
    pub kubeconfig: PathBuf,
    pub server: String,
    pub ca_file: PathBuf,
    pub admin_token: String,
    pub installed_crds: Vec<String>,
    pub startup: Duration,
    pub processes: Vec<ManagedChild>,
    pub node: Option<Node>,
}

/// Base directory for scratch dirs: tmpfs if available (etcd fsyncs a lot), else $TMPDIR.
fn scratch_base() -> PathBuf {
    if let Some(dir) = non_empty_env("PATCHLOOP_TESTENV_TMPDIR") {
        return PathBuf::from(dir);
    }
    let shm = Path::new("/dev/shm");
    if shm.is_dir()
        && std::fs::metadata(shm).is_ok_and(|m| !m.permissions().readonly())
        && std::fs::write(shm.join(".patchloop-probe"), b"").is_ok()
    {
        let _ = std::fs::remove_file(shm.join(".patchloop-probe"));
        return shm.to_path_buf();
    }
    std::env::temp_dir()
}

/// Serving certificate (self-signed, not a CA so that rustls accepts it as the end entity too)
/// and the service-account key pair, all ECDSA P-256 (fast to generate). With a node, the
/// certificate also names the `kubernetes` Service's address (in-cluster clients) and the
/// node's.
fn make_keys(dir: &Path, network: Option<&Network>) -> Result<(), String> {
    let mut names = "subjectAltName=IP:127.0.0.1,DNS:localhost".to_owned();
    if let Some(network) = network {
        names.push_str(&format!(
            ",IP:{},IP:{},DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local",
            network.service_ip(),
            network.node_ip()
        ));
    }
    process::run(
        Command::new("openssl")
            .args(["req", "-x509", "-newkey", "ec", "-pkeyopt"])
            .args(["ec_paramgen_curve:prime256v1", "-nodes", "-days", "30"])
            .args(["-subj", "/CN=patchloop-testenv"])
            .args(["-addext", &names])
            .args(["-addext", "basicConstraints=critical,CA:FALSE"])
            .args(["-addext", "extendedKeyUsage=serverAuth"])
            .arg("-keyout")
            .arg(dir.join("serving.key"))
            .arg("-out")
            .arg(dir.join("serving.crt")),
    )?;
    process::run(
        Command::new("openssl")
            .args([
                "ecparam",
                "-name",
                "prime256v1",
                "-genkey",
                "-noout",
                "-out",
            ])
            .arg(dir.join("sa.key")),
    )?;
    process::run(
        Command::new("openssl")
            .args(["ec", "-pubout", "-in"])
            .arg(dir.join("sa.key"))
            .arg("-out")
            .arg(dir.join("sa.pub")),
    )?;
    Ok(())
}

/// Distinct free loopback ports (all bound at once, then released).
fn free_ports(n: usize) -> Result<Vec<u16>, String> {
    let listeners = (0..n)
        .map(|_| TcpListener::bind("127.0.0.1:0"))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("cannot bind a free loopback port: {e}"))?;
    listeners
        .iter()
        .map(|l| l.local_addr().map(|a| a.port()))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("cannot read a bound port: {e}"))
}

fn spawn_logged(name: &str, mut cmd: Command, log: &Path) -> Result<ManagedChild, String> {
    // etcd reads ETCD_* variables; don't let a developer's environment leak in.
    for (key, _) in std::env::vars_os() {
        if key.to_str().is_some_and(|k| k.starts_with("ETCD_")) {
            cmd.env_remove(key);
        }
    }
    process::spawn_logged(name, cmd, log)
}

/// One running process with its log, for failure reports.
struct Proc {
    child: ManagedChild,
    log: PathBuf,
}

fn failure_report(procs: &mut [Proc], reason: &str) -> String {
    let mut msg = format!("{reason}\n");
    for p in procs.iter_mut() {
        let state = match p.child.try_wait() {
            Ok(Some(status)) => format!("exited: {status}"),
            Ok(None) => "running".to_string(),
            Err(e) => format!("unknown: {e}"),
        };
        msg.push_str(&format!(
            "----- {} ({state}), last lines of {} -----\n{}\n",
            p.child.name(),
            p.log.display(),
            process::tail(&p.log, 40)
        ));
    }
    msg
}

fn check_alive(procs: &mut [Proc]) -> Result<(), String> {
    for i in 0..procs.len() {
        if let Ok(Some(status)) = procs[i].child.try_wait() {
            let name = procs[i].child.name().to_string();
            return Err(failure_report(
                procs,
                &format!("{name} exited early ({status})"),
            ));
        }
    }
    Ok(())
}

fn etcd_healthy(port: u16) -> bool {
    use std::io::{Read, Write};
    let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    if s.write_all(b"GET /health HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
        .is_err()
    {
        return false;
    }
    let mut resp = String::new();
    let _ = s.read_to_string(&mut resp);
    resp.contains("\"health\":\"true\"")
}

pub struct Options {
    pub install_crds: bool,
    /// Also start a real node (`node.rs`): kubelet, kube-scheduler, containerd.
    pub node: bool,
}

/// What a node adds to the control plane, made before the apiserver starts.
struct NodePlan {
    network: Network,
    credentials: Credentials,
}

/// Why an attempt failed: a process did not come up (worth retrying with new ports), or
/// something that would fail the same way again (e.g. the apiserver rejects a CRD).
enum Failure {
    Retry(String),
    Fatal(String),
}

impl From<String> for Failure {
    fn from(msg: String) -> Failure {
        Failure::Retry(msg)
    }
}

/// Starts a control plane, retrying with fresh ports if a process does not come up.
pub fn start(opts: Options) -> Result<Started, String> {
    let began = Instant::now();
    let bins = Binaries::locate()?;
    let base = scratch_base();
    node::sweep_stale_nodes();
    process::sweep_stale_scratch_dirs(&base, SCRATCH_PREFIX);
    let dir = process::create_scratch_dir(&base, SCRATCH_PREFIX)
        .map_err(|e| format!("cannot create a scratch dir in {}: {e}", base.display()))?;
    let node_plan = if opts.node {
        Some(NodePlan {
            network: Network::allocate(&dir.join("node"))?,
            credentials: Credentials::create(&dir.join("node-credentials"))?,
        })
    } else {
        None
    };
    make_keys(&dir, node_plan.as_ref().map(|p| &p.network))?;
    let admin_token = process::random_hex(24);
    let tokens = dir.join("tokens.csv");
    let mut token_lines = format!("{admin_token},{ADMIN_USER},{ADMIN_USER},\"system:masters\"\n");
    if let Some(plan) = &node_plan {
        token_lines.push_str(&plan.credentials.token_line(&plan.network));
    }
    std::fs::write(&tokens, token_lines)
        .map_err(|e| format!("cannot write {}: {e}", tokens.display()))?;
    let crd_manifests = if opts.install_crds {
        crds::manifests()?
    } else {
        Vec::new()
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot build a tokio runtime: {e}"))?;

    let mut errors = Vec::new();
    for attempt in 1..=ATTEMPTS {
        match try_start(
            &runtime,
            &bins,
            &dir,
            attempt,
            &admin_token,
            &crd_manifests,
            node_plan.as_ref(),
        ) {
            Ok(Attempt {
                server,
                kubeconfig,
                processes,
                installed_crds,
                mut phases,
                apiserver_port,
            }) => {
                let node = match &node_plan {
                    None => None,
                    Some(plan) => {
                        let node = node::start(
                            &runtime,
                            plan.network,
                            &plan.credentials,
                            &dir.join("node"),
                            &node::ControlPlane {
                                k8s_bin: &bins.k8s_bin,
                                kubeconfig: &kubeconfig,
                                server: &server,
                                ca_file: &dir.join("serving.crt"),
                                apiserver_port,
                            },
                        )
                        .map_err(|e| format!("cannot start the test node: {e}"))?;
                        phases.push_str(&format!(
                            ", node {} {:.1}s",
                            node.network.node_name(),
                            node.startup.as_secs_f64()
                        ));
                        Some(node)
                    }
                };
                let startup = began.elapsed();
                eprintln!(
                    "testenv: Kubernetes {K8S_VERSION} control plane up at {server} in {:.1}s \
                     ({phases}; {} CRDs, attempt {attempt}, dir {})",
                    startup.as_secs_f64(),
                    installed_crds.len(),
                    dir.display()
                );
                return Ok(Started {
                    ca_file: dir.join("serving.crt"),
                    dir,
                    kubeconfig,
                    server,
                    admin_token,
                    installed_crds,
                    startup,
                    processes,
                    node,
                });
            }
            Err(Failure::Fatal(e)) => {
                return Err(format!("cannot start the test control plane: {e}"));
            }
            Err(Failure::Retry(e)) => {
                eprintln!(
                    "testenv: attempt {attempt}/{ATTEMPTS} to start the control plane failed:\n{e}"
                );
                errors.push(format!("attempt {attempt}: {e}"));
            }
        }
    }
    Err(format!(
        "the test control plane did not start after {ATTEMPTS} attempts:\n{}",
        errors.join("\n")
    ))
}

struct Attempt {
    server: String,
    kubeconfig: PathBuf,
    processes: Vec<ManagedChild>,
    installed_crds: Vec<String>,
    /// "etcd 0.4s, kube-apiserver 5.0s, ..." for the start message.
    phases: String,
    apiserver_port: u16,
}

/// Appends "<name> <elapsed since *since>s" to `phases` and restarts the clock.
fn phase(phases: &mut String, name: &str, since: &mut Instant) {
    if !phases.is_empty() {
        phases.push_str(", ");
    }
    phases.push_str(&format!("{name} {:.1}s", since.elapsed().as_secs_f64()));
    *since = Instant::now();
}

fn try_start(
    runtime: &tokio::runtime::Runtime,
    bins: &Binaries,
    dir: &Path,
    attempt: usize,
    admin_token: &str,
    crd_manifests: &[serde_json::Value],
    node_plan: Option<&NodePlan>,
) -> Result<Attempt, Failure> {
    let run_dir = dir.join(format!("attempt-{attempt}"));
    std::fs::create_dir_all(run_dir.join("etcd"))
        .map_err(|e| format!("cannot create {}: {e}", run_dir.display()))?;
    let ports = free_ports(3)?;
    let (etcd_client, etcd_peer, apiserver_port) = (ports[0], ports[1], ports[2]);
    let mut procs: Vec<Proc> = Vec::new();
    let mut phases = String::new();
    let mut clock = Instant::now();

    // etcd
    let mut etcd = Command::new(&bins.etcd);
    let client_url = format!("http://127.0.0.1:{etcd_client}");
    let peer_url = format!("http://127.0.0.1:{etcd_peer}");
    etcd.arg("--name=testenv")
        .arg(format!("--data-dir={}", run_dir.join("etcd").display()))
        .arg(format!("--listen-client-urls={client_url}"))
        .arg(format!("--advertise-client-urls={client_url}"))
        .arg(format!("--listen-peer-urls={peer_url}"))
        .arg(format!("--initial-advertise-peer-urls={peer_url}"))
        .arg(format!("--initial-cluster=testenv={peer_url}"))
        .arg("--initial-cluster-state=new")
        .arg("--logger=zap")
        .arg("--log-level=warn");
    let log = run_dir.join("etcd.log");
    procs.push(Proc {
        child: spawn_logged("etcd", etcd, &log)?,
        log,
    });
    let deadline = Instant::now() + ETCD_TIMEOUT;
    while !etcd_healthy(etcd_client) {
        check_alive(&mut procs)?;
        if Instant::now() >= deadline {
            return Err(failure_report(
                &mut procs,
                &format!("etcd not healthy within {ETCD_TIMEOUT:?}"),
            )
            .into());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    phase(&mut phases, "etcd", &mut clock);

    // kube-apiserver
    let server = format!("https://127.0.0.1:{apiserver_port}");
    let kubeconfig = run_dir.join("kubeconfig");
    kubeconfig::write(
        &kubeconfig,
        &server,
        &dir.join("serving.crt"),
        ADMIN_USER,
        admin_token,
        None,
    )?;
    let mut apiserver = Command::new(&bins.kube_apiserver);
    apiserver
        .arg(format!("--etcd-servers={client_url}"))
        .arg("--bind-address=127.0.0.1")
        .arg("--advertise-address=127.0.0.1")
        .arg(format!("--secure-port={apiserver_port}"))
        .arg("--insecure-port=0")
        .arg(format!("--cert-dir={}", run_dir.join("certs").display()))
        .arg(format!(
            "--tls-cert-file={}",
            dir.join("serving.crt").display()
        ))
        .arg(format!(
            "--tls-private-key-file={}",
            dir.join("serving.key").display()
        ))
        .arg(format!(
            "--token-auth-file={}",
            dir.join("tokens.csv").display()
        ))
        // With a node, also Node authorization (and NodeRestriction admission), as in any
        // cluster with kubelets.
        .arg(if node_plan.is_some() {
            "--authorization-mode=Node,RBAC"
        } else {
            "--authorization-mode=RBAC"
        })
        .arg(format!(
            "--service-account-key-file={}",
            dir.join("sa.pub").display()
        ))
        .arg(format!(
            "--service-account-signing-key-file={}",
            dir.join("sa.key").display()
        ))
        .arg(format!("--service-account-issuer={SERVICE_ACCOUNT_ISSUER}"))
        .arg(format!(
            "--service-cluster-ip-range={}",
            node_plan.map_or(SERVICE_CLUSTER_IP_RANGE.to_owned(), |p| p
                .network
                .service_cidr())
        ))
        .arg("--allow-privileged=true")
        .arg("--profiling=false")
        .arg("--v=1");
    if let Some(plan) = node_plan {
        apiserver.args(plan.credentials.apiserver_args());
    }
    let log = run_dir.join("kube-apiserver.log");
    procs.push(Proc {
        child: spawn_logged("kube-apiserver", apiserver, &log)?,
        log,
    });

    let result = runtime.block_on(async {
        let client = kubeconfig::client(&kubeconfig, None)
            .await
            .map_err(|e| failure_report(&mut procs, &e))?;
        let deadline = Instant::now() + APISERVER_TIMEOUT;
        loop {
            check_alive(&mut procs)?;
            let req = http::Request::get("/readyz")
                .body(Vec::new())
                .map_err(|e| format!("cannot build the /readyz request: {e}"))?;
            // Bounded: if another process took the port, a request may hang rather than fail.
            let last = match tokio::time::timeout(READYZ_REQUEST_TIMEOUT, client.request_text(req))
                .await
            {
                Ok(Ok(body)) if body.trim() == "ok" => break,
                Ok(Ok(body)) => body,
                Ok(Err(e)) => e.to_string(),
                Err(_) => format!("no answer within {READYZ_REQUEST_TIMEOUT:?}"),
            };
            if Instant::now() >= deadline {
                return Err(failure_report(
                    &mut procs,
                    &format!(
                        "kube-apiserver not ready within {APISERVER_TIMEOUT:?} (last /readyz: {last})"
                    ),
                ).into());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        phase(&mut phases, "kube-apiserver", &mut clock);

        // CRDs first: the controller manager's garbage collector discovers new kinds only about
        // every 30 s.
        let installed = crds::install(&client, crd_manifests)
            .await
            .map_err(Failure::Fatal)?;
        phase(&mut phases, "CRDs", &mut clock);

        // kube-controller-manager (resourcequota: the README's object-count quotas on
        // Patchloop's kinds are tested, and admission enforces a quota only once this
        // controller has computed its usage)
        // With a node: nodelifecycle removes the not-ready taint (else nothing is scheduled);
        // the workload controllers (Deployments, ReplicaSets, DaemonSets), PodDisruptionBudgets,
        // Endpoints, podgc and ttl do what they do in any cluster.
        let controllers = if node_plan.is_some() {
            "garbagecollector,job,namespace,resourcequota,serviceaccount,serviceaccount-token,daemonset,nodelifecycle,podgc,ttl,deployment,replicaset,disruption,endpoint"
        } else {
            "garbagecollector,job,namespace,resourcequota,serviceaccount,serviceaccount-token"
        };
        let mut kcm = Command::new(&bins.kube_controller_manager);
        kcm.arg(format!("--kubeconfig={}", kubeconfig.display()))
            .arg(format!("--controllers={controllers}"))
            .arg(format!(
                "--service-account-private-key-file={}",
                dir.join("sa.key").display()
            ))
            .arg(format!("--root-ca-file={}", dir.join("serving.crt").display()))
            .arg("--leader-elect=false")
            .arg("--use-service-account-credentials=false")
            .arg("--port=0")
            .arg("--secure-port=0")
            .arg("--profiling=false")
            .arg("--v=1");
        let log = run_dir.join("kube-controller-manager.log");
        procs.push(Proc {
            child: spawn_logged("kube-controller-manager", kcm, &log)?,
            log,
        });

        // It works once the "default" ServiceAccount of "default" has its token secret.
        let sas: Api<ServiceAccount> = Api::namespaced(client.clone(), "default");
        let deadline = Instant::now() + CONTROLLER_MANAGER_TIMEOUT;
        loop {
            check_alive(&mut procs)?;
            if let Ok(Some(sa)) = sas.get_opt("default").await
                && sa.secrets.as_ref().is_some_and(|s| !s.is_empty())
            {
                break;
            }
            if Instant::now() >= deadline {
                return Err(failure_report(
                    &mut procs,
                    &format!(
                        "kube-controller-manager did not create the token of default/default \
                         within {CONTROLLER_MANAGER_TIMEOUT:?}"
                    ),
                ).into());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        phase(&mut phases, "kube-controller-manager", &mut clock);
        Ok::<_, Failure>(installed)
    });
    // On failure, dropping `procs` kills and reaps this attempt's processes.
    let installed_crds = result?;
    Ok(Attempt {
        server,
        kubeconfig,
        processes: procs.into_iter().map(|p| p.child).collect(),
        installed_crds,
        phases,
        apiserver_port,
    })
}
