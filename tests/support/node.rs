//! A real node beside the test control plane: Debian's containerd and runc, Debian's CNI
//! plugins, and a kubelet and kube-scheduler built from the same Kubernetes 1.20.2 source as
//! the apiserver (`scripts/testenv.sh`). Pods really run, from images imported from local
//! tarballs (`scripts/node-images.sh`); nothing is ever pulled from a registry.
//!
//! Network: a node owns a *slot* N (1–250), taken by creating its bridge `plbrN`. On it, inside
//! 198.18.0.0/15 (the benchmarking range, never a real network):
//! * `198.18.N.1/24`: the node's address (the kubelet refuses a loopback one) and the Pods'
//!   gateway; Pods get 198.18.N.10–199; 198.18.N.200–249 are left to test machines;
//! * `198.19.N.0/24`: the control plane's Service range, so `198.19.N.1` is the `kubernetes`
//!   Service's ClusterIP; the harness puts that address on the bridge and a `socat` forwards
//!   its port 443 to the apiserver's loopback port. That is how in-cluster clients reach the
//!   API: what kube-proxy does, in user space, without iptables or NAT. The serving
//!   certificate names the address.
//! * Pods get a route to 198.19.N.0/24 only: no default route, no NAT (`ipMasq: false`), and the
//!   test machines have no route beyond the bridge, so nothing either sends leaves this machine.
//!   (The CNI bridge plugin turns the host's `ip_forward` on while the node runs, as it does for
//!   any gateway bridge; teardown restores it.)
//!
//! Everything else lives in the node's directory inside the control plane's scratch directory
//! (containerd's root, state and socket, runc's root, CNI configuration and IPAM, the kubelet's
//! root). Teardown — at exit, before the processes are killed, or by the next start when a test
//! binary was killed outright — stops the containers with runc, unmounts what is under the
//! node's directory, removes its cgroups, its bridge and what the kubelet writes to fixed host
//! paths, and restores the host sysctls the node rewrites. [`Teardown::leftovers`] checks it.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Node as KubeNode;
use kube::Api;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::kubeconfig;
use super::process::{self, ManagedChild};

pub const PAUSE_IMAGE: &str = "localhost/pause:3.4.1";
/// Debian 12 with bash, jq, openssh-client and ca-certificates.
pub const DEBIAN_IMAGE: &str = "localhost/debian:12";
/// The `kubelet` user's groups: what the Node authorizer recognises.
const NODE_GROUP: &str = "system:nodes";
/// Where node records live, one per bridge: found by the next start if a test binary is killed.
const RECORDS: &str = "/run/patchloop-node";
const READY_TIMEOUT: Duration = Duration::from_secs(120);
/// The host sysctls a node rewrites: the 1.20 kubelet's at start-up, and `ip_forward`, which
/// the CNI bridge plugin turns on for a gateway bridge (`isGateway`).
const NODE_SYSCTLS: &[&str] = &[
    "net/ipv4/ip_forward",
    "vm/overcommit_memory",
    "vm/panic_on_oom",
    "kernel/panic",
    "kernel/panic_on_oops",
    "kernel/keys/root_maxkeys",
    "kernel/keys/root_maxbytes",
];
/// Host paths the 1.20 kubelet and containerd write outside any directory given to them.
const POD_LOGS: &str = "/var/log/pods";
const CONTAINER_LOGS: &str = "/var/log/containers";
const CNI_RESULTS: &str = "/var/lib/cni/results";
const SHIM_SOCKETS: &str = "/run/containerd/s";
/// Those paths and their parents, deepest first, and what hostPath volumes create: the ones
/// that appear while a node runs are removed again when empty.
const HOST_DIRS: &[&str] = &[
    POD_LOGS,
    CONTAINER_LOGS,
    CNI_RESULTS,
    "/var/lib/cni",
    SHIM_SOCKETS,
    "/run/containerd",
    // The node agent's hostPath mounts of other distributions' databases, which containerd
    // creates empty when missing (deploy/node-agent/README.md, "Host mounts").
    "/lib/apk/db",
    "/lib/apk",
    "/var/lib/rpm",
];
/// The containerd namespace of the CRI plugin.
const CRI_NAMESPACE: &str = "k8s.io";

/// The addresses of one node (see the module doc).
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub struct Network {
    pub slot: u8,
}

