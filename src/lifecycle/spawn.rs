//! `spawn`: reserve a port, make or reuse the worktree, start the monitor,
//! wait until the server really answers, and record it as running.
//!
//! Every step after the reservation can fail; each failure undoes what this
//! spawn made (the server tree, a worktree it created, its reservation), so
//! a retry starts clean and no half-made state is left for anyone to trip on.

use std::collections::HashSet;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Child;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

use super::{holds_port, instance_key, is_alive};
use crate::config::{self, Settings};
use crate::error::{Code, Failure};
use crate::git::{self, BranchChoice, Project, WorktreeRequest};
use crate::process::{self, ProcRef, TreeSpec};
use crate::registry::{stable_hash, unix_secs, Entry, Lease, Mode, Registry, Snapshot, State};
use crate::supervisor::{self, LaunchSpec};
use crate::{health, output, ports};

/// How many times a spawn moves to a new port when another process took its
/// port during warm-up, before giving up.
const PORT_ATTEMPTS: usize = 3;

/// A validated request to spawn one agent's instance.
#[derive(Debug)]
pub struct SpawnPlan {
    pub project: Project,
    pub settings: Settings,
    /// The instance's name: the agent ID, or [`SHARED_AGENT`] in shared mode.
    pub agent: String,
    pub mode: Mode,
    /// Shared mode: the lease of the agent asking for the server.
    pub user: Option<Lease>,
    pub branch: BranchChoice,
    /// A port the user asked for; no other port is tried then.
    pub port: Option<u16>,
    /// Where a new worktree goes.
    pub worktree: PathBuf,
    /// Set by the CLI's signal handler (SIGINT, SIGTERM, SIGHUP): the spawn
    /// stops where it is and undoes what it made.
    pub interrupted: Arc<AtomicBool>,
}

/// The result of a spawn.
#[derive(Debug)]
pub struct Spawned {
    pub entry: Entry,
    /// True when the agent's instance was already running and was returned.
    pub existing: bool,
}

/// Spawns the plan's instance, or returns the running one.
///
/// Holds the instance lock for the whole call, the registry lock only for
/// short updates. Blocks until the server is healthy or the health timeout.
pub fn spawn(registry: &Registry, plan: &SpawnPlan) -> Result<Spawned> {
    let key = instance_key(&plan.project.id, &plan.project.name, &plan.agent);
    let settings = &plan.settings;
    let wait = settings.lock_timeout + settings.health.timeout + settings.stop_grace * 2;
    let _instance = registry.lock_instance(&key, wait)?;

    recover_interrupted(registry, plan)?;
    if let Some(entry) = existing(registry, plan)? {
        return Ok(Spawned {
            entry,
            existing: true,
        });
    }

    let token = new_token(registry);
    let (entry, previous) = registry.update(|s| reserve(s, plan, registry, &key, &token))?;
    let mut made = Made::default();
    match start(registry, plan, entry, &mut made) {
        Ok(entry) => Ok(Spawned {
            entry,
            existing: false,
        }),
        Err(err) => Err(roll_back(registry, plan, previous, &made, &token, err)),
    }
}

/// Cleans up after an earlier spawn of this agent that was killed part-way
/// (its spawner is gone, and the entry still says `starting`, or a worktree
/// was being made): its processes are stopped and a half-made worktree is
/// removed, so this spawn starts clean instead of reusing either.
fn recover_interrupted(registry: &Registry, plan: &SpawnPlan) -> Result<()> {
    let snapshot = registry.load_for_write()?;
    let Some(entry) = snapshot.find(&plan.project.id, &plan.agent).cloned() else {
        return Ok(());
    };
    let spawner_gone = entry.spawner.is_none_or(|p| !p.is_alive());
    let monitor_died = entry.state.is_active() && entry.monitor.is_some_and(|m| !m.is_alive());
    let killed = spawner_gone && (entry.state == State::Starting || entry.worktree_pending);
    if !killed && !monitor_died {
        return Ok(());
    }
    output::warn(&format!(
        "the previous spawn of agent `{}` was interrupted; cleaning up after it",
        entry.agent
    ));
    if process::is_tree_alive(&entry.tree()) || is_alive(&entry) {
        super::stop::stop_locked(
            registry,
            &plan.project,
            &entry.agent,
            "a new spawn (the previous one was interrupted)",
        )?;
    }
    if entry.worktree_pending {
        let branch = entry.created_branch.then_some(entry.branch.as_str());
        git::remove_worktree(&plan.project, &entry.admin_name, &entry.worktree, branch)
            .with_context(|| {
                format!(
                    "cannot remove the half-made worktree `{}`",
                    entry.worktree.display()
                )
            })?;
    }
    registry.update(|s| {
        if let Some(e) = s.find_mut(&plan.project.id, &plan.agent) {
            if e.worktree_pending {
                e.worktree_pending = false;
                e.created_worktree = false;
                e.created_branch = false;
            }
            if e.state == State::Starting {
                e.state = State::Exited;
            }
            e.spawner = None;
        }
        Ok(())
    })
}

