//! Kubeconfig files (token auth, CA = the serving certificate) and clients built from them.

use std::path::Path;

use kube::config::{KubeConfigOptions, Kubeconfig};

pub const CONTEXT: &str = "patchloop-testenv";

/// Impersonation settings (`as` / `as-groups` in a kubeconfig).
#[derive(Debug, Clone, Default)]
pub struct Impersonate {
    pub user: String,
    pub groups: Vec<String>,
}

/// Writes a kubeconfig with one cluster, one user (bearer `token`) and one current context.
pub fn write(
    path: &Path,
    server: &str,
    ca_file: &Path,
    user: &str,
    token: &str,
    impersonate: Option<&Impersonate>,
) -> Result<(), String> {
    let mut user_entry = serde_json::json!({ "token": token });
    if let Some(imp) = impersonate {
        user_entry["as"] = imp.user.clone().into();
        if !imp.groups.is_empty() {
            user_entry["as-groups"] = imp.groups.clone().into();
        }
    }
    let config = serde_json::json!({
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{
            "name": CONTEXT,
            "cluster": { "server": server, "certificate-authority": ca_file.display().to_string() },
        }],
        "users": [{ "name": user, "user": user_entry }],
        "contexts": [{
            "name": CONTEXT,
            "context": { "cluster": CONTEXT, "user": user, "namespace": "default" },
        }],
        "current-context": CONTEXT,
    });
    let yaml = serde_saphyr::to_string(&config)
        .map_err(|e| format!("cannot serialize a kubeconfig: {e}"))?;
    std::fs::write(path, yaml).map_err(|e| format!("cannot write {}: {e}", path.display()))
}

/// A fresh client from a kubeconfig file, optionally impersonating someone.
pub async fn client(
    path: &Path,
    impersonate: Option<&Impersonate>,
) -> Result<kube::Client, String> {
    let kubeconfig = Kubeconfig::read_from(path)
        .map_err(|e| format!("cannot read kubeconfig {}: {e}", path.display()))?;
    let mut config =
        kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
            .await
            .map_err(|e| format!("cannot load kubeconfig {}: {e}", path.display()))?;
    if let Some(imp) = impersonate {
        config.auth_info.impersonate = Some(imp.user.clone());
        config.auth_info.impersonate_groups = (!imp.groups.is_empty()).then(|| imp.groups.clone());
    }
    kube::Client::try_from(config).map_err(|e| format!("cannot build a kube client: {e}"))
}
