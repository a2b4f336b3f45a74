//! `devserver spawn`: give an agent its worktree, port and running server.

use std::path::Path;

use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, Result};

use super::{AgentArg, Context};
use crate::config::{self, Settings};
use crate::error::{Code, Failure};
use crate::git::{self, BranchChoice, Project};
use crate::lifecycle::{self, shared, SpawnPlan, View};
use crate::output;
use crate::process::ProcRef;
use crate::registry::{Lease, Mode, Registry, SHARED_AGENT};

/// Start (or find) the agent's own dev server and print its URL.
///
/// Creates the worktree `../<repo>.worktrees/<agent>` on branch
/// `devserver/<agent>` (from HEAD or `--base`), or reuses the agent's existing
/// worktree as it is. Reserves a free port (the agent's previous one when it
/// is free), starts the configured `command` there in the background, and
/// waits until the server answers. Prints the URL on stdout (with `--json`,
/// the instance as JSON). A second spawn of a running agent prints the same
/// instance. On failure, whatever this spawn created is removed again and the
/// exit code says why (4: the server did not become healthy; 6: no free port).
#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    agent: AgentArg,

    /// Check out this existing branch instead of creating `devserver/<agent>`.
    #[arg(long, value_name = "NAME", conflicts_with = "base")]
    branch: Option<String>,

    /// Start the agent's new branch from this revision (default: `worktree.base`, else HEAD).
    #[arg(long, value_name = "REF")]
    base: Option<String>,

    /// Use this port; fail with exit code 6 if it is taken.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(1..))]
    port: Option<u16>,

    /// Tie the agent's lease to this process (pid and start time): the server
    /// stops when it dies.
    #[arg(long, value_name = "PID")]
    pid: Option<u32>,

    /// The lease lasts this long unless renewed (default `lease.ttl`; `0`: for ever).
    #[arg(long, value_name = "DURATION", value_parser = parse_ttl)]
    ttl: Option<Duration>,

    /// Print the instance as one JSON object.
    #[arg(long)]
    json: bool,
}

impl Args {
    /// The arguments of `use`, which is `spawn --shared`.
    pub fn for_use(
        agent: AgentArg,
        pid: Option<u32>,
        ttl: Option<Duration>,
        port: Option<u16>,
        json: bool,
    ) -> Args {
        Args {
            agent,
            branch: None,
            base: None,
            port,
            pid,
            ttl,
            json,
        }
    }

    pub fn run(self, context: &Context) -> Result<()> {
        let started = self.start(context)?;
        if self.json {
            output::json(&View::of(&started.entry))
        } else {
            Ok(output::data(&started.entry.url)?)
        }
    }

    /// Spawns (or, shared, uses) the instance and says so on stderr.
    pub fn start(&self, context: &Context) -> Result<Started> {
        let project = context.project()?;
        let settings = context.settings(&project)?;
        let shared = context.is_shared(&settings);
        let plan = if shared {
            self.shared_plan(project, settings)?
        } else {
            self.plan(project, settings)?
        };
        let registry = context.registry(&plan.settings)?;
        let spinner =
            output::Spinner::start(&format!("starting the server of `{}`", self.agent.agent));
        let spawned = lifecycle::spawn(&registry, &plan);
        drop(spinner);
        let spawned = spawned?;
        self.announce(&spawned.entry, spawned.existing, shared);
        Ok(Started {
            entry: spawned.entry,
            existing: spawned.existing,
            shared,
            registry,
            project: plan.project,
            grace: plan.settings.stop_grace,
        })
    }

    fn announce(&self, entry: &crate::registry::Entry, existing: bool, shared: bool) {
        if shared {
            let users = shared::live_users(entry).len();
            let how = if existing { "joined" } else { "started" };
            output::status(&format!(
                "agent `{}` {how} the shared server at {} ({users} users)",
                self.agent.agent, entry.url
            ));
        } else if existing {
            output::status(&format!(
                "agent `{}` is already running at {}",
                entry.agent, entry.url
            ));
        } else {
            output::status(&format!(
                "agent `{}` is running at {} (worktree `{}`, branch `{}`)",
                entry.agent,
                entry.url,
                entry.worktree.display(),
                entry.branch
            ));
        }
    }

    /// The plan of a `use`: the shared server in the main checkout, and a
    /// lease for the agent.
    fn shared_plan(&self, project: Project, settings: Settings) -> Result<SpawnPlan> {
        ensure_command(&settings, &project.root)?;
        if self.branch.is_some() || self.base.is_some() {
            return Err(Failure::new(
                Code::Usage,
                "`--branch` and `--base` do not apply to the shared server",
            )
            .with_hint("the shared server runs in the main checkout as it is")
            .into());
        }
        let user = self.lease(&settings)?;
        let name = git::head_name(&project.root).unwrap_or_default();
        Ok(SpawnPlan {
            interrupted: interrupt_flag()?,
            worktree: project.root.clone(),
            project,
            settings,
            agent: SHARED_AGENT.to_string(),
            mode: Mode::Shared,
            user: Some(user),
            branch: BranchChoice::Existing { name },
            port: self.port,
        })
    }

