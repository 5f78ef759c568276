//! The metrics and probe endpoints over real HTTP on a loopback port: what a
//! Prometheus scrape and the kubelet's probes actually see.
//!
//! Requests are written by hand on a plain socket (HTTP/1.1 with
//! `Connection: close`) so the test checks the bytes on the wire and needs
//! no HTTP client dependency.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use futures::channel::oneshot;
use patchloop::api::feed::EcosystemCount;
use patchloop::api::policy::{TemplateCounts, WorkloadCounts};
use patchloop::controller::http::{self, DRAIN_TIMEOUT, Health};
use patchloop::controller::jobs::Purpose;
use patchloop::controller::metrics::Metrics;

/// Bounds every wait so a broken server fails the test instead of hanging it.
const IO_TIMEOUT: Duration = Duration::from_secs(10);

struct Reply {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

impl Reply {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// One request on a fresh connection, read to the server's close.
async fn request(addr: SocketAddr, method: &'static str, path: &'static str) -> Reply {
    tokio::task::spawn_blocking(move || {
        let mut stream = TcpStream::connect_timeout(&addr, IO_TIMEOUT).expect("connect");
        stream.set_read_timeout(Some(IO_TIMEOUT)).expect("timeout");
        write!(
            stream,
            "{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
        )
        .expect("write request");
        let mut raw = Vec::new();
        stream.read_to_end(&mut raw).expect("read response");
        parse(&String::from_utf8(raw).expect("UTF-8 response"))
    })
    .await
    .expect("request task")
}

fn parse(raw: &str) -> Reply {
    let (head, body) = raw.split_once("\r\n\r\n").expect("header end");
    let mut lines = head.split("\r\n");
    let status_line = lines.next().expect("status line");
    let status = status_line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("bad status line {status_line:?}"));
    let headers: Vec<(String, String)> = lines
        .map(|l| {
            let (n, v) = l.split_once(':').expect("header line");
            (n.trim().to_owned(), v.trim().to_owned())
        })
        .collect();
    let reply = Reply {
        status,
        headers,
        body: body.to_owned(),
    };
    assert_eq!(
        reply.header("transfer-encoding"),
        None,
        "expected a sized body"
    );
    let length: usize = reply
        .header("content-length")
        .expect("content-length")
        .parse()
        .expect("numeric content-length");
    assert_eq!(length, reply.body.len(), "body length");
    reply
}

/// The value of the sample whose name and labels are exactly `series`.
fn sample<'a>(text: &'a str, series: &str) -> Option<&'a str> {
    text.lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
}

/// A running server, with the trigger that stops it.
struct Server {
    addr: SocketAddr,
    stop: oneshot::Sender<()>,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
}

async fn start(metrics: Metrics, health: Health) -> Server {
    let (stop, stopped) = oneshot::channel::<()>();
    let shutdown = async move {
        let _ = stopped.await;
    };
    let (addr, server) = http::bind(
        "127.0.0.1:0".parse().expect("address"),
        metrics,
        health,
        shutdown,
    )
    .await
    .expect("bind");
    assert_ne!(addr.port(), 0, "the bound port is reported");
    Server {
        addr,
        stop,
        task: tokio::spawn(server),
    }
}

impl Server {
    async fn shut_down(self) -> Duration {
        let started = Instant::now();
        self.stop.send(()).expect("server still listening");
        tokio::time::timeout(IO_TIMEOUT, self.task)
            .await
            .expect("server stops")
            .expect("server task")
            .expect("server result");
        started.elapsed()
    }
}

