//! Process identity, process trees and listening sockets, read from `/proc`, and signals
//! that only ever reach the process they were meant for.
//!
//! This module owns three questions about processes that already exist:
//!
//! - **Who is this pid, really?** A [`ProcRef`] is a pid plus the process's start time, so a
//!   pid that the kernel has handed to an unrelated process never passes for the old one
//!   (case C15).
//! - **Which processes belong to one server?** A [`TreeSpec`] names a server's tree by its
//!   supervisor, its session and an environment marker; [`find_tree`] collects the members
//!   and [`stop_tree`] ends them with SIGTERM, a grace period, then SIGKILL (C09–C13).
//! - **What does a tree listen on?** [`listening_inodes`], [`socket_holders`] and
//!   [`listening_ports_of`] map TCP ports to the processes holding them, so `stop` can
//!   confirm a port is really free (C11).
//!
//! It does not spawn processes, keep state between calls, print anything, or decide what a
//! missing process means for the registry; callers do. Linux only.
//!
//! # How it works
//!
//! Everything is read fresh from `/proc` on every call. `/proc/PID/stat` gives the parent,
//! process group, session, state and start time. The start time, in clock ticks since boot
//! (usually 10 ms each), never changes for a process; two processes share a pid and a start
//! time only if the whole pid space wraps around within one tick. A process whose state is
//! zombie or dead has already exited and counts as gone everywhere in this module.
//!
//! Signals go through a pidfd: open a pidfd for the pid, then check that the process behind
//! the pid still has the recorded start time. Our process had the pid when the fingerprint
//! was taken, before the pidfd was opened, and a pid is only reused once its process has
//! been reaped; so a match proves the pidfd refers to our process, and `pidfd_send_signal`
//! cannot hit anything else even if the pid is recycled a moment later. Kernels without
//! pidfds (before 5.3) fall back to a fresh check followed by `kill`, which leaves a window
//! of two syscalls.
//!
//! A tree is the union of three sets, filtered to processes that started at or after
//! [`TreeSpec::since`]:
//!
//! 1. descendants of the supervisor, found by walking parent links in one `/proc` scan;
//! 2. members of the server's session;
//! 3. processes carrying the server's environment marker, which finds descendants that
//!    called `setsid` and were reparented to init after the supervisor died.
//!
//! The calling process and its ancestors are never members, so a mistaken spec cannot make
//! devserver signal itself or the shell that runs it.

use std::collections::{HashMap, HashSet};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::MetadataExt;
use std::thread;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tracing::{debug, info, trace, warn};

/// How often [`stop_tree`] rescans the tree while waiting for it to exit.
const POLL_INTERVAL: Duration = Duration::from_millis(10);

/// How long [`stop_tree`] waits for the tree to vanish after SIGKILL.
const KILL_WAIT: Duration = Duration::from_secs(2);

/// The `st` column value of a listening socket in `/proc/net/tcp` (`TCP_LISTEN` = 10).
const TCP_LISTEN: &str = "0A";

/// The TCP tables of the current network namespace. `tcp6` is absent when the kernel runs
/// without IPv6, which simply means there are no IPv6 listeners.
const TCP_TABLES: [&str; 2] = ["/proc/net/tcp", "/proc/net/tcp6"];

/// A process fingerprint: pid plus its start time (field 22 of `/proc/PID/stat`, clock ticks
/// since boot).
///
/// Two fingerprints are equal only for the very same process: a recycled pid gets a new
/// start time.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ProcRef {
    pub pid: u32,
    pub start_time: u64,
}

/// The fields of `/proc/PID/stat` that devserver uses.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Stat {
    pub pid: u32,
    pub ppid: u32,
    pub pgid: u32,
    pub sid: u32,
    /// One-letter state such as `R`, `S`, `T`, `Z` (zombie) or `X` (dead).
    pub state: char,
    pub start_time: u64,
    /// The executable name as the kernel reports it, truncated to 15 bytes.
    pub comm: String,
}

impl Stat {
    /// The fingerprint of the process this stat describes.
    #[must_use]
    pub fn proc_ref(&self) -> ProcRef {
        ProcRef {
            pid: self.pid,
            start_time: self.start_time,
        }
    }

    /// Whether the process has already exited: a zombie waiting to be reaped (`Z`) or one
    /// being torn down (`X`, or `x` on kernels 2.6.33 to 3.13).
    #[must_use]
    pub fn is_exited(&self) -> bool {
        matches!(self.state, 'Z' | 'X' | 'x')
    }
}

/// Reads `/proc/PID/stat`. Returns `None` when the process is gone or the line is malformed.
#[must_use]
pub fn stat(pid: u32) -> Option<Stat> {
    // comm is raw bytes chosen by the program, so it need not be UTF-8.
    let bytes = fs_err::read(format!("/proc/{pid}/stat")).ok()?;
    parse_stat(&String::from_utf8_lossy(&bytes))
}

/// Parses one `/proc/PID/stat` line.
fn parse_stat(line: &str) -> Option<Stat> {
    // A program can name itself anything, including `a) b (c`, so comm runs from the first
    // `(` to the *last* `)`. Everything after that is space-separated and free of parens.
    let open = line.find('(')?;
    let close = line.rfind(')')?;
    if close < open {
        return None;
    }

    let pid = line[..open].trim().parse().ok()?;
    let comm = line[open + 1..close].to_owned();
    let fields: Vec<&str> = line[close + 1..].split_whitespace().collect();
    let state = single_char(fields.first()?)?;

    Some(Stat {
        pid,
        ppid: stat_field(&fields, 4)?,
        pgid: stat_field(&fields, 5)?,
        sid: stat_field(&fields, 6)?,
        state,
        start_time: stat_field(&fields, 22)?,
        comm,
    })
}

/// Field `number` of `/proc/PID/stat`, counting from 1 as proc(5) does. `fields` starts at
/// field 3 (the state), the first one after comm.
fn stat_field<T: std::str::FromStr>(fields: &[&str], number: usize) -> Option<T> {
    fields.get(number.checked_sub(3)?)?.parse().ok()
}

