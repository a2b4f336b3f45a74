//! The command line: clap definitions, one module per subcommand, and the
//! [`Context`] every command resolves its project, config and registry from.
//!
//! clap types stay in this layer. Each command turns its arguments into a
//! validated plan, hands it to `lifecycle` (or reads the registry), and
//! prints the result through `output`.

mod completions;
mod gc;
mod init;
mod list;
mod logs;
mod release;
mod renew;
mod run;
mod spawn;
mod status;
mod stop;
mod url;
mod use_shared;

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Result;
use clap::{Parser, Subcommand};

use crate::config::{self, Settings};
use crate::detect;
use crate::error::{Code, Failure, EXIT_CODES_HELP};
use crate::git::{self, Project};
use crate::registry::{self, Registry};

/// Give every coding agent or CI job its own git worktree, port and dev server.
///
/// `devserver spawn --agent A` makes a worktree for agent A, reserves a port
/// no other agent can get, starts the project's dev server there and prints
/// its URL once the server answers. The registry of instances is kept per
/// user in `DEVSERVER_HOME` (default `~/.local/state/devserver`).
#[derive(Debug, Parser)]
#[command(name = "devserver", version, after_long_help = EXIT_CODES_HELP)]
pub struct Cli {
    /// Run as if devserver was started in DIR.
    #[arg(short = 'C', global = true, value_name = "DIR")]
    pub dir: Option<PathBuf>,

    /// Read this config file instead of `devserver.yaml` at the repository root.
    #[arg(long, global = true, value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// Log more to stderr: -v info, -vv debug, -vvv trace (`DEVSERVER_LOG` overrides).
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,

    /// Print only the data: no progress, no warnings.
    #[arg(short, long, global = true)]
    pub quiet: bool,

    /// Address the shared server (one for every agent) instead of the agent's
    /// own; the default when `devserver.yaml` says `mode: shared`.
    #[arg(long, global = true)]
    pub shared: bool,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    Spawn(spawn::Args),
    Use(use_shared::Args),
    Release(release::Args),
    Renew(renew::Args),
    Url(url::Args),
    List(list::Args),
    Status(status::Args),
    Logs(logs::Args),
    Stop(stop::Args),
    Gc(gc::Args),
    Run(run::Args),
    Init(init::Args),
    Completions(completions::Args),
    Man(completions::ManArgs),
    /// Supervise one server (started by `spawn`; not for direct use).
    #[command(name = "__monitor", hide = true)]
    Monitor,
}

/// The `--agent` option shared by the per-agent commands.
#[derive(Clone, Debug, clap::Args)]
pub struct AgentArg {
    /// The agent's ID (letters, digits, `.`, `_`, `-`).
    #[arg(long, short = 'a', env = "DEVSERVER_AGENT", value_parser = crate::agent::parse,
        allow_hyphen_values = true)]
    pub agent: String,
}

/// `--agent` for commands where shared mode makes it optional.
#[derive(Debug, clap::Args)]
pub struct MaybeAgentArg {
    /// The agent's ID (letters, digits, `.`, `_`, `-`); optional with `--shared`.
    #[arg(long, short = 'a', env = "DEVSERVER_AGENT", value_parser = crate::agent::parse, allow_hyphen_values = true)]
    pub agent: Option<String>,
}

impl MaybeAgentArg {
    /// The agent, which isolated mode needs.
    pub fn require(&self) -> Result<&str> {
        self.agent.as_deref().ok_or_else(|| {
            Failure::new(Code::Usage, "`--agent ID` is required")
                .with_hint("name the agent with `--agent ID` or `DEVSERVER_AGENT`, or address the shared server with `--shared`")
                .into()
        })
    }
}

/// The error for an agent without an instance in `project` (exit code 7).
pub fn no_instance(agent: &str, project: &Project) -> anyhow::Error {
    Failure::new(
        Code::NoInstance,
        format!(
            "agent `{agent}` has no instance in `{}`",
            project.root.display()
        ),
    )
    .with_hint(format!(
        "start it with `devserver spawn --agent {agent}`; `devserver list` shows the instances"
    ))
    .into()
}

/// Runs the parsed command line.
pub fn run(cli: Cli) -> Result<()> {
    // These need neither a directory nor a repository.
    match cli.command {
        Command::Completions(args) => return args.run(),
        Command::Man(args) => return args.run(),
        _ => {}
    }
    let context = Context::new(&cli)?;
    match cli.command {
        Command::Spawn(args) => args.run(&context),
        Command::Use(args) => args.run(&context),
        Command::Release(args) => args.run(&context),
        Command::Renew(args) => args.run(&context),
        Command::Url(args) => args.run(&context),
        Command::List(args) => args.run(&context),
        Command::Status(args) => args.run(&context),
        Command::Logs(args) => args.run(&context),
        Command::Stop(args) => args.run(&context),
        Command::Gc(args) => args.run(&context),
        Command::Run(args) => args.run(&context),
        Command::Init(args) => args.run(&context),
        Command::Monitor => crate::supervisor::run(),
        Command::Completions(_) | Command::Man(_) => Ok(()),
    }
}

/// What every command resolves from the global options and the environment.
#[derive(Clone, Debug)]
pub struct Context {
    dir: PathBuf,
    config: Option<PathBuf>,
    pub shared: bool,
}

