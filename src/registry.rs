//! The per-user registry: which instances exist, where, on which port.
//!
//! One registry serves every repository of a user, because ports are a
//! machine-wide resource. It lives in the state directory (`DEVSERVER_HOME`,
//! else `$XDG_STATE_HOME/devserver`, else `~/.local/state/devserver`), which
//! must be owned by the user and not writable by anyone else.
//!
//! # How it works
//!
//! - `registry.json` holds a [`Snapshot`]. JSON rather than YAML: the file is
//!   written by machines only, and JSON parses fast and strictly, which
//!   matters for `url` and `list`, called again and again by agents.
//! - Every read-modify-write runs in [`Registry::update`] under the exclusive
//!   lock `registry.lock` (see `lock`): lock, read, check the version, modify,
//!   write, unlock. The lock is held for that alone, never across a checkout,
//!   a server start or a health wait.
//! - A write goes to a temporary file in the same directory, is fsynced, and
//!   is renamed over `registry.json`; just before, the old file is hard-linked
//!   to `registry.json.bak`, so the previous version is always kept. Readers
//!   need no lock: they see the old file or the new one, never a mix.
//! - A file that does not parse is never read as empty. Read-only commands
//!   fail naming it and its backup; [`Registry::update`] keeps a copy as
//!   `registry.json.corrupt-<time>-<pid>` and atomically replaces it with the
//!   backup, so `registry.json` is never missing, even for a moment.
//!
//! Not here: deciding whether recorded processes are alive (`lifecycle`).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};
use fs_err::os::unix::fs::OpenOptionsExt;
use serde::{Deserialize, Serialize};

use crate::error::{Code, Failure};
use crate::lock::{self, FileLock};
use crate::process::{self, ProcRef, TreeSpec};

/// The registry format this build reads and writes.
const VERSION: u32 = 1;

/// How a registry written by a newer devserver is described.
const NEWER: &str = "it has format version";

/// The lifecycle state of an instance, as recorded and as reported.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum State {
    /// A spawn is under way: the port is reserved, the server may be warming up.
    Starting,
    /// Healthy at the end of its spawn.
    Running,
    /// Its process tree lives but its port does not answer.
    Unhealthy,
    /// Its process tree ended without being asked to.
    Exited,
    /// Stopped on request.
    Stopped,
}

impl State {
    /// Whether an instance in this state holds its port and its tree.
    pub fn is_active(self) -> bool {
        matches!(self, State::Starting | State::Running | State::Unhealthy)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            State::Starting => "starting",
            State::Running => "running",
            State::Unhealthy => "unhealthy",
            State::Exited => "exited",
            State::Stopped => "stopped",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// One agent's own worktree, port and server.
    Isolated,
    /// One server in the main checkout for every agent, kept up by leases.
    Shared,
}

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Isolated => "isolated",
            Mode::Shared => "shared",
        }
    }
}

/// The agent name under which a project's shared instance is recorded. It is
/// not a valid agent ID, so it can never clash with one.
pub const SHARED_AGENT: &str = "@shared";

/// One user of a shared server. It counts while it has not expired and, when
/// tied to a process, while that process lives.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lease {
    pub agent: String,
    /// Unix seconds when the lease was taken.
    pub since: u64,
    /// Unix seconds when it expires; `None` never.
    pub expires: Option<u64>,
    /// The agent's own long-lived process, if the lease is tied to one.
    pub pid: Option<ProcRef>,
}

impl Lease {
    /// Whether the lease still counts at unix time `now`.
    pub fn is_live(&self, now: u64) -> bool {
        self.expires.is_none_or(|at| now < at) && self.pid.is_none_or(|p| p.is_alive())
    }
}

