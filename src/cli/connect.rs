//! One way for every subcommand to reach the cluster: `--kubeconfig`, else
//! `$KUBECONFIG` / `~/.kube/config`, else the in-cluster ServiceAccount;
//! with the namespace and user the kubeconfig's current context names.

use std::path::Path;

use anyhow::Context;
use kube::config::{KubeConfigOptions, Kubeconfig};

/// A client and what the configuration says about the caller.
pub struct Connection {
    /// The client.
    pub client: kube::Client,
    /// The current context's namespace (in a Pod: its own), else `default`.
    pub namespace: String,
    /// The current context's user (none in-cluster).
    pub user: Option<String>,
}

/// Connects as the kubeconfig (or the Pod's ServiceAccount) says.
pub async fn connect(kubeconfig: Option<&Path>) -> anyhow::Result<Connection> {
    patchloop::controller::feed_source::install_crypto_provider();
    let read = match kubeconfig {
        Some(path) => Some(
            Kubeconfig::read_from(path)
                .with_context(|| format!("--kubeconfig {}", path.display()))?,
        ),
        None => Kubeconfig::read().ok(),
    };
    let Some(kc) = read else {
        let config = kube::Config::incluster()
            .context("no kubeconfig ($KUBECONFIG, ~/.kube/config) and not in a cluster")?;
        let namespace = config.default_namespace.clone();
        let client = kube::Client::try_from(config).context("building the Kubernetes client")?;
        return Ok(Connection {
            client,
            namespace,
            user: None,
        });
    };
    let context = kc
        .contexts
        .iter()
        .find(|c| Some(&c.name) == kc.current_context.as_ref())
        .and_then(|c| c.context.clone());
    let user = context.as_ref().and_then(|c| c.user.clone());
    let namespace = context
        .as_ref()
        .and_then(|c| c.namespace.clone())
        .unwrap_or_else(|| "default".to_owned());
    let config = kube::Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
        .await
        .context("loading the kubeconfig")?;
    let client = kube::Client::try_from(config).context("building the Kubernetes client")?;
    Ok(Connection {
        client,
        namespace,
        user,
    })
}
