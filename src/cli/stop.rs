//! `devserver stop`: stop instances, optionally removing their worktrees.

use anyhow::Result;

use super::Context;
use crate::error::{Code, Failure};
use crate::git::Project;
use crate::lifecycle;
use crate::lifecycle::{shared, View};
use crate::output;
use crate::registry::{Registry, SHARED_AGENT};

/// Stop an agent's server (or all of this repository's with `--all`).
///
/// Sends SIGTERM to the whole process tree, including descendants that
/// started a session of their own, waits up to `stop.grace`, then sends
/// SIGKILL. Returns as soon as the tree is gone, and reports success only
/// when no process of it is left and its port is free. Stopping a stopped
/// instance succeeds. `--remove` also removes the worktree and branch that
/// devserver created, but refuses when the worktree has uncommitted changes,
/// untracked files or commits on no other branch, unless `--force` is given.
///
/// With `--shared`, stops the shared server: the agent's own lease is
/// released first, and the stop is refused with exit code 5 while other
/// users hold leases (they are listed), unless `--force`; the users' next
/// `url` or `status` then says who stopped it.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The agent to stop.
    #[arg(
        long,
        short = 'a',
        env = "DEVSERVER_AGENT",
        value_parser = crate::agent::parse,
        allow_hyphen_values = true
    )]
    agent: Option<String>,

    /// Stop every instance of this repository (`--agent` and
    /// `DEVSERVER_AGENT` are then ignored).
    #[arg(long)]
    all: bool,

    /// Also remove the worktree and the branch devserver created.
    #[arg(long)]
    remove: bool,

    /// Print the stopped instances as a JSON array.
    #[arg(long)]
    json: bool,

    /// With `--remove`: remove even when that discards work. With
    /// `--shared`: stop even while other users hold leases.
    #[arg(long)]
    force: bool,
}

impl Args {
    pub fn run(self, context: &Context) -> Result<()> {
        let project = context.project()?;
        let registry = context.registry_for(Some(&project))?;
        if context.is_shared_lenient(&project) && !self.all {
            return self.stop_shared(&registry, &project);
        }
        if self.force && !self.remove && !self.all {
            return Err(Failure::new(Code::Usage, "`--force` needs `--remove` (or `--shared`)")
                .with_hint("`--remove --force` discards the worktree's work; `--shared --force` stops a shared server in use")
                .into());
        }
        let agents = match &self.agent {
            _ if self.all => this_projects_agents(&registry, &project)?,
            Some(agent) => vec![agent.clone()],
            None => return Err(Failure::new(
                Code::Usage,
                "name the agent to stop with `--agent ID`",
            )
            .with_hint(
                "`--all` stops every instance of this repository; `--shared` the shared server",
            )
            .into()),
        };

        let mut first_error = None;
        let mut stopped = Vec::new();
        for agent in agents {
            match self.stop_one(&registry, &project, &agent) {
                Ok(view) => stopped.extend(view),
                Err(err) if first_error.is_some() => output::error(&format!("{err:#}"), None),
                Err(err) => first_error = Some(err),
            }
        }
        if self.json {
            output::json(&stopped)?;
        }
        first_error.map_or(Ok(()), Err)
    }

    fn stop_shared(&self, registry: &Registry, project: &Project) -> Result<()> {
        if self.remove {
            return Err(Failure::new(
                Code::Usage,
                "`--remove` does not apply to the shared server",
            )
            .with_hint("the shared server runs in the main checkout, which devserver never removes")
            .into());
        }
        let report = shared::stop_shared(registry, project, self.agent.as_deref(), self.force)?;
        if report.was_running {
            output::status(&format!(
                "stopped the shared server; port {} is free",
                report.entry.port
            ));
        } else {
            output::status("the shared server was not running");
        }
        Ok(())
    }

    /// Stops one instance; its view afterwards, unless it was removed.
    fn stop_one(
        &self,
        registry: &Registry,
        project: &Project,
        agent: &str,
    ) -> Result<Option<View>> {
        if agent == SHARED_AGENT {
            return self.stop_shared(registry, project).map(|()| None);
        }
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
            if report.entry.created_worktree {
                output::status(&format!(
                    "removed the worktree `{}` and the instance of agent `{agent}`",
                    report.entry.worktree.display()
                ));
            } else {
                output::status(&format!("removed the instance of agent `{agent}`"));
            }
        }
        Ok((!self.remove).then(|| View::of(&report.entry)))
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
        output::status(&format!("no instances in `{}`", project.root.display()));
    }
    Ok(agents)
}