/// The running instance of the agent, if there is a healthy one. In shared
/// mode the asking agent's lease is added to it, under the registry lock.
fn existing(registry: &Registry, plan: &SpawnPlan) -> Result<Option<Entry>> {
    let found = registry.update(|s| {
        let Some(entry) = s.find_mut(&plan.project.id, &plan.agent) else {
            return Ok(None);
        };
        if !entry.state.is_active() || !is_alive(entry) {
            return Ok(None);
        }
        if let Some(lease) = &plan.user {
            add_lease(entry, lease.clone());
        }
        Ok(Some(entry.clone()))
    })?;
    let Some(entry) = found.as_ref() else {
        return Ok(None);
    };
    if let Some(port) = plan.port.filter(|p| *p != entry.port) {
        return Err(Failure::new(
            Code::Error,
            format!(
                "agent `{}` already runs on port {}, not {port}",
                entry.agent, entry.port
            ),
        )
        .with_hint(format!(
            "stop it first (`devserver stop --agent {}`) to move it to port {port}",
            entry.agent
        ))
        .into());
    }
    if health::probe(
        entry.port,
        &plan.settings.health.probe,
        Duration::from_secs(2),
    ) {
        tracing::info!(agent = %entry.agent, port = entry.port, "instance already running");
        return Ok(Some(entry.clone()));
    }
    Err(Failure::new(
        Code::Unhealthy,
        format!(
            "agent `{}` has a running instance that does not answer on port {}",
            entry.agent, entry.port
        ),
    )
    .with_hint(format!(
        "see `devserver logs --agent {0}`, then `devserver stop --agent {0}` and spawn again",
        entry.agent
    ))
    .into())
}

/// Adds (or renews) `lease` on a shared instance, dropping leases that lapsed.
pub(super) fn add_lease(entry: &mut Entry, lease: Lease) {
    let now = unix_secs();
    entry
        .users
        .retain(|l| l.agent != lease.agent && l.is_live(now));
    entry.users.push(lease);
    entry.idle_since = None;
}

/// Reserves a port and writes the `starting` entry. Runs under the registry lock.
fn reserve(
    snapshot: &mut Snapshot,
    plan: &SpawnPlan,
    registry: &Registry,
    key: &str,
    token: &str,
) -> Result<(Entry, Option<Entry>)> {
    let previous = snapshot.find(&plan.project.id, &plan.agent).cloned();
    let port = choose_port(
        snapshot,
        plan,
        previous.as_ref().map(|e| e.port),
        &HashSet::new(),
    )?;

    let worktree = previous
        .as_ref()
        .map(|e| e.worktree.clone())
        .filter(|path| plan.mode == Mode::Isolated && git::is_worktree_of(&plan.project, path))
        .unwrap_or_else(|| plan.worktree.clone());
    let entry = Entry {
        project: plan.project.id.clone(),
        root: plan.project.root.clone(),
        agent: plan.agent.clone(),
        mode: plan.mode,
        state: State::Starting,
        port,
        url: String::new(),
        worktree,
        branch: branch_name(&plan.branch).to_string(),
        admin_name: previous
            .as_ref()
            .map_or_else(|| admin_name(&plan.agent), |e| e.admin_name.clone()),
        created_worktree: previous.as_ref().is_some_and(|e| e.created_worktree),
        created_branch: previous.as_ref().is_some_and(|e| e.created_branch),
        worktree_pending: false,
        token: token.to_string(),
        spawner: Some(ProcRef::current()),
        monitor: None,
        server: None,
        started_at: None,
        log: registry.log_path(key),
        grace_ms: millis(plan.settings.stop_grace),
        exit_status: None,
        note: None,
        users: Vec::new(),
        idle_grace_ms: (plan.mode == Mode::Shared).then(|| millis(plan.settings.idle_grace)),
        idle_since: None,
    };
    let mut entry = entry;
    if let Some(lease) = &plan.user {
        entry.users = previous
            .as_ref()
            .map(|e| e.users.clone())
            .unwrap_or_default();
        add_lease(&mut entry, lease.clone());
    }
    snapshot.upsert(entry.clone());
    Ok((entry, previous))
}