fn single_char(text: &str) -> Option<char> {
    let mut chars = text.chars();
    let first = chars.next()?;
    chars.next().is_none().then_some(first)
}

/// Reads the stat of every process in one scan of `/proc`.
///
/// Processes that exit during the scan are skipped. Threads are not listed, only processes.
#[must_use]
pub fn all() -> Vec<Stat> {
    let entries = match fs_err::read_dir("/proc") {
        Ok(entries) => entries,
        Err(err) => {
            warn!("cannot list processes: {err}");
            return Vec::new();
        }
    };

    entries
        .filter_map(Result::ok)
        .filter_map(|entry| entry.file_name().to_str()?.parse::<u32>().ok())
        .filter_map(stat)
        .collect()
}

/// The command line of `pid`, its arguments joined by single spaces. Returns `None` when the
/// process is gone. Kernel threads, zombies and a process in the middle of `execve` give an
/// empty string.
#[must_use]
pub fn cmdline(pid: u32) -> Option<String> {
    let bytes = fs_err::read(format!("/proc/{pid}/cmdline")).ok()?;
    Some(join_cmdline(&bytes))
}

fn join_cmdline(bytes: &[u8]) -> String {
    // Each argument ends in a NUL; drop only the final one so empty arguments survive.
    let bytes = bytes.strip_suffix(&[0]).unwrap_or(bytes);
    if bytes.is_empty() {
        return String::new();
    }

    let args: Vec<_> = bytes
        .split(|byte| *byte == 0)
        .map(String::from_utf8_lossy)
        .collect();
    args.join(" ")
}

/// Whether a signal is meant for one process or for the process group it leads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Target {
    Process,
    Group,
}

impl ProcRef {
    /// The current fingerprint of `pid`, or `None` if it is gone or has already exited.
    #[must_use]
    pub fn of(pid: u32) -> Option<ProcRef> {
        stat(pid)
            .filter(|stat| !stat.is_exited())
            .map(|stat| stat.proc_ref())
    }

    /// The fingerprint of the calling process.
    ///
    /// # Panics
    ///
    /// If `/proc` is not mounted. devserver cannot manage processes without it.
    #[must_use]
    pub fn current() -> ProcRef {
        let stat = stat(std::process::id())
            .expect("devserver needs /proc, and a process can always read its own stat");
        stat.proc_ref()
    }

    /// Whether this exact process still runs: the pid exists, has the same start time, and
    /// is neither a zombie nor dead.
    #[must_use]
    pub fn is_alive(&self) -> bool {
        stat(self.pid).is_some_and(|stat| self.is_same_live(&stat))
    }

    /// Whether `stat` describes this process, still running.
    fn is_same_live(&self, stat: &Stat) -> bool {
        stat.pid == self.pid && stat.start_time == self.start_time && !stat.is_exited()
    }

    /// Sends `sig` to this process if, and only if, it is still the process this fingerprint
    /// was taken from and has not exited. Returns whether the signal was sent.
    ///
    /// Uses a pidfd so a recycled pid is never hit (see the module docs). Signal 0 sends
    /// nothing and reports whether the process could be signalled.
    #[must_use]
    pub fn signal(&self, sig: i32) -> bool {
        self.send(sig, Target::Process)
    }

    /// Sends `sig` to the process group this process leads, with the same identity check as
    /// [`signal`](Self::signal). Returns `false` if the process is gone, no longer leads its
    /// group, or is pid 1 (its "group" would mean every process on the system to `kill`).
    ///
    /// Uses `PIDFD_SIGNAL_PROCESS_GROUP` (Linux 6.9), which names the group through the
    /// pidfd; older kernels fall back to a fresh check and `kill(-pgid)`.
    #[must_use]
    pub fn signal_group(&self, sig: i32) -> bool {
        self.send(sig, Target::Group)
    }

    fn send(&self, sig: i32, target: Target) -> bool {
        let Some(pid) = self.pid_t() else {
            return false;
        };

        match pidfd_open(pid) {
            Ok(pidfd) => self.send_via_pidfd(&pidfd, sig, target),
            Err(err) if is_pidfd_unsupported(&err) => {
                trace!(
                    pid = self.pid,
                    "pidfd unavailable ({err}), checking and using kill"
                );
                self.send_via_kill(sig, target)
            }
            Err(_) => false,
        }
    }

    fn send_via_pidfd(&self, pidfd: &OwnedFd, sig: i32, target: Target) -> bool {
        // The check must come after opening the pidfd: only then does a match prove the pidfd
        // refers to our process rather than to a successor with the same pid.
        if !self.is_signal_target(target) {
            return false;
        }

        let flags = match target {
            Target::Process => 0,
            Target::Group => libc::PIDFD_SIGNAL_PROCESS_GROUP,
        };
        match pidfd_send_signal(pidfd, sig, flags) {
            Ok(()) => true,
            // Kernels before 6.9 reject the process-group flag.
            Err(err) if target == Target::Group && err.raw_os_error() == Some(libc::EINVAL) => {
                self.send_via_kill(sig, target)
            }
            Err(_) => false,
        }
    }

    /// The fallback without pidfds: check identity, then `kill`. The pid could in theory be
    /// recycled between the two calls; this is as close as such kernels allow.
    fn send_via_kill(&self, sig: i32, target: Target) -> bool {
        if !self.is_signal_target(target) {
            return false;
        }
        let Some(pid) = self.pid_t() else {
            return false;
        };

        let destination = match target {
            Target::Process => pid,
            Target::Group => -pid,
        };
        kill(destination, sig).is_ok()
    }

    /// Whether this process may receive a signal for `target` right now.
    fn is_signal_target(&self, target: Target) -> bool {
        // kill() reads pid 0 as "our own group" and -1 as "everyone", so neither pid 0 nor
        // the group of pid 1 may ever reach it.
        let min_pid = match target {
            Target::Process => 1,
            Target::Group => 2,
        };
        if self.pid < min_pid {
            return false;
        }

        let Some(stat) = stat(self.pid) else {
            return false;
        };
        self.is_same_live(&stat) && (target == Target::Process || stat.pgid == self.pid)
    }

