//! `devserver url`: the URL of an agent's running instance, or of the shared server.

use anyhow::Result;

use super::{Context, MaybeAgentArg};
use crate::error::{Code, Failure};
use crate::git::Project;
use crate::lifecycle::{self, shared};
use crate::output;
use crate::registry::{Entry, Registry, State, SHARED_AGENT};

/// Print the URL of the agent's running server (or, with `--shared`, of the
/// shared server, renewing the agent's lease).
///
/// Exits with code 7 when there is no running instance; for a shared server
/// that was stopped, the message says by whom.
#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    agent: MaybeAgentArg,

    /// Print the instance as one JSON object (the `status --json` object).
    #[arg(long)]
    json: bool,
}

impl Args {
    pub fn run(self, context: &Context) -> Result<()> {
        let project = context.project()?;
        let registry = context.registry_for(Some(&project))?;
        if context.is_shared_lenient(&project) {
            return self.run_shared(&registry, &project, context);
        }
        let agent = self.agent.require()?;
        let entry = context.agent_entry(&registry, &project, agent)?;
        match entry.as_ref().filter(|e| is_running(e)) {
            Some(entry) => self.print(entry),
            None if entry.is_none() => Err(super::no_instance(agent, &project)),
            None => Err(Failure::new(
                Code::NoInstance,
                format!(
                    "agent `{agent}` is {} in `{}`",
                    entry
                        .as_ref()
                        .map_or("gone", |e| lifecycle::live_state(e).as_str()),
                    project.root.display()
                ),
            )
            .with_hint(format!("start it with `devserver spawn --agent {agent}`"))
            .into()),
        }
    }

    fn run_shared(&self, registry: &Registry, project: &Project, context: &Context) -> Result<()> {
        if let Some(agent) = &self.agent.agent {
            shared::renew(
                registry,
                project,
                SHARED_AGENT,
                agent,
                context.lease_ttl(project),
            )?;
        }
        let snapshot = registry.load()?;
        let entry = snapshot.find(&project.id, SHARED_AGENT);
        match entry.filter(|e| is_running(e)) {
            Some(entry) => self.print(entry),
            None => Err(not_running(project, entry)),
        }
    }
}

impl Args {
    fn print(&self, entry: &Entry) -> Result<()> {
        if self.json {
            return output::json(&crate::lifecycle::View::of(entry));
        }
        Ok(output::data(&entry.url)?)
    }
}

fn is_running(entry: &Entry) -> bool {
    matches!(
        lifecycle::live_state(entry),
        State::Running | State::Unhealthy | State::Starting
    )
}

/// The error for a shared server that does not run, saying why when known.
pub fn not_running(project: &Project, entry: Option<&Entry>) -> anyhow::Error {
    let why = entry
        .and_then(|e| e.note.clone())
        .map_or_else(String::new, |note| format!(" ({note})"));
    Failure::new(
        Code::NoInstance,
        format!(
            "the shared server of `{}` is not running{why}",
            project.root.display()
        ),
    )
    .with_hint("start it, as a user, with `devserver use --agent ID`")
    .into()
}
