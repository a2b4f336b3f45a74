//! `devserver completions` and `devserver man`: generated from the CLI
//! definition itself, so they can never disagree with `--help`.

use anyhow::Result;
use clap::CommandFactory;

use super::Cli;

/// Print a shell completion script.
///
/// For example: `devserver completions bash > ~/.local/share/bash-completion/completions/devserver`,
/// `devserver completions zsh > ~/.zfunc/_devserver`, or
/// `devserver completions fish > ~/.config/fish/completions/devserver.fish`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The shell to complete for.
    shell: Shell,
}

#[derive(Clone, Copy, Debug, clap::ValueEnum)]
enum Shell {
    Bash,
    Zsh,
    Fish,
}

impl Args {
    pub fn run(self) -> Result<()> {
        let shell = match self.shell {
            Shell::Bash => clap_complete::Shell::Bash,
            Shell::Zsh => clap_complete::Shell::Zsh,
            Shell::Fish => clap_complete::Shell::Fish,
        };
        let mut script = Vec::new();
        clap_complete::generate(shell, &mut Cli::command(), "devserver", &mut script);
        crate::output::raw(&script)?;
        Ok(())
    }
}

/// Print the man page (roff), e.g. `devserver man > devserver.1`.
#[derive(Debug, clap::Args)]
pub struct ManArgs {}

impl ManArgs {
    pub fn run(self) -> Result<()> {
        let mut page = Vec::new();
        clap_mangen::Man::new(Cli::command()).render(&mut page)?;
        crate::output::raw(&page)?;
        Ok(())
    }
}
