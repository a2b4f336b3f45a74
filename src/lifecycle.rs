//! The life of an instance: spawn, health, stop, and what is reported.
//!
//! This is where the registry, git, the monitor and the process tree meet.
//! Commands build a plan (`SpawnPlan`), and the functions here carry it out,
//! taking the locks in a fixed order: the per-instance lock first (held for a
//! whole spawn or stop, so two spawns of one agent get one instance), then
//! the registry lock, only for short read-modify-write steps.
//!
//! Not here: argument parsing and printing (`cli`), the storage format
//! (`registry`), signalling (`process`).

pub mod gc;
pub mod shared;
mod spawn;
mod stop;
mod view;

use std::collections::HashSet;
use std::path::{Component, Path, PathBuf};

pub use spawn::{spawn, SpawnPlan};
pub use stop::{remove, stop};
pub use view::View;

use crate::ports;
use crate::registry::{stable_hash, Entry, State};

/// The name used for an instance's lock and log files.
pub fn instance_key(project: &Path, project_name: &str, agent: &str) -> String {
    let hash = stable_hash(&[project.as_os_str().as_encoded_bytes()]);
    let name: String = project_name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' {
                c
            } else {
                '_'
            }
        })
        .take(32)
        .collect();
    format!("{name}-{:08x}-{agent}", hash as u32)
}

/// The state of `entry` checked against reality, cheaply: recorded
/// processes by fingerprint, and for a running instance, its port.
pub fn live_state(entry: &Entry) -> State {
    live_state_with(entry, None)
}

/// [`live_state`], with the machine's listening ports read once for many
/// entries (`list`); `None` probes the port with a connection instead.
pub fn live_state_with(entry: &Entry, listening: Option<&HashSet<u16>>) -> State {
    if !entry.state.is_active() {
        return entry.state;
    }
    if !is_alive(entry) {
        return State::Exited;
    }
    // A server whose monitor died is no longer supervised: `gc` stops it.
    if entry.monitor.is_some_and(|m| !m.is_alive()) {
        return State::Unhealthy;
    }
    let answers = || {
        listening.map_or_else(
            || ports::accepts(entry.port),
            |all| all.contains(&entry.port),
        )
    };
    // A spawn that died after starting its server never recorded the outcome.
    let spawn_died = entry.state == State::Starting && entry.spawner.is_none_or(|p| !p.is_alive());
    match entry.state {
        State::Starting if spawn_died => {
            if answers() {
                State::Running
            } else {
                State::Unhealthy
            }
        }
        State::Running | State::Unhealthy if !answers() => State::Unhealthy,
        State::Unhealthy => State::Running,
        state => state,
    }
}

/// Whether the instance's monitor or top server process still runs (or, while
/// starting, the CLI doing the spawn). Cheap: no scan of all processes.
pub fn is_alive(entry: &Entry) -> bool {
    [entry.monitor, entry.server, entry.spawner]
        .iter()
        .flatten()
        .any(|p| p.is_alive())
}

/// Whether `entry` keeps its port reserved against other spawns.
pub fn holds_port(entry: &Entry) -> bool {
    entry.state.is_active() && is_alive(entry)
}

/// Joins and cleans `path` without touching the filesystem (`..` removed).
pub fn normalize(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for part in path.components() {
        match part {
            Component::ParentDir => {
                out.pop();
            }
            Component::CurDir => {}
            other => out.push(other),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_file_safe_and_distinct() {
        let a = instance_key(Path::new("/r/a/.git"), "my app", "x");
        let b = instance_key(Path::new("/r/b/.git"), "my app", "x");
        assert_ne!(a, b);
        assert!(a.starts_with("my_app-") && a.ends_with("-x"), "{a}");
    }

    #[test]
    fn normalize_removes_dots() {
        assert_eq!(
            normalize(Path::new("/a/b/../c/./d")),
            PathBuf::from("/a/c/d")
        );
    }
}
