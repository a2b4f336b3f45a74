//! `devserver use`: join (or start) the shared server as a user.

use std::time::Duration;

use anyhow::Result;

use super::{AgentArg, Context};

/// Register as a user of the shared server, starting it if needed, and print
/// its URL once it answers.
///
/// The same as `devserver spawn --shared`. The agent's lease lasts
/// `lease.ttl` (default 4 h), is renewed by any command naming the agent, and
/// with `--pid` also ends when that process dies. Twenty agents running `use`
/// at once start exactly one server. Leave with `devserver release`.
#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    agent: AgentArg,

    /// Tie the lease to this process of the agent (pid and start time).
    #[arg(long, value_name = "PID")]
    pid: Option<u32>,

    /// The lease lasts this long unless renewed (`0`: for ever).
    #[arg(long, value_name = "DURATION", value_parser = super::spawn::parse_ttl)]
    ttl: Option<Duration>,

    /// Start the shared server on this port if it is not running.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(1..))]
    port: Option<u16>,

    /// Print the instance as one JSON object.
    #[arg(long)]
    json: bool,
}

impl Args {
    pub fn run(self, context: &Context) -> Result<()> {
        let spawn =
            super::spawn::Args::for_use(self.agent, self.pid, self.ttl, self.port, self.json);
        let shared = Context {
            shared: true,
            ..context.clone()
        };
        spawn.run(&shared)
    }
}