impl Network {
    /// Takes the first free slot by creating its bridge (which fails if it exists), with the
    /// node's and the `kubernetes` Service's addresses on it, for a node living in `dir`.
    /// This node's teardown (the latest record of it) runs at exit.
    pub fn allocate(dir: &Path) -> Result<Network, String> {
        for slot in 1..=250u8 {
            let network = Network { slot };
            let bridge = network.bridge();
            let created = Command::new("ip")
                .args(["link", "add", &bridge, "type", "bridge"])
                .stderr(Stdio::null())
                .status()
                .map_err(|e| format!("cannot run ip (iproute2): {e}"))?;
            if !created.success() {
                continue;
            }
            let configured = (|| {
                ip(&[
                    "addr",
                    "add",
                    &format!("{}/24", network.node_ip()),
                    "dev",
                    &bridge,
                ])?;
                ip(&[
                    "addr",
                    "add",
                    &format!("{}/32", network.service_ip()),
                    "dev",
                    &bridge,
                ])?;
                ip(&["link", "set", &bridge, "up"])
            })();
            let teardown = Teardown {
                owner: process::owner_record(),
                network,
                dir: dir.to_path_buf(),
                sysctls: Vec::new(),
                created_host_dirs: Vec::new(),
            };
            let recorded = teardown.record();
            process::at_exit(move || Teardown::recorded(network).unwrap_or(teardown).run());
            configured?;
            recorded?;
            return Ok(network);
        }
        Err("no free node slot: bridges plbr1..plbr250 all exist".to_owned())
    }

    pub fn bridge(&self) -> String {
        format!("plbr{}", self.slot)
    }

    pub fn node_ip(&self) -> Ipv4Addr {
        Ipv4Addr::new(198, 18, self.slot, 1)
    }

    pub fn service_ip(&self) -> Ipv4Addr {
        Ipv4Addr::new(198, 19, self.slot, 1)
    }

    pub fn service_cidr(&self) -> String {
        format!("198.19.{}.0/24", self.slot)
    }

    /// socat's listening address for the `kubernetes` Service.
    fn proxy_listen(&self) -> String {
        format!("TCP-LISTEN:443,bind={},fork,reuseaddr", self.service_ip())
    }

    pub fn node_name(&self) -> String {
        format!("patchloop-node-{}", self.slot)
    }

    fn cgroup_root(&self) -> String {
        format!("patchloop-node-{}", self.slot)
    }

    fn cni_network(&self) -> String {
        format!("patchloop-{}", self.slot)
    }

    /// The `ip link` of this node's bridge, removed by teardown.
    fn delete_bridge(&self) {
        let _ = Command::new("ip")
            .args(["link", "del", &self.bridge()])
            .stderr(Stdio::null())
            .status();
    }
}

fn ip(args: &[&str]) -> Result<(), String> {
    process::run(Command::new("ip").args(args))
}

/// The apiserver flags a node needs, and the node's credentials, made before the apiserver
/// starts: the kubelet's static token and the client certificate the apiserver presents to
/// the kubelet (logs, exec), signed by a CA of the node's own.
pub struct Credentials {
    pub node_token: String,
    pub dir: PathBuf,
}

impl Credentials {
    pub fn create(dir: &Path) -> Result<Credentials, String> {
        std::fs::create_dir_all(dir)
            .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        // Arguments without spaces: each command is one string, split on whitespace.
        let openssl = |args: &str| {
            process::run(
                Command::new("openssl")
                    .args(args.split_whitespace())
                    .current_dir(dir),
            )
        };
        let ec = "-newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes";
        openssl(&format!(
            "req -x509 {ec} -days 30 -subj /CN=patchloop-kubelet-ca \
             -keyout kubelet-ca.key -out kubelet-ca.crt"
        ))?;
        openssl(&format!(
            "req -new {ec} -subj /CN=kube-apiserver-kubelet-client \
             -keyout kubelet-client.key -out kubelet-client.csr"
        ))?;
        openssl(
            "x509 -req -in kubelet-client.csr -CA kubelet-ca.crt -CAkey kubelet-ca.key \
             -CAcreateserial -days 30 -out kubelet-client.crt",
        )?;
        Ok(Credentials {
            node_token: process::random_hex(24),
            dir: dir.to_path_buf(),
        })
    }

    /// The line of the apiserver's static token file for the kubelet of `network`.
    pub fn token_line(&self, network: &Network) -> String {
        let user = format!("system:node:{}", network.node_name());
        format!("{},{user},{user},\"{NODE_GROUP}\"\n", self.node_token)
    }

    /// What the apiserver needs beyond the control plane's own flags (which also take the
    /// node's Service range and Node authorization).
    pub fn apiserver_args(&self) -> Vec<String> {
        vec![
            "--enable-admission-plugins=NodeRestriction".to_owned(),
            format!(
                "--kubelet-client-certificate={}",
                self.dir.join("kubelet-client.crt").display()
            ),
            format!(
                "--kubelet-client-key={}",
                self.dir.join("kubelet-client.key").display()
            ),
            "--kubelet-preferred-address-types=InternalIP".to_owned(),
        ]
    }
}

