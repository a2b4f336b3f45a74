//! What `spawn`, `status` and `list` report about an instance: the JSON
//! fields scripts rely on, and the columns people read.

use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use serde::Serialize;

use super::live_state;
use crate::registry::Entry;

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
}

impl View {
    /// The view of `entry`, with its state checked live.
    pub fn of(entry: &Entry) -> View {
        let state = live_state(entry);
        let running = state.is_active();
        View {
            agent: entry.agent.clone(),
            project: entry.root.clone(),
            mode: "isolated",
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
        }
    }
}

fn uptime(entry: &Entry) -> Option<Duration> {
    let started = humantime::parse_rfc3339(entry.started_at.as_deref()?).ok()?;
    SystemTime::now().duration_since(started).ok()
}
