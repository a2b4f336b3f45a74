//! Exclusive file locks with a deadline, and the record of who holds one.
//!
//! devserver's locks are OS locks (`flock` through [`std::fs::File::lock`]):
//! the kernel drops them when the holding process dies, however it dies, so a
//! lock can never be left behind by a crashed owner and no age-based
//! takeover is ever needed. A lock file's contents are only a note for
//! waiters (holder pid, start time, when it was taken, its command line), so
//! a timeout can name who is in the way. The note is never used to decide
//! who owns the lock.
//!
//! Not here: what the locks protect (see `registry`).

use std::fs::TryLockError;
use std::io::{Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};
use fs_err::os::unix::fs::OpenOptionsExt;
use fs_err::{File, OpenOptions};

use crate::error::{Code, Failure};
use crate::process::{self, ProcRef};

/// A held exclusive lock; dropping it releases the lock.
#[derive(Debug)]
pub struct FileLock {
    _file: File,
}

impl FileLock {
    /// Takes the exclusive lock on `path`, waiting at most `timeout`.
    ///
    /// `what` names the lock in messages ("the registry lock"). Errors: a
    /// [`Code::LockTimeout`] failure naming the holder when the wait times
    /// out, and an I/O error naming the path when locking itself fails (for
    /// example `ENOLCK` on a network filesystem), which is never taken as
    /// "acquired".
    pub fn acquire(path: &Path, timeout: Duration, what: &str) -> Result<FileLock> {
        let mut file = open_lock_file(path)?;
        let start = Instant::now();
        let mut pause = Duration::from_millis(1);
        let mut announced = false;

        loop {
            match file.file().try_lock() {
                Ok(()) => break,
                Err(TryLockError::WouldBlock) => {}
                Err(TryLockError::Error(err)) => {
                    return Err(err).with_context(|| format!("cannot lock `{}`", path.display()));
                }
            }
            if start.elapsed() >= timeout {
                return Err(timeout_error(path, what, timeout));
            }
            if !announced && start.elapsed() >= Duration::from_millis(500) {
                tracing::info!(path = %path.display(), holder = %describe_holder(path), "waiting for {what}");
                announced = true;
            }
            std::thread::sleep(pause.min(timeout.saturating_sub(start.elapsed())));
            // Short pauses: a registry critical section lasts milliseconds.
            pause = (pause * 2).min(Duration::from_millis(4));
        }

        tracing::trace!(path = %path.display(), waited_ms = start.elapsed().as_millis() as u64, "acquired {what}");
        write_note(&mut file);
        Ok(FileLock { _file: file })
    }
}

impl FileLock {
    /// Takes the lock on `path` if it is free right now; `None` if it is held.
    pub fn try_acquire(path: &Path) -> Result<Option<FileLock>> {
        let mut file = open_lock_file(path)?;
        match file.file().try_lock() {
            Ok(()) => {
                write_note(&mut file);
                Ok(Some(FileLock { _file: file }))
            }
            Err(TryLockError::WouldBlock) => Ok(None),
            Err(TryLockError::Error(err)) => {
                Err(err).with_context(|| format!("cannot lock `{}`", path.display()))
            }
        }
    }
}

fn open_lock_file(path: &Path) -> Result<File> {
    // Opened for writing: NFSv4 refuses locks on read-only descriptors (C19).
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(path)?;
    Ok(file)
}

/// Records who holds the lock. Best effort: the note only serves messages.
fn write_note(file: &mut File) {
    let me = ProcRef::current();
    let since = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or_default();
    let command = process::cmdline(me.pid).unwrap_or_default();
    let note = format!("{} {} {since} {command}\n", me.pid, me.start_time);

    let written = file
        .set_len(0)
        .and_then(|()| file.seek(SeekFrom::Start(0)).map(drop))
        .and_then(|()| file.write_all(note.as_bytes()));
    if let Err(err) = written {
        tracing::debug!(%err, "cannot write the lock holder note");
    }
}

/// The holder recorded in a lock file's note.
#[derive(Debug, PartialEq, Eq)]
pub struct Holder {
    pub pid: u32,
    pub start_time: u64,
    pub since_ms: u128,
    pub command: String,
}

fn parse_note(text: &str) -> Option<Holder> {
    let mut parts = text.trim_end().splitn(4, ' ');
    Some(Holder {
        pid: parts.next()?.parse().ok()?,
        start_time: parts.next()?.parse().ok()?,
        since_ms: parts.next()?.parse().ok()?,
        command: parts.next().unwrap_or_default().to_string(),
    })
}

