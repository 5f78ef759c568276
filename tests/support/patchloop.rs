//! Runs the `patchloop` binary as a controller against the test control
//! plane, scoped to one namespace and one feed label, and scrapes its
//! metrics.

use std::process::{Command, Stdio};
use std::time::Duration;

use super::{ManagedChild, TestEnv, eventually, spawn_managed};

/// A running `patchloop run`.
pub struct Patchloop {
    /// The process.
    pub child: ManagedChild,
    /// Where /metrics, /healthz and /readyz are served.
    pub port: u16,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or_else(|e| panic!("no free port: {e}"))
}

impl Patchloop {
    /// Starts the controller watching `namespace`, loading the feeds
    /// labelled `patchloop-test=<feed_label>`, with extra arguments, and
    /// waits until it reports ready.
    pub async fn start(
        env: &TestEnv,
        namespace: &str,
        feed_label: &str,
        extra: &[&str],
    ) -> Patchloop {
        let pl = Self::spawn(env, namespace, feed_label, extra, &[]);
        pl.ready().await;
        pl
    }

    /// Starts the controller like [`Patchloop::start`] with extra
    /// environment variables (e.g. failpoints), without waiting.
    pub fn spawn(
        env: &TestEnv,
        namespace: &str,
        feed_label: &str,
        extra: &[&str],
        vars: &[(&str, &str)],
    ) -> Patchloop {
        Self::spawn_as(env.kubeconfig(), namespace, feed_label, extra, vars)
    }

    /// [`Patchloop::spawn`] with the identity of `kubeconfig` (e.g. a
    /// ServiceAccount holding only the chart's RBAC) instead of the admin's.
    pub fn spawn_as(
        kubeconfig: &std::path::Path,
        namespace: &str,
        feed_label: &str,
        extra: &[&str],
        vars: &[(&str, &str)],
    ) -> Patchloop {
        let port = free_port();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_patchloop"));
        cmd.arg("run")
            .arg("--kubeconfig")
            .arg(kubeconfig)
            .args(["--namespace", namespace])
            .args(["--feed-selector", &format!("patchloop-test={feed_label}")])
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .args(["--log-level", "info,patchloop=debug"])
            .args(extra)
            .env_remove("KUBECONFIG")
            .env_remove("PATCHLOOP_FAILPOINTS")
            .envs(vars.iter().copied())
            .stdin(Stdio::null());
        let child = spawn_managed("patchloop", cmd);
        Patchloop { child, port }
    }

    /// Waits until the controller reports ready.
    pub async fn ready(&self) {
        eventually(
            "patchloop to report ready",
            Duration::from_secs(60),
            async || {
                self.get("/readyz")
                    .await
                    .filter(|(code, _)| *code == 200)
                    .map(|_| ())
            },
        )
        .await;
    }

    /// `GET path` on the metrics port: (status code, body).
    pub async fn get(&self, path: &str) -> Option<(u16, String)> {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", self.port))
            .await
            .ok()?;
        let request =
            format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await.ok()?;
        let mut response = Vec::new();
        stream.read_to_end(&mut response).await.ok()?;
        let text = String::from_utf8_lossy(&response).into_owned();
        let code = text.split_whitespace().nth(1)?.parse().ok()?;
        let body = text
            .split_once("\r\n\r\n")
            .map(|(_, b)| b.to_owned())
            .unwrap_or_default();
        Some((code, body))
    }

    /// The value of a metric sample line starting with `prefix` (e.g.
    /// `patchloop_reconciles_total{controller="workload"}`).
    pub async fn metric(&self, prefix: &str) -> f64 {
        sample(&self.scrape().await, prefix)
    }

    /// The sum of every sample of a metric over all its label sets (e.g.
    /// `patchloop_status_writes_total`, whatever the controller).
    pub async fn metric_sum(&self, name: &str) -> f64 {
        sum(&self.scrape().await, name)
    }

