//! `devserver spawn`: give an agent its worktree, port and running server.

use std::path::Path;

use anyhow::Result;

use super::{AgentArg, Context};
use crate::config::{self, Settings};
use crate::error::{Code, Failure};
use crate::git::{self, BranchChoice, Project};
use crate::lifecycle::{self, SpawnPlan, View};
use crate::output;

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

    /// Print the instance as one JSON object.
    #[arg(long)]
    json: bool,
}

impl Args {
    pub fn run(self, context: &Context) -> Result<()> {
        let project = context.project()?;
        let settings = context.settings(&project)?;
        let plan = self.plan(project, settings)?;
        let registry = context.registry(&plan.settings)?;

        let spawned = lifecycle::spawn(&registry, &plan)?;
        let entry = &spawned.entry;
        if spawned.existing {
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

        if self.json {
            output::json(&View::of(entry))
        } else {
            Ok(output::data(&entry.url)?)
        }
    }

    /// Validates everything before anything is created.
    fn plan(&self, project: Project, settings: Settings) -> Result<SpawnPlan> {
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
            project,
            settings,
            agent,
            branch,
            port: self.port,
            worktree,
        })
    }
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