/// Picks the port for a spawn: the one asked for, else the agent's previous
/// port, else its stable preferred port, else the next free one in range.
fn choose_port(
    snapshot: &Snapshot,
    plan: &SpawnPlan,
    previous: Option<u16>,
    tried: &HashSet<u16>,
) -> Result<u16> {
    let holders: Vec<&Entry> = snapshot
        .instances
        .iter()
        .filter(|e| !e.is(&plan.project.id, &plan.agent) && holds_port(e))
        .collect();
    let mut reserved: HashSet<u16> = holders.iter().map(|e| e.port).collect();
    reserved.extend(tried);

    if let Some(port) = plan.port {
        return ensure_port_available(port, &holders);
    }

    let range = &plan.settings.ports;
    let hash = stable_hash(&[
        plan.project.id.as_os_str().as_encoded_bytes(),
        plan.agent.as_bytes(),
    ]);
    let start = ports::preferred(range, hash);
    ports::pick(range, previous, start, &reserved, ports::is_free).ok_or_else(|| {
        Failure::new(
            Code::NoPort,
            format!(
                "no free port in the range {}-{} ({} reserved by devserver instances, the rest taken by other processes)",
                range.start(),
                range.end(),
                reserved.len()
            ),
        )
        .with_hint(format!(
            "stop instances you no longer need (`devserver list --all`), or widen `ports.range` in `{}`",
            plan.settings.source.display()
        ))
        .into()
    })
}

fn ensure_port_available(port: u16, holders: &[&Entry]) -> Result<u16> {
    if let Some(other) = holders.iter().find(|e| e.port == port) {
        return Err(Failure::new(
            Code::NoPort,
            format!(
                "port {port} is reserved by agent `{}` of `{}`",
                other.agent,
                other.root.display()
            ),
        )
        .with_hint("choose another `--port`, or leave it out to get a free one")
        .into());
    }
    if !ports::is_free(port) {
        return Err(Failure::new(
            Code::NoPort,
            format!("port {port} is in use by another process"),
        )
        .with_hint("choose another `--port`, or leave it out to get a free one")
        .into());
    }
    Ok(port)
}

/// What this spawn created, so a failure can undo exactly that.
#[derive(Default)]
struct Made {
    worktree: Option<git::Worktree>,
    admin_name: String,
}

fn start(
    registry: &Registry,
    plan: &SpawnPlan,
    mut entry: Entry,
    made: &mut Made,
) -> Result<Entry> {
    if plan.mode == Mode::Shared {
        // The shared server runs in the main checkout, as it is.
        entry.branch = git::head_name(&plan.project.root).unwrap_or_default();
        record(registry, &entry, |e| e.branch.clone_from(&entry.branch))?;
        return run_attempts(registry, plan, entry);
    }

    let request = WorktreeRequest {
        admin_name: entry.admin_name.clone(),
        path: entry.worktree.clone(),
        branch: plan.branch.clone(),
    };
    let fresh = !git::is_worktree_of(&plan.project, &request.path);
    if fresh {
        prepare_fresh_worktree(registry, plan, &mut entry)?;
    }
    let worktree = git::ensure_worktree(&plan.project, &request)
        .with_context(|| format!("cannot prepare the worktree `{}`", request.path.display()))?;
    if worktree.created {
        made.worktree = Some(worktree.clone());
        made.admin_name.clone_from(&entry.admin_name);
    }
    ensure_not_interrupted(plan)?;
    if !fresh {
        warn_if_reused_differs(plan, &worktree);
    }
    entry.branch.clone_from(&worktree.branch);
    entry.created_worktree |= worktree.created;
    entry.created_branch |= worktree.created_branch;
    record(registry, &entry, |e| {
        e.branch.clone_from(&entry.branch);
        e.created_worktree = entry.created_worktree;
        e.created_branch = entry.created_branch;
        e.worktree_pending = false;
    })?;

    if worktree.created {
        set_up(plan, &entry)?;
        ensure_not_interrupted(plan)?;
    }
    run_attempts(registry, plan, entry)
}

