//! Registry and lock faults: corrupt registry files (C31, C32), many writers
//! at once (C31), lock holders that are alive, dead or stopped (C16, C18),
//! and recorded pids that now belong to someone else (C15).

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::time::Duration;

use rstest::rstest;
use serde_json::Value;

use super::cli::{agents_of, assert_nothing_created, config, registry_agents, world};
use crate::harness::{get, python, server, wait_until, World};

// ---------------------------------------------------------------------------
// Helpers.

/// Holds an exclusive `flock` on a file in a separate process, the way
/// another devserver (or any other program) would.
const HOLDER: &str = r#"
import fcntl, os, sys, time
path, mode = sys.argv[1], sys.argv[2]
fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
fcntl.flock(fd, fcntl.LOCK_EX)
if mode == "note":
    # The note devserver itself writes: pid, start time, since (ms), command.
    # Taken an hour ago, so that an age-based takeover would steal it.
    start = open(f"/proc/{os.getpid()}/stat").read().rsplit(")", 1)[1].split()[19]
    since = int(time.time() * 1000) - 3600 * 1000
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()} {start} {since} lock-holder-test\n".encode(), 0)
print("locked", flush=True)
sys.stdin.readline()
fcntl.flock(fd, fcntl.LOCK_UN)
print("released", flush=True)
sys.stdin.readline()
"#;

/// A process holding a lock until told to release it; killed when dropped.
struct Holder {
    child: Child,
    stdin: Option<ChildStdin>,
    stdout: BufReader<ChildStdout>,
}

impl Holder {
    /// Starts the holder and returns once it holds the lock on `path`.
    /// `note`: whether it records itself in the file as devserver does.
    fn start(path: &Path, note: bool) -> Holder {
        let mut child = Command::new(python())
            .args(["-c", HOLDER])
            .arg(path)
            .arg(if note { "note" } else { "plain" })
            .current_dir("/")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("python3 starts");
        let stdin = child.stdin.take();
        let stdout = BufReader::new(child.stdout.take().expect("stdout"));
        let mut holder = Holder {
            child,
            stdin,
            stdout,
        };
        holder.expect_line("locked");
        holder
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn expect_line(&mut self, expected: &str) {
        let mut line = String::new();
        self.stdout.read_line(&mut line).expect("holder output");
        assert_eq!(
            line.trim(),
            expected,
            "the lock holder did not say {expected:?}"
        );
    }

    fn signal(&self, sig: i32) {
        // SAFETY: kill has no memory-safety preconditions.
        let rc = unsafe { libc::kill(self.pid() as i32, sig) };
        assert_eq!(rc, 0, "cannot signal the holder");
    }

    /// Releases the lock (the process stays alive).
    fn release(&mut self) {
        let stdin = self.stdin.as_mut().expect("stdin");
        stdin.write_all(b"\n").expect("tell the holder");
        stdin.flush().expect("flush");
        self.expect_line("released");
    }

    /// SIGKILLs the holder and reaps it.
    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Holder {
    fn drop(&mut self) {
        // SAFETY: kill has no memory-safety preconditions; SIGCONT first so
        // a stopped holder can die.
        unsafe { libc::kill(self.pid() as i32, libc::SIGCONT) };
        self.kill();
    }
}

/// Whether some process holds an exclusive lock on `path` right now: this
/// process tries to take it without waiting.
fn is_locked(path: &Path) -> bool {
    use std::os::fd::AsRawFd;
    let file = fs_err::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .expect("open lock");
    // SAFETY: the descriptor is valid for the life of `file`.
    let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if rc == 0 {
        // SAFETY: as above.
        unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_UN) };
        return false;
    }
    true
}

fn inode(path: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    fs_err::metadata(path).expect("stat").ino()
}

fn lock_file(world: &World) -> std::path::PathBuf {
    world.home.join("registry.lock")
}

fn list_states(world: &World) -> Vec<(String, String)> {
    world
        .list()
        .iter()
        .map(|v| {
            (
                v["agent"].as_str().unwrap_or_default().into(),
                v["state"].as_str().unwrap_or_default().into(),
            )
        })
        .collect()
}