/// Where the node's binaries and images are (`scripts/testenv.sh --print-env`).
struct Tools {
    kubelet: PathBuf,
    kube_scheduler: PathBuf,
    images: PathBuf,
}

impl Tools {
    fn locate(k8s_bin: &Path) -> Result<Tools, String> {
        let images = std::env::var("PATCHLOOP_NODE_IMAGES")
            .ok()
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
            .unwrap_or_else(|| {
                k8s_bin
                    .parent()
                    .and_then(Path::parent)
                    .unwrap_or(k8s_bin)
                    .join("node-images")
            });
        let tools = Tools {
            kubelet: k8s_bin.join("kubelet"),
            kube_scheduler: k8s_bin.join("kube-scheduler"),
            images,
        };
        let mut missing: Vec<String> = [&tools.kubelet, &tools.kube_scheduler]
            .into_iter()
            .filter(|p| !p.is_file())
            .map(|p| p.display().to_string())
            .collect();
        for image in ["pause-3.4.1.tar", "debian-12.tar"] {
            if !tools.images.join(image).is_file() {
                missing.push(tools.images.join(image).display().to_string());
            }
        }
        for command in ["containerd", "runc", "ctr", "socat", "ip"] {
            if which(command).is_none() {
                missing.push(command.to_owned());
            }
        }
        if !Path::new("/usr/lib/cni/bridge").is_file() {
            missing.push("/usr/lib/cni/bridge".to_owned());
        }
        if missing.is_empty() {
            Ok(tools)
        } else {
            Err(format!(
                "the real test node is not installed: missing {}. Run `make testenv` (or \
                 `scripts/testenv.sh`) as root.",
                missing.join(", ")
            ))
        }
    }
}

fn which(command: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|p| p.join(command))
            .find(|p| p.is_file())
    })
}

/// What teardown needs, also kept in `/run/patchloop-node/<bridge>.json` so that the next
/// start can tear down the node of a test binary that was killed outright.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Teardown {
    owner: String,
    network: Network,
    dir: PathBuf,
    /// The node's sysctls ([`NODE_SYSCTLS`]) as they were before it started.
    sysctls: Vec<(String, String)>,
    /// The fixed host directories that did not exist before (removed again if empty).
    created_host_dirs: Vec<PathBuf>,
}

/// A running node; its processes die with the test binary, its teardown runs at exit.
pub struct Node {
    pub network: Network,
    pub startup: Duration,
    pub dir: PathBuf,
    pub runner_image: String,
    /// `scripts/node-images.sh`'s directory: the images, and the test machines' root,
    /// repository and advisory (`machines.rs`).
    pub images: PathBuf,
    teardown: Teardown,
    processes: Vec<ManagedChild>,
}

/// What the node needs from the control plane.
pub struct ControlPlane<'a> {
    pub k8s_bin: &'a Path,
    pub kubeconfig: &'a Path,
    pub server: &'a str,
    pub ca_file: &'a Path,
    pub apiserver_port: u16,
}

fn record_path(network: &Network) -> PathBuf {
    Path::new(RECORDS).join(format!("{}.json", network.bridge()))
}

fn read_sysctl(name: &str) -> Option<String> {
    std::fs::read_to_string(Path::new("/proc/sys").join(name))
        .ok()
        .map(|v| v.trim().to_owned())
}