/// One instance: an agent of a project, with its worktree, port and processes.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Entry {
    /// The project's identity: its canonical common git directory.
    pub project: PathBuf,
    /// The project's main checkout.
    pub root: PathBuf,
    pub agent: String,
    pub mode: Mode,
    pub state: State,
    pub port: u16,
    pub url: String,
    pub worktree: PathBuf,
    pub branch: String,
    /// The name of the worktree's admin entry under `.git/worktrees/`.
    pub admin_name: String,
    /// Whether devserver created the worktree (and so may remove it).
    pub created_worktree: bool,
    /// Whether devserver created the branch (and so may delete it).
    pub created_branch: bool,
    /// Set while a spawn is making the worktree: if that spawn is killed,
    /// the worktree may be half checked out and is removed, not reused.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub worktree_pending: bool,
    /// Unique per start; set in the server's environment as
    /// `DEVSERVER_INSTANCE=<token>` so every descendant can be found.
    pub token: String,
    /// The CLI process running the spawn, while the state is `starting`.
    pub spawner: Option<ProcRef>,
    /// The monitor supervising the server tree.
    pub monitor: Option<ProcRef>,
    /// The server's top process (`sh -c ...`), leader of its own session.
    pub server: Option<ProcRef>,
    /// RFC 3339 time the server was started.
    pub started_at: Option<String>,
    pub log: PathBuf,
    /// The stop grace period chosen at spawn, in milliseconds.
    #[serde(default)]
    pub grace_ms: u64,
    /// Exit code of the server's top process, 128+N for signal N.
    pub exit_status: Option<i32>,
    /// A note for the user about the last state change.
    pub note: Option<String>,
    /// Shared mode: the users keeping the server up.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub users: Vec<Lease>,
    /// Shared mode: how long the server stays up after its last user left.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idle_grace_ms: Option<u64>,
    /// Shared mode: unix seconds when the last user left.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idle_since: Option<u64>,
}

impl Entry {
    /// What identifies this instance's process tree.
    pub fn tree(&self) -> TreeSpec {
        TreeSpec {
            root: self.monitor,
            sid: self.server.filter(is_own_session).map(|s| s.pid),
            marker: Some(format!("DEVSERVER_INSTANCE={}", self.token)),
            since: self.monitor.or(self.server).map_or(0, |p| p.start_time),
        }
    }

    pub fn is(&self, project: &Path, agent: &str) -> bool {
        self.project == project && self.agent == agent
    }
}

/// Whether the session the server led may still be ours. Linux does not hand
/// out a pid while a session or group of that id exists, so a live process
/// with the server's pid but another start time means the session is gone and
/// the id belongs to someone else now.
fn is_own_session(server: &ProcRef) -> bool {
    process::stat(server.pid).is_none_or(|now| now.start_time == server.start_time)
}

/// The whole registry file.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Snapshot {
    pub version: u32,
    pub instances: Vec<Entry>,
}

impl Snapshot {
    pub fn find(&self, project: &Path, agent: &str) -> Option<&Entry> {
        self.instances.iter().find(|e| e.is(project, agent))
    }

    pub fn find_mut(&mut self, project: &Path, agent: &str) -> Option<&mut Entry> {
        self.instances.iter_mut().find(|e| e.is(project, agent))
    }

    pub fn remove(&mut self, project: &Path, agent: &str) -> Option<Entry> {
        let at = self.instances.iter().position(|e| e.is(project, agent))?;
        Some(self.instances.remove(at))
    }

    /// Inserts `entry`, replacing the one of the same project and agent.
    pub fn upsert(&mut self, entry: Entry) {
        match self.find_mut(&entry.project, &entry.agent) {
            Some(slot) => *slot = entry,
            None => self.instances.push(entry),
        }
    }
}

/// Handle on the state directory and the registry in it.
#[derive(Clone, Debug)]
pub struct Registry {
    dir: PathBuf,
    lock_timeout: Duration,
}

