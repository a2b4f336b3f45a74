//! The monitor: one small detached process per running instance.
//!
//! `devserver spawn` re-executes itself as `devserver __monitor`, in a session
//! of its own, and hands it a [`LaunchSpec`] on stdin. The monitor then owns
//! the server for its whole life; the CLI that started it may exit or die.
//!
//! # How it works
//!
//! - The monitor makes itself a child subreaper (`PR_SET_CHILD_SUBREAPER`),
//!   so descendants that daemonize or call `setsid` are reparented to it, not
//!   to init, and stay findable as its descendants.
//! - It starts `sh -c <command>` in a new session and process group, with
//!   `DEVSERVER_INSTANCE=<token>` in the environment (inherited by every
//!   descendant; see `process::TreeSpec`) and stdout and stderr on a pipe.
//! - A thread copies the pipe into the instance's log, rotating it to
//!   `<log>.1` when it reaches the configured size, so the log is bounded.
//! - The main thread blocks SIGCHLD, SIGTERM, SIGINT and SIGHUP and waits for
//!   them with `sigtimedwait`. SIGCHLD: reap every exited child; when the top
//!   process is among them, its status is recorded and the rest of the tree
//!   is stopped: the instance lives as long as its command. SIGTERM, SIGINT,
//!   SIGHUP: stop the whole tree (SIGTERM, the grace period, SIGKILL). Every
//!   half second without a signal it checks the registry: an instance that
//!   was removed, or whose lease lapsed (for a shared server: no live user
//!   for the idle grace), is stopped. When no descendant is left, it records
//!   the outcome in the registry and exits.
//!
//! States, as the registry sees them: the CLI writes `starting`; the monitor
//! adds its own pid and the server's; the CLI marks `running` once healthy;
//! the monitor writes `exited` (with the status) or `stopped` at the end.
//!
//! tokio is not used here on purpose: its child reaping only waits for the
//! children it spawned, while a subreaper must reap every orphan handed to it
//! with `waitpid(-1)`, and the two would steal each other's exit statuses.
//!
//! Not here: choosing ports, health checks, worktrees (`lifecycle`).

use std::io::{Read, Write};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result};
use fs_err::os::unix::fs::OpenOptionsExt;
use serde::{Deserialize, Serialize};

use crate::lock::FileLock;
use crate::process::{self, ProcRef, TreeSpec};
use crate::registry::{unix_secs, Mode, Registry, State};
use crate::signals;

/// Everything a monitor needs to start and supervise one server.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct LaunchSpec {
    pub state_dir: PathBuf,
    pub lock_timeout_ms: u64,
    pub project: PathBuf,
    pub agent: String,
    pub token: String,
    pub command: String,
    pub cwd: PathBuf,
    pub env: Vec<(String, String)>,
    pub log: PathBuf,
    pub log_max_bytes: u64,
    pub grace_ms: u64,
    /// The instance lock, taken before an idle shared server stops itself.
    pub instance_lock: PathBuf,
}

/// Starts a detached monitor for `spec`. The returned child is the monitor;
/// the caller may wait on it to learn that the server ended early.
pub fn launch(spec: &LaunchSpec) -> Result<std::process::Child> {
    // /proc/self/exe still works when the binary was replaced meanwhile
    // (a `cargo install` during a spawn); the path would name a deleted file.
    let exe = Path::new("/proc/self/exe").to_path_buf();
    let exe = if exe.exists() {
        exe
    } else {
        std::env::current_exe().context("cannot find the devserver executable")?
    };
    let log = open_append(&spec.log)?;

    let mut command = Command::new(&exe);
    command
        .arg("__monitor")
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::from(log.into_parts().0));
    // SAFETY: setsid is async-signal-safe; the closure allocates nothing.
    unsafe {
        command.pre_exec(|| {
            libc::setsid();
            signals::reset_in_child();
            Ok(())
        });
    }
    let mut child = command
        .spawn()
        .with_context(|| format!("cannot start the monitor `{}`", exe.display()))?;

    let json = serde_json::to_vec(spec).context("cannot encode the launch spec")?;
    let mut stdin = child
        .stdin
        .take()
        .context("the monitor has no stdin pipe")?;
    stdin
        .write_all(&json)
        .context("cannot hand the launch spec to the monitor")?;
    Ok(child)
}