/// Starts the node of `network` (allocated before the control plane, whose apiserver has the
/// [`Credentials::apiserver_args`]), waits until it is Ready and untainted, and registers its
/// teardown at exit.
pub fn start(
    runtime: &tokio::runtime::Runtime,
    network: Network,
    credentials: &Credentials,
    dir: &Path,
    cp: &ControlPlane<'_>,
) -> Result<Node, String> {
    let began = Instant::now();
    let tools = Tools::locate(cp.k8s_bin)?;
    std::fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    // Before the kubelet rewrites them.
    let teardown = Teardown {
        owner: process::owner_record(),
        network,
        dir: dir.to_path_buf(),
        sysctls: NODE_SYSCTLS
            .iter()
            .filter_map(|name| read_sysctl(name).map(|v| ((*name).to_owned(), v)))
            .collect(),
        created_host_dirs: HOST_DIRS
            .iter()
            .map(PathBuf::from)
            .filter(|p| !p.exists())
            .collect(),
    };
    teardown.record()?;

    let mut processes = vec![
        process::spawn_logged(
            "kubernetes-service-proxy",
            service_proxy_command(&network, cp.apiserver_port),
            &dir.join("proxy.log"),
        )?,
        process::spawn_logged(
            "kube-scheduler",
            scheduler_command(&tools, dir, cp.kubeconfig)?,
            &dir.join("kube-scheduler.log"),
        )?,
    ];
    let containerd_socket = write_containerd_config(dir, &network)?;
    let mut containerd = Command::new("containerd");
    containerd.arg("--config").arg(dir.join("containerd.toml"));
    processes.push(process::spawn_logged(
        "containerd",
        containerd,
        &dir.join("containerd.log"),
    )?);
    wait_for(
        &format!("containerd at {}", containerd_socket.display()),
        Duration::from_secs(30),
        || ctr(&containerd_socket, &["version"]).is_ok(),
    )?;
    let runner_image = import_images(&tools, &containerd_socket)?;
    create_cgroups(&network.cgroup_root())?;
    let kubelet = kubelet_command(&tools, &network, credentials, dir, cp, &containerd_socket)?;
    processes.push(process::spawn_logged(
        "kubelet",
        kubelet,
        &dir.join("kubelet.log"),
    )?);
    runtime.block_on(wait_until_schedulable(
        &network.node_name(),
        dir,
        cp.kubeconfig,
    ))?;
    Ok(Node {
        network,
        startup: began.elapsed(),
        dir: dir.to_path_buf(),
        runner_image,
        images: tools.images,
        teardown,
        processes,
    })
}

/// The `kubernetes` Service, for in-cluster clients (see the module doc).
fn service_proxy_command(network: &Network, apiserver_port: u16) -> Command {
    let mut proxy = Command::new("socat");
    proxy
        .arg(network.proxy_listen())
        .arg(format!("TCP:127.0.0.1:{apiserver_port}"));
    proxy
}

fn scheduler_command(tools: &Tools, dir: &Path, kubeconfig: &Path) -> Result<Command, String> {
    let mut scheduler = Command::new(&tools.kube_scheduler);
    for flag in [
        "kubeconfig",
        "authentication-kubeconfig",
        "authorization-kubeconfig",
    ] {
        scheduler.arg(format!("--{flag}={}", kubeconfig.display()));
    }
    scheduler
        .arg("--port=0")
        .arg(format!("--secure-port={}", free_port()?))
        .arg("--bind-address=127.0.0.1")
        .arg(format!("--cert-dir={}", dir.join("scheduler").display()))
        .arg("--leader-elect=false")
        .arg("--v=1");
    Ok(scheduler)
}

/// Imports pause, Debian and the runner image of the binary under test; returns the runner's
/// name.
fn import_images(tools: &Tools, containerd_socket: &Path) -> Result<String, String> {
    let runner = runner_image_tarball()?;
    let runner_image = image_name_of(&runner)?;
    for tarball in [
        tools.images.join("pause-3.4.1.tar"),
        tools.images.join("debian-12.tar"),
        runner,
    ] {
        let path = tarball.display().to_string();
        ctr(
            containerd_socket,
            &["images", "import", "--no-unpack", &path],
        )?;
    }
    Ok(runner_image)
}

/// The kubelet, with the node's identity (a static token of `system:node:<name>`).
fn kubelet_command(
    tools: &Tools,
    network: &Network,
    credentials: &Credentials,
    dir: &Path,
    cp: &ControlPlane<'_>,
    containerd_socket: &Path,
) -> Result<Command, String> {
    let kubelet_kubeconfig = dir.join("kubelet.kubeconfig");
    kubeconfig::write(
        &kubelet_kubeconfig,
        cp.server,
        cp.ca_file,
        &format!("system:node:{}", network.node_name()),
        &credentials.node_token,
        None,
    )?;
    let mut kubelet = Command::new(&tools.kubelet);
    // Otherwise the in-tree ECR credential provider probes 169.254.169.254 at start-up.
    kubelet.env("AWS_EC2_METADATA_DISABLED", "true");
    let socket = format!("unix://{}", containerd_socket.display());
    kubelet
        .arg(format!("--kubeconfig={}", kubelet_kubeconfig.display()))
        .arg(format!("--hostname-override={}", network.node_name()))
        .arg(format!("--node-ip={}", network.node_ip()))
        .arg(format!("--address={}", network.node_ip()))
        .arg(format!("--port={}", free_port()?))
        .arg("--read-only-port=0")
        .arg("--healthz-port=0")
        .arg("--anonymous-auth=false")
        .arg(format!(
            "--client-ca-file={}",
            credentials.dir.join("kubelet-ca.crt").display()
        ))
        .arg("--container-runtime=remote")
        .arg(format!("--container-runtime-endpoint={socket}"))
        .arg(format!("--image-service-endpoint={socket}"))
        .arg(format!("--pod-infra-container-image={PAUSE_IMAGE}"))
        .arg("--cgroup-driver=cgroupfs")
        .arg(format!("--cgroup-root=/{}", network.cgroup_root()))
        .arg("--fail-swap-on=false")
        // This VM lacks CAP_SYS_RESOURCE.
        .arg("--oom-score-adj=0")
        .arg(format!("--root-dir={}", dir.join("kubelet").display()))
        .arg(format!("--cert-dir={}", dir.join("kubelet/pki").display()))
        .arg(format!(
            "--volume-plugin-dir={}",
            dir.join("kubelet/volume-plugins").display()
        ))
        .arg("--make-iptables-util-chains=false")
        // Images here can never be pulled again: never collect them.
        .arg("--image-gc-high-threshold=100")
        .arg("--image-gc-low-threshold=99")
        .arg("--eviction-hard=memory.available<100Mi,nodefs.available<1%,imagefs.available<1%")
        .arg("--node-status-update-frequency=2s")
        .arg("--v=1");
    Ok(kubelet)
}