impl Registry {
    /// Opens (creating it 0700 if needed) the state directory `dir`.
    ///
    /// Refuses a directory owned by another user or writable by others: the
    /// registry decides which processes devserver signals.
    pub fn open(dir: &Path, lock_timeout: Duration) -> Result<Registry> {
        ensure_private_dir(dir)?;
        for sub in ["locks", "logs"] {
            ensure_private_dir(&dir.join(sub))?;
        }
        warn_if_networked(dir);
        Ok(Registry {
            dir: dir.to_path_buf(),
            lock_timeout,
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// How long to wait for a lock before giving up.
    pub fn lock_timeout(&self) -> Duration {
        self.lock_timeout
    }

    /// The prefix of every instance token this registry hands out.
    pub fn token_prefix(&self) -> String {
        format!(
            "{:08x}",
            stable_hash(&[self.dir.as_os_str().as_encoded_bytes()]) as u32
        )
    }

    pub fn file(&self) -> PathBuf {
        self.dir.join("registry.json")
    }

    fn backup(&self) -> PathBuf {
        self.dir.join("registry.json.bak")
    }

    /// The log file of an instance.
    pub fn log_path(&self, key: &str) -> PathBuf {
        self.dir.join("logs").join(format!("{key}.log"))
    }

    /// Takes the per-instance lock that serializes spawns and stops of one
    /// agent. Held for a whole spawn, so `timeout` should cover a warm-up.
    pub fn lock_instance(&self, key: &str, timeout: Duration) -> Result<FileLock> {
        FileLock::acquire(&self.instance_lock_path(key), timeout, "the instance lock")
    }

    /// The file behind [`Registry::lock_instance`].
    pub fn instance_lock_path(&self, key: &str) -> PathBuf {
        lock::path_in(&self.dir.join("locks"), key)
    }

    /// Reads the registry without locking. A missing file is an empty
    /// registry; a file that does not parse is an error naming it.
    pub fn load(&self) -> Result<Snapshot> {
        let path = self.file();
        match read_bytes(&path)? {
            None => Ok(empty()),
            Some(bytes) => decode(&bytes).map_err(|detail| self.corrupt_error(&path, &detail)),
        }
    }

    /// Removes the temporary files of writers that were killed mid-write
    /// (`registry.json.tmp-<pid>`, `registry.json.bak-<pid>` of a dead pid).
    /// Returns how many it removed.
    pub fn remove_stale_temp_files(&self) -> usize {
        let Ok(entries) = fs_err::read_dir(&self.dir) else {
            return 0;
        };
        let stale = |name: &str| {
            let pid = name
                .strip_prefix("registry.json.tmp-")
                .or_else(|| name.strip_prefix("registry.json.bak-"))
                .and_then(|pid| pid.parse::<u32>().ok());
            pid.is_some_and(|pid| crate::process::stat(pid).is_none())
        };
        entries
            .flatten()
            .filter(|e| stale(&e.file_name().to_string_lossy()))
            .filter(|e| fs_err::remove_file(e.path()).is_ok())
            .count()
    }

    /// Reads the registry for a command that is about to change it: under
    /// the lock, so a corrupt file is kept aside and the previous version
    /// restored (see [`Registry::update`]) instead of failing.
    pub fn load_for_write(&self) -> Result<Snapshot> {
        self.update(|snapshot| Ok(snapshot.clone()))
    }

    /// Runs `change` on the registry under the exclusive lock and writes the
    /// result if it changed. `change` must be quick: no process spawning, no
    /// waiting. The lock is released when this returns.
    pub fn update<T>(&self, change: impl FnOnce(&mut Snapshot) -> Result<T>) -> Result<T> {
        let _lock = FileLock::acquire(
            &lock::path_in(&self.dir, "registry"),
            self.lock_timeout,
            "the registry lock",
        )?;
        let (mut snapshot, restored) = self.load_for_update()?;
        let before = snapshot.clone();

        let out = change(&mut snapshot)?;

        if restored || snapshot != before {
            self.write(&snapshot)?;
        }
        Ok(out)
    }

    /// Reads under the lock, setting a corrupt file aside and falling back to
    /// the previous version. Never turns a corrupt file into an empty one.
    /// Returns the snapshot and whether it was restored (and must be written).
    fn load_for_update(&self) -> Result<(Snapshot, bool)> {
        let path = self.file();
        let Some(bytes) = read_bytes(&path)? else {
            return Ok((empty(), false));
        };
        let detail = match decode(&bytes) {
            Ok(snapshot) => return Ok((snapshot, false)),
            // A newer devserver's file is not corrupt: never replace it.
            Err(detail) if detail.starts_with(NEWER) => {
                return Err(self.corrupt_error(&path, &detail))
            }
            Err(detail) => detail,
        };

        let backup = self.backup();
        let restored = read_bytes(&backup)?
            .ok_or_else(|| format!("`{}` does not exist", backup.display()))
            .and_then(|b| decode(&b));
        let restored = match restored {
            Ok(snapshot) => snapshot,
            Err(why) => {
                return Err(self.corrupt_error(&path, &detail))
                    .context(format!("the previous version cannot be used either: {why}"))
            }
        };

        let aside = self.dir.join(format!(
            "registry.json.corrupt-{}-{}",
            unix_secs(),
            std::process::id()
        ));
        // Copied, not renamed: `registry.json` must never be missing, even
        // for a moment, or a reader would take the registry for empty. The
        // caller then replaces it atomically with the restored version.
        write_synced(&aside, &bytes).context("cannot keep the corrupt registry aside")?;
        crate::output::warn(&format!(
            "registry `{}` was corrupt ({detail}); kept it as `{}` and restored the previous version ({} instances)",
            path.display(),
            aside.display(),
            restored.instances.len()
        ));
        Ok((restored, true))
    }

    fn corrupt_error(&self, path: &Path, detail: &str) -> anyhow::Error {
        Failure::new(
            Code::Error,
            format!("registry `{}` is corrupt: {detail}", path.display()),
        )
        .with_hint(format!(
            "the previous version is kept in `{}`; the next command that changes the registry (`spawn`, `stop`) moves the corrupt file aside and restores it",
            self.backup().display()
        ))
        .into()
    }

    /// Atomically replaces the registry, keeping the old file as the backup.
    fn write(&self, snapshot: &Snapshot) -> Result<()> {
        let path = self.file();
        let tmp = self
            .dir
            .join(format!("registry.json.tmp-{}", std::process::id()));
        let mut bytes =
            serde_json::to_vec_pretty(snapshot).context("cannot encode the registry")?;
        bytes.push(b'\n');

        let written = write_synced(&tmp, &bytes).and_then(|()| {
            self.keep_backup(&path)?;
            // The directory is not fsynced: after a power loss the rename may
            // be lost, which leaves the previous version, a complete file.
            fs_err::rename(&tmp, &path)
        });
        if written.is_err() {
            let _ = fs_err::remove_file(&tmp);
        }
        written.with_context(|| format!("cannot write the registry `{}`", path.display()))
    }

    /// Points `registry.json.bak` at the current file's data, without copying.
    fn keep_backup(&self, path: &Path) -> std::io::Result<()> {
        if !path.exists() {
            return Ok(());
        }
        let staged = self
            .dir
            .join(format!("registry.json.bak-{}", std::process::id()));
        let _ = fs_err::remove_file(&staged);
        fs_err::hard_link(path, &staged)?;
        fs_err::rename(&staged, self.backup())
    }
}

fn empty() -> Snapshot {
    Snapshot {
        version: VERSION,
        instances: Vec::new(),
    }
}

fn read_bytes(path: &Path) -> Result<Option<Vec<u8>>> {
    use std::io::Read;

    let mut file = match fs_err::File::open(path) {
        Ok(file) => file,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(err) => return Err(err).context("cannot read the registry"),
    };
    ensure_trusted_file(path, &file.metadata()?)?;
    let mut bytes = Vec::new();
    file.read_to_end(&mut bytes)?;
    Ok(Some(bytes))
}

/// Refuses a registry file that someone else owns or could have written:
/// it decides which processes devserver signals.
fn ensure_trusted_file(path: &Path, meta: &std::fs::Metadata) -> Result<()> {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};

    // SAFETY: geteuid has no preconditions and cannot fail.
    let me = unsafe { libc::geteuid() };
    let why = if meta.uid() != me {
        format!("it is owned by uid {}, not by you (uid {me})", meta.uid())
    } else if meta.permissions().mode() & 0o022 != 0 {
        format!(
            "it is writable by others (mode {:o})",
            meta.permissions().mode() & 0o7777
        )
    } else {
        return Ok(());
    };
    Err(Failure::new(Code::Error, format!("refusing to trust `{}`: {why}", path.display()))
        .with_hint("a registry anyone else can write could make devserver signal their processes; check who changed it, then `chmod 600` it")
        .into())
}

fn decode(bytes: &[u8]) -> Result<Snapshot, String> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Err("the file is empty".into());
    }
    let snapshot: Snapshot = serde_json::from_slice(bytes).map_err(|err| err.to_string())?;
    if snapshot.version > VERSION {
        return Err(format!(
            "{NEWER} {}, newer than this devserver's {VERSION}",
            snapshot.version
        ));
    }
    Ok(snapshot)
}