/// Before a worktree is made: prunes the admin entry of a worktree of ours
/// whose directory was deleted (C22), and records that a worktree is being
/// made, so a spawn killed meanwhile is cleaned up by the next one.
fn prepare_fresh_worktree(registry: &Registry, plan: &SpawnPlan, entry: &mut Entry) -> Result<()> {
    if entry.created_worktree && !entry.worktree.exists() {
        if let Some(work) = git::admin_entry_work(&plan.project, &entry.admin_name) {
            return Err(Failure::new(
                Code::Error,
                format!(
                    "the worktree `{}` of agent `{}` is missing, but its admin entry holds {work}",
                    entry.worktree.display(),
                    entry.agent
                ),
            )
            .with_hint("restore the directory (was it moved?), or remove it with `git worktree remove --force`")
            .into());
        }
        git::remove_worktree(&plan.project, &entry.admin_name, &entry.worktree, None)
            .with_context(|| {
                format!(
                    "cannot prune the missing worktree `{}`",
                    entry.worktree.display()
                )
            })?;
    }

    let new_branch = match &plan.branch {
        BranchChoice::New { name, .. } => !git::branch_exists(&plan.project, name),
        BranchChoice::Existing { .. } => false,
    };
    entry.created_worktree = true;
    entry.created_branch = new_branch;
    record(registry, entry, |e| {
        e.created_worktree = true;
        e.created_branch = new_branch;
        e.worktree_pending = true;
    })
}

/// Says so when a reused worktree is not on the branch that was asked for.
fn warn_if_reused_differs(plan: &SpawnPlan, worktree: &git::Worktree) {
    if let BranchChoice::Existing { name } = &plan.branch {
        if *name != worktree.branch {
            output::warn(&format!(
                "reusing the agent's worktree as it is, on branch `{}`; `--branch {name}` applies to a new worktree only",
                worktree.branch
            ));
        }
    }
}

/// Fails with [`Interrupted`] once the CLI got SIGINT, SIGTERM or SIGHUP.
fn ensure_not_interrupted(plan: &SpawnPlan) -> Result<()> {
    if plan.interrupted.load(Ordering::Relaxed) {
        return Err(Failure::new(
            Code::Interrupted,
            "interrupted; undid what this spawn had made",
        )
        .into());
    }
    Ok(())
}

/// Starts the server, moving to a new port when another process takes its
/// port during warm-up (C02), at most [`PORT_ATTEMPTS`] times.
fn run_attempts(registry: &Registry, plan: &SpawnPlan, mut entry: Entry) -> Result<Entry> {
    let cwd = entry.worktree.join(&plan.settings.cwd);
    if !cwd.is_dir() {
        return Err(Failure::new(
            Code::Error,
            format!(
                "`cwd: {}` names no directory in `{}`",
                plan.settings.cwd.display(),
                entry.worktree.display()
            ),
        )
        .with_hint(format!("fix `cwd` in `{}`", plan.settings.source.display()))
        .into());
    }
    let mut tried = HashSet::new();
    for attempt in 1..=PORT_ATTEMPTS {
        entry.url = url_for(plan, &entry);
        record(registry, &entry, |e| e.url.clone_from(&entry.url))?;

        match attempt_once(registry, plan, &entry)? {
            Attempt::Healthy => return mark_running(registry, entry),
            Attempt::PortTaken(why) if plan.port.is_none() && attempt < PORT_ATTEMPTS => {
                output::warn(&format!("port {} {why}; trying another port", entry.port));
                tried.insert(entry.port);
                entry.port = registry.update(|s| {
                    let port = choose_port(s, plan, None, &tried)?;
                    if let Some(e) = s.find_mut(&entry.project, &entry.agent) {
                        e.port = port;
                    }
                    Ok(port)
                })?;
            }
            Attempt::PortTaken(why) => {
                return Err(unhealthy(&entry, format!("port {} {why}", entry.port), ""));
            }
        }
    }
    unreachable_attempts()
}

fn unreachable_attempts() -> Result<Entry> {
    Err(anyhow::anyhow!(
        "bug: the port retry loop ended without a result; please report it to the devserver maintainers"
    ))
}

enum Attempt {
    Healthy,
    PortTaken(String),
}