/// The body of `devserver __monitor`. Returns when the server tree is gone.
pub fn run() -> Result<()> {
    let mut input = Vec::new();
    std::io::stdin()
        .read_to_end(&mut input)
        .context("cannot read the launch spec")?;
    let spec: LaunchSpec = serde_json::from_slice(&input).context("bad launch spec")?;
    detach_stdin();

    become_subreaper();
    let signals = signals::block();
    let log = Arc::new(RotatingLog::open(&spec.log, spec.log_max_bytes)?);

    let (reader, writer) = std::io::pipe().context("cannot create the log pipe")?;
    let server = start_server(&spec, writer)?;
    let copier = {
        let log = Arc::clone(&log);
        std::thread::spawn(move || copy_into_log(reader, &log))
    };

    let registry = Registry::open(&spec.state_dir, Duration::from_millis(spec.lock_timeout_ms))?;
    let me = ProcRef::current();
    let tree = TreeSpec {
        root: Some(me),
        sid: Some(server.pid),
        marker: Some(format!("DEVSERVER_INSTANCE={}", spec.token)),
        since: me.start_time,
    };
    let recorded = record_start(&registry, &spec, me, server);
    let outcome = match recorded {
        Ok(true) => supervise(&spec, &registry, &tree, server, &signals, &log),
        Ok(false) => {
            log.note("the instance was removed from the registry before it started; stopping");
            stop(&tree, &spec, &log)
        }
        Err(err) => {
            log.note(&format!(
                "cannot record the server in the registry: {err:#}; stopping"
            ));
            stop(&tree, &spec, &log)
        }
    };

    let _ = copier.join();
    record_end(&registry, &spec, &outcome, &log);
    Ok(())
}

/// How the supervised tree ended.
struct Outcome {
    requested: bool,
    status: Option<i32>,
    /// Why the monitor stopped the tree on its own, for the registry.
    note: Option<String>,
    /// Held until the end is recorded, so no `use` sees a dying server.
    _lock: Option<FileLock>,
}

fn start_server(spec: &LaunchSpec, writer: std::io::PipeWriter) -> Result<ProcRef> {
    let stderr = writer
        .try_clone()
        .context("cannot duplicate the log pipe")?;
    let mut command = Command::new("sh");
    command
        .arg("-c")
        .arg(&spec.command)
        .current_dir(&spec.cwd)
        .envs(spec.env.iter().map(|(k, v)| (k, v)))
        .env("DEVSERVER_INSTANCE", &spec.token)
        .stdin(Stdio::null())
        .stdout(writer)
        .stderr(stderr);
    // SAFETY: only async-signal-safe calls (setsid, sigprocmask, signal).
    unsafe {
        command.pre_exec(|| {
            libc::setsid();
            signals::reset_in_child();
            Ok(())
        });
    }
    let child = command.spawn().with_context(|| {
        format!(
            "cannot start `sh -c {}` in `{}`",
            spec.command,
            spec.cwd.display()
        )
    })?;

    // The Child handle is dropped on purpose: this process reaps with
    // waitpid(-1), for the top process and every orphan alike.
    let pid = child.id();
    drop(child);
    ProcRef::of(pid).map_or_else(
        // It already exited: keep a fingerprint that matches nothing alive.
        || Ok(ProcRef { pid, start_time: 0 }),
        Ok,
    )
}

fn supervise(
    spec: &LaunchSpec,
    registry: &Registry,
    tree: &TreeSpec,
    server: ProcRef,
    signals: &libc::sigset_t,
    log: &RotatingLog,
) -> Outcome {
    let mut status = None;
    let mut idle = IdleWatch::default();
    loop {
        let signal = signals::wait(signals, TICK);
        if signal.is_none() {
            if is_unregistered(spec, registry) {
                log.note("the instance is no longer in the registry; stopping its server");
                return stop(tree, spec, log);
            }
            if let Some((lock, note)) = idle.check(spec, registry) {
                log.note(&note);
                let mut outcome = stop(tree, spec, log);
                outcome.note = Some(note);
                outcome._lock = Some(lock);
                return outcome;
            }
        }
        if matches!(signal, Some(libc::SIGTERM | libc::SIGINT | libc::SIGHUP)) {
            log.note("stop requested");
            let mut outcome = stop(tree, spec, log);
            outcome.status = outcome.status.or(status);
            return outcome;
        }
        match reap(server.pid, &mut status) {
            // The instance lives as long as its command's top process: when
            // that ends (or is killed by hand), the rest of the tree goes too,
            // so no wrapper layer is left holding the port (C10).
            Children::Remaining if status.is_some() => {
                let how = status.map_or_else(String::new, describe_status);
                log.note(&format!(
                    "the server's top process ended ({how}); stopping the rest of its tree"
                ));
                let mut outcome = stop(tree, spec, log);
                outcome.requested = false;
                outcome.status = status;
                return outcome;
            }
            Children::Remaining => {}
            Children::None => {
                let how = status.map_or_else(|| "unknown status".into(), describe_status);
                log.note(&format!("server exited ({how})"));
                return Outcome {
                    requested: false,
                    status,
                    note: None,
                    _lock: None,
                };
            }
        }
    }
}

