//! `devserver stop`: stop instances, optionally removing their worktrees.

use anyhow::Result;

use super::Context;
use crate::error::{Code, Failure};
use crate::git::Project;
use crate::lifecycle;
use crate::output;
use crate::registry::Registry;

/// Stop an agent's server (or all of this repository's with `--all`).
///
/// Sends SIGTERM to the whole process tree, including descendants that
/// started a session of their own, waits up to `stop.grace`, then sends
/// SIGKILL. Returns as soon as the tree is gone, and reports success only
/// when no process of it is left and its port is free. Stopping a stopped
/// instance succeeds. `--remove` also removes the worktree and branch that
/// devserver created, but refuses when the worktree has uncommitted changes,
/// untracked files or commits on no other branch, unless `--force` is given.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The agent to stop.
    #[arg(
        long,
        short = 'a',
        env = "DEVSERVER_AGENT",
        value_parser = crate::agent::parse,
        allow_hyphen_values = true,
        required_unless_present = "all",
        conflicts_with = "all"
    )]
    agent: Option<String>,

    /// Stop every instance of this repository.
    #[arg(long)]
    all: bool,

    /// Also remove the worktree and the branch devserver created.
    #[arg(long)]
    remove: bool,

    /// With `--remove`: remove even when that discards work.
    #[arg(long, requires = "remove")]
    force: bool,
}

impl Args {
    pub fn run(self, context: &Context) -> Result<()> {
        let project = context.project()?;
        let registry = context.registry_for(Some(&project))?;
        let agents = match &self.agent {
            Some(agent) => vec![agent.clone()],
            None => this_projects_agents(&registry, &project)?,
        };

        let mut first_error = None;
        for agent in agents {
            if let Err(err) = self.stop_one(&registry, &project, &agent) {
                if first_error.is_some() {
                    output::error(&format!("{err:#}"), None);
                } else {
                    first_error = Some(err);
                }
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    fn stop_one(&self, registry: &Registry, project: &Project, agent: &str) -> Result<()> {
        let by = format!("`devserver stop` (pid {})", std::process::id());
        let report = lifecycle::stop(registry, project, agent, &by)?;
        if report.was_running {
            output::status(&format!(
                "stopped agent `{agent}`; port {} is free",
                report.entry.port
            ));
        } else {
            output::status(&format!("agent `{agent}` was not running"));
        }

        if self.remove {
            lifecycle::remove(registry, project, &report.entry, self.force)?;
            output::status(&format!(
                "removed the worktree `{}` and the instance of agent `{agent}`",
                report.entry.worktree.display()
            ));
        }
        Ok(())
    }
}

fn this_projects_agents(registry: &Registry, project: &Project) -> Result<Vec<String>> {
    let agents: Vec<String> = registry
        .load()?
        .instances
        .iter()
        .filter(|e| e.project == project.id)
        .map(|e| e.agent.clone())
        .collect();
    if agents.is_empty() {
        return Err(Failure::new(
            Code::NoInstance,
            format!("no instances in `{}`", project.root.display()),
        )
        .into());
    }
    Ok(agents)
}