async fn wait_until_schedulable(
    node_name: &str,
    dir: &Path,
    kubeconfig: &Path,
) -> Result<(), String> {
    let client = kubeconfig::client(kubeconfig, None).await?;
    let nodes: Api<KubeNode> = Api::all(client);
    let deadline = Instant::now() + READY_TIMEOUT;
    loop {
        if let Ok(Some(node)) = nodes.get_opt(node_name).await
            && is_schedulable(&node)
        {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(format!(
                "node {node_name} not Ready and untainted within {READY_TIMEOUT:?}; \
                 kubelet log:\n{}",
                process::tail(&dir.join("kubelet.log"), 40)
            ));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn is_schedulable(node: &KubeNode) -> bool {
    let ready = node
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"));
    let tainted = node
        .spec
        .as_ref()
        .and_then(|s| s.taints.as_ref())
        .is_some_and(|t| !t.is_empty());
    ready && !tainted
}

fn free_port() -> Result<u16, String> {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|e| format!("cannot bind a free loopback port: {e}"))
}

fn wait_for(what: &str, timeout: Duration, mut ready: impl FnMut() -> bool) -> Result<(), String> {
    let deadline = Instant::now() + timeout;
    while !ready() {
        if Instant::now() >= deadline {
            return Err(format!("{what} not up within {timeout:?}"));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(())
}

fn ctr(socket: &Path, args: &[&str]) -> Result<(), String> {
    process::run(
        Command::new("ctr")
            .arg("--address")
            .arg(socket)
            .args(["--namespace", CRI_NAMESPACE])
            .args(args),
    )
}

/// containerd's own configuration (never the system's): root, state, socket, runc root and CNI
/// configuration under `dir`. Returns the socket.
fn write_containerd_config(dir: &Path, network: &Network) -> Result<PathBuf, String> {
    let socket = dir.join("containerd.sock");
    let cni_conf = dir.join("cni/net.d");
    std::fs::create_dir_all(&cni_conf)
        .map_err(|e| format!("cannot create {}: {e}", cni_conf.display()))?;
    let slot = network.slot;
    let conflist = serde_json::json!({
        "cniVersion": "0.4.0",
        "name": network.cni_network(),
        "plugins": [{
            "type": "bridge",
            "bridge": network.bridge(),
            "isGateway": true,
            "ipMasq": false,
            "hairpinMode": true,
            "ipam": {
                "type": "host-local",
                "dataDir": dir.join("cni/ipam"),
                "ranges": [[{
                    "subnet": format!("198.18.{slot}.0/24"),
                    "rangeStart": format!("198.18.{slot}.10"),
                    "rangeEnd": format!("198.18.{slot}.199"),
                    "gateway": network.node_ip().to_string(),
                }]],
                // The Service range only: no default route, nothing leaves the machine.
                "routes": [{"dst": network.service_cidr()}],
            },
        }],
    });
    write(
        &cni_conf.join("10-patchloop.conflist"),
        &conflist.to_string(),
    )?;
    let path = |p: &str| dir.join(p).display().to_string();
    let config = format!(
        r#"version = 2
root = "{root}"
state = "{state}"
disabled_plugins = ["io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.zfs"]

[grpc]
  address = "{socket}"

[ttrpc]
  address = "{socket}.ttrpc"

[metrics]
  address = ""

[plugins."io.containerd.internal.v1.opt"]
  path = "{opt}"

[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{PAUSE_IMAGE}"
  netns_mounts_under_state_dir = true
  # This VM lacks CAP_SYS_RESOURCE: without it every sandbox fails to start.
  restrict_oom_score_adj = true
  enable_selinux = false
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
        Root = "{runc}"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "{cni}"
"#,
        root = path("containerd/root"),
        state = path("containerd/state"),
        socket = socket.display(),
        opt = path("containerd/opt"),
        runc = path("runc"),
        cni = cni_conf.display(),
    );
    write(&dir.join("containerd.toml"), &config)?;
    Ok(socket)
}

fn write(path: &Path, contents: &str) -> Result<(), String> {
    std::fs::write(path, contents).map_err(|e| format!("cannot write {}: {e}", path.display()))
}

/// The runner image of the `patchloop` binary under test (`scripts/node-images.sh --runner`,
/// cached by the binary's hash).
fn runner_image_tarball() -> Result<PathBuf, String> {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/node-images.sh");
    let out = Command::new(script)
        .arg("--runner")
        .arg(env!("CARGO_BIN_EXE_patchloop"))
        .stderr(Stdio::inherit())
        .output()
        .map_err(|e| format!("cannot run {script}: {e}"))?;
    if !out.status.success() {
        return Err(format!("{script} --runner failed ({})", out.status));
    }
    Ok(PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()))
}

/// `localhost/runner:<tag>` of `.../runner-<tag>.tar`.
fn image_name_of(tarball: &Path) -> Result<String, String> {
    tarball
        .file_stem()
        .and_then(|s| s.to_str())
        .and_then(|s| s.strip_prefix("runner-"))
        .map(|tag| format!("localhost/runner:{tag}"))
        .ok_or_else(|| format!("not a runner image tarball: {}", tarball.display()))
}

/// The cgroup v1 hierarchies the kubelet uses (`/sys/fs/cgroup/<controller>`), not the
/// unified one.
fn cgroup_hierarchies() -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir("/sys/fs/cgroup") else {
        return Vec::new();
    };
    let mut dirs: Vec<PathBuf> = entries
        .flatten()
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()) && e.file_name() != "unified")
        .map(|e| e.path())
        .collect();
    dirs.sort();
    dirs
}

/// `/sys/fs/cgroup/<controller>/<root>` for every hierarchy (cpuset's with its parent's cpus
/// and mems, which a new cpuset cgroup does not inherit).
fn create_cgroups(root: &str) -> Result<(), String> {
    for hierarchy in cgroup_hierarchies() {
        let dir = hierarchy.join(root);
        std::fs::create_dir_all(&dir)
            .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        if hierarchy.ends_with("cpuset") {
            for file in ["cpuset.cpus", "cpuset.mems"] {
                let parent = std::fs::read_to_string(hierarchy.join(file))
                    .map_err(|e| format!("cannot read the parent's {file}: {e}"))?;
                write(&dir.join(file), parent.trim())?;
            }
        }
    }
    Ok(())
}

/// Removes a cgroup tree depth-first (a cgroup directory goes only once empty of children).
fn remove_cgroup_tree(dir: &Path) {
    if let Ok(entries) = std::fs::read_dir(dir) {
        for entry in entries.flatten() {
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                remove_cgroup_tree(&entry.path());
            }
        }
    }
    let _ = std::fs::remove_dir(dir);
}

