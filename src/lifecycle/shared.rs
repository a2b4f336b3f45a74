//! Shared mode: one server in the main checkout, kept up by its users' leases.
//!
//! A user is a [`Lease`] in the shared instance's registry entry (agent,
//! since, expiry, optionally a process it is tied to), never a bare counter,
//! so a crashed agent cannot keep the server up for ever and no count can
//! drift. `use` adds a lease and starts the server if needed (see `spawn`),
//! `release` removes one, and the server stops when no live lease is left:
//! at once when `shared.idle_grace` is 0, else after the grace, by its
//! monitor.
//!
//! Every start and stop of the shared server happens under its instance
//! lock, so a `use` racing the last `release` either keeps the server up or
//! starts a new one; it never returns the URL of a server being stopped.

use std::time::Duration;

use anyhow::Result;

use super::stop::{stop_locked, StopReport};
use super::{instance_key, is_alive};
use crate::error::{Code, Failure};
use crate::git::Project;
use crate::registry::{unix_secs, Entry, Lease, Registry, SHARED_AGENT};

/// What a `release` did.
#[derive(Debug)]
pub struct Released {
    /// Whether the agent held a lease.
    pub held: bool,
    /// The live leases left.
    pub remaining: Vec<Lease>,
    /// Whether the server was stopped because the last user left.
    pub stopped: bool,
}

fn lock_shared(registry: &Registry, project: &Project) -> Result<crate::lock::FileLock> {
    let key = instance_key(&project.id, &project.name, SHARED_AGENT);
    registry.lock_instance(&key, Duration::from_secs(180))
}

/// Removes `agent`'s lease. Idempotent; a user that never registered
/// changes nothing. Stops the server when it was the last live lease and
/// the idle grace is 0; otherwise the monitor stops it after the grace.
pub fn release(registry: &Registry, project: &Project, agent: &str) -> Result<Released> {
    let _shared = lock_shared(registry, project)?;
    let now = unix_secs();
    let found = registry.update(|s| {
        let Some(entry) = s.find_mut(&project.id, SHARED_AGENT) else {
            return Ok(None);
        };
        let held = entry.users.iter().any(|l| l.agent == agent);
        entry.users.retain(|l| l.agent != agent && l.is_live(now));
        if entry.users.is_empty() && entry.state.is_active() && entry.idle_since.is_none() {
            entry.idle_since = Some(now);
        }
        Ok(Some((held, entry.clone())))
    })?;
    let Some((held, entry)) = found else {
        return Ok(Released {
            held: false,
            remaining: Vec::new(),
            stopped: false,
        });
    };

    let idle_now = entry.users.is_empty() && entry.idle_grace_ms == Some(0);
    let stopped = idle_now && entry.state.is_active() && is_alive(&entry);
    if stopped {
        let by = format!("the release of its last user `{agent}`");
        stop_locked(registry, project, SHARED_AGENT, &by)?;
    }
    Ok(Released {
        held,
        remaining: entry.users,
        stopped,
    })
}

/// Stops the shared server for `by` (an agent, or `None`). Releases the
/// agent's own lease first; refuses with [`Code::InUse`] while other live
/// leases remain, unless `force`.
pub fn stop_shared(
    registry: &Registry,
    project: &Project,
    by: Option<&str>,
    force: bool,
) -> Result<StopReport> {
    let _shared = lock_shared(registry, project)?;
    let now = unix_secs();
    let others = registry.update(|s| {
        let Some(entry) = s.find_mut(&project.id, SHARED_AGENT) else {
            return Ok(Vec::new());
        };
        entry
            .users
            .retain(|l| Some(l.agent.as_str()) != by && l.is_live(now));
        Ok(entry.users.clone())
    })?;

    let who = by.map_or_else(
        || format!("`devserver stop` (pid {})", std::process::id()),
        |a| format!("agent `{a}`"),
    );
    if !others.is_empty() && !force {
        return Err(in_use(&others));
    }
    let how = if others.is_empty() {
        String::new()
    } else {
        format!(" (forced, while {} held leases)", describe_users(&others))
    };
    stop_locked(registry, project, SHARED_AGENT, &format!("{who}{how}"))
}

fn in_use(users: &[Lease]) -> anyhow::Error {
    let lines: Vec<String> = users.iter().map(describe_lease).collect();
    Failure::new(
        Code::InUse,
        format!(
            "refusing to stop the shared server: {} still {}:\n{}",
            if users.len() == 1 {
                "1 other user".to_string()
            } else {
                format!("{} other users", users.len())
            },
            if users.len() == 1 {
                "holds a lease"
            } else {
                "hold leases"
            },
            lines.join("\n")
        ),
    )
    .with_hint("each user leaves with `devserver release --agent ID`; `--force` stops it anyway")
    .into()
}

fn describe_users(users: &[Lease]) -> String {
    let names: Vec<String> = users.iter().map(|l| format!("`{}`", l.agent)).collect();
    names.join(", ")
}

fn describe_lease(lease: &Lease) -> String {
    let since = rfc3339(lease.since);
    let expires = lease.expires.map_or_else(|| "never".into(), rfc3339);
    let pid = lease
        .pid
        .map_or_else(String::new, |p| format!(", tied to pid {}", p.pid));
    format!("  {} (since {since}, expires {expires}{pid})", lease.agent)
}

/// Unix seconds as RFC 3339.
pub fn rfc3339(secs: u64) -> String {
    let at = std::time::UNIX_EPOCH + Duration::from_secs(secs);
    humantime::format_rfc3339_seconds(at).to_string()
}

/// Renews `agent`'s lease on the instance `instance` (the agent itself, or
/// [`SHARED_AGENT`]), if it holds a live one; any command naming the agent
/// does this. To keep frequent calls such as `url` read-only, the registry
/// is written only when that moves the expiry by a minute or more.
pub fn renew(
    registry: &Registry,
    project: &Project,
    instance: &str,
    agent: &str,
    ttl: Option<Duration>,
) -> Result<()> {
    let now = unix_secs();
    let wanted = ttl.map(|t| now + t.as_secs().max(1));
    let holds = |s: &crate::registry::Snapshot| {
        s.find(&project.id, instance)
            .and_then(|e| e.users.iter().find(|l| l.agent == agent && l.is_live(now)))
            .is_some_and(|l| is_worth_renewing(l.expires, wanted))
    };
    if !holds(&registry.load()?) {
        return Ok(());
    }
    registry.update(|s| {
        let lease = s.find_mut(&project.id, instance).and_then(|e| {
            e.users
                .iter_mut()
                .find(|l| l.agent == agent && l.is_live(now))
        });
        if let Some(lease) = lease {
            lease.expires = wanted;
        }
        Ok(())
    })
}

fn is_worth_renewing(current: Option<u64>, wanted: Option<u64>) -> bool {
    match (current, wanted) {
        (Some(now), Some(new)) => new >= now + 60,
        (None, None) => false,
        _ => true,
    }
}

/// A new lease for `agent`, expiring after `ttl`, tied to `pid` if given.
pub fn lease(agent: &str, ttl: Option<Duration>, pid: Option<crate::process::ProcRef>) -> Lease {
    let now = unix_secs();
    Lease {
        agent: agent.to_string(),
        since: now,
        expires: ttl.map(|t| now + t.as_secs().max(1)),
        pid,
    }
}

/// The live leases of a shared entry.
pub fn live_users(entry: &Entry) -> Vec<Lease> {
    let now = unix_secs();
    entry
        .users
        .iter()
        .filter(|l| l.is_live(now))
        .cloned()
        .collect()
}
