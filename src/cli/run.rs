//! `devserver run`: a command against the agent's own server, then clean up.

use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result};

use super::spawn::Started;
use super::{AgentArg, Context};
use crate::error::{ChildExit, Code, Failure};
use crate::lifecycle::{self, shared};
use crate::process::{self, ProcRef, TreeSpec};
use crate::{output, signals};

/// Run CMD against the agent's own dev server, then stop it.
///
/// Spawns the agent's instance (with `--shared`, takes a lease on the shared
/// server), runs CMD in the agent's worktree (the main checkout when shared)
/// with `DEVSERVER_URL`, `DEVSERVER_PORT` and `DEVSERVER_AGENT` set, and
/// then stops the instance it started (or releases the lease), also when
/// CMD fails and when `run` gets SIGINT or SIGTERM (which it passes on to
/// CMD). An instance that was already running is left running. Exits with
/// CMD's status (128+N when CMD died of signal N); when the server never
/// becomes healthy, exits 4 and CMD never runs.
///
/// Example, in a CI matrix job: `devserver run --agent ci-$N -- npm test`
#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    agent: AgentArg,

    /// Leave the server running (and, shared, keep the lease) after CMD.
    #[arg(long)]
    keep: bool,

    /// Start the server on this port.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(1..))]
    port: Option<u16>,

    /// The command to run, after `--`.
    #[arg(required = true, num_args = 1.., last = true, value_name = "CMD")]
    command: Vec<String>,
}

impl Args {
    pub fn run(self, context: &Context) -> Result<()> {
        let spawn = super::spawn::Args::for_use(self.agent.clone(), None, None, self.port, false);
        // Blocked before anything starts, so a signal during warm-up is kept.
        let set = signals::block();
        let started = spawn.start(context)?;

        let outcome = self.supervise(&started, &set);
        let cleaned = self.clean_up(&started);
        let status = outcome?;
        cleaned?;
        Err(ChildExit(status).into())
    }

    /// Runs CMD to its end, passing on SIGINT, SIGTERM and SIGHUP.
    fn supervise(&self, started: &Started, set: &libc::sigset_t) -> Result<u8> {
        let token = format!("{}-{}", std::process::id(), started.entry.token);
        let mut child = self.start_command(started, &token)?;
        let tree = TreeSpec {
            root: ProcRef::of(child.id()),
            marker: Some(format!("{RUN_MARKER}={token}")),
            ..TreeSpec::default()
        };
        let mut stopping: Option<Instant> = None;
        loop {
            if let Some(status) = child.try_wait().context("cannot wait for the command")? {
                // Whatever the command left running goes too.
                let _ = process::stop_tree(&tree, started.grace);
                return Ok(exit_code(status));
            }
            let signal = signals::wait(set, Duration::from_millis(100));
            if let Some(sig @ (libc::SIGINT | libc::SIGTERM | libc::SIGHUP)) = signal {
                output::status(&format!(
                    "devserver run: passing signal {sig} on to the command"
                ));
                forward(&child, &tree, sig);
                stopping.get_or_insert_with(Instant::now);
            }
            // A command that ignores the signal gets the grace period, then SIGKILL.
            if stopping.is_some_and(|at| at.elapsed() > started.grace) {
                let _ = child.kill();
                let _ = process::stop_tree(&tree, Duration::ZERO);
            }
        }
    }

    /// Starts CMD with [`RUN_MARKER`] set to `token`, so every process it
    /// starts can be found and stopped, even once orphaned.
    fn start_command(&self, started: &Started, token: &str) -> Result<Child> {
        let entry = &started.entry;
        let (program, args) = self.command.split_first().context("no command given")?;
        let mut command = Command::new(program);
        // SAFETY: reset_in_child is async-signal-safe, as pre_exec requires.
        unsafe {
            command.pre_exec(|| {
                signals::reset_in_child();
                Ok(())
            });
        }
        command
            .args(args)
            .current_dir(&entry.worktree)
            .env("DEVSERVER_URL", &entry.url)
            .env("DEVSERVER_PORT", entry.port.to_string())
            .env("DEVSERVER_AGENT", &self.agent.agent)
            .env(RUN_MARKER, token)
            .spawn()
            .map_err(|err| {
                Failure::new(Code::Error, format!("cannot run `{program}`: {err}"))
                    .with_hint("check the command after `--`; it runs in the agent's worktree")
                    .into()
            })
    }

    /// Stops what this run started, or releases its lease.
    fn clean_up(&self, started: &Started) -> Result<()> {
        if self.keep {
            return Ok(());
        }
        let agent = &self.agent.agent;
        if started.shared {
            shared::release(&started.registry, &started.project, agent)?;
            return Ok(());
        }
        if started.existing {
            output::status(&format!(
                "agent `{agent}` was already running; left it running"
            ));
            return Ok(());
        }
        let by = format!("`devserver run` (pid {})", std::process::id());
        lifecycle::stop(&started.registry, &started.project, agent, &by)?;
        output::status(&format!("stopped agent `{agent}`"));
        Ok(())
    }
}

/// The environment variable that marks every process of one `run`'s command.
const RUN_MARKER: &str = "DEVSERVER_RUN";

/// Passes `sig` to the command and everything it started, as a terminal
/// would to its foreground group: a shell waiting for a child ignores
/// SIGINT itself, so the child must get it too.
fn forward(child: &Child, tree: &TreeSpec, sig: i32) {
    if let Ok(pid) = i32::try_from(child.id()) {
        // SAFETY: kill has no memory-safety preconditions; the child is ours
        // and not yet reaped, so its pid cannot have been reused.
        unsafe { libc::kill(pid, sig) };
    }
    for member in process::find_tree(tree) {
        let _ = member.signal(sig);
    }
}

/// The status to exit with: the command's code, or 128+N for signal N.
fn exit_code(status: std::process::ExitStatus) -> u8 {
    let code = status
        .code()
        .or_else(|| status.signal().map(|sig| 128 + sig))
        .unwrap_or(1);
    u8::try_from(code).unwrap_or(1)
}