/// Mount points at or under `dir`, deepest first.
fn mounts_under(dir: &Path) -> Vec<PathBuf> {
    let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return Vec::new();
    };
    let mut mounts: Vec<PathBuf> = info
        .lines()
        .filter_map(|line| line.split(' ').nth(4))
        .map(|p| PathBuf::from(p.replace("\\040", " ")))
        .filter(|p| p.starts_with(dir))
        .collect();
    mounts.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    mounts.dedup();
    mounts
}

/// SIGKILLs the processes `find` names until it names none (a few seconds at most): a dead
/// process has an empty command line and no root, also as a zombie.
fn kill_all(find: impl Fn() -> Vec<i32>) {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let pids = find();
        if pids.is_empty() || Instant::now() >= deadline {
            return;
        }
        for pid in pids {
            // SAFETY: a signal to a process of this node (found by its command line or root).
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Processes whose root directory (`/proc/<pid>/root`) is under `dir`: the test machines'.
fn processes_rooted_under(dir: &Path) -> Vec<i32> {
    read_dir("/proc")
        .into_iter()
        .filter_map(|e| e.file_name().to_str().and_then(|n| n.parse::<i32>().ok()))
        .filter(|pid| {
            std::fs::read_link(format!("/proc/{pid}/root")).is_ok_and(|root| root.starts_with(dir))
        })
        .collect()
}

/// Processes whose command line mentions `needle` (the node's containerd socket, for the
/// shims containerd starts detached from the test binary).
fn processes_mentioning(needle: &str) -> Vec<i32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str().and_then(|n| n.parse::<i32>().ok()))
        .filter(|pid| *pid != std::process::id() as i32)
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .is_ok_and(|c| String::from_utf8_lossy(&c).contains(needle))
        })
        .collect()
}