    /// What `controller` (a `controller` label value of
    /// `src/controller/metrics.rs`) has done so far, from one scrape. A
    /// failed scrape panics: read as zeros, it would make a baseline that
    /// any later count passes.
    pub async fn counters(&self, controller: &str) -> Counters {
        let body = match self.get("/metrics").await {
            Some((200, body)) => body,
            other => panic!("scraping the controller's /metrics: {other:?}"),
        };
        let labelled =
            |name: &str| sample(&body, &format!("{name}{{controller=\"{controller}\"}}"));
        Counters {
            reconciles: labelled("patchloop_reconciles_total"),
            status_writes: labelled("patchloop_status_writes_total"),
            jobs_created: sum(&body, "patchloop_jobs_created_total"),
        }
    }

    /// Waits until `controller` has ended `n` more reconciles than
    /// `baseline` counted, and returns its counters then.
    ///
    /// A reconcile is counted when it ends (its timer is dropped after the
    /// status write and any Job it creates), so whatever the awaited
    /// reconciles wrote or created is on the server, and in the counters
    /// returned, by the time this returns: a "nothing happened" check made
    /// then catches a write that did happen. Take `baseline` before the
    /// change that wakes them; a reconcile already running then is counted
    /// too, so `n` should be every object the change wakes.
    pub async fn reconciled_after(
        &self,
        controller: &str,
        baseline: &Counters,
        n: u32,
    ) -> Counters {
        let target = baseline.reconciles + f64::from(n);
        eventually(
            &format!("{n} more {controller} reconciles"),
            Duration::from_secs(60),
            async || Some(self.counters(controller).await).filter(|c| c.reconciles >= target),
        )
        .await
    }

    /// Wakes every Workload and Template of `ns` and PatchPolicy `policy`
    /// ([`super::objects::wake_namespace`]), then waits until `controller`
    /// has ended `n` reconciles since: the fence of a "nothing happened"
    /// check. Returns what `controller` did from the wake to the last of
    /// those reconciles.
    pub async fn wake_and_count(
        &self,
        client: &kube::Client,
        ns: &str,
        policy: &str,
        controller: &str,
        n: u32,
    ) -> Since {
        let before = self.counters(controller).await;
        super::objects::wake_namespace(client, ns, policy).await;
        let after = self.reconciled_after(controller, &before, n).await;
        Since { before, after }
    }

    async fn scrape(&self) -> String {
        self.get("/metrics")
            .await
            .map(|(_, body)| body)
            .unwrap_or_default()
    }
}

/// One controller's counters at one moment; the default is a fresh process.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Counters {
    /// `patchloop_reconciles_total`: reconciles ended, failed ones included.
    pub reconciles: f64,
    /// `patchloop_status_writes_total`: status patches it sent.
    pub status_writes: f64,
    /// `patchloop_jobs_created_total` of the whole process, every kind.
    pub jobs_created: f64,
}

/// What one controller did between two scrapes.
#[derive(Clone, Copy, Debug)]
pub struct Since {
    pub before: Counters,
    pub after: Counters,
}

impl Since {
    /// Jobs the process created in between.
    pub fn jobs_created(&self) -> f64 {
        self.after.jobs_created - self.before.jobs_created
    }

    /// Status patches the controller sent in between.
    pub fn status_writes(&self) -> f64 {
        self.after.status_writes - self.before.status_writes
    }
}

/// The value of the first sample line of `body` starting with `prefix`, or 0.
fn sample(body: &str, prefix: &str) -> f64 {
    body.lines()
        .find(|l| l.starts_with(prefix))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

/// The sum of every sample of metric `name` in `body`, over all its label sets.
fn sum(body: &str, name: &str) -> f64 {
    body.lines()
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' '))
        })
        .filter_map(|l| l.rsplit(' ').next())
        .filter_map(|v| v.parse::<f64>().ok())
        .sum()
}