/// Launches the monitor once and waits for health. Failures other than a
/// lost port are errors carrying the log tail; the tree is stopped first.
fn attempt_once(registry: &Registry, plan: &SpawnPlan, entry: &Entry) -> Result<Attempt> {
    let offset = fs_err::metadata(&entry.log).map_or(0, |m| m.len());
    let spec = launch_spec(registry, plan, entry);
    let mut child = supervisor::launch(&spec)?;
    let monitor = ProcRef::of(child.id());
    let tree = TreeSpec {
        root: monitor,
        sid: None,
        marker: Some(format!("DEVSERVER_INSTANCE={}", entry.token)),
        since: monitor.map_or(0, |m| m.start_time),
    };

    let waited = wait_healthy(&mut child, plan, entry.port, &tree);
    if matches!(waited, Waited::Healthy) {
        return Ok(Attempt::Healthy);
    }

    terminate(&mut child, monitor, &tree, plan.settings.stop_grace);
    let tail = log_tail(&entry.log, offset, 20);
    match waited {
        Waited::Healthy => Ok(Attempt::Healthy),
        Waited::Foreign(who) => Ok(Attempt::PortTaken(format!("was taken by {who}"))),
        Waited::Exited if is_addr_in_use(&tail) => Ok(Attempt::PortTaken(
            "was already in use when the server bound it".into(),
        )),
        Waited::Exited => {
            let status = registry.load().ok().and_then(|s| {
                s.find(&entry.project, &entry.agent)
                    .and_then(|e| e.exit_status)
            });
            let how = status.map_or_else(
                || "it exited".into(),
                |s| format!("it exited with {}", supervisor::describe_status(s)),
            );
            Err(unhealthy(
                entry,
                format!("the server stopped before it became healthy: {how}"),
                &tail,
            ))
        }
        Waited::Interrupted => Err(Failure::new(
            Code::Interrupted,
            "interrupted; stopped the server and undid what this spawn had made",
        )
        .into()),
        Waited::WrongPort(ports) => Err(unhealthy(
            entry,
            format!(
                "the server ignored its port {}{}; stopped it",
                entry.port,
                describe_elsewhere(&ports, entry.port, &plan.settings.port_hint),
            ),
            &tail,
        )),
        Waited::TimedOut(elsewhere) => Err(unhealthy(
            entry,
            format!(
                "the server did not answer on port {} within {}{}; stopped it and freed the port",
                entry.port,
                humantime::format_duration(plan.settings.health.timeout),
                describe_elsewhere(&elsewhere, entry.port, &plan.settings.port_hint),
            ),
            &tail,
        )),
    }
}

enum Waited {
    Healthy,
    Foreign(String),
    Exited,
    /// With the ports the tree listened on instead, if any.
    TimedOut(Vec<u16>),
    /// The tree listens, but only on these other ports.
    WrongPort(Vec<u16>),
    Interrupted,
}

fn describe_elsewhere(ports: &[u16], own: u16, hint: &str) -> String {
    if ports.contains(&own) {
        return format!(" (it listens on port {own}, but does not answer the health check: an HTTP status of 500 or more, or no HTTP answer)");
    }
    let list: Vec<String> = ports.iter().map(u16::to_string).collect();
    match list.len() {
        0 => String::new(),
        1 => format!(" (it listens on port {} instead; {hint})", list[0]),
        _ => format!(" (it listens on ports {} instead; {hint})", list.join(", ")),
    }
}

/// How long the tree may listen only on other ports before the spawn fails:
/// long enough for a server that opens a helper port before its main one.
const WRONG_PORT_PATIENCE: Duration = Duration::from_secs(3);

fn wait_healthy(child: &mut Child, plan: &SpawnPlan, port: u16, tree: &TreeSpec) -> Waited {
    let health = &plan.settings.health;
    let deadline = Instant::now() + health.timeout;
    let mut elsewhere = ElsewhereWatch::default();
    loop {
        if matches!(child.try_wait(), Ok(Some(_)) | Err(_)) {
            return Waited::Exited;
        }
        if plan.interrupted.load(Ordering::Relaxed) {
            return Waited::Interrupted;
        }
        let budget = deadline
            .saturating_duration_since(Instant::now())
            .clamp(Duration::from_millis(50), Duration::from_secs(2));
        if health::probe(port, &health.probe, budget) {
            return match foreign_listener(port, tree) {
                Some(who) => Waited::Foreign(who),
                None => Waited::Healthy,
            };
        }
        if let Some(ports) = elsewhere.check(tree, port) {
            return Waited::WrongPort(ports);
        }
        if Instant::now() >= deadline {
            return Waited::TimedOut(tree_ports(tree));
        }
        std::thread::sleep(poll_interval());
    }
}