impl Context {
    fn new(cli: &Cli) -> Result<Context> {
        let cwd = std::env::current_dir()
            .map_err(|err| anyhow::anyhow!("cannot read the current directory: {err}"))?;
        let dir = match &cli.dir {
            Some(dir) => cwd.join(dir),
            None => cwd.clone(),
        };
        if !dir.is_dir() {
            return Err(Failure::new(
                Code::Usage,
                format!("`-C {}`: no such directory", dir.display()),
            )
            .into());
        }
        Ok(Context {
            config: cli.config.as_ref().map(|c| dir.join(c)),
            dir,
            shared: cli.shared,
        })
    }

    /// The git project the command runs in.
    pub fn project(&self) -> Result<Project> {
        git::discover(&self.dir).map_err(|err| {
            Failure::new(Code::Error, err.to_string())
                .with_hint("run devserver inside a git repository, or point `-C DIR` at one")
                .into()
        })
    }

    /// The project's settings; an error with a minimal example when there is no config.
    pub fn settings(&self, project: &Project) -> Result<Settings> {
        let Some(path) = config::locate(&project.root, self.config.as_deref()) else {
            if let Some(detected) = detect::detect(&project.root) {
                return settings_from_detection(project, &detected);
            }
            return Err(Failure::new(
                Code::Error,
                format!("no `{}` in `{}`", config::FILE_NAME, project.root.display()),
            )
            .with_hint(format!(
                "create `{}` with at least:\n  {}\n(`config.example.yaml` lists every key)",
                project.root.join(config::FILE_NAME).display(),
                config::MINIMAL_EXAMPLE
            ))
            .into());
        };
        let mut settings = config::load(&path)?;
        if let Some(timeout) = lock_timeout_override()? {
            settings.lock_timeout = timeout;
        }
        if let Some(detected) = detect::detect(&project.root.join(&settings.cwd)) {
            settings.port_hint = detected.port_hint.to_string();
        }
        Ok(settings)
    }

    /// The registry, for commands that need no config. The lock timeout comes
    /// from `DEVSERVER_LOCK_TIMEOUT`, else the config if it loads, else 30 s.
    pub fn registry_for(&self, project: Option<&Project>) -> Result<Registry> {
        let timeout = match lock_timeout_override()? {
            Some(timeout) => timeout,
            None => project
                .and_then(|p| self.lenient_settings(p))
                .map_or(Duration::from_secs(30), |s| s.lock_timeout),
        };
        Registry::open(&registry::default_dir()?, timeout)
    }

    /// Whether the command addresses the shared server: `--shared`, or
    /// `mode: shared` in the config.
    pub fn is_shared(&self, settings: &Settings) -> bool {
        self.shared || settings.shared
    }

    /// [`Context::is_shared`] for commands that need no config: a config
    /// that does not load counts as isolated.
    pub fn is_shared_lenient(&self, project: &Project) -> bool {
        self.shared || self.lenient_settings(project).is_some_and(|s| s.shared)
    }

    fn lenient_settings(&self, project: &Project) -> Option<Settings> {
        let path = config::locate(&project.root, self.config.as_deref())?;
        config::load(&path).ok()
    }

    /// The agent's entry, after renewing its lease (any command naming the
    /// agent does). `None` when the agent has no instance.
    pub fn agent_entry(
        &self,
        registry: &Registry,
        project: &Project,
        agent: &str,
    ) -> Result<Option<crate::registry::Entry>> {
        crate::lifecycle::shared::renew(registry, project, agent, agent, self.lease_ttl(project))?;
        Ok(registry.load()?.find(&project.id, agent).cloned())
    }

    /// The lease time-to-live of the project's config (default 4 h).
    pub fn lease_ttl(&self, project: &Project) -> Option<Duration> {
        self.lenient_settings(project)
            .map_or(Some(Duration::from_secs(4 * 3600)), |s| s.lease_ttl)
    }

    /// The registry with the project's own settings.
    pub fn registry(&self, settings: &Settings) -> Result<Registry> {
        Registry::open(&registry::default_dir()?, settings.lock_timeout)
    }
}

/// Settings for a repository without a config, from what it looks like.
fn settings_from_detection(project: &Project, detected: &detect::Detected) -> Result<Settings> {
    crate::output::status(&format!(
        "no `{}`: detected {} ({}), so running `{}` (`devserver init` writes this down)",
        config::FILE_NAME,
        detected.framework,
        detected.evidence,
        detected.command
    ));
    let source = project
        .root
        .join(format!("(detected {})", detected.framework));
    let mut settings = config::parse(&detected.config(), &source)?;
    settings.port_hint = detected.port_hint.to_string();
    if let Some(timeout) = lock_timeout_override()? {
        settings.lock_timeout = timeout;
    }
    Ok(settings)
}

fn lock_timeout_override() -> Result<Option<Duration>> {
    let Ok(text) = std::env::var("DEVSERVER_LOCK_TIMEOUT") else {
        return Ok(None);
    };
    let parsed = text
        .parse::<f64>()
        .ok()
        .and_then(|secs| Duration::try_from_secs_f64(secs).ok())
        .or_else(|| humantime::parse_duration(&text).ok());
    match parsed {
        Some(timeout) => Ok(Some(timeout)),
        None => Err(Failure::new(
            Code::Usage,
            format!("`DEVSERVER_LOCK_TIMEOUT={text}` is not a duration"),
        )
        .with_hint("use seconds (`30`) or a duration such as `500ms`")
        .into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }
}