    fn pid_t(&self) -> Option<libc::pid_t> {
        libc::pid_t::try_from(self.pid).ok().filter(|pid| *pid > 0)
    }
}

/// Whether `pidfd_open` failed because this system lacks pidfds, not because the process is
/// gone. ENOSYS means a kernel before 5.3. EPERM comes from seccomp filters in older
/// container runtimes, which answer syscalls they don't know that way; `pidfd_open` itself
/// never needs a permission.
fn is_pidfd_unsupported(err: &io::Error) -> bool {
    matches!(err.raw_os_error(), Some(libc::ENOSYS | libc::EPERM))
}

fn pidfd_open(pid: libc::pid_t) -> io::Result<OwnedFd> {
    let flags: libc::c_uint = 0;

    // SAFETY: pidfd_open takes two integers and touches none of our memory.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, flags) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }

    let fd = RawFd::try_from(fd).expect("the kernel returns descriptors that fit in an int");
    // SAFETY: the kernel just created this descriptor for us and nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn pidfd_send_signal(pidfd: &OwnedFd, sig: i32, flags: libc::c_uint) -> io::Result<()> {
    let info: *const libc::siginfo_t = std::ptr::null();

    // SAFETY: the descriptor is open for the duration of the call, and a null siginfo tells
    // the kernel to fill it in itself, so it reads no memory of ours.
    let result = unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            pidfd.as_raw_fd(),
            sig,
            info,
            flags,
        )
    };

    if result == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

fn kill(destination: libc::pid_t, sig: i32) -> io::Result<()> {
    // SAFETY: kill takes two integers and touches none of our memory.
    if unsafe { libc::kill(destination, sig) } == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// What identifies the members of one server's process tree. A process is a member if it
/// matches any of `root`, `sid` or `marker`, started at or after `since`, and has not exited.
#[derive(Clone, Debug, Default)]
pub struct TreeSpec {
    /// The supervising process. Its descendants (by parent links) are members while it is
    /// alive; the root itself is never a member.
    pub root: Option<ProcRef>,
    /// Members of this session. Set it only if the session leader's fingerprint matched at
    /// spawn time; the caller decides. Session 0 (kernel threads) is ignored.
    pub sid: Option<u32>,
    /// An environment entry such as `DEVSERVER_INSTANCE=abc123`. Processes whose
    /// `/proc/PID/environ` holds exactly this entry are members, which finds descendants that
    /// called `setsid` and were reparented after the supervisor died. Only processes owned
    /// by our effective uid are checked. An empty marker is ignored. A process caught in the
    /// middle of `execve` briefly shows an empty environment, so it can be missed by one scan.
    pub marker: Option<String>,
    /// Only processes with `start_time >= since` are members; guards against pid and
    /// session id reuse.
    pub since: u64,
}

/// The live members of the tree described by `spec`, sorted by start time (parents before
/// children), then pid.
///
/// Never includes the calling process or its ancestors, and skips processes that have
/// exited. Costs one `/proc` scan, plus an environ read per candidate process owned by our
/// uid when `spec.marker` is set.
#[must_use]
pub fn find_tree(spec: &TreeSpec) -> Vec<ProcRef> {
    scan_tree(spec).iter().map(Stat::proc_ref).collect()
}

/// Whether any member of the tree is still alive.
#[must_use]
pub fn is_tree_alive(spec: &TreeSpec) -> bool {
    !scan_tree(spec).is_empty()
}

fn scan_tree(spec: &TreeSpec) -> Vec<Stat> {
    let procs = all();
    let excluded = self_and_ancestors(&procs);
    let descendants = spec
        .root
        .map(|root| descendants_of(root, &procs))
        .unwrap_or_default();
    let euid = effective_uid();

    // The marker check reads a file, so it runs last and only for processes not yet known.
    let mut members: Vec<Stat> = procs
        .into_iter()
        .filter(|stat| is_candidate(stat, spec, &excluded))
        .filter(|stat| {
            descendants.contains(&stat.pid)
                || is_in_session(stat, spec)
                || has_marker(stat, spec, euid)
        })
        .collect();

    members.sort_by_key(|stat| (stat.start_time, stat.pid));
    members
}

/// Whether `stat` may be a member at all, whatever identifies it.
fn is_candidate(stat: &Stat, spec: &TreeSpec, excluded: &HashSet<u32>) -> bool {
    !stat.is_exited()
        && stat.start_time >= spec.since
        && !excluded.contains(&stat.pid)
        && spec.root != Some(stat.proc_ref())
}

fn is_in_session(stat: &Stat, spec: &TreeSpec) -> bool {
    spec.sid.is_some_and(|sid| sid != 0 && stat.sid == sid)
}

fn has_marker(stat: &Stat, spec: &TreeSpec, euid: u32) -> bool {
    let Some(marker) = spec.marker.as_deref().filter(|marker| !marker.is_empty()) else {
        return false;
    };

    // Other users' environments are none of our business, and as root we could read them.
    let owner = fs_err::metadata(format!("/proc/{}", stat.pid)).map(|meta| meta.uid());
    if owner.ok() != Some(euid) {
        return false;
    }

    let Ok(environ) = fs_err::read(format!("/proc/{}/environ", stat.pid)) else {
        return false;
    };
    environ
        .split(|byte| *byte == 0)
        .any(|entry| entry == marker.as_bytes())
}

/// Every live process of ours whose environment has an entry starting with
/// `prefix` (such as `DEVSERVER_INSTANCE=1234abcd-`), with that entry's value
/// after the `=`. The calling process and its ancestors are left out.
#[must_use]
pub fn with_env_prefix(prefix: &str) -> Vec<(String, ProcRef)> {
    let procs = all();
    let excluded = self_and_ancestors(&procs);
    let euid = effective_uid();
    procs
        .iter()
        .filter(|stat| !stat.is_exited() && !excluded.contains(&stat.pid))
        .filter_map(|stat| env_entry(stat.pid, prefix, euid).map(|value| (value, stat.proc_ref())))
        .collect()
}

fn env_entry(pid: u32, prefix: &str, euid: u32) -> Option<String> {
    let owner = fs_err::metadata(format!("/proc/{pid}")).map(|meta| meta.uid());
    if owner.ok() != Some(euid) {
        return None;
    }
    let environ = fs_err::read(format!("/proc/{pid}/environ")).ok()?;
    let entry = environ
        .split(|byte| *byte == 0)
        .find(|entry| entry.starts_with(prefix.as_bytes()))?;
    let text = String::from_utf8_lossy(entry);
    Some(
        text.split_once('=')
            .map_or(String::new(), |(_, v)| v.to_string()),
    )
}

/// The calling process and every ancestor up to init, by parent links in `procs`.
fn self_and_ancestors(procs: &[Stat]) -> HashSet<u32> {
    let parents: HashMap<u32, u32> = procs.iter().map(|stat| (stat.pid, stat.ppid)).collect();
    let mut chain = HashSet::new();

    // The visited check stops the walk on a cycle, which a scan racing with pid reuse could
    // in theory produce.
    let mut pid = std::process::id();
    while pid != 0 && chain.insert(pid) {
        let Some(&parent) = parents.get(&pid) else {
            break;
        };
        pid = parent;
    }
    chain
}

/// All descendants of `root` in `procs`, or none if `root` is no longer alive (its children
/// have then been reparented and are found, if at all, by session or marker).
fn descendants_of(root: ProcRef, procs: &[Stat]) -> HashSet<u32> {
    if !procs.iter().any(|stat| root.is_same_live(stat)) {
        return HashSet::new();
    }

    let mut children: HashMap<u32, Vec<u32>> = HashMap::new();
    for stat in procs {
        children.entry(stat.ppid).or_default().push(stat.pid);
    }

    let mut found = HashSet::new();
    let mut pending = vec![root.pid];
    while let Some(parent) = pending.pop() {
        for &child in children.get(&parent).into_iter().flatten() {
            if child != root.pid && found.insert(child) {
                pending.push(child);
            }
        }
    }
    found
}

fn effective_uid() -> u32 {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() }
}

