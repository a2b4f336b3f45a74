//! `devserver list`: the instances of this repository, or of all.

use std::time::Duration;

use anyhow::Result;

use super::Context;
use crate::lifecycle::View;
use crate::output;
use crate::process;

/// List instances with their live state: agent, state, URL, port, pid,
/// branch, worktree and uptime.
///
/// Shows this repository's instances, or every repository's with `--all`.
/// Each state is checked against the running processes, not only read back.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Print a JSON array of instances.
    #[arg(long)]
    json: bool,

    /// List the instances of every repository.
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

        let snapshot = registry.load()?;
        // One read of the kernel's socket tables instead of a probe per entry.
        let listening = process::all_listening_ports();
        let views: Vec<View> = snapshot
            .instances
            .iter()
            .filter(|e| project.as_ref().is_none_or(|p| e.project == p.id))
            .map(|e| View::with_ports(e, listening.as_ref()))
            .collect();

        if self.json {
            return output::json(&views);
        }
        if views.is_empty() {
            output::status("no instances");
            return Ok(());
        }
        Ok(output::data(&table(&views, self.all))?)
    }
}

fn table(views: &[View], all: bool) -> String {
    let mut header = vec![
        "AGENT", "STATE", "URL", "PORT", "PID", "BRANCH", "UPTIME", "WORKTREE",
    ];
    if all {
        header.push("PROJECT");
    }
    let rows: Vec<Vec<String>> = views
        .iter()
        .map(|v| {
            let mut row = vec![
                v.agent.clone(),
                v.state.to_string(),
                v.url.clone(),
                v.port.to_string(),
                v.pid.map_or_else(|| "-".into(), |p| p.to_string()),
                v.branch.clone(),
                v.uptime_secs.map_or_else(
                    || "-".into(),
                    |s| humantime::format_duration(Duration::from_secs(s)).to_string(),
                ),
                v.worktree.display().to_string(),
            ];
            if all {
                row.push(v.project.display().to_string());
            }
            row
        })
        .collect();
    output::table(&header, &rows)
}