fn stop(tree: &TreeSpec, spec: &LaunchSpec, log: &RotatingLog) -> Outcome {
    let outcome = process::stop_tree(tree, Duration::from_millis(spec.grace_ms));
    if outcome.killed > 0 {
        log.note(&format!(
            "{} processes ignored SIGTERM and were killed",
            outcome.killed
        ));
    }
    let mut status = None;
    while let Children::Remaining = reap(0, &mut status) {
        std::thread::sleep(Duration::from_millis(5));
    }
    Outcome {
        requested: true,
        status,
        note: None,
        _lock: None,
    }
}

/// How often the monitor wakes without a signal, to check its leases.
const TICK: Duration = Duration::from_millis(500);

/// Notices when a shared server has had no live lease for its idle grace.
#[derive(Default)]
struct IdleWatch {
    since: Option<std::time::Instant>,
}

impl IdleWatch {
    /// The instance lock and the reason, when the server should stop now.
    fn check(&mut self, spec: &LaunchSpec, registry: &Registry) -> Option<(FileLock, String)> {
        let entry = registry
            .load()
            .ok()?
            .find(&spec.project, &spec.agent)?
            .clone();
        // An isolated instance stops as soon as its agent's lease lapses; one
        // recorded without a lease (an older registry) never does.
        let isolated = entry.mode == Mode::Isolated;
        if isolated && entry.users.is_empty() {
            return None;
        }
        let grace = Duration::from_millis(if isolated { 0 } else { entry.idle_grace_ms? });
        if entry.token != spec.token || has_live_users(&entry) {
            self.since = None;
            return None;
        }

        let noticed = *self.since.get_or_insert_with(std::time::Instant::now);
        let released = entry
            .idle_since
            .map(|at| Duration::from_secs(unix_secs().saturating_sub(at)));
        if noticed.elapsed().max(released.unwrap_or_default()) < grace {
            return None;
        }

        // Under the instance lock, and only if still idle: a `use` that got
        // in first keeps the server; one that comes later starts a new one.
        let lock = FileLock::try_acquire(&spec.instance_lock).ok()??;
        let latest = registry.load().ok()?;
        let still_idle = latest
            .find(&spec.project, &spec.agent)
            .is_some_and(|e| e.token == spec.token && !has_live_users(e));
        still_idle.then(|| {
            let note = if isolated {
                lapse_reason(&entry)
            } else {
                let grace = humantime::format_duration(grace);
                format!("stopped: no users for the idle grace of {grace}")
            };
            (lock, note)
        })
    }
}

/// Whether the registry (read fine) no longer holds this instance: it was
/// removed, or replaced by a newer start. A registry that cannot be read
/// proves nothing, so it never stops a server.
fn is_unregistered(spec: &LaunchSpec, registry: &Registry) -> bool {
    // No file at all proves nothing either (a state directory being moved).
    registry.file().exists()
        && registry.load().is_ok_and(|snapshot| {
            snapshot
                .find(&spec.project, &spec.agent)
                .is_none_or(|e| e.token != spec.token)
        })
}

/// Why an isolated instance's lease no longer counts.
fn lapse_reason(entry: &crate::registry::Entry) -> String {
    let Some(lease) = entry.users.first() else {
        return "stopped: its lease lapsed".into();
    };
    match lease.pid {
        Some(pid) if !pid.is_alive() => {
            format!("stopped: the agent's process (pid {}) ended", pid.pid)
        }
        _ => "stopped: its lease expired".into(),
    }
}

fn has_live_users(entry: &crate::registry::Entry) -> bool {
    let now = unix_secs();
    entry.users.iter().any(|l| l.is_live(now))
}

enum Children {
    Remaining,
    None,
}

/// Reaps every exited child; records the status of `top` when it is one.
fn reap(top: u32, status: &mut Option<i32>) -> Children {
    loop {
        let mut raw = 0;
        // SAFETY: waitpid writes only into `raw`.
        let pid = unsafe { libc::waitpid(-1, &mut raw, libc::WNOHANG) };
        if pid == 0 {
            return Children::Remaining;
        }
        if pid < 0 {
            // ECHILD: nothing left to wait for. EINTR cannot happen with the
            // signals blocked, and nothing else applies to WNOHANG.
            return Children::None;
        }
        if top != 0 && pid.unsigned_abs() == top {
            *status = Some(decode_status(raw));
        }
    }
}

fn decode_status(raw: i32) -> i32 {
    if libc::WIFEXITED(raw) {
        libc::WEXITSTATUS(raw)
    } else {
        128 + libc::WTERMSIG(raw)
    }
}

