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
        let (_, body) = self.get("/metrics").await.unwrap_or_default();
        body.lines()
            .find(|l| l.starts_with(prefix))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0)
    }

    /// The sum of every sample of a metric over all its label sets (e.g.
    /// `patchloop_status_writes_total`, whatever the controller).
    pub async fn metric_sum(&self, name: &str) -> f64 {
        let (_, body) = self.get("/metrics").await.unwrap_or_default();
        body.lines()
            .filter(|l| {
                l.strip_prefix(name)
                    .is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' '))
            })
            .filter_map(|l| l.rsplit(' ').next())
            .filter_map(|v| v.parse::<f64>().ok())
            .sum()
    }
}
