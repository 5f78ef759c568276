//! The `patchloop` command line. Each subcommand lives in its own module; this
//! one only parses arguments and dispatches.

mod approve;
mod connect;
mod crds;
mod demo;
mod evaluate;
mod inventory;
mod report;
mod run;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Keeps a fleet patched: live machines and the templates they come from.
#[derive(Debug, Parser)]
#[command(name = "patchloop", version, about)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Print every CustomResourceDefinition as multi-document YAML.
    Crds(crds::CrdsArgs),
    /// Evaluate an inventory against advisories and policies, offline. Exits
    /// 0 when compliant (or exempt), 1 when a fix is pending or overdue, 3
    /// when compliance is unknown, 2 on bad input.
    Evaluate(Box<evaluate::EvaluateArgs>),
    /// Run the controller: reconcile Workloads, PatchPolicies,
    /// PatchExceptions, Inventories, Templates, ChangeRequests and
    /// AdvisoryFeeds until SIGTERM.
    Run(Box<run::RunArgs>),
    /// Approve a ChangeRequest's current scope (sets spec.decision with the
    /// scope digest, as field manager patchloop-approve:<kubeconfig user>).
    Approve(approve::DecideArgs),
    /// Reject a ChangeRequest's current scope.
    Reject(approve::DecideArgs),
    /// Collect this machine's package inventory (dpkg, rpm or apk) and write
    /// it as the Inventory of a Workload, a Template revision or a
    /// ChangeRequest's build result.
    Inventory(Box<inventory::InventoryArgs>),
    /// Print the fleet's compliance: Workloads worst first, Templates and
    /// PatchPolicies, as a table, JSON, CSV or a self-contained HTML page.
    /// Exits 0 when every Workload is compliant or exempt, 1 when a fix is
    /// pending or overdue, 3 when compliance is unknown, 2 on errors.
    Report(report::ReportArgs),
    /// Run the whole loop on the cluster the kubeconfig names (`make demo`
    /// brings up a local one): the example fleet, the controller, simulated
    /// Job executors, a template rebuild to approve, and the fleet report.
    Demo(Box<demo::DemoArgs>),
}

/// Parses the command line and runs the chosen subcommand.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Crds(args) => crds::run(&args),
        Command::Evaluate(args) => evaluate::run(&args),
        Command::Run(args) => run::run(&args),
        Command::Approve(args) => {
            approve::run(&args, patchloop::api::change_request::Verdict::Approved)
        }
        Command::Reject(args) => {
            approve::run(&args, patchloop::api::change_request::Verdict::Rejected)
        }
        Command::Report(args) => report::run(&args),
        Command::Inventory(args) => inventory::run(&args),
        Command::Demo(args) => demo::run(&args),
    };
    match result {
        Ok(code) => code,
        Err(err) => {
            eprintln!("patchloop: {err:#}");
            ExitCode::from(2)
        }
    }
}
