//! `devserver release`: leave the shared server.

use anyhow::Result;

use super::{AgentArg, Context};
use crate::lifecycle::shared;
use crate::output;

/// Remove the agent's lease on the shared server.
///
/// Releasing twice, or as an agent that never registered, succeeds and
/// changes nothing else. When the last live lease goes, the server stops
/// after `shared.idle_grace` (at once when it is 0); a `use` meanwhile keeps
/// it running.
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

        let released = shared::release(&registry, &project, agent)?;
        let left = released.remaining.len();
        let message = match (released.held, released.stopped) {
            (false, _) => format!("agent `{agent}` held no lease on the shared server"),
            (true, true) => {
                format!("released `{agent}`; it was the last user, so the shared server stopped")
            }
            (true, false) if left == 0 => {
                format!("released `{agent}`; no users left, the shared server stops after its idle grace")
            }
            (true, false) => format!("released `{agent}`; {left} users remain"),
        };
        output::status(&message);
        Ok(())
    }
}
