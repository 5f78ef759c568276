//! `patchloop crds`: prints the CRDs (the source of `crds/` and the chart).

use std::io::Write;
use std::process::ExitCode;

use anyhow::Context;

/// Arguments of `patchloop crds`.
#[derive(Debug, clap::Args)]
pub struct CrdsArgs {}

/// Writes every CRD to standard output.
pub fn run(_: &CrdsArgs) -> anyhow::Result<ExitCode> {
    let yaml = patchloop::api::crds_yaml().context("serializing the CRDs")?;
    std::io::stdout()
        .write_all(yaml.as_bytes())
        .context("writing to standard output")?;
    Ok(ExitCode::SUCCESS)
}
