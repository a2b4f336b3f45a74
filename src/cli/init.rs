//! `devserver init`: write `devserver.yaml` from what the repository looks like.

use anyhow::Result;

use super::Context;
use crate::config::{self, FILE_NAME};
use crate::detect;
use crate::error::{Code, Failure};
use crate::output;

const CONFIG_TEMPLATE: &str = include_str!("../../templates/devserver.yaml");
const AGENTS_TEMPLATE: &str = include_str!("../../templates/agents.md");

/// Write `devserver.yaml` for this repository, detected from its files.
///
/// Recognises Vite-based apps (Vite, SvelteKit, React Router, Vue), Next.js,
/// Astro, Nuxt, Angular, Django, Flask, Rails and static sites, takes the
/// package manager from the lock file, and passes the port so the server
/// cannot quietly move to another one. Prints what it chose and why. Never
/// overwrites an existing file without `--force`. `--agents-md` instead
/// prints a section for an agent's instructions file (`AGENTS.md`,
/// `CLAUDE.md`) on how to get a server, find its URL and clean up.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Overwrite an existing `devserver.yaml`.
    #[arg(long)]
    force: bool,

    /// Print the section for `AGENTS.md` / `CLAUDE.md` instead.
    #[arg(long)]
    agents_md: bool,
}

impl Args {
    pub fn run(self, context: &Context) -> Result<()> {
        if self.agents_md {
            return Ok(output::data(AGENTS_TEMPLATE.trim_end())?);
        }
        let project = context.project()?;
        let path = project.root.join(FILE_NAME);
        if path.exists() && !self.force {
            return Err(
                Failure::new(Code::Error, format!("`{}` already exists", path.display()))
                    .with_hint("`devserver init --force` overwrites it")
                    .into(),
            );
        }

        let Some(detected) = detect::detect(&project.root) else {
            return Err(Failure::new(
                Code::Error,
                format!(
                    "cannot tell how to start a dev server in `{}`",
                    project.root.display()
                ),
            )
            .with_hint(format!(
                "write `{}` yourself; the smallest one is:\n  {}",
                path.display(),
                config::MINIMAL_EXAMPLE
            ))
            .into());
        };
        let why = format!("detected {} from {}", detected.framework, detected.evidence);
        let text = config::expand(
            CONFIG_TEMPLATE,
            &[
                ("why", why.as_str()),
                ("config", detected.config().trim_end()),
            ],
        );
        fs_err::write(&path, text)?;

        output::status(&format!("wrote `{}`: {why}", path.display()));
        output::status(&format!("command: {}", detected.command));
        output::data(&path.display().to_string())?;
        Ok(())
    }
}