fn write_synced(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let mut file = fs_err::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    file.write_all(bytes)?;
    file.sync_all()
}

/// The current time in unix seconds.
pub fn unix_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// The state directory from the environment, as documented.
pub fn default_dir() -> Result<PathBuf> {
    let var = |name: &str| std::env::var_os(name).filter(|v| !v.is_empty());
    if let Some(home) = var("DEVSERVER_HOME") {
        // Relative to where devserver was started, once, so the monitor
        // (which may run elsewhere) gets the same directory.
        return Ok(std::path::absolute(PathBuf::from(home))?);
    }
    if let Some(state) = var("XDG_STATE_HOME") {
        return Ok(PathBuf::from(state).join("devserver"));
    }
    if let Some(home) = var("HOME") {
        return Ok(PathBuf::from(home).join(".local/state/devserver"));
    }
    Err(Failure::new(
        Code::Error,
        "cannot find a state directory: `HOME` is not set",
    )
    .with_hint("set `DEVSERVER_HOME` to a private directory")
    .into())
}

/// Creates `dir` 0700 if missing, and refuses one that others could write.
fn ensure_private_dir(dir: &Path) -> Result<()> {
    use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};

    if !dir.exists() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .with_context(|| format!("cannot create the state directory `{}`", dir.display()))?;
    }
    let meta = fs_err::metadata(dir).context("cannot inspect the state directory")?;

    // SAFETY: geteuid has no preconditions and cannot fail.
    let me = unsafe { libc::geteuid() };
    let refuse = |why: String| -> Result<()> {
        Err(Failure::new(
            Code::Error,
            format!(
                "refusing to use the state directory `{}`: {why}",
                dir.display()
            ),
        )
        .with_hint("point `DEVSERVER_HOME` at a directory of your own with mode 0700")
        .into())
    };
    if meta.uid() != me {
        return refuse(format!(
            "it is owned by uid {}, not by you (uid {me})",
            meta.uid()
        ));
    }
    if meta.permissions().mode() & 0o022 != 0 {
        return refuse(format!(
            "it is writable by others (mode {:o})",
            meta.permissions().mode() & 0o7777
        ));
    }
    if meta.permissions().mode() & 0o077 != 0 {
        // Readable by others: logs and the registry are nobody else's business.
        fs_err::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
            .context("cannot make the state directory private")?;
    }
    Ok(())
}

