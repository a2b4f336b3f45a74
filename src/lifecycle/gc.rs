//! `gc`: find what crashed agents and killed processes left behind, stop it,
//! free its ports, and never lose anyone's work.
//!
//! For each registry entry in scope, under its instance lock (an instance
//! whose lock is held, by a spawn under way say, is skipped this time):
//!
//! - an active instance whose lease lapsed (expired, or its agent's process
//!   died) is stopped;
//! - an active instance whose monitor and server are gone is marked exited,
//!   freeing its port, and whatever of its tree survived (found by session,
//!   group and environment marker, all checked by start time) is stopped;
//! - a spawn that was killed part-way has its processes stopped and its
//!   reservation dropped;
//! - a worktree devserver created whose directory was deleted by hand has
//!   its one admin entry pruned (never a repository-wide prune) and its
//!   entry dropped; the branch is kept, with any commits on it.
//!
//! Worktrees devserver did not create, locked ones, and ones with work in
//! them are only ever reported. Then processes that carry this registry's
//! marker but belong to no entry (orphans of a spawn killed with SIGKILL)
//! are stopped. `--dry-run` changes nothing and says what it would do.

use std::collections::HashSet;
use std::time::Duration;

use anyhow::Result;
use serde::Serialize;

use super::shared::live_users;
use super::stop::stop_locked;
use super::{instance_key, is_alive};
use crate::git::{self, Project};
use crate::lock::FileLock;
use crate::process::{self, TreeSpec};
use crate::registry::{unix_secs, Entry, Mode, Registry, State};

/// One thing `gc` found, and what it did (or would do) about it.
#[derive(Clone, Debug, Serialize)]
pub struct Finding {
    pub agent: String,
    /// The repository's main checkout, when the finding belongs to one.
    pub project: Option<std::path::PathBuf>,
    /// What was found.
    pub found: String,
    /// What was done: `stopped`, `marked exited`, `pruned`, `skipped`, ...
    pub action: String,
    /// Whether anything was changed (false with `--dry-run` and for reports).
    pub changed: bool,
}

/// Runs the collection over `scope` (one project, or every project).
pub fn gc(registry: &Registry, scope: Option<&Project>, dry_run: bool) -> Result<Vec<Finding>> {
    let snapshot = registry.load_for_write()?;
    let mut findings = Vec::new();
    for entry in snapshot
        .instances
        .iter()
        .filter(|e| scope.is_none_or(|p| e.project == p.id))
    {
        findings.extend(collect_entry(registry, entry, dry_run)?);
    }
    findings.extend(collect_orphans(registry, dry_run)?);
    if !dry_run {
        let removed = registry.remove_stale_temp_files();
        if removed > 0 {
            findings.push(orphan(
                &format!("{removed} temporary registry files of killed writers"),
                "removed them",
                true,
            ));
        }
    }
    Ok(findings)
}

fn collect_entry(registry: &Registry, entry: &Entry, dry_run: bool) -> Result<Vec<Finding>> {
    let name = entry
        .root
        .file_name()
        .map(|n| n.to_string_lossy().to_string())
        .unwrap_or_default();
    let key = instance_key(&entry.project, &name, &entry.agent);
    let Some(_lock) = FileLock::try_acquire(&registry.instance_lock_path(&key))? else {
        return Ok(vec![finding(
            entry,
            "busy (a spawn or stop is under way)",
            "skipped",
            false,
        )]);
    };

    // Read again under the lock: the entry may have changed since.
    let snapshot = registry.load()?;
    let Some(entry) = snapshot.find(&entry.project, &entry.agent).cloned() else {
        return Ok(Vec::new());
    };
    let project = project_of(&entry);
    let mut found = Vec::new();
    if let Some(f) = collect_processes(registry, &project, &entry, dry_run)? {
        found.push(f);
    }
    if let Some(f) = collect_worktree(registry, &project, &entry, dry_run)? {
        found.push(f);
    }
    Ok(found)
}

