//! Real Helm (`scripts/helm.sh`: the Helm library itself, through helm-sdkpy, in a cached
//! virtualenv) for the chart's tests.

use std::path::Path;
use std::process::Stdio;

use serde_json::Value;

/// The repository's chart.
pub fn chart() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("charts/patchloop")
}

/// Runs `scripts/helm.sh <args>` (which installs helm-sdkpy once, cached)
/// and parses the JSON it prints; the error is Helm's message.
pub async fn helm(args: &[&str], kubeconfig: Option<&Path>) -> Result<Value, String> {
    let mut cmd =
        tokio::process::Command::new(Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/helm.sh"));
    cmd.args(args).stdin(Stdio::null()).kill_on_drop(true);
    if let Some(kc) = kubeconfig {
        cmd.arg("--kubeconfig").arg(kc);
    }
    let out = cmd
        .output()
        .await
        .unwrap_or_else(|e| panic!("cannot run scripts/helm.sh: {e}"));
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).into_owned());
    }
    serde_json::from_slice(&out.stdout).map_err(|e| {
        format!(
            "helm.py printed no JSON ({e}): {}",
            String::from_utf8_lossy(&out.stdout)
        )
    })
}

/// `helm install RELEASE CHART --namespace NS --values VALUES` on `env`'s cluster.
pub async fn install(
    env: &super::TestEnv,
    release: &str,
    chart: &Path,
    ns: &str,
    values: &Value,
) -> Result<Value, String> {
    let values = values.to_string();
    helm(
        &[
            "install",
            release,
            &chart.to_string_lossy(),
            "--namespace",
            ns,
            "--values",
            &values,
        ],
        Some(env.kubeconfig()),
    )
    .await
}