/// Warns when the state directory is on a network or FUSE filesystem, where
/// `flock` may not exclude processes on other machines (C19).
fn warn_if_networked(dir: &Path) {
    use std::os::unix::ffi::OsStrExt;

    let Ok(path) = std::ffi::CString::new(dir.as_os_str().as_bytes()) else {
        return;
    };
    // SAFETY: `path` is NUL-terminated and `stats` is written by statfs only.
    let mut stats: libc::statfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statfs(path.as_ptr(), &mut stats) } != 0 {
        return;
    }
    #[allow(clippy::unnecessary_cast)] // f_type's width differs between targets
    if let Some(kind) = network_filesystem(stats.f_type as i64) {
        crate::output::warn(&format!(
            "the state directory `{}` is on {kind}, where file locks may not protect against other machines; keep `DEVSERVER_HOME` on a local disk",
            dir.display()
        ));
    }
}

/// The name of a network (or FUSE) filesystem from its statfs magic number.
fn network_filesystem(magic: i64) -> Option<&'static str> {
    match magic {
        0x6969 => Some("NFS"),
        0x517b => Some("SMB"),
        0xff53_4d42 | 0xfe53_4d42 => Some("CIFS/SMB2"),
        0x6573_5546 => Some("a FUSE filesystem"),
        0x00c3_6400 => Some("CephFS"),
        0x0102_1997 => Some("9P"),
        _ => None,
    }
}