/// The project an entry belongs to, rebuilt from the entry itself (the
/// repository may be gone, so it is not rediscovered).
fn project_of(entry: &Entry) -> Project {
    Project {
        id: entry.project.clone(),
        root: entry.root.clone(),
        name: entry
            .root
            .file_name()
            .map(|n| n.to_string_lossy().to_string())
            .unwrap_or_default(),
        is_bare: false,
    }
}

/// Stops what should not run any more; marks dead instances exited.
fn collect_processes(
    registry: &Registry,
    project: &Project,
    entry: &Entry,
    dry_run: bool,
) -> Result<Option<Finding>> {
    let tree = entry.tree();
    let alive = is_alive(entry);
    let members = process::find_tree(&tree);

    let monitor_died = entry.monitor.is_some_and(|m| !m.is_alive());
    let spawn_died = entry.state == State::Starting && entry.spawner.is_none_or(|p| !p.is_alive());
    let why = if entry.state.is_active() && spawn_died {
        Some("its spawn was killed before it finished".to_string())
    } else if entry.state.is_active() && alive && monitor_died {
        // Without its monitor nothing reaps, logs or stops the server (C12).
        Some("its monitor died".to_string())
    } else if entry.state.is_active() && alive && entry.state != State::Starting {
        lapsed(entry)
    } else if entry.state.is_active() && !alive {
        Some("its server is gone".to_string())
    } else if !entry.state.is_active() && !members.is_empty() {
        Some(format!(
            "{} of its processes are still running",
            members.len()
        ))
    } else {
        None
    };
    let Some(why) = why else {
        return Ok(None);
    };
    // The spawn was killed after its server came up (or its last write was
    // lost with a corrupt registry): a server that answers is kept.
    if spawn_died && !monitor_died && alive && crate::ports::accepts(entry.port) {
        if !dry_run {
            mark_running(registry, entry)?;
        }
        let action = if dry_run {
            "would mark it running"
        } else {
            "marked it running"
        };
        return Ok(Some(finding(
            entry,
            "its spawn ended before recording that the server answers",
            action,
            !dry_run,
        )));
    }
    if dry_run {
        return Ok(Some(finding(
            entry,
            &why,
            "would stop it and free its port",
            false,
        )));
    }

    let by = format!("`devserver gc`: {why}");
    let orphans = members.len();
    stop_locked(registry, project, &entry.agent, &by)?;
    if !entry.state.is_active() || !alive {
        mark_exited(registry, entry, &why)?;
    }
    let action = if orphans > 0 {
        format!("stopped {orphans} processes; port {} freed", entry.port)
    } else {
        format!("marked exited; port {} freed", entry.port)
    };
    Ok(Some(finding(entry, &why, &action, true)))
}

/// Why an active instance's lease no longer holds it, if it does not.
fn lapsed(entry: &Entry) -> Option<String> {
    if entry.users.is_empty() || !live_users(entry).is_empty() {
        return None;
    }
    match entry.mode {
        Mode::Isolated => Some("its lease lapsed".into()),
        Mode::Shared => {
            let grace = Duration::from_millis(entry.idle_grace_ms.unwrap_or(0));
            let idle_for = entry.idle_since.map_or(Duration::MAX, |at| {
                Duration::from_secs(unix_secs().saturating_sub(at))
            });
            (idle_for >= grace).then(|| "no live users are left".into())
        }
    }
}

fn mark_running(registry: &Registry, entry: &Entry) -> Result<()> {
    registry.update(|s| {
        if let Some(e) = s
            .find_mut(&entry.project, &entry.agent)
            .filter(|e| e.token == entry.token)
        {
            e.state = State::Running;
            e.spawner = None;
        }
        Ok(())
    })
}

fn mark_exited(registry: &Registry, entry: &Entry, why: &str) -> Result<()> {
    registry.update(|s| {
        if let Some(e) = s
            .find_mut(&entry.project, &entry.agent)
            .filter(|e| e.token == entry.token)
        {
            if e.state != State::Exited {
                e.state = State::Exited;
                e.note = Some(format!("found by `devserver gc`: {why}"));
            }
        }
        Ok(())
    })
}

