//! Integration-test harness: a real Kubernetes 1.20.2 control plane (etcd, kube-apiserver,
//! kube-controller-manager with the garbagecollector, job, namespace, serviceaccount and
//! serviceaccount-token controllers) per test binary, shared by its tests.
//!
//! ```ignore
//! mod support;
//!
//! #[tokio::test]
//! async fn something() {
//!     let env = support::env();                 // started on first use, CRDs from crds/ installed
//!     let client = env.client().await;          // one client per test (per tokio runtime)
//!     let ns = env.namespace("something").await; // fresh namespace with its default SA
//!     let out = env.kubectl(["get", "ns", &ns]);
//! }
//! ```
//!
//! Binaries come from `$PATCHLOOP_K8S_BIN` / `$PATCHLOOP_ETCD` (`scripts/testenv.sh
//! --print-env`), else `${PATCHLOOP_CACHE:-${XDG_CACHE_HOME:-~/.cache}/patchloop}/k8s-1.20.2/bin`
//! and `/usr/bin/etcd`. [`env`] has no scheduler and no kubelet: Pods are created, never run;
//! [`env_with_node`] adds a real node (`node.rs`) where they do.
//! Set `PATCHLOOP_TESTENV_KEEP=1` to keep the scratch directory (logs, kubeconfig) after the run.
#![allow(dead_code)]

mod controlplane;
mod crds;
pub mod executor;
pub mod fleet;
pub mod helm;
mod kubeconfig;
pub mod machines;
pub mod node;
pub mod objects;
pub mod patchloop;
mod process;

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Namespace, Secret, ServiceAccount};
use kube::Api;
use kube::api::{ObjectMeta, PostParams};

/// Kubernetes version of the test control plane.
pub const K8S_VERSION: &str = controlplane::K8S_VERSION;
/// The static-token user of the admin kubeconfig (group `system:masters`).
pub const ADMIN_USER: &str = controlplane::ADMIN_USER;
/// `--service-account-issuer` of the apiserver.
pub const SERVICE_ACCOUNT_ISSUER: &str = controlplane::SERVICE_ACCOUNT_ISSUER;
pub use process::ManagedChild;

/// How long helpers wait for the control plane to do something (namespace SA, tokens...).
pub const WAIT_TIMEOUT: Duration = Duration::from_secs(60);

/// A running control plane. Obtain it with [`env`] or [`env_without_crds`].
pub struct TestEnv {
    dir: PathBuf,
    kubeconfig: PathBuf,
    server: String,
    ca_file: PathBuf,
    admin_token: String,
    installed_crds: Vec<String>,
    startup: Duration,
    /// Kept so the processes are not killed; the atexit handler kills them.
    processes: Mutex<Vec<ManagedChild>>,
    node: Option<node::Node>,
}

static WITH_CRDS: OnceLock<Result<TestEnv, String>> = OnceLock::new();
static WITHOUT_CRDS: OnceLock<Result<TestEnv, String>> = OnceLock::new();
static WITH_NODE: OnceLock<Result<TestEnv, String>> = OnceLock::new();
static WITH_NODE_WITHOUT_CRDS: OnceLock<Result<TestEnv, String>> = OnceLock::new();

fn shared(
    cell: &'static OnceLock<Result<TestEnv, String>>,
    opts: fn() -> controlplane::Options,
) -> &'static TestEnv {
    let started = cell.get_or_init(|| {
        // On a thread of its own: the caller is usually inside a tokio runtime, and start-up
        // blocks on one. Processes are still spawned from the supervisor thread (see process.rs).
        let starter = std::thread::Builder::new()
            .name("patchloop-testenv-start".into())
            .spawn(move || controlplane::start(opts()))
            .expect("cannot spawn the test-env start thread");
        let started = starter
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic));
        started.map(|s| TestEnv {
            dir: s.dir,
            kubeconfig: s.kubeconfig,
            server: s.server,
            ca_file: s.ca_file,
            admin_token: s.admin_token,
            installed_crds: s.installed_crds,
            startup: s.startup,
            processes: Mutex::new(s.processes),
            node: s.node,
        })
    });
    match started {
        Ok(env) => env,
        Err(msg) => panic!("{msg}"),
    }
}

/// The control plane of this test binary, with the CRDs of `crds/` installed (and Established)
/// before kube-controller-manager started. Started on first use; blocks until it is up.
pub fn env() -> &'static TestEnv {
    shared(&WITH_CRDS, || controlplane::Options {
        install_crds: true,
        node: false,
    })
}

/// A control plane with the CRDs and a real node (`node.rs`): Pods run for real. Separate
/// from [`env`]; started on first use (about half a minute more), torn down at exit.
pub fn env_with_node() -> &'static TestEnv {
    shared(&WITH_NODE, || controlplane::Options {
        install_crds: true,
        node: true,
    })
}