/// A stable 64-bit FNV-1a hash, for file names and preferred ports. Stable
/// across builds and Rust versions, unlike `std`'s default hasher.
pub fn stable_hash(parts: &[&[u8]]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for part in parts {
        for byte in part.iter().chain(std::iter::once(&0xff)) {
            hash ^= u64::from(*byte);
            hash = hash.wrapping_mul(0x0100_0000_01b3);
        }
    }
    hash
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(agent: &str, port: u16) -> Entry {
        Entry {
            project: "/p/.git".into(),
            root: "/p".into(),
            agent: agent.into(),
            mode: Mode::Isolated,
            state: State::Running,
            port,
            url: format!("http://127.0.0.1:{port}"),
            worktree: format!("/p.worktrees/{agent}").into(),
            branch: format!("devserver/{agent}"),
            admin_name: agent.into(),
            created_worktree: true,
            created_branch: true,
            worktree_pending: false,
            token: "t".into(),
            spawner: None,
            monitor: None,
            server: None,
            started_at: None,
            log: "/l".into(),
            grace_ms: 100,
            exit_status: None,
            note: None,
            users: Vec::new(),
            idle_grace_ms: None,
            idle_since: None,
        }
    }

    fn registry() -> (tempfile::TempDir, Registry) {
        let dir = tempfile::tempdir().expect("tempdir");
        let reg = Registry::open(&dir.path().join("state"), Duration::from_secs(5)).expect("open");
        (dir, reg)
    }

    #[test]
    fn update_round_trips_and_keeps_previous_version() {
        let (_dir, reg) = registry();
        reg.update(|s| {
            s.upsert(entry("a", 5201));
            Ok(())
        })
        .expect("first");
        reg.update(|s| {
            s.upsert(entry("b", 5202));
            Ok(())
        })
        .expect("second");

        assert_eq!(reg.load().expect("load").instances.len(), 2);
        let previous = decode(&fs_err::read(reg.backup()).expect("backup")).expect("parses");
        assert_eq!(previous.instances.len(), 1);
    }

    #[test]
    fn state_dir_and_files_are_private() {
        use std::os::unix::fs::PermissionsExt;
        let (_dir, reg) = registry();
        reg.update(|s| {
            s.upsert(entry("a", 5201));
            Ok(())
        })
        .expect("write");
        let mode = |p: &Path| fs_err::metadata(p).expect("meta").permissions().mode() & 0o777;
        assert_eq!(mode(reg.dir()), 0o700);
        assert_eq!(mode(&reg.file()), 0o600);
    }

    #[test]
    fn corrupt_file_is_an_error_for_readers_and_restored_by_writers() {
        let (_dir, reg) = registry();
        reg.update(|s| {
            s.upsert(entry("a", 5201));
            Ok(())
        })
        .expect("a");
        reg.update(|s| {
            s.upsert(entry("b", 5202));
            Ok(())
        })
        .expect("b");
        fs_err::write(reg.file(), b"{\"version\": 1, \"instan").expect("truncate");

        let msg = format!("{:#}", reg.load().unwrap_err());
        assert!(msg.contains("registry.json"), "{msg}");
        assert_eq!(
            fs_err::read(reg.file()).expect("left alone"),
            b"{\"version\": 1, \"instan"
        );

        reg.update(|s| {
            s.upsert(entry("c", 5203));
            Ok(())
        })
        .expect("write restores");
        let agents: Vec<_> = reg
            .load()
            .expect("load")
            .instances
            .into_iter()
            .map(|e| e.agent)
            .collect();
        assert_eq!(agents, ["a", "c"]);
        let aside = fs_err::read_dir(reg.dir())
            .expect("list")
            .filter_map(|e| e.ok())
            .any(|e| {
                e.file_name()
                    .to_string_lossy()
                    .starts_with("registry.json.corrupt-")
            });
        assert!(aside, "corrupt file kept aside");
    }

    #[test]
    fn empty_file_is_corrupt_not_empty() {
        let (_dir, reg) = registry();
        fs_err::write(reg.file(), b"").expect("empty");
        assert!(format!("{:#}", reg.load().unwrap_err()).contains("empty"));
    }

    #[test]
    fn world_writable_state_dir_is_refused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().expect("tempdir");
        fs_err::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).expect("chmod");
        let msg = format!(
            "{:#}",
            Registry::open(dir.path(), Duration::from_secs(1)).unwrap_err()
        );
        assert!(msg.contains("writable by others"), "{msg}");
    }

    #[test]
    fn unchanged_update_does_not_write() {
        let (_dir, reg) = registry();
        reg.update(|_| Ok(())).expect("noop");
        assert!(!reg.file().exists());
    }

    #[test]
    fn c19_network_filesystems_are_recognised() {
        assert_eq!(network_filesystem(0x6969), Some("NFS"));
        assert_eq!(network_filesystem(0x6573_5546), Some("a FUSE filesystem"));
        assert_eq!(network_filesystem(0xef53), None, "ext4 is local");
        assert_eq!(network_filesystem(0x0102_1994), None, "tmpfs is local");
    }

    #[test]
    fn stable_hash_is_stable() {
        assert_eq!(stable_hash(&[b"a", b"b"]), stable_hash(&[b"a", b"b"]));
        assert_ne!(stable_hash(&[b"ab"]), stable_hash(&[b"a", b"b"]));
    }
}