/// The result of [`stop_tree`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StopOutcome {
    /// Members that were sent SIGTERM.
    pub signalled: usize,
    /// Members that were still alive after the grace period and were sent SIGKILL.
    pub killed: usize,
    /// Members still alive 2 s after SIGKILL, for example stuck in uninterruptible sleep.
    pub survivors: Vec<ProcRef>,
}

impl StopOutcome {
    /// Whether the whole tree is gone.
    #[must_use]
    pub fn is_stopped(&self) -> bool {
        self.survivors.is_empty()
    }
}

/// Stops every member of the tree: SIGTERM, a grace period, then SIGKILL.
///
/// SIGTERM goes to every member, and to each member's process group whose leader is itself
/// a member (never to the caller's own group). Then the tree is rescanned every ~10 ms, so
/// children forked meanwhile get SIGTERM too, until no member is left or `grace` has passed.
/// The rest get SIGKILL and the tree is given up to 2 s more. Exited processes (zombies)
/// count as gone.
///
/// Blocks until the tree is gone or both waits are over; it returns as soon as the tree is
/// gone, with no fixed sleep.
#[must_use]
pub fn stop_tree(spec: &TreeSpec, grace: Duration) -> StopOutcome {
    let mut termed = HashSet::new();
    let remaining = signal_until_gone(spec, libc::SIGTERM, &mut termed, grace);
    if remaining.is_empty() {
        debug!(signalled = termed.len(), "tree exited after SIGTERM");
        return StopOutcome {
            signalled: termed.len(),
            ..StopOutcome::default()
        };
    }

    info!(
        remaining = remaining.len(),
        grace_ms = grace.as_millis(),
        "tree outlived its grace period, sending SIGKILL"
    );
    let mut killed = HashSet::new();
    let survivors = signal_until_gone(spec, libc::SIGKILL, &mut killed, KILL_WAIT);
    if !survivors.is_empty() {
        warn!(?survivors, "tree members survived SIGKILL");
    }

    StopOutcome {
        signalled: termed.len(),
        killed: killed.len(),
        survivors,
    }
}

/// Sends `sig` to each member not yet in `sent`, rescanning every [`POLL_INTERVAL`] so new
/// members get it too, until the tree is gone or `limit` has passed. Returns the members
/// found by the last scan: empty if the tree is gone.
fn signal_until_gone(
    spec: &TreeSpec,
    sig: i32,
    sent: &mut HashSet<ProcRef>,
    limit: Duration,
) -> Vec<ProcRef> {
    let started = Instant::now();
    loop {
        let members = scan_tree(spec);
        if members.is_empty() {
            return Vec::new();
        }

        signal_members(&members, sig, sent);

        if started.elapsed() >= limit {
            return members.iter().map(Stat::proc_ref).collect();
        }
        thread::sleep(POLL_INTERVAL);
    }
}

/// Sends `sig` once to each member not yet in `sent`, adding those it reached.
fn signal_members(members: &[Stat], sig: i32, sent: &mut HashSet<ProcRef>) {
    // Group signals go first: they also reach processes forked since the scan. Members of a
    // group signalled this way are not signalled again, because some programs treat a
    // second signal as a demand to exit without cleaning up.
    let groups = signal_leader_groups(members, sig, sent);

    for member in members {
        let member_ref = member.proc_ref();
        if sent.contains(&member_ref) {
            continue;
        }

        if groups.contains(&member.pgid) || member_ref.signal(sig) {
            debug!(pid = member.pid, comm = %member.comm, sig, "signalled tree member");
            sent.insert(member_ref);
        }
    }

    // A stopped process (Ctrl+Z, SIGSTOP) only acts on SIGTERM once it runs again, so
    // without this it would always sit out the whole grace period.
    if sig == libc::SIGTERM {
        for stopped in members.iter().filter(|member| member.state == 'T') {
            if stopped.proc_ref().signal(libc::SIGCONT) {
                debug!(
                    pid = stopped.pid,
                    "resumed stopped tree member to let it exit"
                );
            }
        }
    }
}

