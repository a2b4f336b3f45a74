//! devserver: every coding agent or CI job gets its own git worktree, port
//! and running dev server. `main` only parses, sets up logging, runs, and
//! turns the result into an exit code; see `cli` for the commands.

mod agent;
mod cli;
mod config;
mod detect;
mod error;
mod git;
mod health;
mod lifecycle;
mod lock;
mod output;
mod ports;
mod process;
mod registry;
mod signals;
mod supervisor;

use std::process::ExitCode;

use clap::Parser;
use tracing_subscriber::EnvFilter;

fn main() -> ExitCode {
    let cli = match cli::Cli::try_parse() {
        Ok(cli) => cli,
        Err(err) => {
            let _ = err.print();
            return if err.use_stderr() {
                ExitCode::from(error::Code::Usage.as_u8())
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    init_logging(cli.verbose);
    output::set_quiet(cli.quiet);

    match cli::run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => report(&err),
    }
}

/// Logs go to stderr; `DEVSERVER_LOG` (a tracing filter) overrides `-v`.
fn init_logging(verbose: u8) {
    let level = match verbose {
        0 => "warn",
        1 => "info",
        2 => "debug",
        _ => "trace",
    };
    let filter = EnvFilter::try_from_env("DEVSERVER_LOG").unwrap_or_else(|_| EnvFilter::new(level));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(
            std::env::var_os("NO_COLOR").is_none()
                && std::io::IsTerminal::is_terminal(&std::io::stderr()),
        )
        .without_time()
        .init();
}

/// Prints the error chain once and picks the exit code.
fn report(err: &anyhow::Error) -> ExitCode {
    let broken_pipe = err
        .chain()
        .filter_map(|c| c.downcast_ref::<std::io::Error>())
        .any(|io| io.kind() == std::io::ErrorKind::BrokenPipe);
    if broken_pipe {
        return ExitCode::SUCCESS;
    }
    if let Some(error::ChildExit(code)) = err.downcast_ref() {
        return ExitCode::from(*code);
    }
    let (code, hint) = error::classify(err);
    output::error(&format!("{err:#}"), hint.as_deref());
    ExitCode::from(code.as_u8())
}