impl Teardown {
    /// Writes this teardown where the exit hook and the next start find it.
    fn record(&self) -> Result<(), String> {
        std::fs::create_dir_all(RECORDS).map_err(|e| format!("cannot create {RECORDS}: {e}"))?;
        let record = serde_json::to_vec(self).map_err(|e| e.to_string())?;
        std::fs::write(record_path(&self.network), record)
            .map_err(|e| format!("cannot write the node record: {e}"))
    }

    fn recorded(network: Network) -> Option<Teardown> {
        let bytes = std::fs::read(record_path(&network)).ok()?;
        serde_json::from_slice(&bytes).ok()
    }

    fn containerd_socket(&self) -> PathBuf {
        self.dir.join("containerd.sock")
    }

    fn runc_root(&self) -> PathBuf {
        self.dir.join("runc").join(CRI_NAMESPACE)
    }

    /// The ids of the containers runc knows under this node's root.
    fn containers(&self) -> Vec<String> {
        let out = Command::new("runc")
            .arg("--root")
            .arg(self.runc_root())
            .args(["list", "-q"])
            .stderr(Stdio::null())
            .output();
        out.map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .map(str::to_owned)
                .filter(|l| !l.is_empty())
                .collect()
        })
        .unwrap_or_default()
    }

    /// Stops everything of the node and removes what it left on the host. Idempotent; safe
    /// when the node's processes are already gone.
    pub fn run(&self) {
        let socket = self.containerd_socket().display().to_string();
        // The kubelet first: it would restart containers.
        let kubelet = self.dir.join("kubelet.kubeconfig").display().to_string();
        kill_all(|| processes_mentioning(&kubelet));
        let containers = self.containers();
        for id in &containers {
            let runc = |args: &[&str]| {
                let _ = Command::new("runc")
                    .arg("--root")
                    .arg(self.runc_root())
                    .args(args)
                    .stderr(Stdio::null())
                    .status();
            };
            runc(&["kill", "--all", id, "KILL"]);
            runc(&["delete", "--force", id]);
        }
        // Then every other process of the node: containerd, the scheduler and the shims
        // (detached from the test binary) name the node's directory, the Service proxy its
        // address. A shim's socket is named after the containerd address, the namespace and
        // the sandbox id.
        let (dir, proxy) = (self.dir.display().to_string(), self.network.proxy_listen());
        kill_all(|| processes_mentioning(&dir));
        kill_all(|| processes_mentioning(&proxy));
        // The test machines' sshd, chrooted under the node's directory (`machines.rs`).
        kill_all(|| processes_rooted_under(&self.dir));
        for netns in self.machine_namespaces() {
            let _ = Command::new("ip")
                .args(["netns", "del", &netns])
                .stderr(Stdio::null())
                .status();
        }
        for id in &containers {
            let digest = Sha256::digest(format!("{socket}/{CRI_NAMESPACE}/{id}").as_bytes());
            let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
            let _ = std::fs::remove_file(Path::new(SHIM_SOCKETS).join(hex));
        }
        for _ in 0..3 {
            for mount in mounts_under(&self.dir) {
                if let Ok(c) = std::ffi::CString::new(mount.as_os_str().as_encoded_bytes()) {
                    // SAFETY: a NUL-terminated path; MNT_DETACH unmounts lazily.
                    unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
                }
            }
        }
        for hierarchy in cgroup_hierarchies() {
            remove_cgroup_tree(&hierarchy.join(self.network.cgroup_root()));
        }
        for (name, value) in &self.sysctls {
            let _ = std::fs::write(Path::new("/proc/sys").join(name), value);
        }
        self.network.delete_bridge();
        self.remove_host_files(&containers);
        let _ = std::fs::remove_dir_all(&self.dir);
        let _ = std::fs::remove_file(record_path(&self.network));
        // Only once no other node has a record in it.
        let _ = std::fs::remove_dir(RECORDS);
    }

    /// The Pod log directories of the Pods this kubelet ran (named `<ns>_<pod>_<uid>`), the
    /// container log links into them, and the CNI results of this node's network and of its
    /// sandboxes' loopback (`cni-loopback-<sandbox id>-lo`).
    fn remove_host_files(&self, containers: &[String]) {
        let uids: Vec<String> = std::fs::read_dir(self.dir.join("kubelet/pods"))
            .map(|e| {
                e.flatten()
                    .filter_map(|e| e.file_name().to_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default();
        for entry in read_dir(POD_LOGS) {
            let name = entry.file_name().to_string_lossy().into_owned();
            if uids.iter().any(|uid| name.ends_with(&format!("_{uid}"))) {
                let _ = std::fs::remove_dir_all(entry.path());
            }
        }
        for entry in read_dir(CONTAINER_LOGS) {
            // Dangling once its Pod's log directory is gone.
            if std::fs::metadata(entry.path()).is_err() {
                let _ = std::fs::remove_file(entry.path());
            }
        }
        let prefix = format!("{}-", self.network.cni_network());
        for entry in read_dir(CNI_RESULTS) {
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with(&prefix) || containers.iter().any(|id| name.contains(id.as_str())) {
                let _ = std::fs::remove_file(entry.path());
            }
        }
        for dir in &self.created_host_dirs {
            let _ = std::fs::remove_dir(dir);
        }
    }

    /// The test machines' network namespaces (`plm<slot>-<index>`).
    fn machine_namespaces(&self) -> Vec<String> {
        let prefix = format!("plm{}-", self.network.slot);
        read_dir("/run/netns")
            .into_iter()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with(&prefix))
            .collect()
    }

    /// What of this node is still on the host after [`Teardown::run`]; empty when nothing is.
    pub fn leftovers(&self) -> Vec<String> {
        let mut left = Vec::new();
        for pid in processes_rooted_under(&self.dir) {
            left.push(format!(
                "process {pid} chrooted under {}",
                self.dir.display()
            ));
        }
        for netns in self.machine_namespaces() {
            left.push(format!("network namespace {netns}"));
        }
        for needle in [self.dir.display().to_string(), self.network.proxy_listen()] {
            for pid in processes_mentioning(&needle) {
                left.push(format!("process {pid} mentioning {needle}"));
            }
        }
        for mount in mounts_under(&self.dir) {
            left.push(format!("mount {}", mount.display()));
        }
        for hierarchy in cgroup_hierarchies() {
            let dir = hierarchy.join(self.network.cgroup_root());
            if dir.exists() {
                left.push(format!("cgroup {}", dir.display()));
            }
        }
        for (name, value) in &self.sysctls {
            let now = read_sysctl(name).unwrap_or_default();
            if &now != value {
                left.push(format!("sysctl {name} = {now} (was {value})"));
            }
        }
        if Path::new("/sys/class/net")
            .join(self.network.bridge())
            .exists()
        {
            left.push(format!("bridge {}", self.network.bridge()));
        }
        let prefix = format!("{}-", self.network.cni_network());
        for entry in read_dir(CNI_RESULTS) {
            if entry.file_name().to_string_lossy().starts_with(&prefix) {
                left.push(format!("CNI result {}", entry.path().display()));
            }
        }
        for entry in read_dir(CONTAINER_LOGS) {
            if std::fs::metadata(entry.path()).is_err() {
                left.push(format!("dangling log link {}", entry.path().display()));
            }
        }
        for dir in &self.created_host_dirs {
            if dir.exists() {
                left.push(format!("directory {}", dir.display()));
            }
        }
        if self.dir.exists() {
            left.push(format!("directory {}", self.dir.display()));
        }
        if record_path(&self.network).exists() {
            left.push(format!("record {}", record_path(&self.network).display()));
        }
        left
    }
}

fn read_dir(path: &str) -> Vec<std::fs::DirEntry> {
    std::fs::read_dir(path)
        .map(|e| e.flatten().collect())
        .unwrap_or_default()
}

/// Tears down the nodes of test binaries that died without running their teardown. Call it
/// before their scratch directories are swept: the teardown needs what is in them (runc's
/// state names the containers whose shim sockets and CNI results go).
pub fn sweep_stale_nodes() {
    for entry in read_dir(RECORDS) {
        let Some(teardown) = std::fs::read(entry.path())
            .ok()
            .and_then(|bytes| serde_json::from_slice::<Teardown>(&bytes).ok())
        else {
            continue;
        };
        if !process::owner_alive(&teardown.owner) {
            eprintln!(
                "testenv: tearing down the node {} of a test binary that is gone",
                teardown.network.node_name()
            );
            teardown.run();
        }
    }
}

impl Node {
    /// The teardown of this node, for a test that runs it early and checks
    /// [`Teardown::leftovers`] (it runs at exit anyway).
    pub fn teardown(&self) -> &Teardown {
        &self.teardown
    }

    /// The node's processes (kept so that they are not killed).
    pub fn processes(&mut self) -> &mut Vec<ManagedChild> {
        &mut self.processes
    }
}