/// Signals the process group of every member that leads its group and has not been
/// signalled yet. Returns the groups reached.
fn signal_leader_groups(members: &[Stat], sig: i32, sent: &HashSet<ProcRef>) -> HashSet<u32> {
    // Never our own group, even if a spec somehow makes its leader a member.
    let own_group = stat(std::process::id()).map(|stat| stat.pgid);

    members
        .iter()
        .filter(|stat| stat.pgid == stat.pid && Some(stat.pgid) != own_group)
        .filter(|stat| !sent.contains(&stat.proc_ref()))
        .filter(|leader| leader.proc_ref().signal_group(sig))
        .map(|leader| {
            debug!(pgid = leader.pgid, sig, "signalled process group");
            leader.pgid
        })
        .collect()
}

/// A TCP socket in LISTEN state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Listener {
    port: u16,
    inode: u64,
}

/// Inodes of TCP sockets in LISTEN state on `port`, on any address, IPv4 or IPv6.
///
/// Only sees the current network namespace.
#[must_use]
pub fn listening_inodes(port: u16) -> Vec<u64> {
    listeners()
        .into_iter()
        .filter(|listener| listener.port == port)
        .map(|listener| listener.inode)
        .collect()
}

/// The pids among `candidates` that hold one of `inodes` open, sorted and deduplicated.
///
/// Processes whose descriptors we may not read (other users, unless we are root) are
/// skipped.
#[must_use]
pub fn socket_holders(inodes: &[u64], candidates: &[u32]) -> Vec<u32> {
    let mut holders: Vec<u32> = candidates
        .iter()
        .copied()
        .filter(|&pid| {
            socket_inodes_of(pid)
                .iter()
                .any(|inode| inodes.contains(inode))
        })
        .collect();

    holders.sort_unstable();
    holders.dedup();
    holders
}

/// The TCP ports, on any address, on which any of `pids` listens; sorted and deduplicated.
/// Tells the user which port a server bound when it ignored the one it was given.
#[must_use]
pub fn listening_ports_of(pids: &[u32]) -> Vec<u16> {
    let port_of: HashMap<u64, u16> = listeners()
        .into_iter()
        .map(|listener| (listener.inode, listener.port))
        .collect();

    let mut ports: Vec<u16> = pids
        .iter()
        .flat_map(|&pid| socket_inodes_of(pid))
        .filter_map(|inode| port_of.get(&inode).copied())
        .collect();

    ports.sort_unstable();
    ports.dedup();
    ports
}

/// Every port some socket listens on (any address, IPv4 or IPv6), from one
/// read of the kernel's tables; `None` when they cannot be read.
#[must_use]
pub fn all_listening_ports() -> Option<std::collections::HashSet<u16>> {
    let tables: Vec<String> = TCP_TABLES
        .iter()
        .filter_map(|path| fs_err::read_to_string(path).ok())
        .collect();
    if tables.is_empty() {
        return None;
    }
    Some(
        tables
            .iter()
            .flat_map(|t| parse_tcp_table(t))
            .map(|l| l.port)
            .collect(),
    )
}

fn listeners() -> Vec<Listener> {
    TCP_TABLES
        .iter()
        .filter_map(|path| fs_err::read_to_string(path).ok())
        .flat_map(|table| parse_tcp_table(&table))
        .collect()
}

/// Parses `/proc/net/tcp` or `/proc/net/tcp6`, keeping only listening sockets.
fn parse_tcp_table(table: &str) -> Vec<Listener> {
    // The first line is a header.
    table.lines().skip(1).filter_map(parse_tcp_line).collect()
}

fn parse_tcp_line(line: &str) -> Option<Listener> {
    // Columns: sl, local_address, rem_address, st, tx:rx queue, tr:when, retrnsmt, uid,
    // timeout, inode. Addresses are `HEXADDR:HEXPORT` in both tables.
    let fields: Vec<&str> = line.split_whitespace().collect();
    if *fields.get(3)? != TCP_LISTEN {
        return None;
    }

    let (_, port) = fields.get(1)?.rsplit_once(':')?;
    let port = u16::from_str_radix(port, 16).ok()?;
    let inode = fields.get(9)?.parse().ok().filter(|inode| *inode != 0)?;
    Some(Listener { port, inode })
}

/// Inodes of the sockets `pid` has open, from the `socket:[N]` links in `/proc/PID/fd`.
fn socket_inodes_of(pid: u32) -> Vec<u64> {
    let Ok(entries) = fs_err::read_dir(format!("/proc/{pid}/fd")) else {
        return Vec::new();
    };

    entries
        .filter_map(Result::ok)
        .filter_map(|entry| fs_err::read_link(entry.path()).ok())
        .filter_map(|target| parse_socket_link(target.to_str()?))
        .collect()
}

fn parse_socket_link(target: &str) -> Option<u64> {
    target
        .strip_prefix("socket:[")?
        .strip_suffix(']')?
        .parse()
        .ok()
}

