//! `patchloop report`: the fleet's compliance as a table, JSON, CSV or a
//! self-contained HTML page, from the statuses the controller wrote.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use kube::Api;
use kube::api::ListParams;
use patchloop::api::{PatchPolicy, Template, Workload};
use patchloop::report;

/// Output formats.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum Output {
    /// A plain-text table.
    Table,
    /// The whole report as JSON.
    Json,
    /// One line per Workload.
    Csv,
    /// A self-contained HTML page.
    Html,
}

/// Arguments of `patchloop report`.
#[derive(Debug, clap::Args)]
pub struct ReportArgs {
    /// Report on this namespace; by default the kubeconfig context's.
    #[arg(long, short = 'n')]
    namespace: Option<String>,
    /// Report on every namespace.
    #[arg(long, short = 'A', conflicts_with = "namespace")]
    all_namespaces: bool,
    /// The output format.
    #[arg(long, short = 'o', value_enum, default_value = "table")]
    output: Output,
    /// The kubeconfig to use; by default $KUBECONFIG, ~/.kube/config, or
    /// the in-cluster ServiceAccount.
    #[arg(long, env = "KUBECONFIG")]
    kubeconfig: Option<PathBuf>,
}

async fn list<K>(client: &kube::Client, namespace: Option<&str>) -> anyhow::Result<Vec<K>>
where
    K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug,
{
    let api: Api<K> = match namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    };
    Ok(api
        .list(&ListParams::default())
        .await
        .with_context(|| format!("listing {}", K::plural(&())))?
        .items)
}

/// Reads the statuses in `namespace` (all when `None`) and builds the report.
pub async fn fleet_report(
    client: &kube::Client,
    namespace: Option<&str>,
) -> anyhow::Result<report::FleetReport> {
    let workloads: Vec<Workload> = list(client, namespace).await?;
    let templates: Vec<Template> = list(client, namespace).await?;
    let policies: Vec<PatchPolicy> = list(client, namespace).await?;
    Ok(report::build(
        &workloads,
        &templates,
        &policies,
        patchloop::controller::now(),
    ))
}

/// Prints the report.
pub fn run(args: &ReportArgs) -> anyhow::Result<ExitCode> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let fleet = runtime.block_on(async {
        let conn = super::connect::connect(args.kubeconfig.as_deref()).await?;
        let namespace = (!args.all_namespaces)
            .then(|| args.namespace.clone().unwrap_or(conn.namespace.clone()));
        fleet_report(&conn.client, namespace.as_deref()).await
    })?;
    let text = match args.output {
        Output::Table => report::render_table(&fleet),
        Output::Json => serde_json::to_string_pretty(&fleet)? + "\n",
        Output::Csv => report::render_csv(&fleet)?,
        Output::Html => report::render_html(&fleet),
    };
    print!("{text}");
    Ok(ExitCode::from(report::exit_code(&fleet)))
}