/// A control plane without pre-installed CRDs and with a real node: the chart's Pods run
/// (Helm installs the CRDs). Separate from the others.
pub fn env_with_node_without_crds() -> &'static TestEnv {
    shared(&WITH_NODE_WITHOUT_CRDS, || controlplane::Options {
        install_crds: false,
        node: true,
    })
}

/// A control plane without pre-installed CRDs (e.g. for Helm, which refuses to adopt CRDs that
/// lack its labels). Separate from [`env`]: a binary using both runs two control planes.
pub fn env_without_crds() -> &'static TestEnv {
    shared(&WITHOUT_CRDS, || controlplane::Options {
        install_crds: false,
        node: false,
    })
}

/// A random lowercase hex suffix (8 characters) for unique names.
pub fn random_suffix() -> String {
    process::random_hex(4)
}

/// Polls `check` every 100 ms until it returns `Some`, panicking after `timeout`.
pub async fn eventually<T>(
    what: &str,
    timeout: Duration,
    mut check: impl AsyncFnMut() -> Option<T>,
) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        if Instant::now() >= deadline {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Spawns a process that is killed when the returned handle is dropped, at exit, and if the test
/// binary dies (e.g. the controller binary under test).
pub fn spawn_managed(name: &str, cmd: Command) -> ManagedChild {
    process::spawn(name, cmd).unwrap_or_else(|e| panic!("cannot start {name}: {e}"))
}

/// The repository's CRD manifests (`crds/*.yaml`, every document).
pub fn crd_manifests() -> Vec<serde_json::Value> {
    crds::manifests().unwrap_or_else(|e| panic!("{e}"))
}

impl TestEnv {
    /// Admin kubeconfig (token of a `system:masters` user, CA = the serving certificate).
    pub fn kubeconfig(&self) -> &Path {
        &self.kubeconfig
    }

    /// `https://127.0.0.1:<port>`.
    pub fn server_url(&self) -> &str {
        &self.server
    }

    /// The apiserver's self-signed serving certificate (PEM), the CA of every kubeconfig.
    pub fn ca_file(&self) -> &Path {
        &self.ca_file
    }

    /// Bearer token of [`ADMIN_USER`] (group `system:masters`).
    pub fn admin_token(&self) -> &str {
        &self.admin_token
    }

    /// Scratch directory of this control plane (removed at exit): a place for test files.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The real node of [`env_with_node`] (None for the others).
    pub fn node(&self) -> Option<&node::Node> {
        self.node.as_ref()
    }

    /// How long starting the control plane took.
    pub fn startup_time(&self) -> Duration {
        self.startup
    }

    /// Names of the CRDs installed at start (empty for [`env_without_crds`]).
    pub fn installed_crds(&self) -> &[String] {
        &self.installed_crds
    }

    /// The last `lines` lines of a component's log: `"etcd"`, `"kube-apiserver"` or
    /// `"kube-controller-manager"`.
    pub fn log_tail(&self, component: &str, lines: usize) -> String {
        let run_dir = self.kubeconfig.parent().unwrap_or(&self.dir);
        process::tail(&run_dir.join(format!("{component}.log")), lines)
    }

    /// A fresh admin client. Create one per test: a client is bound to the tokio runtime it was
    /// first used in, and every `#[tokio::test]` has its own.
    pub async fn client(&self) -> kube::Client {
        kubeconfig::client(&self.kubeconfig, None)
            .await
            .unwrap_or_else(|e| panic!("{e}"))
    }

    /// A fresh client impersonating `user` (with `groups`), for RBAC tests. Impersonation
    /// replaces the admin's identity entirely: the client has only what RBAC grants `user`
    /// (plus `system:authenticated`).
    pub async fn client_as(&self, user: &str, groups: &[&str]) -> kube::Client {
        let imp = impersonate(user, groups);
        kubeconfig::client(&self.kubeconfig, Some(&imp))
            .await
            .unwrap_or_else(|e| panic!("{e}"))
    }

    /// Writes a kubeconfig impersonating `user` (with `groups`) and returns its path, e.g. for
    /// `kubectl` or a subprocess.
    pub fn kubeconfig_as(&self, user: &str, groups: &[&str]) -> PathBuf {
        let path = self.scratch_file("kubeconfig-as");
        kubeconfig::write(
            &path,
            &self.server,
            &self.ca_file,
            ADMIN_USER,
            &self.admin_token,
            Some(&impersonate(user, groups)),
        )
        .unwrap_or_else(|e| panic!("{e}"));
        path
    }

    /// Writes a kubeconfig authenticating as ServiceAccount `namespace/name` with its token
    /// (waiting until kube-controller-manager created it) and returns its path: runs a
    /// subprocess with exactly the identity and RBAC of that ServiceAccount.
    pub async fn kubeconfig_for_service_account(&self, namespace: &str, name: &str) -> PathBuf {
        let client = self.client().await;
        let sas: Api<ServiceAccount> = Api::namespaced(client.clone(), namespace);
        let secrets: Api<Secret> = Api::namespaced(client, namespace);
        let token = eventually(
            &format!("a token for ServiceAccount {namespace}/{name}"),
            WAIT_TIMEOUT,
            async || {
                let sa = sas.get_opt(name).await.ok()??;
                for secret_ref in sa.secrets.unwrap_or_default() {
                    let secret_name = secret_ref.name?;
                    let secret = secrets.get_opt(&secret_name).await.ok()??;
                    if let Some(token) = secret.data.as_ref().and_then(|d| d.get("token")) {
                        return String::from_utf8(token.0.clone()).ok();
                    }
                }
                None
            },
        )
        .await;
        let path = self.scratch_file(&format!("kubeconfig-sa-{namespace}-{name}"));
        let user = format!("system:serviceaccount:{namespace}:{name}");
        kubeconfig::write(&path, &self.server, &self.ca_file, &user, &token, None)
            .unwrap_or_else(|e| panic!("{e}"));
        path
    }

    /// A client authenticating as ServiceAccount `namespace/name` with its own token: exactly
    /// the identity and RBAC of that ServiceAccount (no impersonation), for attack tests.
    pub async fn client_for_service_account(&self, namespace: &str, name: &str) -> kube::Client {
        let path = self.kubeconfig_for_service_account(namespace, name).await;
        kubeconfig::client(&path, None)
            .await
            .unwrap_or_else(|e| panic!("{e}"))
    }

    /// Creates namespace `<prefix>-<random>` and waits until its `default` ServiceAccount has its
    /// token (1.20's ServiceAccount admission refuses Pods before that). Returns the name.
    pub async fn namespace(&self, prefix: &str) -> String {
        assert!(
            !prefix.is_empty()
                && prefix.len() <= 50
                && prefix
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-'),
            "namespace prefix {prefix:?} must be a short lowercase DNS label"
        );
        let name = format!("{prefix}-{}", random_suffix());
        let client = self.client().await;
        let namespaces: Api<Namespace> = Api::all(client.clone());
        let ns = Namespace {
            metadata: ObjectMeta {
                name: Some(name.clone()),
                ..Default::default()
            },
            ..Default::default()
        };
        namespaces
            .create(&PostParams::default(), &ns)
            .await
            .unwrap_or_else(|e| panic!("cannot create namespace {name}: {e}"));
        let sas: Api<ServiceAccount> = Api::namespaced(client, &name);
        eventually(
            &format!("the default ServiceAccount (with token) in namespace {name}"),
            WAIT_TIMEOUT,
            async || {
                let sa = sas.get_opt("default").await.ok()??;
                sa.secrets.filter(|s| !s.is_empty()).map(|_| ())
            },
        )
        .await;
        name
    }

    /// Server-side applies the repository's CRDs now and waits until they are Established
    /// (for [`env_without_crds`]; note the garbage collector needs ~30 s to see new kinds).
    pub async fn install_crds(&self) -> Vec<String> {
        let client = self.client().await;
        crds::install(&client, &crd_manifests())
            .await
            .unwrap_or_else(|e| panic!("{e}"))
    }

    /// A `kubectl` command (`$PATCHLOOP_KUBECTL` or `kubectl` from PATH) using the admin
    /// kubeconfig, with its discovery cache inside the scratch directory.
    pub fn kubectl_command(&self) -> Command {
        self.kubectl_command_with(&self.kubeconfig)
    }

    /// Like [`TestEnv::kubectl_command`] with another kubeconfig (e.g. from
    /// [`TestEnv::kubeconfig_as`]).
    pub fn kubectl_command_with(&self, kubeconfig: &Path) -> Command {
        let kubectl = std::env::var_os("PATCHLOOP_KUBECTL")
            .filter(|v| !v.is_empty())
            .unwrap_or_else(|| "kubectl".into());
        let mut cmd = Command::new(kubectl);
        cmd.env("KUBECONFIG", kubeconfig)
            .env("KUBECACHEDIR", self.dir.join("kubectl-cache"))
            .stdin(std::process::Stdio::null());
        cmd
    }

    /// Runs `kubectl <args>` with the admin kubeconfig and returns its output (blocking: in a
    /// test that also drives other futures, use `kubectl_command` with `tokio::process`).
    pub fn kubectl<I, S>(&self, args: I) -> Output
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let mut cmd = self.kubectl_command();
        cmd.args(args);
        cmd.output()
            .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"))
    }

    fn scratch_file(&self, stem: &str) -> PathBuf {
        let stem: String = stem
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '-' {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        self.dir.join(format!("{stem}-{}", random_suffix()))
    }
}

fn impersonate(user: &str, groups: &[&str]) -> kubeconfig::Impersonate {
    kubeconfig::Impersonate {
        user: user.to_string(),
        groups: groups.iter().map(|g| g.to_string()).collect(),
    }
}
