//! `devserver logs`: the output of an agent's server.

use std::io::{Read, Seek, SeekFrom, Write};
use std::path::Path;
use std::time::Duration;

use anyhow::{Context as _, Result};

use super::{AgentArg, Context};
use crate::lifecycle;
use crate::supervisor::rotated_path;

/// Print the last lines of the agent's server log (stdout and stderr).
///
/// The log is kept in the state directory, bounded in size (`log.max_size`;
/// the older part is kept as `<log>.1`). `--follow` keeps printing new output
/// until the instance stops.
#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    agent: AgentArg,

    /// Keep printing output as it arrives, until the instance stops.
    #[arg(long, short)]
    follow: bool,

    /// How many lines to print from the end.
    #[arg(long, short = 'n', value_name = "N", default_value_t = 100)]
    lines: usize,
}

impl Args {
    pub fn run(self, context: &Context) -> Result<()> {
        let project = context.project()?;
        let registry = context.registry_for(Some(&project))?;
        let agent = &self.agent.agent;
        let entry = context
            .agent_entry(&registry, &project, agent)?
            .ok_or_else(|| super::no_instance(agent, &project))?;

        let mut out = std::io::stdout().lock();
        out.write_all(tail(&entry.log, self.lines).as_bytes())?;
        out.flush()?;
        if self.follow {
            follow(&entry.log, &mut out, || lifecycle::is_alive(&entry))?;
        }
        Ok(())
    }
}

/// The last `lines` lines of the log and its rotated part.
fn tail(log: &Path, lines: usize) -> String {
    let mut text = fs_err::read(rotated_path(log)).unwrap_or_default();
    text.extend(fs_err::read(log).unwrap_or_default());
    let text = String::from_utf8_lossy(&text);
    let all: Vec<&str> = text.lines().collect();
    let mut out = all[all.len().saturating_sub(lines)..].join("\n");
    if !out.is_empty() {
        out.push('\n');
    }
    out
}

/// Copies new output until `alive` says the instance ended and nothing is left.
fn follow(log: &Path, out: &mut impl Write, alive: impl Fn() -> bool) -> Result<()> {
    let mut position = fs_err::metadata(log).map_or(0, |m| m.len());
    loop {
        let running = alive();
        let size = fs_err::metadata(log).map_or(0, |m| m.len());
        if size < position {
            // Rotated: the file we read is now `<log>.1`; start the new one.
            position = 0;
        }
        if size > position {
            let mut file = fs_err::File::open(log)?;
            file.seek(SeekFrom::Start(position))?;
            let mut chunk = Vec::new();
            file.read_to_end(&mut chunk)
                .context("cannot read the log")?;
            position += chunk.len() as u64;
            out.write_all(&chunk)?;
            out.flush()?;
        } else if !running {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tail_spans_the_rotated_part() {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = dir.path().join("a.log");
        fs_err::write(rotated_path(&log), "1\n2\n").expect("old");
        fs_err::write(&log, "3\n4\n").expect("new");
        assert_eq!(tail(&log, 3), "2\n3\n4\n");
        assert_eq!(tail(&log, 0), "");
    }
}