/// "exit code 1" or "killed by signal 9".
pub fn describe_status(status: i32) -> String {
    if status > 128 {
        format!("killed by signal {}", status - 128)
    } else {
        format!("exit code {status}")
    }
}

fn record_start(
    registry: &Registry,
    spec: &LaunchSpec,
    me: ProcRef,
    server: ProcRef,
) -> Result<bool> {
    registry.update(|snapshot| {
        let Some(entry) = snapshot.find_mut(&spec.project, &spec.agent) else {
            return Ok(false);
        };
        if entry.token != spec.token {
            return Ok(false);
        }
        entry.monitor = Some(me);
        entry.server = Some(server);
        entry.started_at =
            Some(humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string());
        Ok(true)
    })
}

fn record_end(registry: &Registry, spec: &LaunchSpec, outcome: &Outcome, log: &RotatingLog) {
    let recorded = registry.update(|snapshot| {
        let Some(entry) = snapshot.find_mut(&spec.project, &spec.agent) else {
            return Ok(());
        };
        if entry.token != spec.token {
            return Ok(());
        }
        entry.state = if outcome.requested {
            State::Stopped
        } else {
            State::Exited
        };
        if let Some(note) = &outcome.note {
            entry.note = Some(note.clone());
            entry.users.clear();
            entry.idle_since = None;
        }
        entry.exit_status = outcome.status;
        entry.monitor = None;
        entry.server = None;
        Ok(())
    });
    if let Err(err) = recorded {
        log.note(&format!("cannot record the end of the server: {err:#}"));
    }
}

fn detach_stdin() {
    if let Ok(null) = fs_err::File::open("/dev/null") {
        use std::os::fd::AsRawFd;
        // SAFETY: both descriptors are valid; dup2 replaces stdin atomically.
        unsafe { libc::dup2(null.as_raw_fd(), 0) };
    }
}

fn become_subreaper() {
    // SAFETY: PR_SET_CHILD_SUBREAPER takes one integer argument.
    let rc = unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
    if rc != 0 {
        tracing::warn!("cannot become a child subreaper; daemonizing servers may escape");
    }
}

/// An append-only log that rotates to `<path>.1` when it grows past a size.
struct RotatingLog {
    path: PathBuf,
    max_bytes: u64,
    file: Mutex<(fs_err::File, u64)>,
}

impl RotatingLog {
    fn open(path: &Path, max_bytes: u64) -> Result<RotatingLog> {
        let file = open_append(path)?;
        let size = file.metadata().map_or(0, |m| m.len());
        Ok(RotatingLog {
            path: path.to_path_buf(),
            max_bytes,
            file: Mutex::new((file, size)),
        })
    }

    fn write(&self, bytes: &[u8]) {
        let Ok(mut guard) = self.file.lock() else {
            return;
        };
        if guard.1 + bytes.len() as u64 > self.max_bytes && guard.1 > 0 {
            if let Some(fresh) = self.rotate() {
                *guard = (fresh, 0);
            }
        }
        if guard.0.write_all(bytes).is_ok() {
            guard.1 += bytes.len() as u64;
        }
    }

    fn rotate(&self) -> Option<fs_err::File> {
        let old = rotated_path(&self.path);
        fs_err::rename(&self.path, old).ok()?;
        open_append(&self.path).ok()
    }

    /// A line from devserver itself, marked as such.
    fn note(&self, message: &str) {
        self.write(format!("[devserver] {message}\n").as_bytes());
    }
}

/// Where a log's previous part goes when it rotates.
pub fn rotated_path(log: &Path) -> PathBuf {
    let mut name = log.as_os_str().to_owned();
    name.push(".1");
    PathBuf::from(name)
}

fn copy_into_log(mut reader: std::io::PipeReader, log: &RotatingLog) {
    let mut buf = [0u8; 8192];
    loop {
        match reader.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => log.write(&buf[..n]),
        }
    }
}

fn open_append(path: &Path) -> Result<fs_err::File> {
    let file = fs_err::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(path)?;
    Ok(file)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_rotates_at_its_size() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("s.log");
        let log = RotatingLog::open(&path, 4096).expect("open");
        for _ in 0..10 {
            log.write(&[b'x'; 1000]);
        }
        let size = |p: &Path| fs_err::metadata(p).expect("meta").len();
        assert!(size(&path) <= 4096);
        assert!(size(&rotated_path(&path)) <= 4096);
    }

    #[test]
    fn statuses_decode() {
        assert_eq!(describe_status(1), "exit code 1");
        assert_eq!(describe_status(137), "killed by signal 9");
    }
}