/// Field 22 of `/proc/PID/stat`: the start time in clock ticks since boot.
fn start_time(pid: u32) -> u64 {
    let stat = fs_err::read_to_string(format!("/proc/{pid}/stat")).expect("stat");
    let (_, rest) = stat.rsplit_once(')').expect("stat line");
    rest.split_whitespace()
        .nth(19)
        .expect("field 22")
        .parse()
        .expect("number")
}

/// The one-letter state of a process, or None when it is gone.
fn proc_state(pid: u32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (_, rest) = stat.rsplit_once(')')?;
    rest.split_whitespace().next()?.chars().next()
}

/// An unrelated long-lived process (`sleep 1000`), killed when dropped.
struct Bystander(Child);

impl Bystander {
    fn start(own_session: bool) -> Bystander {
        let mut command = Command::new("sleep");
        command.arg("1000").current_dir("/");
        if own_session {
            use std::os::unix::process::CommandExt;
            // SAFETY: setsid is async-signal-safe and touches no memory.
            unsafe {
                command.pre_exec(|| {
                    if libc::setsid() < 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
        }
        Bystander(command.spawn().expect("sleep starts"))
    }

    fn pid(&self) -> u32 {
        self.0.id()
    }

    /// Alive, not stopped, never signalled (a SIGTERM or SIGKILL would end
    /// `sleep`; a SIGSTOP would leave it in state `T`).
    fn assert_untouched(&mut self, after: &str) {
        assert!(
            matches!(self.0.try_wait(), Ok(None)),
            "the unrelated process {} was killed by {after}",
            self.pid()
        );
        let state = proc_state(self.pid());
        assert!(
            matches!(state, Some('S' | 'R')),
            "the unrelated process {} is in state {state:?} after {after}",
            self.pid()
        );
    }
}

impl Drop for Bystander {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Edits `agent`'s entry in the registry file directly.
fn edit_entry(world: &World, agent: &str, change: impl FnOnce(&mut Value)) {
    let path = world.home.join("registry.json");
    let mut snapshot = world.registry();
    let entry = snapshot["instances"]
        .as_array_mut()
        .expect("instances")
        .iter_mut()
        .find(|e| e["agent"] == agent)
        .expect("the agent's entry");
    change(entry);
    let text = serde_json::to_string_pretty(&snapshot).expect("encode");
    fs_err::write(path, text).expect("write registry");
}

/// Rewrites `agent`'s registry entry as if it were running as `pid` with
/// start time `start` (its monitor and its server both).
fn fake_running(world: &World, agent: &str, pid: u32, start: u64) {
    edit_entry(world, agent, |entry| {
        let fingerprint = serde_json::json!({ "pid": pid, "start_time": start });
        entry["state"] = "running".into();
        entry["monitor"] = fingerprint.clone();
        entry["server"] = fingerprint;
        entry["spawner"] = Value::Null;
        entry["exit_status"] = Value::Null;
    });
}

// ---------------------------------------------------------------------------
// C31/C32: a corrupt registry.

#[derive(Clone, Copy, Debug)]
enum Corruption {
    Garbage,
    Truncated,
    Empty,
    Nul,
}

impl Corruption {
    fn bytes(self, current: &[u8]) -> Vec<u8> {
        match self {
            Corruption::Garbage => b"}{ not json at all \x01\x02\n".to_vec(),
            Corruption::Truncated => current[..current.len() / 2].to_vec(),
            Corruption::Empty => Vec::new(),
            Corruption::Nul => vec![0; 4096],
        }
    }
}

/// A world with agents a and b spawned, so both the registry and its
/// previous version hold entries.
fn two_agents() -> World {
    let world = world();
    world.spawn("a");
    world.spawn("b");
    world
}

fn corrupt(world: &World, how: Corruption) -> Vec<u8> {
    let path = world.home.join("registry.json");
    let bytes = how.bytes(&fs_err::read(&path).expect("registry"));
    fs_err::write(&path, &bytes).expect("corrupt");
    bytes
}

#[rstest]
#[case::garbage(Corruption::Garbage)]
#[case::truncated(Corruption::Truncated)]
#[case::empty(Corruption::Empty)]
#[case::nul_bytes(Corruption::Nul)]
fn c31_corrupt_registry_is_never_read_as_empty(#[case] how: Corruption) {
    let world = two_agents();
    let bytes = corrupt(&world, how);
    let file = world.home.join("registry.json").display().to_string();
    let backup = world.home.join("registry.json.bak").display().to_string();

    for args in [
        &["list"][..],
        &["list", "--json"],
        &["list", "--all"],
        &["url", "--agent", "a"],
        &["status", "--agent", "a"],
    ] {
        let out = world.ds(args).run();
        assert_ne!(
            out.code, 0,
            "`{}` read a {how:?} registry as valid:\n{}",
            out.label, out.stdout
        );
        assert!(
            out.stderr.contains(&file),
            "`{}` does not name {file}:\n{}",
            out.label,
            out.stderr
        );
        assert!(
            out.stderr.contains(&backup),
            "`{}` does not name the backup {backup}:\n{}",
            out.label,
            out.stderr
        );
        assert!(
            !out.stdout.contains("[]") && !out.stdout.contains("no instances"),
            "`{}` reported an empty registry:\n{}",
            out.label,
            out.stdout
        );
        let now = fs_err::read(world.home.join("registry.json")).expect("registry");
        assert!(now == bytes, "`{}` changed the corrupt registry", out.label);
    }
}

/// Every `devserver <command>` the corrupt-registry error suggests exists.
#[test]
fn c31_corrupt_registry_hint_suggests_only_commands_that_exist() {
    let world = two_agents();
    corrupt(&world, Corruption::Garbage);
    let out = world.ds(&["list"]).run();
    assert_ne!(out.code, 0);
    let suggested: Vec<&str> = out
        .stderr
        .split("`devserver ")
        .skip(1)
        .filter_map(|rest| rest.split([' ', '`']).next())
        .collect();
    for command in suggested {
        let help = world.ds(&[command, "--help"]).run();
        assert_eq!(
            help.code, 0,
            "the hint suggests `devserver {command}`, which does not exist:\n{}\n--- {}",
            out.stderr, help.stderr
        );
    }
}

#[rstest]
#[case::garbage(Corruption::Garbage)]
#[case::truncated(Corruption::Truncated)]
#[case::empty(Corruption::Empty)]
#[case::nul_bytes(Corruption::Nul)]
fn c31_write_moves_a_corrupt_registry_aside_and_restores_the_previous_version(
    #[case] how: Corruption,
) {
    let world = two_agents();
    let previous: Value = serde_json::from_slice(
        &fs_err::read(world.home.join("registry.json.bak")).expect("backup"),
    )
    .expect("the backup parses");
    let previous_agents = agents_of(&previous);
    assert!(
        previous_agents.contains(&"a".to_string()),
        "the backup holds a: {previous_agents:?}"
    );
    let bytes = corrupt(&world, how);

    let out = world.ds(&["spawn", "--agent", "z"]).run();
    assert_eq!(
        out.code, 0,
        "a spawn on a {how:?} registry failed instead of restoring it:\n{}",
        out.stderr
    );
    assert!(
        out.stderr.contains("corrupt"),
        "the spawn does not say loudly that the registry was corrupt:\n{}",
        out.stderr
    );
    assert!(get(out.stdout.trim()).is_some(), "z answers");

    let aside: Vec<_> = fs_err::read_dir(&world.home)
        .expect("ls state")
        .flatten()
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .starts_with("registry.json.corrupt-")
        })
        .map(|e| e.path())
        .collect();
    assert_eq!(
        aside.len(),
        1,
        "the corrupt file is moved aside as registry.json.corrupt-*"
    );
    assert!(
        fs_err::read(&aside[0]).expect("aside") == bytes,
        "the file moved aside is the corrupt one"
    );

    let agents = registry_agents(&world);
    for agent in previous_agents
        .iter()
        .chain(std::iter::once(&"z".to_string()))
    {
        assert!(
            agents.contains(agent),
            "agent `{agent}` was lost: {agents:?}"
        );
    }
    let a = world.status("a");
    assert_eq!(a["state"], "running", "a is still known as running");
    world.ds(&["url", "--agent", "a"]).ok();
}

#[test]
fn c31_twenty_concurrent_spawns_are_all_recorded() {
    let world = World::with_config(&format!(
        "command: {}\nhealth:\n  timeout: 20s\nstop:\n  grace: 2s\n",
        server("")
    ));
    let agents: Vec<String> = (1..=20).map(|i| format!("p{i}")).collect();
    let children: Vec<(String, Child)> = agents
        .iter()
        .map(|agent| {
            (
                agent.clone(),
                world.ds(&["spawn", "--agent", agent]).start(),
            )
        })
        .collect();
    let mut urls = Vec::new();
    for (agent, child) in children {
        let out = child.wait_with_output().expect("wait");
        assert!(
            out.status.success(),
            "spawn of {agent} failed ({:?}):\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        urls.push(String::from_utf8_lossy(&out.stdout).trim().to_string());
    }

    let list = world.list();
    assert_eq!(list.len(), 20, "entries were lost: {list:#?}");
    let mut names: Vec<&str> = list
        .iter()
        .map(|v| v["agent"].as_str().expect("agent"))
        .collect();
    names.sort();
    let mut expected: Vec<&str> = agents.iter().map(String::as_str).collect();
    expected.sort();
    assert_eq!(names, expected);
    let mut ports: Vec<u64> = list
        .iter()
        .map(|v| v["port"].as_u64().expect("port"))
        .collect();
    ports.sort();
    ports.dedup();
    assert_eq!(ports.len(), 20, "two agents share a port");
    for view in &list {
        assert_eq!(view["state"], "running", "{view:#}");
        let url = view["url"].as_str().expect("url");
        assert!(
            urls.iter().any(|u| u == url),
            "{url} is what a spawn printed"
        );
        assert!(get(url).is_some(), "{url} does not answer");
    }
}

// ---------------------------------------------------------------------------
// C16/C18: who holds the registry lock.

#[test]
fn c16_lock_wait_times_out_with_exit_3_naming_the_holder() {
    let world = world();
    world.ds(&["list"]).ok();
    let holder = Holder::start(&lock_file(&world), true);

    let out = world
        .ds(&["spawn", "--agent", "b"])
        .env("DEVSERVER_LOCK_TIMEOUT", "1")
        .run()
        .code(3);
    assert!(
        out.took >= Duration::from_millis(900),
        "gave up without waiting: {:?}",
        out.took
    );
    assert!(
        out.took < Duration::from_secs(5),
        "waited far past the timeout: {:?}",
        out.took
    );
    assert!(
        out.stderr.contains(&format!("pid {}", holder.pid())),
        "does not name the holder (pid {}):\n{}",
        holder.pid(),
        out.stderr
    );
    assert_nothing_created(&world, "b");
}

/// A holder that wrote no note (not a devserver, or one caught before it
/// wrote it) is still named: the kernel knows who holds the lock. An older
/// note in the file, left by an earlier devserver, must not be blamed.
#[test]
fn c16_holder_is_named_even_when_the_lock_file_has_a_stale_note() {
    let world = world();
    world.spawn("a");
    let holder = Holder::start(&lock_file(&world), false);

    let out = world
        .ds(&["spawn", "--agent", "b"])
        .env("DEVSERVER_LOCK_TIMEOUT", "1")
        .run()
        .code(3);
    assert!(
        out.stderr.contains(&format!("pid {}", holder.pid())),
        "does not name the holder (pid {}):\n{}",
        holder.pid(),
        out.stderr
    );
    assert!(
        !out.stderr.contains("no longer running"),
        "blames a process that is gone:\n{}",
        out.stderr
    );
}

#[test]
fn c16_lock_of_a_killed_holder_is_taken_at_once() {
    let world = world();
    world.ds(&["list"]).ok();
    let mut holder = Holder::start(&lock_file(&world), true);
    holder.kill();

    // With a 1 s lock timeout, success means no lock wait came near 1 s.
    let out = world
        .ds(&["spawn", "--agent", "b"])
        .env("DEVSERVER_LOCK_TIMEOUT", "1")
        .run();
    assert_eq!(
        out.code, 0,
        "the lock of a dead holder blocked the spawn:\n{}",
        out.stderr
    );
    assert!(
        out.took < Duration::from_secs(5),
        "spawn took {:?}",
        out.took
    );
    assert!(get(out.stdout.trim()).is_some(), "b answers");

    // A read-modify-write alone (stop) shows the lock is free right away.
    let stop = world
        .ds(&["stop", "--agent", "b"])
        .env("DEVSERVER_LOCK_TIMEOUT", "1")
        .ok();
    assert!(
        stop.took < Duration::from_secs(3),
        "stop took {:?}",
        stop.took
    );
}

#[test]
fn c18_stopped_holder_is_waited_for_not_robbed() {
    let world = world();
    world.spawn("a");
    let lock = lock_file(&world);
    let mut holder = Holder::start(&lock, true);
    let before = inode(&lock);
    holder.signal(libc::SIGSTOP);
    assert!(wait_until(Duration::from_secs(2), || proc_state(
        holder.pid()
    ) == Some('T')));

    let out = world
        .ds(&["spawn", "--agent", "b"])
        .env("DEVSERVER_LOCK_TIMEOUT", "1")
        .run()
        .code(3);
    assert!(
        out.took >= Duration::from_millis(900),
        "did not wait for the holder: {:?}",
        out.took
    );
    assert!(
        out.stderr.contains(&format!("pid {}", holder.pid())),
        "does not name the stopped holder (pid {}):\n{}",
        holder.pid(),
        out.stderr
    );
    assert_eq!(
        inode(&lock),
        before,
        "the lock file was replaced under its holder"
    );
    assert!(is_locked(&lock), "the stopped holder lost its lock");
    assert!(
        !world.worktree("b").exists(),
        "b was spawned while the lock was held"
    );
    assert_eq!(
        list_states(&world),
        [("a".to_string(), "running".to_string())]
    );

    holder.signal(libc::SIGCONT);
    holder.release();
    let out = world
        .ds(&["spawn", "--agent", "b"])
        .env("DEVSERVER_LOCK_TIMEOUT", "1")
        .ok();
    assert!(get(out.stdout.trim()).is_some(), "b answers");
    world
        .ds(&["stop", "--agent", "a"])
        .env("DEVSERVER_LOCK_TIMEOUT", "1")
        .ok();
}

/// A spawn that cannot get the registry lock once its server is up must not
/// leave that server running, nor remove the worktree it runs in.
#[test]
fn lock_timeout_during_warm_up_leaves_no_server_behind() {
    let world = World::with_config(&config("--delay 2"));
    let spawn = world
        .ds(&["spawn", "--agent", "s"])
        .env("DEVSERVER_LOCK_TIMEOUT", "1")
        .start();

    // Once the monitor has recorded the server, take the registry lock.
    let recorded = wait_until(Duration::from_secs(10), || {
        let Ok(text) = std::fs::read_to_string(world.home.join("registry.json")) else {
            return false;
        };
        let Ok(snapshot) = serde_json::from_str::<Value>(&text) else {
            return false;
        };
        snapshot["instances"].as_array().is_some_and(|list| {
            list.iter()
                .any(|e| e["agent"] == "s" && !e["server"].is_null())
        })
    });
    assert!(recorded, "the server was never recorded");
    let mut holder = Holder::start(&lock_file(&world), true);

    let out = spawn.wait_with_output().expect("wait");
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(
        !out.status.success() && stderr.contains("registry lock"),
        "the spawn did not fail on the lock:\n{stderr}"
    );
    holder.release();

    let pids = || crate::harness::processes_under(world.tmp.path());
    let clean = wait_until(Duration::from_secs(3), || pids().is_empty());
    let described: Vec<String> = pids()
        .iter()
        .map(|p| {
            let cmd = std::fs::read(format!("/proc/{p}/cmdline")).unwrap_or_default();
            format!("{p}: {}", String::from_utf8_lossy(&cmd).replace('\0', " "))
        })
        .collect();
    assert!(
        clean,
        "the failed spawn left processes behind:\n{}\n--- its stderr\n{stderr}",
        described.join("\n")
    );
    let states = list_states(&world);
    assert!(
        states
            .iter()
            .all(|(_, state)| state != "running" && state != "starting"),
        "the failed spawn is still listed as live: {states:?}"
    );
}

// ---------------------------------------------------------------------------
// C15: a recorded pid that now belongs to another process.

#[rstest]
#[case::older_start_time(false, -1)]
#[case::newer_start_time(false, 1000)]
#[case::session_leader_older_start_time(true, -1)]
#[case::session_leader_newer_start_time(true, 1000)]
fn c15_recycled_pid_is_never_signalled(#[case] own_session: bool, #[case] offset: i64) {
    let world = world();
    world.spawn("a");
    world.ds(&["stop", "--agent", "a"]).ok();

    let mut sleeper = Bystander::start(own_session);
    let real = start_time(sleeper.pid());
    let recorded = real.checked_add_signed(offset).expect("start time");
    fake_running(&world, "a", sleeper.pid(), recorded);

    assert_eq!(
        world.status("a")["state"],
        "exited",
        "the entry must be seen as dead"
    );
    sleeper.assert_untouched("status");

    let out = world.ds(&["stop", "--agent", "a"]).run();
    std::thread::sleep(Duration::from_millis(100));
    sleeper.assert_untouched("`devserver stop`");
    out.code(0);

    let url = world.spawn("a");
    assert!(get(&url).is_some(), "the respawned a answers");
    assert_eq!(world.status("a")["state"], "running");
    sleeper.assert_untouched("`devserver spawn`");
    world.ds(&["stop", "--agent", "a"]).ok();
    sleeper.assert_untouched("the last `devserver stop`");
}

#[test]
fn c15_stop_of_a_recycled_pid_says_it_was_not_running() {
    let world = world();
    world.spawn("a");
    world.ds(&["stop", "--agent", "a"]).ok();
    let mut sleeper = Bystander::start(false);
    fake_running(&world, "a", sleeper.pid(), start_time(sleeper.pid()) - 1);

    let out = world.ds(&["stop", "--agent", "a"]).ok();
    sleeper.assert_untouched("`devserver stop`");
    assert!(
        out.stderr.contains("not running"),
        "stop of an instance whose processes are gone claims to have stopped it:\n{}",
        out.stderr
    );
}

#[test]
fn c15_spawn_over_a_recycled_pid_starts_a_new_server() {
    let world = world();
    let first = world.spawn("a");
    world.ds(&["stop", "--agent", "a"]).ok();
    let mut sleeper = Bystander::start(true);
    fake_running(&world, "a", sleeper.pid(), start_time(sleeper.pid()) - 1);

    // No stop in between: the spawn itself must see that the entry is dead.
    let out = world.ds(&["spawn", "--agent", "a"]).ok();
    let url = out.stdout.trim();
    assert!(get(url).is_some(), "{url} answers");
    assert_eq!(url, first, "the same agent gets its port again");
    sleeper.assert_untouched("`devserver spawn`");
    let status = world.status("a");
    assert_eq!(status["state"], "running");
    assert_ne!(status["pid"].as_u64(), Some(u64::from(sleeper.pid())));
}

/// A stopped entry keeps its server's fingerprint; once that pid is reused
/// by a later session leader (every devserver server is one), nothing may
/// treat that session as the instance's tree.
#[rstest]
#[case::stop_agent(&["stop", "--agent", "a"])]
#[case::stop_all(&["stop", "--all"])]
#[case::stop_remove(&["stop", "--agent", "a", "--remove"])]
#[case::spawn(&["spawn", "--agent", "a"])]
#[case::status(&["status", "--agent", "a"])]
fn c15_stopped_entry_whose_server_pid_was_recycled_is_never_signalled(#[case] args: &[&str]) {
    let world = world();
    world.spawn("a");
    world.ds(&["stop", "--agent", "a"]).ok();
    assert_eq!(world.status("a")["state"], "stopped");

    let mut sleeper = Bystander::start(true);
    let pid = sleeper.pid();
    let start = start_time(pid) - 1;
    edit_entry(&world, "a", |entry| {
        entry["server"] = serde_json::json!({ "pid": pid, "start_time": start });
    });

    world.ds(args).ok();
    std::thread::sleep(Duration::from_millis(100));
    sleeper.assert_untouched(&format!("`devserver {}`", args.join(" ")));
}
