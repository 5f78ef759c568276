//! The `patchloop` command line. Each subcommand lives in its own module; this
//! one only parses arguments and dispatches.

mod crds;

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
}

/// Parses the command line and runs the chosen subcommand.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Crds(args) => crds::run(&args),
    };
    match result {
        Ok(code) => code,
        Err(err) => {
            eprintln!("patchloop: {err:#}");
            ExitCode::from(2)
        }
    }
}
