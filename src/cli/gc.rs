//! `devserver gc`: clean up after crashed agents, without losing work.

use anyhow::Result;

use super::Context;
use crate::lifecycle::gc;
use crate::output;

/// Find and clean up what crashed or killed agents left behind.
///
/// Stops instances whose lease lapsed or whose monitor died, marks instances
/// whose server is gone as exited (freeing their ports), stops leftover
/// process trees, including descendants that left their session, and
/// prunes the admin entry of a worktree devserver created whose directory
/// was deleted (one entry at a time, never a repository-wide prune; the
/// branch is kept). Worktrees devserver did not create, locked worktrees and
/// worktrees with uncommitted changes, untracked files or unpushed commits
/// are never touched, only reported. Prints one line per finding.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Change nothing; print what would be done.
    #[arg(long)]
    dry_run: bool,

    /// Print the findings as a JSON array.
    #[arg(long)]
    json: bool,

    /// Every repository's instances, and orphaned processes of any of them.
    #[arg(long)]
    all: bool,
}

impl Args {
    pub fn run(self, context: &Context) -> Result<()> {
        let project = if self.all {
            None
        } else {
            Some(context.project()?)
        };
        let registry = context.registry_for(project.as_ref())?;
        let findings = gc::gc(&registry, project.as_ref(), self.dry_run)?;

        if self.json {
            return output::json(&findings);
        }
        if findings.is_empty() {
            output::status("nothing to clean up");
        }
        for f in &findings {
            let who = if f.agent.is_empty() {
                "orphans".to_string()
            } else {
                format!("agent `{}`", f.agent)
            };
            output::data(&format!("{}: {who} ({})", f.action, f.found))?;
        }
        Ok(())
    }
}
