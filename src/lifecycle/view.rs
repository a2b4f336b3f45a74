//! What `spawn`, `status` and `list` report about an instance: the JSON
//! fields scripts rely on, and the columns people read.

use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use serde::Serialize;

use std::collections::HashSet;

use super::live_state_with;
use super::shared::rfc3339;
use crate::registry::{Entry, Mode};

/// One instance as reported. The field names are part of devserver's
/// interface (documented in the README, pinned by tests).
#[derive(Clone, Debug, Serialize)]
pub struct View {
    pub agent: String,
    /// The repository's main checkout.
    pub project: PathBuf,
    pub mode: &'static str,
    pub state: &'static str,
    pub url: String,
    pub port: u16,
    pub pid: Option<u32>,
    pub worktree: PathBuf,
    pub branch: String,
    pub started_at: Option<String>,
    pub uptime_secs: Option<u64>,
    pub log: PathBuf,
    pub exit_status: Option<i32>,
    pub note: Option<String>,
    /// Shared mode only: the users whose leases keep the server up.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub users: Option<Vec<UserView>>,
}

/// A user of the shared server, as reported.
#[derive(Clone, Debug, Serialize)]
pub struct UserView {
    pub agent: String,
    /// RFC 3339.
    pub since: String,
    /// RFC 3339, or `null` for a lease that never expires.
    pub expires: Option<String>,
    pub pid: Option<u32>,
}

impl View {
    /// The view of `entry`, with its state checked live.
    pub fn of(entry: &Entry) -> View {
        View::with_ports(entry, None)
    }

    /// [`View::of`] with the listening ports read once (see `live_state_with`).
    pub fn with_ports(entry: &Entry, listening: Option<&HashSet<u16>>) -> View {
        let state = live_state_with(entry, listening);
        let running = state.is_active();
        View {
            agent: entry.agent.clone(),
            project: entry.root.clone(),
            mode: entry.mode.as_str(),
            state: state.as_str(),
            url: entry.url.clone(),
            port: entry.port,
            pid: entry.server.filter(|_| running).map(|p| p.pid),
            worktree: entry.worktree.clone(),
            branch: entry.branch.clone(),
            started_at: entry.started_at.clone(),
            uptime_secs: running
                .then(|| uptime(entry))
                .flatten()
                .map(|d| d.as_secs()),
            log: entry.log.clone(),
            exit_status: entry.exit_status.filter(|_| !running),
            note: entry.note.clone(),
            users: (entry.mode == Mode::Shared).then(|| users(entry)),
        }
    }
}

fn users(entry: &Entry) -> Vec<UserView> {
    super::shared::live_users(entry)
        .into_iter()
        .map(|lease| UserView {
            agent: lease.agent,
            since: rfc3339(lease.since),
            expires: lease.expires.map(rfc3339),
            pid: lease.pid.map(|p| p.pid),
        })
        .collect()
}

fn uptime(entry: &Entry) -> Option<Duration> {
    let started = humantime::parse_rfc3339(entry.started_at.as_deref()?).ok()?;
    SystemTime::now().duration_since(started).ok()
}