fn read_holder(path: &Path) -> Option<Holder> {
    parse_note(&fs_err::read_to_string(path).ok()?)
}

fn describe_holder(path: &Path) -> String {
    let note = read_holder(path);
    let Some(pid) = kernel_holder(path).or(note.as_ref().map(|n| n.pid)) else {
        return "an unknown process".into();
    };

    // The note is only trusted when it names the process the kernel says
    // holds the lock (or when the kernel's table cannot be read).
    let note = note.filter(|n| n.pid == pid);
    let command = note
        .as_ref()
        .map(|n| n.command.clone())
        .or_else(|| process::cmdline(pid))
        .unwrap_or_default();
    let age = note.as_ref().map_or_else(String::new, |n| {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis())
            .unwrap_or_default();
        let held = Duration::from_secs((now.saturating_sub(n.since_ms) / 1000) as u64);
        format!(", holding it for {}", humantime::format_duration(held))
    });
    format!("pid {pid} (`{command}`){age}")
}

/// The pid that holds the flock on `path`, from the kernel's `/proc/locks`.
fn kernel_holder(path: &Path) -> Option<u32> {
    use std::os::unix::fs::MetadataExt;

    let meta = fs_err::metadata(path).ok()?;
    let dev = meta.dev();
    let wanted = format!(
        "{:02x}:{:02x}:{}",
        libc::major(dev),
        libc::minor(dev),
        meta.ino()
    );
    let table = fs_err::read_to_string("/proc/locks").ok()?;
    parse_locks(&table, &wanted)
}

/// Finds the holder (not a waiter, marked `->`) of the lock on `device_inode`.
fn parse_locks(table: &str, device_inode: &str) -> Option<u32> {
    table.lines().find_map(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let is_holder = fields.get(1).is_some_and(|f| *f != "->");
        let matches = fields.get(5) == Some(&device_inode);
        if is_holder && matches {
            fields.get(4)?.parse().ok()
        } else {
            None
        }
    })
}

fn timeout_error(path: &Path, what: &str, timeout: Duration) -> anyhow::Error {
    let waited = humantime::format_duration(timeout);
    Failure::new(
        Code::LockTimeout,
        format!(
            "timed out after {waited} waiting for {what} `{}`, held by {}",
            path.display(),
            describe_holder(path)
        ),
    )
    .with_hint("wait for that command to finish, or raise `lock.timeout` in `devserver.yaml` (or `DEVSERVER_LOCK_TIMEOUT`)")
    .into()
}

/// The directory-relative path of a lock file, for callers building one.
pub fn path_in(dir: &Path, name: &str) -> PathBuf {
    dir.join(format!("{name}.lock"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_lock_table_names_the_holder_not_waiters() {
        let table = "1: -> FLOCK  ADVISORY  WRITE 300 08:01:77 0 EOF\n\
                     1: FLOCK  ADVISORY  WRITE 200 08:01:77 0 EOF\n\
                     2: POSIX  ADVISORY  WRITE 100 08:01:78 0 EOF\n";
        assert_eq!(parse_locks(table, "08:01:77"), Some(200));
        assert_eq!(parse_locks(table, "08:01:79"), None);
    }

    #[test]
    fn note_round_trips() {
        let holder = parse_note("42 1000 1700000000000 devserver spawn --agent a\n");
        assert_eq!(
            holder,
            Some(Holder {
                pid: 42,
                start_time: 1000,
                since_ms: 1_700_000_000_000,
                command: "devserver spawn --agent a".into()
            })
        );
        assert_eq!(parse_note("garbage"), None);
    }

    /// Taking a lock twice in one process must time out within its deadline,
    /// not hang: flock locks belong to the open file, not to the process.
    #[test]
    fn second_acquire_in_one_process_times_out_with_holder() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("r.lock");
        let _held =
            FileLock::acquire(&path, Duration::from_secs(1), "the test lock").expect("first");

        let start = Instant::now();
        let err =
            FileLock::acquire(&path, Duration::from_millis(200), "the test lock").unwrap_err();
        assert!(start.elapsed() < Duration::from_secs(2));
        assert_eq!(crate::error::classify(&err).0, Code::LockTimeout);
        let msg = format!("{err:#}");
        assert!(
            msg.contains(&format!("pid {}", std::process::id())),
            "{msg}"
        );
    }

    #[test]
    fn released_on_drop() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("r.lock");
        drop(FileLock::acquire(&path, Duration::from_secs(1), "l").expect("first"));
        FileLock::acquire(&path, Duration::from_millis(100), "l").expect("again after drop");
    }
}