    /// The agent's lease: `--ttl` (else `lease.ttl`), tied to `--pid`.
    fn lease(&self, settings: &Settings) -> Result<Lease> {
        let pid = match self.pid {
            Some(pid) => Some(ProcRef::of(pid).ok_or_else(|| {
                Failure::new(Code::Usage, format!("`--pid {pid}`: no such process"))
                    .with_hint("give the pid of the agent's own long-lived process")
            })?),
            None => None,
        };
        let ttl = self
            .ttl
            .map_or(settings.lease_ttl, |t| (!t.is_zero()).then_some(t));
        Ok(shared::lease(&self.agent.agent, ttl, pid))
    }

    /// Validates everything before anything is created.
    fn plan(&self, project: Project, settings: Settings) -> Result<SpawnPlan> {
        let user = self.lease(&settings)?;
        let agent = self.agent.agent.clone();
        ensure_command(&settings, &project.root)?;

        let branch = match &self.branch {
            Some(name) => existing_branch(&project, name)?,
            None => {
                let base = self
                    .base
                    .clone()
                    .unwrap_or_else(|| settings.worktree.base.clone());
                ensure_base(&project, &base)?;
                let name = config::expand(&settings.worktree.branch, &[("agent", &agent)]);
                BranchChoice::New { name, base }
            }
        };

        let dir = config::expand(
            &settings.worktree.dir,
            &[("name", &project.name), ("agent", &agent)],
        );
        let worktree = lifecycle::normalize(&project.root.join(dir).join(&agent));
        Ok(SpawnPlan {
            interrupted: interrupt_flag()?,
            project,
            settings,
            agent,
            mode: Mode::Isolated,
            user: Some(user),
            branch,
            port: self.port,
            worktree,
        })
    }
}

/// A flag that SIGINT, SIGTERM and SIGHUP set instead of killing devserver,
/// so a spawn can undo what it made before it exits.
fn interrupt_flag() -> Result<Arc<AtomicBool>> {
    let flag = Arc::new(AtomicBool::new(false));
    for signal in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
        signal_hook::flag::register(signal, Arc::clone(&flag))
            .context("cannot install the signal handlers")?;
    }
    Ok(flag)
}

/// A spawned (or joined) instance, for commands that go on using it.
pub struct Started {
    pub entry: crate::registry::Entry,
    /// Whether it was already running (so this command did not start it).
    pub existing: bool,
    pub shared: bool,
    pub registry: Registry,
    pub project: Project,
    pub grace: Duration,
}

/// Parses a lease time-to-live: seconds, or a duration such as `30m`.
pub(super) fn parse_ttl(text: &str) -> Result<Duration, String> {
    text.parse::<u64>()
        .map(Duration::from_secs)
        .or_else(|_| humantime::parse_duration(text))
        .map_err(|_| format!("`{text}` is not a duration (use seconds, or e.g. `30m`, `4h`)"))
}

fn existing_branch(project: &Project, name: &str) -> Result<BranchChoice> {
    if !git::branch_exists(project, name) {
        return Err(Failure::new(Code::Error, format!("no branch `{name}` in `{}`", project.root.display()))
            .with_hint("`git branch` lists the local branches; leave out `--branch` to get `devserver/<agent>`")
            .into());
    }
    Ok(BranchChoice::Existing {
        name: name.to_string(),
    })
}

fn ensure_base(project: &Project, base: &str) -> Result<()> {
    git::resolve_commit(project, base).map(drop).map_err(|err| {
        Failure::new(Code::Error, err.to_string())
            .with_hint("`--base` (or `worktree.base`) takes a branch, tag or commit; `git branch -a` lists branches")
            .into()
    })
}

/// Checks that the program the command starts with exists, so a typo fails
/// here with a clear message instead of as an unhealthy server.
fn ensure_command(settings: &Settings, root: &Path) -> Result<()> {
    let Some(program) = first_program(&settings.command) else {
        return Ok(());
    };
    let cwd = root.join(&settings.cwd);
    let path = std::env::var_os("PATH");
    if which::which_in(program, path, &cwd).is_ok() {
        return Ok(());
    }
    Err(Failure::new(
        Code::Error,
        format!(
            "the command `{}` needs `{program}`, which is not on PATH",
            settings.command
        ),
    )
    .with_hint(format!(
        "install `{program}`, or fix `command` in `{}`",
        settings.source.display()
    ))
    .into())
}

/// The program a shell command runs first, when that can be told without a
/// shell: skips `VAR=value` prefixes, and gives up on shell syntax.
fn first_program(command: &str) -> Option<&str> {
    const BUILTINS: &[&str] = &[
        "exec", "cd", "export", "env", "if", "for", "while", "case", "set", "trap", "test", "[",
        "{", "(", "true", "false", ".", "source", "eval", "command", "nohup", "time", "!",
    ];
    let word = command
        .split_whitespace()
        .find(|w| !w.contains('=') || w.starts_with('='))?;
    let is_plain = !word.chars().any(|c| "$`'\"\\|&;<>(){}*?~".contains(c));
    (is_plain && !BUILTINS.contains(&word)).then_some(word)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rstest::rstest;

    #[rstest]
    #[case("npm run dev", Some("npm"))]
    #[case("PORT=1 FOO=bar python3 -m http.server", Some("python3"))]
    #[case("./node_modules/.bin/vite --port 1", Some("./node_modules/.bin/vite"))]
    #[case("exec vite", None)]
    #[case("$HOME/bin/serve", None)]
    #[case("(cd web && npm run dev)", None)]
    #[case("", None)]
    fn first_programs(#[case] command: &str, #[case] expected: Option<&str>) {
        assert_eq!(first_program(command), expected);
    }
}