fn tree_ports(tree: &TreeSpec) -> Vec<u16> {
    let members: Vec<u32> = process::find_tree(tree).iter().map(|p| p.pid).collect();
    process::listening_ports_of(&members)
}

/// Notices a server that listens, but not on the port it was given.
#[derive(Default)]
struct ElsewhereWatch {
    last_scan: Option<Instant>,
    since: Option<Instant>,
}

impl ElsewhereWatch {
    /// The ports the tree listens on instead of `port`, once that has lasted.
    fn check(&mut self, tree: &TreeSpec, port: u16) -> Option<Vec<u16>> {
        // A scan of every process: twice a second is plenty.
        if self
            .last_scan
            .is_some_and(|at| at.elapsed() < Duration::from_millis(500))
        {
            return None;
        }
        self.last_scan = Some(Instant::now());
        let ports = tree_ports(tree);
        if ports.is_empty() || ports.contains(&port) {
            self.since = None;
            return None;
        }
        let since = *self.since.get_or_insert_with(Instant::now);
        (since.elapsed() >= WRONG_PORT_PATIENCE).then_some(ports)
    }
}

/// Who, other than the instance's own tree, listens on `port`, if anyone.
fn foreign_listener(port: u16, tree: &TreeSpec) -> Option<String> {
    let inodes = process::listening_inodes(port);
    if inodes.is_empty() {
        // Not visible here (another network namespace): trust the probe.
        return None;
    }
    let members: Vec<u32> = process::find_tree(tree).iter().map(|p| p.pid).collect();
    if !process::socket_holders(&inodes, &members).is_empty() {
        return None;
    }
    let everyone: Vec<u32> = process::all().iter().map(|s| s.pid).collect();
    let holders = process::socket_holders(&inodes, &everyone);
    Some(match holders.first() {
        Some(pid) => format!(
            "another process (pid {pid}, `{}`)",
            process::cmdline(*pid).unwrap_or_default()
        ),
        None => "a process devserver cannot see".into(),
    })
}

