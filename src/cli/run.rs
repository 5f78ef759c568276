//! `patchloop run`: the controller.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use patchloop::api::common::Duration;
use patchloop::api::feed::DEFAULT_MAX_BYTES;
use patchloop::controller::leader::LeaderSettings;
use patchloop::controller::{Settings, crd_check, run};

/// Log formats.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// Arguments of `patchloop run`.
#[derive(Debug, clap::Args)]
pub struct RunArgs {
    /// The kubeconfig to use; by default $KUBECONFIG, ~/.kube/config, or the
    /// in-cluster ServiceAccount.
    #[arg(long, env = "KUBECONFIG")]
    kubeconfig: Option<PathBuf>,
    /// Watch only these namespaces (repeat, or comma-separated); all when
    /// none is given.
    #[arg(
        long = "namespace",
        env = "PATCHLOOP_NAMESPACES",
        value_delimiter = ','
    )]
    namespaces: Vec<String>,
    /// Load only the AdvisoryFeeds matching this label selector.
    #[arg(long, env = "PATCHLOOP_FEED_SELECTOR")]
    feed_selector: Option<String>,
    /// The most bytes any AdvisoryFeed's `url.maxBytes` may ask for: a feed
    /// above it is `Ready=False InvalidSource`, nothing fetched. Every
    /// replica loads every feed, so this bounds what a feed's author can
    /// make each one hold; the default keeps a refresh within the chart's
    /// 512 MiB memory limit (BENCHMARKS.md). Raise both together.
    #[arg(long, env = "PATCHLOOP_FEED_MAX_BYTES", default_value_t = DEFAULT_MAX_BYTES)]
    feed_max_bytes: u64,
    /// Address serving /metrics, /healthz and /readyz.
    #[arg(long, env = "PATCHLOOP_LISTEN", default_value = "0.0.0.0:8080")]
    listen: SocketAddr,
    /// After a start, how long compliance is left as it was for platforms
    /// whose advisories have not loaded yet (then it becomes Unknown).
    #[arg(long, env = "PATCHLOOP_GRACE_PERIOD", default_value = "5m")]
    grace_period: String,
    /// The longest any object waits before it is looked at again when
    /// nothing is scheduled for it.
    #[arg(long, env = "PATCHLOOP_MAX_REQUEUE", default_value = "1h")]
    max_requeue: String,
    /// Elect a leader among replicas with a coordination.k8s.io Lease: only
    /// the leader reconciles; standbys keep caches and feeds loaded.
    #[arg(long, env = "PATCHLOOP_LEADER_ELECTION")]
    leader_election: bool,
    /// The Lease's name.
    #[arg(long, env = "PATCHLOOP_LEASE_NAME", default_value = "patchloop")]
    lease_name: String,
    /// The Lease's namespace (in a Pod: its own namespace).
    #[arg(long, env = "POD_NAMESPACE")]
    lease_namespace: Option<String>,
    /// This replica's identity in the Lease (in a Pod: its name).
    #[arg(long, env = "POD_NAME")]
    identity: Option<String>,
    /// Log format.
    #[arg(long, env = "PATCHLOOP_LOG_FORMAT", value_enum, default_value = "text")]
    log_format: LogFormat,
    /// Log filter (tracing's EnvFilter syntax), e.g. `info` or
    /// `patchloop=debug,kube=warn`.
    #[arg(long, env = "RUST_LOG", default_value = "info")]
    log_level: String,
}

fn init_logging(args: &RunArgs) -> anyhow::Result<()> {
    let filter = tracing_subscriber::EnvFilter::try_new(&args.log_level)
        .with_context(|| format!("--log-level {:?}", args.log_level))?;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let result = match args.log_format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
    result.map_err(|e| anyhow::anyhow!("initialising logging: {e}"))
}

/// Resolves on SIGTERM or SIGINT (Ctrl-C).
pub(super) async fn shutdown_signal() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {},
        () = term => {},
    }
}

fn leader_settings(args: &RunArgs) -> anyhow::Result<Option<LeaderSettings>> {
    if !args.leader_election {
        return Ok(None);
    }
    let lease_namespace = args
        .lease_namespace
        .clone()
        .context("--leader-election needs --lease-namespace (or POD_NAMESPACE)")?;
    // Outside a Pod: the host name and the process id.
    let identity = args.identity.clone().unwrap_or_else(|| {
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
        format!("{}-{}", host.trim(), std::process::id())
    });
    Ok(Some(LeaderSettings {
        lease_name: args.lease_name.clone(),
        lease_namespace,
        identity,
    }))
}

/// Runs the controller until SIGTERM or SIGINT.
pub fn run(args: &RunArgs) -> anyhow::Result<ExitCode> {
    init_logging(args)?;
    let grace = Duration(args.grace_period.clone())
        .parse()
        .context("--grace-period")?;
    let max_requeue = Duration(args.max_requeue.clone())
        .parse()
        .context("--max-requeue")?;
    let max_requeue =
        std::time::Duration::from_secs(u64::try_from(max_requeue.as_secs()).unwrap_or(3600).max(1));
    let settings = Settings {
        namespaces: args
            .namespaces
            .iter()
            .filter(|n| !n.is_empty())
            .cloned()
            .collect(),
        feed_selector: args.feed_selector.clone(),
        feed_max_bytes: args.feed_max_bytes,
        grace,
        max_requeue,
        leader: leader_settings(args)?,
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(async {
        let client = super::connect::connect(args.kubeconfig.as_deref())
            .await?
            .client;
        crd_check::check(&client).await?;
        tracing::info!(namespaces = ?settings.namespaces, "patchloop controller starting");
        run::run(client, settings, args.listen, shutdown_signal()).await?;
        tracing::info!("stopped");
        Ok::<_, anyhow::Error>(())
    })?;
    Ok(ExitCode::SUCCESS)
}
