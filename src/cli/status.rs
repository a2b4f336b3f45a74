//! `devserver status`: one agent's instance, checked live.

use anyhow::Result;

use super::{Context, MaybeAgentArg};
use crate::lifecycle::{shared, View};
use crate::output;
use crate::registry::SHARED_AGENT;

/// Show the state, URL, port, pid, worktree and log of an agent's instance.
///
/// The state is checked live: a recorded server that died shows as `exited`,
/// one that lives but does not answer as `unhealthy`. Exits with code 7 when
/// the agent has no instance.
#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    agent: MaybeAgentArg,

    /// Print the instance as one JSON object.
    #[arg(long)]
    json: bool,
}

impl Args {
    pub fn run(self, context: &Context) -> Result<()> {
        let project = context.project()?;
        let registry = context.registry_for(Some(&project))?;
        if context.is_shared_lenient(&project) {
            if let Some(agent) = &self.agent.agent {
                shared::renew(
                    &registry,
                    &project,
                    SHARED_AGENT,
                    agent,
                    context.lease_ttl(&project),
                )?;
            }
            let snapshot = registry.load()?;
            let entry = snapshot
                .find(&project.id, SHARED_AGENT)
                .ok_or_else(|| super::url::not_running(&project, None))?;
            return self.print(&View::of(entry));
        }
        let agent = self.agent.require()?;
        let entry = context
            .agent_entry(&registry, &project, agent)?
            .ok_or_else(|| super::no_instance(agent, &project))?;
        self.print(&View::of(&entry))
    }

    fn print(&self, view: &View) -> Result<()> {
        if self.json {
            return output::json(view);
        }
        Ok(output::data(&describe(view))?)
    }
}

fn describe(view: &View) -> String {
    let mut lines = vec![
        format!("agent:     {}", view.agent),
        format!("state:     {}", view.state),
        format!("url:       {}", view.url),
        format!("port:      {}", view.port),
    ];
    if let Some(pid) = view.pid {
        lines.push(format!("pid:       {pid}"));
    }
    lines.push(format!("branch:    {}", view.branch));
    lines.push(format!("worktree:  {}", view.worktree.display()));
    if let Some(started) = &view.started_at {
        lines.push(format!("started:   {started}"));
    }
    if let Some(status) = view.exit_status {
        lines.push(format!(
            "exit:      {}",
            crate::supervisor::describe_status(status)
        ));
    }
    if let Some(note) = &view.note {
        lines.push(format!("note:      {note}"));
    }
    for user in view.users.iter().flatten() {
        let expires = user.expires.as_deref().unwrap_or("never");
        lines.push(format!(
            "user:      {} (since {}, expires {expires})",
            user.agent, user.since
        ));
    }
    lines.push(format!("log:       {}", view.log.display()));
    lines.join("\n")
}