/// Prunes the admin entry of a worktree devserver made whose directory is gone.
fn collect_worktree(
    registry: &Registry,
    project: &Project,
    entry: &Entry,
    dry_run: bool,
) -> Result<Option<Finding>> {
    if entry.mode != Mode::Isolated || entry.worktree.exists() {
        return Ok(None);
    }
    let missing = "its worktree directory is missing";
    if !entry.created_worktree {
        return Ok(Some(finding(
            entry,
            &format!("{missing}; devserver did not create it"),
            "reported only",
            false,
        )));
    }
    if let Some(why) = keep_reason(project, entry) {
        return Ok(Some(finding(
            entry,
            &format!("{missing}, but {why}"),
            "skipped",
            false,
        )));
    }
    if dry_run {
        return Ok(Some(finding(
            entry,
            "its worktree directory was deleted",
            "would prune its admin entry and drop the instance",
            false,
        )));
    }

    if let Err(err) = git::remove_worktree(project, &entry.admin_name, &entry.worktree, None) {
        return Ok(Some(finding(
            entry,
            "its worktree directory was deleted",
            &format!("skipped: {err}"),
            false,
        )));
    }
    registry.update(|s| {
        s.remove(&entry.project, &entry.agent);
        Ok(())
    })?;
    Ok(Some(finding(
        entry,
        "its worktree directory was deleted",
        &format!(
            "pruned its admin entry, dropped the instance (branch `{}` kept)",
            entry.branch
        ),
        true,
    )))
}

/// Why a missing worktree's admin entry must not be pruned, if it must not:
/// the directory may only be away (its parent is gone too: an unmounted
/// volume), the instance still runs there, or the entry holds work (C23).
fn keep_reason(project: &Project, entry: &Entry) -> Option<String> {
    if entry.worktree.parent().is_some_and(|p| !p.exists()) {
        return Some("its parent directory is missing too (an unmounted volume?)".into());
    }
    if entry.state.is_active() && is_alive(entry) {
        return Some("its server still runs".into());
    }
    git::admin_entry_work(project, &entry.admin_name)
        .map(|work| format!("its admin entry holds {work}"))
}

/// Stops processes with this registry's marker whose token no entry holds.
fn collect_orphans(registry: &Registry, dry_run: bool) -> Result<Vec<Finding>> {
    let known: HashSet<String> = registry
        .load()?
        .instances
        .into_iter()
        .map(|e| e.token)
        .collect();
    let prefix = format!("DEVSERVER_INSTANCE={}-", registry.token_prefix());
    let mut tokens: Vec<String> = process::with_env_prefix(&prefix)
        .into_iter()
        .map(|(value, _)| value)
        .filter(|token| !known.contains(token))
        .collect();
    tokens.sort();
    tokens.dedup();

    let mut findings = Vec::new();
    for token in tokens {
        let tree = TreeSpec {
            marker: Some(format!("DEVSERVER_INSTANCE={token}")),
            ..TreeSpec::default()
        };
        let count = process::find_tree(&tree).len();
        let found = format!("{count} processes of an instance no entry records (token {token})");
        if dry_run {
            findings.push(orphan(&found, "would stop them", false));
            continue;
        }
        let outcome = process::stop_tree(&tree, Duration::from_secs(5));
        let action = if outcome.is_stopped() {
            "stopped them".to_string()
        } else {
            format!("{} survived SIGKILL", outcome.survivors.len())
        };
        findings.push(orphan(&found, &action, true));
    }
    Ok(findings)
}

fn finding(entry: &Entry, found: &str, action: &str, changed: bool) -> Finding {
    Finding {
        agent: entry.agent.clone(),
        project: Some(entry.root.clone()),
        found: found.to_string(),
        action: action.to_string(),
        changed,
    }
}

fn orphan(found: &str, action: &str, changed: bool) -> Finding {
    Finding {
        agent: String::new(),
        project: None,
        found: found.to_string(),
        action: action.to_string(),
        changed,
    }
}