#[tokio::test]
async fn metrics_are_scraped_with_names_labels_and_values() {
    let metrics = Metrics::new();
    let server = start(metrics.clone(), Health::new()).await;

    drop(metrics.reconcile("workload"));
    let mut failing = metrics.reconcile("workload");
    failing.error();
    drop(failing);
    metrics.status_write("policy");
    metrics.job_created(Purpose::Remediation);
    metrics.set_leader(true);
    metrics.exception_expired();
    metrics.set_workload_counts(
        "fleet",
        "baseline",
        &WorkloadCounts {
            matched: 7,
            compliant: 3,
            pending: 1,
            overdue: 2,
            exempt: 0,
            unknown: 1,
            ..WorkloadCounts::default()
        },
    );
    metrics.set_template_counts(
        "fleet",
        "baseline",
        &TemplateCounts {
            matched: 2,
            compliant: 1,
            non_compliant: 1,
            ..TemplateCounts::default()
        },
    );
    metrics.feed_refreshed(
        "osv-debian",
        jiff::Timestamp::from_second(1_750_000_000).expect("timestamp"),
        &[EcosystemCount {
            name: "Debian:12".to_owned(),
            advisories: 4211,
        }],
    );
    metrics.feed_error("kev");

    let reply = request(server.addr, "GET", "/metrics").await;
    assert_eq!(reply.status, 200);
    let content_type = reply.header("content-type").expect("content-type");
    assert!(
        content_type.starts_with("application/openmetrics-text"),
        "{content_type}"
    );
    let text = &reply.body;
    for (series, value) in [
        ("patchloop_reconciles_total{controller=\"workload\"}", "2"),
        (
            "patchloop_reconcile_errors_total{controller=\"workload\"}",
            "1",
        ),
        (
            "patchloop_reconcile_duration_seconds_count{controller=\"workload\"}",
            "2",
        ),
        ("patchloop_reconciles_total{controller=\"change\"}", "0"),
        ("patchloop_status_writes_total{controller=\"policy\"}", "1"),
        (
            "patchloop_status_writes_total{controller=\"workload\"}",
            "0",
        ),
        ("patchloop_jobs_created_total{kind=\"remediation\"}", "1"),
        ("patchloop_jobs_created_total{kind=\"build\"}", "0"),
        ("patchloop_leader", "1"),
        ("patchloop_exceptions_expired_total", "1"),
        (
            "patchloop_workloads{namespace=\"fleet\",policy=\"baseline\",state=\"compliant\"}",
            "3",
        ),
        (
            "patchloop_workloads{namespace=\"fleet\",policy=\"baseline\",state=\"pending\"}",
            "1",
        ),
        (
            "patchloop_workloads{namespace=\"fleet\",policy=\"baseline\",state=\"overdue\"}",
            "2",
        ),
        (
            "patchloop_workloads{namespace=\"fleet\",policy=\"baseline\",state=\"exempt\"}",
            "0",
        ),
        (
            "patchloop_workloads{namespace=\"fleet\",policy=\"baseline\",state=\"unknown\"}",
            "1",
        ),
        (
            "patchloop_templates{namespace=\"fleet\",policy=\"baseline\",state=\"noncompliant\"}",
            "1",
        ),
        (
            "patchloop_feed_last_success_timestamp_seconds{feed=\"osv-debian\"}",
            "1750000000.0",
        ),
        (
            "patchloop_feed_advisories{feed=\"osv-debian\",ecosystem=\"Debian:12\"}",
            "4211",
        ),
        ("patchloop_feed_errors_total{feed=\"kev\"}", "1"),
    ] {
        assert_eq!(sample(text, series), Some(value), "{series} in\n{text}");
    }
    for metadata in [
        "# TYPE patchloop_reconcile_duration_seconds histogram",
        "# UNIT patchloop_reconcile_duration_seconds seconds",
        "# TYPE patchloop_workloads gauge",
        "# TYPE patchloop_status_writes counter",
    ] {
        assert!(text.lines().any(|l| l == metadata), "{metadata} in\n{text}");
    }
    assert!(
        text.lines()
            .any(|l| l.starts_with("# HELP patchloop_workloads ")),
        "help text"
    );
    assert!(text.ends_with("# EOF\n"), "OpenMetrics end marker");
    assert_eq!(metrics.status_writes("policy"), 1);

    // A deleted policy's series disappear; another policy's stay.
    metrics.set_workload_counts(
        "fleet",
        "strict",
        &WorkloadCounts {
            compliant: 5,
            ..WorkloadCounts::default()
        },
    );
    metrics.forget_policy("fleet", "baseline");
    let text = request(server.addr, "GET", "/metrics").await.body;
    assert!(!text.contains("policy=\"baseline\""), "{text}");
    assert_eq!(
        sample(
            &text,
            "patchloop_workloads{namespace=\"fleet\",policy=\"strict\",state=\"compliant\"}"
        ),
        Some("5")
    );

    server.shut_down().await;
}

#[tokio::test]
async fn readiness_follows_health_and_liveness_is_unconditional() {
    let health = Health::new();
    let server = start(Metrics::new(), health.clone()).await;

    let live = request(server.addr, "GET", "/healthz").await;
    assert_eq!((live.status, live.body.as_str()), (200, "ok\n"));
    let unready = request(server.addr, "GET", "/readyz").await;
    assert_eq!(unready.status, 503);
    assert_eq!(unready.body, "not ready: caches not synced yet\n");

    health.set_ready(true);
    let ready = request(server.addr, "GET", "/readyz").await;
    assert_eq!((ready.status, ready.body.as_str()), (200, "ok\n"));

    health.set_not_ready("lost the leader lease");
    let unready = request(server.addr, "GET", "/readyz").await;
    assert_eq!(unready.status, 503);
    assert_eq!(unready.body, "not ready: lost the leader lease\n");
    let live = request(server.addr, "GET", "/healthz").await;
    assert_eq!(live.status, 200);

    server.shut_down().await;
}

#[tokio::test]
async fn unknown_paths_and_methods_are_refused() {
    let server = start(Metrics::new(), Health::new()).await;
    assert_eq!(request(server.addr, "GET", "/").await.status, 404);
    assert_eq!(request(server.addr, "GET", "/metrics/x").await.status, 404);
    assert_eq!(request(server.addr, "POST", "/metrics").await.status, 405);
    server.shut_down().await;
}

#[tokio::test]
async fn shutdown_stops_the_server_and_frees_the_port() {
    let server = start(Metrics::new(), Health::new()).await;
    let addr = server.addr;
    assert_eq!(request(addr, "GET", "/healthz").await.status, 200);
    let took = server.shut_down().await;
    assert!(
        took < DRAIN_TIMEOUT,
        "no open connection to wait for: {took:?}"
    );
    let refused =
        tokio::task::spawn_blocking(move || TcpStream::connect_timeout(&addr, IO_TIMEOUT))
            .await
            .expect("connect task");
    assert!(refused.is_err(), "still accepting after shutdown");
}

#[tokio::test]
async fn shutdown_does_not_wait_forever_on_a_stalled_client() {
    let server = start(Metrics::new(), Health::new()).await;
    let addr = server.addr;
    // A client that starts a request and never finishes it.
    let stalled = tokio::task::spawn_blocking(move || {
        let mut stream = TcpStream::connect_timeout(&addr, IO_TIMEOUT).expect("connect");
        stream
            .write_all(b"GET /metrics HTTP/1.1\r\nHost: loc")
            .expect("write");
        stream
    })
    .await
    .expect("client task");
    // Let the server accept it and start reading the request.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let took = server.shut_down().await;
    assert!(
        took >= DRAIN_TIMEOUT && took < DRAIN_TIMEOUT + Duration::from_secs(3),
        "drained for {took:?}"
    );
    drop(stalled);
}
