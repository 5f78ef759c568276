//! The `patchloop` binary: argument parsing and dispatch only; the logic lives
//! in the library.

mod cli;

fn main() -> std::process::ExitCode {
    cli::main()
}