/// Asks the monitor to stop its tree; kills both when it does not in time.
fn terminate(child: &mut Child, monitor: Option<ProcRef>, tree: &TreeSpec, grace: Duration) {
    if let Some(monitor) = monitor {
        let _ = monitor.signal(libc::SIGTERM);
    }
    let deadline = Instant::now() + grace + Duration::from_secs(2);
    while Instant::now() < deadline {
        if matches!(child.try_wait(), Ok(Some(_)) | Err(_)) {
            break;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    if let Some(monitor) = monitor.filter(ProcRef::is_alive) {
        let _ = monitor.signal(libc::SIGKILL);
    }
    let _ = process::stop_tree(tree, Duration::ZERO);
    let _ = child.wait();
}

fn mark_running(registry: &Registry, mut entry: Entry) -> Result<Entry> {
    let token = entry.token.clone();
    let latest = registry.update(|s| {
        let Some(e) = s
            .find_mut(&entry.project, &entry.agent)
            .filter(|e| e.token == token)
        else {
            return Ok(None);
        };
        e.state = State::Running;
        e.spawner = None;
        Ok(Some(e.clone()))
    })?;
    match latest {
        Some(latest) => Ok(latest),
        None => {
            entry.state = State::Stopped;
            Err(Failure::new(
                Code::Error,
                format!(
                    "agent `{}` was stopped or removed while it started",
                    entry.agent
                ),
            )
            .into())
        }
    }
}

/// Runs `change` on this spawn's entry under the registry lock.
fn record(registry: &Registry, entry: &Entry, change: impl FnOnce(&mut Entry)) -> Result<()> {
    registry.update(|s| {
        if let Some(e) = s
            .find_mut(&entry.project, &entry.agent)
            .filter(|e| e.token == entry.token)
        {
            change(e);
        }
        Ok(())
    })
}

/// Undoes a failed spawn and returns its error. A step of the undo that
/// fails is reported as a warning; the spawn's own error stays the error.
fn roll_back(
    registry: &Registry,
    plan: &SpawnPlan,
    previous: Option<Entry>,
    made: &Made,
    token: &str,
    err: anyhow::Error,
) -> anyhow::Error {
    // Whatever this spawn started, found by its marker alone: a failure after
    // the server started (a lock timeout, say) must not leave it running.
    let tree = TreeSpec {
        marker: Some(format!("DEVSERVER_INSTANCE={token}")),
        ..TreeSpec::default()
    };
    let stopped = process::stop_tree(&tree, plan.settings.stop_grace);
    if let Some(survivor) = stopped.survivors.first() {
        output::warn(&format!(
            "pid {} of the failed spawn survived SIGKILL",
            survivor.pid
        ));
    }

    if let Some(worktree) = &made.worktree {
        let branch = worktree.created_branch.then_some(worktree.branch.as_str());
        if let Err(undo) =
            git::remove_worktree(&plan.project, &made.admin_name, &worktree.path, branch)
        {
            output::warn(&format!(
                "the new worktree `{}` could not be removed: {undo}",
                worktree.path.display()
            ));
        }
    }

    let released = registry.update(|s| {
        if s.find(&plan.project.id, &plan.agent)
            .is_some_and(|e| e.token == token)
        {
            s.remove(&plan.project.id, &plan.agent);
            if let Some(mut old) = previous {
                if old.state.is_active() {
                    old.state = State::Exited;
                }
                s.upsert(old);
            }
        }
        Ok(())
    });
    if let Err(undo) = released {
        output::warn(&format!(
            "the port reservation could not be released now ({undo:#}); it lapses by itself, since its spawn has ended"
        ));
    }
    err
}

fn unhealthy(entry: &Entry, message: String, tail: &str) -> anyhow::Error {
    let mut message = message;
    if !tail.trim().is_empty() {
        message.push_str("\nlast lines of its log:\n");
        message.push_str(tail.trim_end());
    }
    Failure::new(Code::Unhealthy, message)
        .with_hint(format!("the whole log is in `{}`", entry.log.display()))
        .into()
}

/// Copies, links and runs what `setup` names, in a worktree made just now.
fn set_up(plan: &SpawnPlan, entry: &Entry) -> Result<()> {
    let root = &plan.project.root;
    for path in &plan.settings.setup.copy {
        copy_into(&root.join(path), &entry.worktree.join(path))?;
    }
    for path in &plan.settings.setup.link {
        link_into(&root.join(path), &entry.worktree.join(path))?;
    }
    for command in &plan.settings.setup.run {
        run_setup(plan, entry, command)?;
    }
    Ok(())
}

fn copy_into(from: &Path, to: &Path) -> Result<()> {
    if !from.exists() {
        output::warn(&format!(
            "`setup.copy`: `{}` does not exist; skipped",
            from.display()
        ));
        return Ok(());
    }
    if let Some(parent) = to.parent() {
        fs_err::create_dir_all(parent)?;
    }
    if from.is_dir() {
        let options = fs_extra::dir::CopyOptions::new()
            .overwrite(true)
            .copy_inside(true);
        fs_extra::dir::copy(from, to, &options)
            .with_context(|| format!("cannot copy `{}` to `{}`", from.display(), to.display()))?;
    } else {
        fs_err::copy(from, to)?;
    }
    Ok(())
}

fn link_into(from: &Path, to: &Path) -> Result<()> {
    if !from.exists() {
        output::warn(&format!(
            "`setup.link`: `{}` does not exist; skipped",
            from.display()
        ));
        return Ok(());
    }
    if to.symlink_metadata().is_ok() {
        return Ok(());
    }
    if let Some(parent) = to.parent() {
        fs_err::create_dir_all(parent)?;
    }
    fs_err::os::unix::fs::symlink(from, to)?;
    Ok(())
}

fn run_setup(plan: &SpawnPlan, entry: &Entry, command: &str) -> Result<()> {
    let log = fs_err::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&entry.log)?;
    let (log, _) = log.into_parts();
    let stderr = log.try_clone().context("cannot duplicate the log file")?;
    let status = {
        let mut command = std::process::Command::new("sh");
        // SAFETY: reset_in_child is async-signal-safe, as pre_exec requires.
        unsafe {
            command.pre_exec(|| {
                crate::signals::reset_in_child();
                Ok(())
            });
        }
        command
    }
    .arg("-c")
    .arg(command)
    .current_dir(entry.worktree.join(&plan.settings.cwd))
    .envs(server_env(plan, entry))
    .stdin(std::process::Stdio::null())
    .stdout(log)
    .stderr(stderr)
    .status()
    .with_context(|| format!("cannot run the setup command `{command}`"))?;
    if !status.success() {
        return Err(Failure::new(
            Code::Error,
            format!("the setup command `{command}` failed ({status}); removed the new worktree"),
        )
        .with_hint(format!("its output is in `{}`", entry.log.display()))
        .into());
    }
    Ok(())
}

fn launch_spec(registry: &Registry, plan: &SpawnPlan, entry: &Entry) -> LaunchSpec {
    let vars = vars(plan, entry);
    LaunchSpec {
        state_dir: registry.dir().to_path_buf(),
        lock_timeout_ms: millis(plan.settings.lock_timeout),
        project: entry.project.clone(),
        agent: entry.agent.clone(),
        token: entry.token.clone(),
        command: config::expand(&plan.settings.command, &vars),
        cwd: entry.worktree.join(&plan.settings.cwd),
        env: server_env(plan, entry),
        log: entry.log.clone(),
        log_max_bytes: plan.settings.log_max_bytes,
        grace_ms: entry.grace_ms,
        instance_lock: registry.instance_lock_path(&instance_key(
            &entry.project,
            &plan.project.name,
            &entry.agent,
        )),
    }
}

/// The environment a server (and a setup command) gets on top of ours.
fn server_env(plan: &SpawnPlan, entry: &Entry) -> Vec<(String, String)> {
    let vars = vars(plan, entry);
    let mut env: Vec<(String, String)> = plan
        .settings
        .env
        .iter()
        .map(|(k, v)| (k.clone(), config::expand(v, &vars)))
        .collect();
    let port = entry.port.to_string();
    let url = url_for(plan, entry);
    env.extend([
        ("PORT".into(), port.clone()),
        ("DEVSERVER_PORT".into(), port),
        ("DEVSERVER_URL".into(), url),
        ("DEVSERVER_AGENT".into(), entry.agent.clone()),
    ]);
    env
}

fn vars(plan: &SpawnPlan, entry: &Entry) -> Vec<(&'static str, String)> {
    vec![
        ("port", entry.port.to_string()),
        ("agent", entry.agent.clone()),
        ("worktree", entry.worktree.display().to_string()),
        ("repo", plan.project.root.display().to_string()),
        ("name", plan.project.name.clone()),
    ]
}

fn url_for(plan: &SpawnPlan, entry: &Entry) -> String {
    config::expand(&plan.settings.url, &vars(plan, entry))
}

fn branch_name(choice: &BranchChoice) -> &str {
    match choice {
        BranchChoice::New { name, .. } | BranchChoice::Existing { name } => name,
    }
}

/// The admin entry name of an agent's worktree under `.git/worktrees/`.
pub fn admin_name(agent: &str) -> String {
    format!("devserver-{agent}")
}

fn log_tail(log: &Path, offset: u64, lines: usize) -> String {
    let Ok(bytes) = fs_err::read(log) else {
        return String::new();
    };
    let start = usize::try_from(offset).unwrap_or(0).min(bytes.len());
    let text = String::from_utf8_lossy(&bytes[start..]);
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

fn is_addr_in_use(log: &str) -> bool {
    let lower = log.to_ascii_lowercase();
    lower.contains("eaddrinuse")
        || lower.contains("address already in use")
        || lower.contains("address in use")
}

/// A token unique to this start, prefixed with the registry's identity so
/// `gc` can tell its own orphans from other registries' processes.
fn new_token(registry: &Registry) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    format!(
        "{}-{:x}-{:x}",
        registry.token_prefix(),
        std::process::id(),
        nanos
    )
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// How often warm-up is polled; `DEVSERVER_POLL_MS` overrides it for tests.
fn poll_interval() -> Duration {
    std::env::var("DEVSERVER_POLL_MS")
        .ok()
        .and_then(|v| v.parse().ok())
        .map_or(Duration::from_millis(25), Duration::from_millis)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn address_in_use_is_recognised() {
        assert!(is_addr_in_use(
            "Error: listen EADDRINUSE: address already in use :::5173"
        ));
        assert!(is_addr_in_use("OSError: [Errno 98] Address already in use"));
        assert!(!is_addr_in_use("listening on 5173"));
    }

    #[test]
    fn log_tail_reads_only_after_offset() {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = dir.path().join("l");
        fs_err::write(&log, "old\nnew1\nnew2\nnew3\n").expect("write");
        assert_eq!(log_tail(&log, 4, 2), "new2\nnew3");
        assert_eq!(log_tail(&log, 4, 10), "new1\nnew2\nnew3");
    }
}
