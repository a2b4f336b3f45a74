//! `devserver url`: the URL of an agent's running instance.

use anyhow::Result;

use super::{AgentArg, Context};
use crate::error::{Code, Failure};
use crate::lifecycle;
use crate::output;
use crate::registry::State;

/// Print the URL of the agent's running server.
///
/// Exits with code 7 when the agent has no running instance in this
/// repository.
#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    agent: AgentArg,
}

impl Args {
    pub fn run(self, context: &Context) -> Result<()> {
        let project = context.project()?;
        let registry = context.registry_for(Some(&project))?;
        let agent = &self.agent.agent;

        let snapshot = registry.load()?;
        let entry = snapshot.find(&project.id, agent);
        let state = entry.map(lifecycle::live_state);
        match (entry, state) {
            (Some(entry), Some(State::Running | State::Unhealthy | State::Starting)) => {
                Ok(output::data(&entry.url)?)
            }
            (_, state) => {
                let why = state.map_or("has no instance".into(), |s| format!("is {}", s.as_str()));
                Err(Failure::new(
                    Code::NoInstance,
                    format!("agent `{agent}` {why} in `{}`", project.root.display()),
                )
                .with_hint(format!("start it with `devserver spawn --agent {agent}`"))
                .into())
            }
        }
    }
}
