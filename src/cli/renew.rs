//! `devserver renew`: extend an agent's lease.

use std::time::Duration;

use anyhow::Result;

use super::{AgentArg, Context};
use crate::error::{Code, Failure};
use crate::lifecycle::shared;
use crate::output;
use crate::registry::{unix_secs, SHARED_AGENT};

/// Renew the agent's lease so its server is not stopped when the lease runs out.
///
/// Every instance holds its agent's lease for `lease.ttl` (default 4 h); any
/// command naming the agent renews it too. With `--shared`, renews the
/// agent's lease on the shared server. Exits with code 7 when the agent holds
/// no live lease.
#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    agent: AgentArg,

    /// Renew for this long instead of `lease.ttl` (`0`: for ever).
    #[arg(long, value_name = "DURATION", value_parser = super::spawn::parse_ttl)]
    ttl: Option<Duration>,
}

impl Args {
    pub fn run(self, context: &Context) -> Result<()> {
        let project = context.project()?;
        let registry = context.registry_for(Some(&project))?;
        let agent = &self.agent.agent;
        let instance = if context.is_shared_lenient(&project) {
            SHARED_AGENT
        } else {
            agent
        };
        let ttl = self.ttl.map_or_else(
            || context.lease_ttl(&project),
            |t| (!t.is_zero()).then_some(t),
        );

        let now = unix_secs();
        let renewed = registry.update(|s| {
            let lease = s
                .find_mut(&project.id, instance)
                .filter(|e| e.state.is_active())
                .and_then(|e| {
                    e.users
                        .iter_mut()
                        .find(|l| l.agent == *agent && l.is_live(now))
                });
            Ok(lease.map(|l| {
                l.expires = ttl.map(|t| now + t.as_secs().max(1));
                l.expires
            }))
        })?;
        match renewed {
            Some(expires) => {
                let until = expires.map_or_else(
                    || "never expires".into(),
                    |at| format!("expires {}", shared::rfc3339(at)),
                );
                output::status(&format!("renewed the lease of agent `{agent}`; it {until}"));
                Ok(())
            }
            None => Err(Failure::new(
                Code::NoInstance,
                format!("agent `{agent}` holds no live lease"),
            )
            .with_hint(format!("`devserver spawn --agent {agent}` takes one"))
            .into()),
        }
    }
}
