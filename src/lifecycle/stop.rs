//! `stop`: end an instance's whole process tree and free its port; `remove`:
//! also remove the worktree and branch devserver made, unless that would
//! lose work.
//!
//! The monitor is asked first (SIGTERM): it stops the tree with the grace
//! period and records the end. Whatever is left after that (the monitor was
//! killed, or hangs) is found from the registry's record (process group,
//! session, the instance's environment marker, all checked by start time)
//! and stopped here. Success is reported only when no process of the tree
//! is left and nothing listens on the port.

use std::time::{Duration, Instant};

use anyhow::Result;

use super::instance_key;
use crate::error::{Code, Failure};
use crate::git::{self, Project};
use crate::process::{self, ProcRef};
use crate::registry::{Entry, Registry, State};
use crate::{output, ports};

/// What a stop did.
#[derive(Debug)]
pub struct StopReport {
    pub entry: Entry,
    /// False when nothing was running any more.
    pub was_running: bool,
}

/// Stops the instance of `agent`. Idempotent: a stopped instance is reported
/// as such. Errors with [`Code::NoInstance`] when the agent has no entry.
pub fn stop(registry: &Registry, project: &Project, agent: &str, by: &str) -> Result<StopReport> {
    let key = instance_key(&project.id, &project.name, agent);
    let entry = find(registry, project, agent)?;
    let grace = Duration::from_millis(entry.grace_ms);
    // A spawn of the agent under way holds this lock while it warms up;
    // waiting is bounded by the lock timeout, like every lock wait.
    let _instance = registry.lock_instance(&key, registry.lock_timeout().max(grace))?;
    stop_locked(registry, project, agent, by)
}

/// [`stop`], for a caller that holds the instance lock.
pub(super) fn stop_locked(
    registry: &Registry,
    project: &Project,
    agent: &str,
    by: &str,
) -> Result<StopReport> {
    // Read again under the instance lock: a spawn may have just finished.
    let entry = find(registry, project, agent)?;
    let grace = Duration::from_millis(entry.grace_ms);
    let was_running = super::is_alive(&entry) || process::is_tree_alive(&entry.tree());
    if was_running {
        end_tree(&entry, grace)?;
    }

    let note = format!("stopped by {by}");
    let entry = registry.update(|s| {
        let Some(e) = s.find_mut(&project.id, agent) else {
            return Ok(entry.clone());
        };
        if e.state.is_active() || e.state == State::Stopped {
            e.state = State::Stopped;
            e.note = Some(note);
        }
        e.monitor = None;
        e.server = None;
        e.spawner = None;
        e.users.clear();
        e.idle_since = None;
        Ok(e.clone())
    })?;
    Ok(StopReport { entry, was_running })
}

fn find(registry: &Registry, project: &Project, agent: &str) -> Result<Entry> {
    registry
        .load_for_write()?
        .find(&project.id, agent)
        .cloned()
        .ok_or_else(|| {
            Failure::new(
                Code::NoInstance,
                format!(
                    "agent `{agent}` has no instance in `{}`",
                    project.root.display()
                ),
            )
            .with_hint("`devserver list` shows the instances of this repository")
            .into()
        })
}

/// Stops the tree: through the monitor first, then directly.
fn end_tree(entry: &Entry, grace: Duration) -> Result<()> {
    let tree = entry.tree();
    if let Some(monitor) = entry.monitor.filter(ProcRef::is_alive) {
        let _ = monitor.signal(libc::SIGTERM);
        let deadline = Instant::now() + grace + Duration::from_secs(3);
        while monitor.is_alive() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        if monitor.is_alive() {
            output::warn(&format!(
                "the monitor (pid {}) did not stop in time; killing it",
                monitor.pid
            ));
            let _ = monitor.signal(libc::SIGKILL);
        }
    }

    let outcome = process::stop_tree(&tree, grace);
    if let (false, Some(first)) = (outcome.is_stopped(), outcome.survivors.first()) {
        return Err(Failure::new(
            Code::Error,
            format!(
                "{} processes of agent `{}` survived SIGKILL, e.g. pid {} (`{}`)",
                outcome.survivors.len(),
                entry.agent,
                first.pid,
                process::cmdline(first.pid).unwrap_or_default()
            ),
        )
        .with_hint(
            "a process in uninterruptible sleep cannot be killed until its I/O ends; try again",
        )
        .into());
    }
    ensure_port_released(entry)
}

/// Waits briefly for the port to stop answering: the tree is gone, but a
/// socket may still be closing.
fn ensure_port_released(entry: &Entry) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(2);
    while ports::accepts(entry.port) {
        if Instant::now() >= deadline {
            return Err(Failure::new(
                Code::Error,
                format!(
                    "stopped agent `{}`, but port {} still accepts connections from a process outside its tree",
                    entry.agent, entry.port
                ),
            )
            .with_hint(format!("find it with `ss -ltnp 'sport = :{}'`", entry.port))
            .into());
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    Ok(())
}

/// Removes a stopped instance's worktree and branch (when devserver made
/// them) and its entry. Refuses, unless `force`, when that would lose work.
pub fn remove(registry: &Registry, project: &Project, entry: &Entry, force: bool) -> Result<()> {
    if entry.created_worktree {
        if !force && entry.worktree.exists() {
            ensure_no_loss(project, entry)?;
        }
        // Also when the directory is gone: its admin entry and branch go too.
        let branch = entry.created_branch.then_some(entry.branch.as_str());
        git::remove_worktree(project, &entry.admin_name, &entry.worktree, branch)?;
    } else if entry.worktree.exists() {
        output::warn(&format!(
            "kept the worktree `{}`: devserver did not create it",
            entry.worktree.display()
        ));
    }
    registry.update(|s| {
        s.remove(&project.id, &entry.agent);
        Ok(())
    })
}

fn ensure_no_loss(project: &Project, entry: &Entry) -> Result<()> {
    let safety = git::inspect(project, &entry.worktree)?;
    if safety.is_clean() {
        return Ok(());
    }
    Err(Failure::new(
        Code::Error,
        format!(
            "refusing to remove the worktree `{}` of agent `{}`: it has {}",
            entry.worktree.display(),
            entry.agent,
            safety.describe()
        ),
    )
    .with_hint(format!(
        "commit or push the work first, or run `devserver stop --agent {} --remove --force` to discard it",
        entry.agent
    ))
    .into())
}