#[cfg(test)]
// A failed unwrap is a failed test, which is exactly what it should be here.
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    use std::net::TcpListener;
    use std::os::unix::process::{CommandExt, ExitStatusExt};
    use std::process::{Child, Command, Stdio};
    use std::sync::atomic::{AtomicU32, Ordering};

    /// A spawned `sh -c SCRIPT` whose tree carries a marker unique to the test. Dropping it
    /// kills the whole tree and reaps the shell, even when an assertion failed.
    struct TestTree {
        child: Child,
        spec: TreeSpec,
    }

    impl TestTree {
        fn spawn(script: &str) -> TestTree {
            Self::spawn_with(script, |_| {})
        }

        fn spawn_with(script: &str, configure: impl FnOnce(&mut Command)) -> TestTree {
            let marker = unique_marker();
            let (key, value) = marker.split_once('=').unwrap();

            let mut command = Command::new("sh");
            command.arg("-c").arg(script).env(key, value);
            command.stdin(Stdio::null()).stdout(Stdio::null());
            configure(&mut command);
            let child = command.spawn().unwrap();

            let spec = TreeSpec {
                marker: Some(marker),
                ..TreeSpec::default()
            };
            TestTree { child, spec }
        }

        fn members(&self) -> Vec<Stat> {
            scan_tree(&self.spec)
        }

        /// Waits until the tree has at least `count` members, so tests act on a settled
        /// tree rather than on a shell that has not forked yet.
        fn wait_for_members(&self, count: usize) -> Vec<Stat> {
            let mut members = Vec::new();
            assert!(
                wait_until(|| {
                    members = self.members();
                    members.len() >= count
                }),
                "tree never reached {count} members: {members:?}"
            );
            members
        }
    }

    impl Drop for TestTree {
        fn drop(&mut self) {
            let _ = stop_tree(&self.spec, Duration::ZERO);
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }

    fn unique_marker() -> String {
        static COUNTER: AtomicU32 = AtomicU32::new(0);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        format!("DEVSERVER_INSTANCE=test-{}-{n}", std::process::id())
    }

    /// Polls `condition` every 5 ms for up to 2 s.
    fn wait_until(mut condition: impl FnMut() -> bool) -> bool {
        let started = Instant::now();
        while started.elapsed() < Duration::from_secs(2) {
            if condition() {
                return true;
            }
            thread::sleep(Duration::from_millis(5));
        }
        condition()
    }

    fn spawn_sleep() -> Child {
        Command::new("sleep").arg("30").spawn().unwrap()
    }

    fn stat_line(comm: &str) -> String {
        format!(
            "4242 ({comm}) S 1 4240 4239 34816 4242 4194304 120 0 0 0 1 2 0 0 20 0 1 0 \
             987654 8192 100 18446744073709551615 1 1 0 0 0 0 0 0 0 0 0 0 17 3 0 0 0 0 0"
        )
    }

    #[test]
    fn parse_stat_splits_comm_at_last_paren() {
        for comm in ["sleep", "a b", "(a) b)", ") (", "x) S 9 9 9 9", ""] {
            let stat = parse_stat(&stat_line(comm)).unwrap();
            assert_eq!(
                stat,
                Stat {
                    pid: 4242,
                    ppid: 1,
                    pgid: 4240,
                    sid: 4239,
                    state: 'S',
                    start_time: 987_654,
                    comm: comm.to_owned(),
                },
                "comm {comm:?}"
            );
        }
    }

    #[test]
    fn parse_stat_rejects_malformed_lines() {
        let truncated = "4242 (sleep) S 1 4240 4239";
        let no_parens = "4242 sleep S 1 4240 4239 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 987654";
        let bad_state = stat_line("sleep").replace(") S ", ") SS ");
        let reversed = "4242 )sleep( S 1 4240 4239";

        for line in ["", truncated, no_parens, &bad_state, reversed] {
            assert_eq!(parse_stat(line), None, "line {line:?}");
        }
    }

    #[test]
    fn stat_reads_the_calling_process() {
        let me = stat(std::process::id()).unwrap();

        assert_eq!(me.pid, std::process::id());
        assert_eq!(me.ppid, std::os::unix::process::parent_id());
        assert!(!me.is_exited());
        assert_eq!(ProcRef::current(), me.proc_ref());
        assert!(ProcRef::current().is_alive());
        assert!(all().iter().any(|stat| stat.pid == me.pid));
    }

    #[test]
    fn stat_and_of_return_none_for_missing_pid() {
        let mut child = Command::new("true").spawn().unwrap();
        let pid = child.id();
        child.wait().unwrap();

        // Reaped: the pid is free now (barring immediate reuse, which is vanishingly rare).
        assert!(stat(pid).is_none_or(|stat| stat.comm != "true"));
        assert_eq!(stat(u32::MAX), None);
        assert_eq!(ProcRef::of(u32::MAX), None);
        assert_eq!(cmdline(u32::MAX), None);
    }

    #[test]
    fn join_cmdline_keeps_empty_arguments() {
        let cases: [(&[u8], &str); 5] = [
            (b"", ""),
            (b"sleep\x0030\x00", "sleep 30"),
            (b"sh\x00-c\x00\x00", "sh -c "),
            (b"node server.js", "node server.js"),
            (b"a\xffb\x00", "a\u{fffd}b"),
        ];

        for (bytes, expected) in cases {
            assert_eq!(join_cmdline(bytes), expected, "bytes {bytes:?}");
        }
    }

    #[test]
    fn cmdline_reads_live_process() {
        let mut child = spawn_sleep();

        // spawn() can return while execve is still setting up the new arguments, and until
        // then the command line reads as empty.
        let mut line = None;
        let settled = wait_until(|| {
            line = cmdline(child.id());
            line.as_deref() == Some("sleep 30")
        });
        child.kill().unwrap();
        child.wait().unwrap();

        assert!(settled, "got {line:?}");
    }

    #[test]
    fn zombie_is_not_alive() {
        let mut child = Command::new("true").spawn().unwrap();
        let pid = child.id();

        let became_zombie = wait_until(|| stat(pid).is_some_and(|stat| stat.state == 'Z'));
        let zombie = stat(pid).unwrap();
        let zombie_ref = zombie.proc_ref();
        let alive = zombie_ref.is_alive();
        let of = ProcRef::of(pid);
        let signalled = zombie_ref.signal(0);
        child.wait().unwrap();

        assert!(became_zombie);
        assert!(zombie.is_exited());
        assert!(!alive);
        assert_eq!(of, None);
        assert!(!signalled);
    }

    #[test]
    fn signal_reaches_matching_process() {
        let mut child = spawn_sleep();
        let target = ProcRef::of(child.id()).unwrap();

        assert!(target.is_alive());
        assert!(target.signal(libc::SIGKILL));
        let status = child.wait().unwrap();

        assert_eq!(status.signal(), Some(libc::SIGKILL));
        assert!(!target.is_alive());
        assert!(!target.signal(0));
    }

    /// C15: a fingerprint whose start time doesn't match must never reach the process.
    #[test]
    fn c15_signal_refuses_mismatched_start_time() {
        let mut child = spawn_sleep();
        let real = ProcRef::of(child.id()).unwrap();
        let stale = ProcRef {
            start_time: real.start_time.saturating_sub(1),
            ..real
        };

        let refused = [
            !stale.is_alive(),
            !stale.signal(libc::SIGKILL),
            !stale.signal_group(libc::SIGKILL),
            !stale.send_via_kill(libc::SIGKILL, Target::Process),
        ];
        thread::sleep(Duration::from_millis(50));
        let untouched = child.try_wait().unwrap().is_none() && real.is_alive();

        child.kill().unwrap();
        child.wait().unwrap();
        assert_eq!(refused, [true; 4]);
        assert!(untouched, "the mismatched fingerprint reached the process");
    }

    #[test]
    fn signal_refuses_pids_kill_reads_as_groups() {
        let init = stat(1).unwrap().proc_ref();
        let zero = ProcRef {
            pid: 0,
            start_time: 0,
        };

        // Signal 0 keeps this harmless even if the guard were broken.
        assert!(!init.signal_group(0));
        assert!(!init.send_via_kill(0, Target::Group));
        assert!(!zero.signal(0));
        assert!(!zero.send_via_kill(0, Target::Process));
    }

    #[test]
    fn kill_fallback_signals_matching_process() {
        let mut child = spawn_sleep();
        let target = ProcRef::of(child.id()).unwrap();

        assert!(target.send_via_kill(libc::SIGKILL, Target::Process));
        assert_eq!(child.wait().unwrap().signal(), Some(libc::SIGKILL));
    }

    #[test]
    fn signal_group_reaches_every_group_member() {
        for use_pidfd in [true, false] {
            let tree = TestTree::spawn_with("sleep 30 & sleep 30", |command| {
                command.process_group(0);
            });
            tree.wait_for_members(2);
            let leader = ProcRef::of(tree.child.id()).unwrap();

            let sent = if use_pidfd {
                leader.signal_group(libc::SIGKILL)
            } else {
                leader.send_via_kill(libc::SIGKILL, Target::Group)
            };

            assert!(sent, "pidfd {use_pidfd}");
            assert!(
                wait_until(|| tree.members().is_empty()),
                "pidfd {use_pidfd}"
            );
        }
    }

    #[test]
    fn find_tree_never_includes_caller_or_ancestors() {
        let me = stat(std::process::id()).unwrap();
        let spec = TreeSpec {
            sid: Some(me.sid),
            root: stat(me.ppid).map(|parent| parent.proc_ref()),
            marker: Some("PATH=".to_owned() + &std::env::var("PATH").unwrap_or_default()),
            since: 0,
        };

        let members = find_tree(&spec);
        let excluded = self_and_ancestors(&all());

        assert!(excluded.contains(&me.pid) && excluded.contains(&me.ppid));
        assert!(members.iter().all(|member| !excluded.contains(&member.pid)));
    }

    #[test]
    fn find_tree_walks_descendants_but_not_root() {
        let tree = TestTree::spawn("sleep 30 & sleep 30");
        let root = ProcRef::of(tree.child.id()).unwrap();
        let spec = TreeSpec {
            root: Some(root),
            ..TreeSpec::default()
        };

        // Until the shell's children have exec'd, they still show up as `sh`.
        let mut members = Vec::new();
        let settled = wait_until(|| {
            members = scan_tree(&spec);
            !members.is_empty() && members.iter().all(|member| member.comm == "sleep")
        });

        assert!(settled, "{members:?}");
        assert!(members.iter().all(|member| member.proc_ref() != root));
    }

    #[test]
    fn find_tree_finds_session_members() {
        let mut child = Command::new("setsid")
            .args(["sleep", "30"])
            .spawn()
            .unwrap();
        let leader = ProcRef::of(child.id()).unwrap();
        let spec = TreeSpec {
            sid: Some(leader.pid),
            since: leader.start_time,
            ..TreeSpec::default()
        };

        // setsid execs sleep in place because the child is not a group leader; wait for it.
        let found = wait_until(|| find_tree(&spec) == [leader]);
        let too_late = find_tree(&TreeSpec {
            since: leader.start_time + 1,
            ..spec.clone()
        });

        child.kill().unwrap();
        child.wait().unwrap();
        assert!(found);
        assert!(too_late.is_empty(), "since must exclude older processes");
    }

    /// C13: a descendant that called setsid and lost its parent is still found by marker.
    #[test]
    fn c13_find_tree_finds_setsid_orphan_by_marker() {
        let mut tree = TestTree::spawn("setsid sleep 30 & sleep 30");
        let root = ProcRef::of(tree.child.id()).unwrap();
        let mut escaped = None;
        let did_setsid = wait_until(|| {
            let members = tree.members();
            escaped = members
                .iter()
                .find(|stat| stat.sid == stat.pid)
                .map(Stat::proc_ref);
            escaped.is_some()
        });
        assert!(did_setsid, "no member ever led its own session");
        let escaped = escaped.unwrap();

        // Kill the parent shell so the escaped child is reparented.
        tree.child.kill().unwrap();
        tree.child.wait().unwrap();
        let by_root = find_tree(&TreeSpec {
            root: Some(root),
            ..TreeSpec::default()
        });
        let by_marker = find_tree(&tree.spec);

        assert!(by_root.is_empty(), "a dead root has no descendants");
        assert!(
            by_marker.contains(&escaped),
            "{by_marker:?} lacks {escaped:?}"
        );
        assert!(stop_tree(&tree.spec, Duration::from_secs(1)).is_stopped());
        assert!(!escaped.is_alive());
    }

    #[test]
    fn find_tree_ignores_prefix_of_marker() {
        let tree = TestTree::spawn("sleep 30");
        tree.wait_for_members(1);
        let marker = tree.spec.marker.clone().unwrap();
        let prefix = TreeSpec {
            marker: Some(marker[..marker.len() - 1].to_owned()),
            ..TreeSpec::default()
        };
        let empty = TreeSpec {
            marker: Some(String::new()),
            ..TreeSpec::default()
        };

        assert!(find_tree(&prefix).is_empty());
        assert!(find_tree(&empty).is_empty());
    }

    /// C10: a layer that ignores SIGTERM is killed after the grace period.
    #[test]
    fn c10_stop_tree_escalates_to_sigkill() {
        let tree = TestTree::spawn("trap '' TERM; sleep 30; true");
        tree.wait_for_members(2);
        let grace = Duration::from_millis(150);

        let started = Instant::now();
        let outcome = stop_tree(&tree.spec, grace);
        let elapsed = started.elapsed();

        assert!(outcome.is_stopped(), "{outcome:?}");
        assert_eq!(outcome.signalled, 2, "{outcome:?}");
        assert_eq!(outcome.killed, 2, "{outcome:?}");
        assert!(
            elapsed >= grace && elapsed < Duration::from_secs(2),
            "{elapsed:?}"
        );
        assert!(!is_tree_alive(&tree.spec));
    }

    /// C09: a tree that exits on SIGTERM is stopped without waiting out the grace period.
    #[test]
    fn c09_stop_tree_returns_once_tree_exits() {
        let tree = TestTree::spawn("sleep 30 & sleep 30; true");
        tree.wait_for_members(3);
        assert!(is_tree_alive(&tree.spec));

        let started = Instant::now();
        let outcome = stop_tree(&tree.spec, Duration::from_secs(10));
        let elapsed = started.elapsed();

        assert!(outcome.is_stopped(), "{outcome:?}");
        assert_eq!(outcome.signalled, 3, "{outcome:?}");
        assert_eq!(outcome.killed, 0, "{outcome:?}");
        // Far below the 10 s grace, with room for a loaded 2-core machine.
        assert!(elapsed < Duration::from_secs(3), "{elapsed:?}");
    }

    /// A stopped member is resumed so it can act on SIGTERM instead of waiting for SIGKILL.
    #[test]
    fn stop_tree_resumes_stopped_member() {
        // The shell handles SIGTERM itself, and a stopped process cannot run a handler.
        let tree = TestTree::spawn("trap 'exit 0' TERM; sleep 30 & wait");
        let members = tree.wait_for_members(2);
        for member in &members {
            assert!(member.proc_ref().signal(libc::SIGSTOP));
        }
        assert!(wait_until(|| tree.members().iter().all(|m| m.state == 'T')));

        let started = Instant::now();
        let outcome = stop_tree(&tree.spec, Duration::from_secs(10));
        let elapsed = started.elapsed();

        assert!(outcome.is_stopped(), "{outcome:?}");
        assert_eq!(outcome.killed, 0, "{outcome:?}");
        assert!(elapsed < Duration::from_secs(1), "{elapsed:?}");
    }

    /// C09: group members are reached through the group signal of their leader.
    #[test]
    fn c09_stop_tree_signals_process_group() {
        let tree = TestTree::spawn_with("sleep 30 & sleep 30; true", |command| {
            command.process_group(0);
        });
        tree.wait_for_members(3);

        let outcome = stop_tree(&tree.spec, Duration::from_secs(10));

        assert!(outcome.is_stopped(), "{outcome:?}");
        assert_eq!((outcome.signalled, outcome.killed), (3, 0), "{outcome:?}");
    }

    #[test]
    fn stop_tree_of_empty_tree_does_nothing() {
        let spec = TreeSpec {
            marker: Some(unique_marker()),
            ..TreeSpec::default()
        };

        assert_eq!(
            stop_tree(&spec, Duration::from_secs(10)),
            StopOutcome::default()
        );
    }

    #[test]
    fn parse_tcp_table_keeps_listeners_only() {
        let table = "\
  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000  1000        0 5001 1 0 100 0 0 10 0
   1: 0100007F:1F90 0100007F:D431 01 00000000:00000000 00:00000000 00000000  1000        0 5002 1 0 20 4 30 10 -1
   2: 00000000:0016 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 5003 1 0 100 0 0 10 0
   3: 0100007F:0050 0100007F:1F90 06 00000000:00000000 03:00000A1B 00000000     0        0 0 3 0
   4: 00000000000000000000000001000000:0BB8 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000  1000        0 5004 1 0 100 0 0 10 0
garbage
";
        let expected =
            [(8080, 5001), (22, 5003), (3000, 5004)].map(|(port, inode)| Listener { port, inode });

        assert_eq!(parse_tcp_table(table), expected);
    }

    #[test]
    fn parse_socket_link_reads_inode() {
        assert_eq!(parse_socket_link("socket:[12345]"), Some(12345));
        assert_eq!(parse_socket_link("pipe:[12345]"), None);
        assert_eq!(parse_socket_link("/dev/null"), None);
        assert_eq!(parse_socket_link("socket:[]"), None);
    }

    #[test]
    fn listening_socket_is_found_with_its_holder() {
        let me = std::process::id();
        let v4 = TcpListener::bind("127.0.0.1:0").unwrap();
        // IPv6 may be disabled on the host; then only IPv4 is checked.
        let v6 = TcpListener::bind("[::1]:0").ok();

        for listener in std::iter::once(&v4).chain(v6.as_ref()) {
            let port = listener.local_addr().unwrap().port();
            let inodes = listening_inodes(port);
            // Another process may hold the same port number in the other address family.
            let own = fs_err::metadata(format!("/proc/self/fd/{}", listener.as_raw_fd()))
                .unwrap()
                .ino();

            assert!(inodes.contains(&own), "port {port}: {inodes:?} lacks {own}");
            assert_eq!(socket_holders(&[own], &[1, me, me]), [me], "port {port}");
            assert!(listening_ports_of(&[me]).contains(&port), "port {port}");
        }
        assert!(socket_holders(&[], &[me]).is_empty());
    }
}
