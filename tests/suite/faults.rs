//! Fault injection (issue #4): SIGKILLs at random points of spawn, stop, gc,
//! use and release; a storm of concurrent spawns and stops under a reader; a
//! zombie in a server's tree; a full state filesystem; state directories and
//! registries others could write; a corrupt registry restored by `gc` (C31,
//! C32); and a server whose monitor and CLI died by SIGKILL (C12).
//!
//! Every test has its own `World`, signals only pids it read itself (checked
//! by start time where they come from the registry), and leaves no process
//! behind: `World`'s drop stops and kills what is left under its directory.

use std::collections::{HashMap, HashSet};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::harness::{
    assert_no_processes_under, fixture, get, kill_processes_under, port_answers, port_of,
    processes_under, python, server, wait_until, World, BIN,
};

// ---------------------------------------------------------------------------
// Helpers.

/// A small deterministic PRNG (splitmix64), so a failing round can be rerun.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A number in `0..n`.
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// A fixture script run with `sh`, as in `trees.rs`.
/// The config of a fast test server with `extra` keys appended.
fn fast_config(extra: &str) -> String {
    format!(
        "command: {}\nhealth:\n  timeout: 20s\nstop:\n  grace: 1s\n{extra}",
        server("")
    )
}

/// Sends `sig` to `pid`. Returns whether it was delivered.
fn signal(pid: u32, sig: i32) -> bool {
    let Ok(pid) = libc::pid_t::try_from(pid) else {
        return false;
    };
    if pid <= 1 {
        return false;
    }
    // SAFETY: kill has no memory-safety preconditions; pid > 1 is one process.
    unsafe { libc::kill(pid, sig) == 0 }
}

/// Field 22 of `/proc/PID/stat`, the start time, or None when it is gone.
fn start_time(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (_, rest) = stat.rsplit_once(')')?;
    rest.split_whitespace().nth(19)?.parse().ok()
}

/// The one-letter state of a process, or None when it is gone.
fn proc_state(pid: u32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (_, rest) = stat.rsplit_once(')')?;
    rest.split_whitespace().next()?.chars().next()
}

/// The parent pid of a process, or None when it is gone.
fn parent_of(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (_, rest) = stat.rsplit_once(')')?;
    rest.split_whitespace().nth(1)?.parse().ok()
}

fn cmdline(pid: u32) -> String {
    let bytes = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    String::from_utf8_lossy(&bytes).replace('\0', " ")
}

/// Whether `pid` runs and is not a zombie.
fn is_running(pid: u32) -> bool {
    proc_state(pid).is_some_and(|s| !matches!(s, 'Z' | 'X' | 'x'))
}

/// Whether a process's environment holds exactly `entry` (`KEY=value`).
fn env_has(pid: u32, entry: &str) -> bool {
    std::fs::read(format!("/proc/{pid}/environ"))
        .is_ok_and(|env| env.split(|b| *b == 0).any(|e| e == entry.as_bytes()))
}

/// `pid: cmdline` lines, for messages.
fn describe(pids: &[u32]) -> String {
    pids.iter()
        .map(|p| format!("  {p}: {}", cmdline(*p)))
        .collect::<Vec<_>>()
        .join("\n")
}

/// The recorded `{pid, start_time}` of one of an entry's processes.
fn recorded(entry: &Value, which: &str) -> Option<(u32, u64)> {
    let pid = u32::try_from(entry[which]["pid"].as_u64()?).ok()?;
    Some((pid, entry[which]["start_time"].as_u64()?))
}

/// Reads the registry file without the harness's panics.
fn read_registry(world: &World) -> Result<Value, String> {
    let path = world.home.join("registry.json");
    let bytes = std::fs::read(&path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    serde_json::from_slice(&bytes).map_err(|e| format!("{} does not parse: {e}", path.display()))
}

/// An agent's entry in the registry file.
fn registry_entry(world: &World, agent: &str) -> Option<Value> {
    read_registry(world).ok()?["instances"]
        .as_array()?
        .iter()
        .find(|e| e["agent"] == agent)
        .cloned()
}

/// `list --json`, or what was wrong with it.
fn try_list(world: &World) -> Result<Vec<Value>, String> {
    let out = world.ds(&["list", "--json"]).run();
    if out.code != 0 {
        return Err(format!("`list --json` exited {}: {}", out.code, out.stderr));
    }
    serde_json::from_str::<Vec<Value>>(&out.stdout)
        .map_err(|e| format!("`list --json` is no JSON array ({e}):\n{}", out.stdout))
}

/// The states in which an instance holds its port and its tree.
const ACTIVE: [&str; 3] = ["running", "starting", "unhealthy"];

/// Every state the README documents.
const STATES: [&str; 5] = ["starting", "running", "unhealthy", "exited", "stopped"];

/// The fields the README documents for every instance in JSON.
const FIELDS: [&str; 14] = [
    "agent",
    "project",
    "mode",
    "state",
    "url",
    "port",
    "pid",
    "worktree",
    "branch",
    "started_at",
    "uptime_secs",
    "log",
    "exit_status",
    "note",
];

fn state_of(view: &Value) -> &str {
    view["state"].as_str().unwrap_or("<none>")
}

fn agent_of(view: &Value) -> &str {
    view["agent"].as_str().unwrap_or("<none>")
}

fn port_in(view: &Value) -> u16 {
    view["port"]
        .as_u64()
        .and_then(|p| u16::try_from(p).ok())
        .unwrap_or(0)
}

/// Listening TCP sockets of this network namespace: inode to port.
fn listening_sockets() -> HashMap<u64, u16> {
    let mut sockets = HashMap::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let Ok(text) = std::fs::read_to_string(table) else {
            continue;
        };
        for line in text.lines().skip(1) {
            let fields: Vec<&str> = line.split_whitespace().collect();
            if fields.len() < 10 || fields[3] != "0A" {
                continue;
            }
            let port = fields[1]
                .rsplit(':')
                .next()
                .and_then(|p| u16::from_str_radix(p, 16).ok());
            if let (Some(port), Ok(inode)) = (port, fields[9].parse::<u64>()) {
                sockets.insert(inode, port);
            }
        }
    }
    sockets
}

/// The ports listened on by processes under `dir`, with the pids holding them.
fn ports_held_under(dir: &Path) -> Vec<(u16, u32)> {
    let sockets = listening_sockets();
    let mut held = Vec::new();
    for pid in processes_under(dir) {
        let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
            continue;
        };
        for fd in fds.flatten() {
            let Ok(target) = std::fs::read_link(fd.path()) else {
                continue;
            };
            let target = target.to_string_lossy();
            let inode = target
                .strip_prefix("socket:[")
                .and_then(|rest| rest.strip_suffix(']'))
                .and_then(|n| n.parse::<u64>().ok());
            if let Some(port) = inode.and_then(|i| sockets.get(&i)) {
                held.push((*port, pid));
            }
        }
    }
    held.sort_unstable();
    held.dedup();
    held
}

/// Worktrees `git worktree list` shows whose directory does not exist.
fn missing_worktrees(world: &World) -> Vec<String> {
    world
        .git(&["worktree", "list", "--porcelain"])
        .lines()
        .filter_map(|line| line.strip_prefix("worktree "))
        .filter(|path| !Path::new(path).exists())
        .map(str::to_string)
        .collect()
}

/// Checks that the registry matches what runs: every active entry answers
/// on a port no other active entry has, and every port a process under the
/// world listens on belongs to an entry that says `running`.
fn registry_matches_reality(world: &World) -> Result<(), String> {
    let views = try_list(world)?;
    let mut problems = Vec::new();
    let mut owners: HashMap<u16, &str> = HashMap::new();
    for view in &views {
        let (agent, state, port) = (agent_of(view), state_of(view), port_in(view));
        if !STATES.contains(&state) {
            problems.push(format!("`{agent}` has an undocumented state {state:?}"));
        }
        if !ACTIVE.contains(&state) {
            continue;
        }
        if !port_answers(port) {
            problems.push(format!(
                "`{agent}` is {state} but nothing answers on its port {port}"
            ));
        }
        if let Some(other) = owners.insert(port, agent) {
            problems.push(format!(
                "`{agent}` and `{other}` are both active on port {port}"
            ));
        }
    }
    for (port, pid) in ports_held_under(world.tmp.path()) {
        let owner = views
            .iter()
            .find(|v| port_in(v) == port && state_of(v) == "running");
        if owner.is_none() {
            let entries: Vec<String> = views
                .iter()
                .filter(|v| port_in(v) == port)
                .map(|v| format!("`{}` {}", agent_of(v), state_of(v)))
                .collect();
            problems.push(format!(
                "port {port} is held by pid {pid} (`{}`) but no entry on it says running (entries on it: {entries:?})",
                cmdline(pid)
            ));
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        let table = world.ds(&["list"]).run();
        Err(format!(
            "{}\n--- devserver list\n{}{}",
            problems.join("\n"),
            table.stdout,
            table.stderr
        ))
    }
}

/// Polls `check` for up to `timeout` (the monitors act on half-second
/// ticks); returns the last error if it never passes.
fn settles(timeout: Duration, mut check: impl FnMut() -> Result<(), String>) -> Result<(), String> {
    let deadline = Instant::now() + timeout;
    loop {
        let result = check();
        if result.is_ok() || Instant::now() >= deadline {
            return result;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

// ---------------------------------------------------------------------------
// Issue #4: random SIGKILLs across spawn, use, stop, release and gc.

/// SIGKILLs the monitor the registry records for `agent`, if it still runs
/// as that process (same start time, a `__monitor`). Returns its pid.
fn kill_recorded_monitor(world: &World, agent: &str) -> Option<u32> {
    let entry = registry_entry(world, agent)?;
    let (pid, start) = recorded(&entry, "monitor")?;
    if start_time(pid) != Some(start) || !cmdline(pid).contains("__monitor") {
        return None;
    }
    signal(pid, libc::SIGKILL).then_some(pid)
}

#[test]
fn sigkill_at_random_points_leaves_nothing_after_gc() {
    const ROUNDS: u64 = 50;
    const AGENTS: u64 = 6;
    const OPS: [&str; 6] = ["spawn", "spawn", "stop", "gc", "use", "release"];
    let world = World::with_config(&fast_config("shared:\n  idle_grace: 0s\n"));

    let mut rounds = Vec::new();
    let mut interrupted = 0;
    for round in 0..ROUNDS {
        let seed = 0x5eed_0000 + round;
        let mut rng = Rng::new(seed);
        let agent = format!("k{}", rng.below(AGENTS));
        let op = OPS[usize::try_from(rng.below(OPS.len() as u64)).expect("index")];
        let delay = Duration::from_millis(rng.below(401));
        let kill_monitor = rng.below(3) == 0;
        let args: Vec<&str> = match op {
            "gc" => vec!["gc"],
            _ => vec![op, "--agent", &agent],
        };

        let mut child = world.ds(&args).start();
        std::thread::sleep(delay);
        let monitor = if kill_monitor {
            let target = match op {
                "use" | "release" => "@shared".to_string(),
                "gc" => format!("k{}", rng.below(AGENTS)),
                _ => agent.clone(),
            };
            kill_recorded_monitor(&world, &target).map(|pid| format!("{target}'s monitor {pid}"))
        } else {
            None
        };
        let finished = matches!(child.try_wait(), Ok(Some(_)));
        let _ = child.kill();
        let out = child.wait_with_output().expect("reap the killed command");
        if !finished {
            interrupted += 1;
        }
        rounds.push(format!(
            "round {round} (seed {seed:#x}): `{}` {} after {} ms{}",
            args.join(" "),
            if finished {
                format!("had exited {:?}", out.status.code())
            } else {
                "SIGKILLed".to_string()
            },
            delay.as_millis(),
            monitor.map_or_else(String::new, |m| format!(", SIGKILLed {m}")),
        ));

        // A SIGKILL mid-write must never leave a torn registry behind.
        if world.home.join("registry.json").exists() {
            if let Err(err) = read_registry(&world) {
                panic!("after {}:\n{err}", rounds.join("\n"));
            }
        }
    }
    let history = rounds.join("\n");
    eprintln!("{interrupted} of {ROUNDS} commands were SIGKILLed while running");
    assert!(
        interrupted >= 10,
        "only {interrupted} of {ROUNDS} commands were still running when killed:\n{history}"
    );

    for _ in 0..2 {
        let gc = world.ds(&["gc"]).run();
        assert_eq!(
            gc.code, 0,
            "`gc` after the rounds exited {}:\n{}\n{}\n--- rounds\n{history}",
            gc.code, gc.stdout, gc.stderr
        );
    }
    if let Err(err) = settles(Duration::from_secs(5), || registry_matches_reality(&world)) {
        panic!("after the rounds and `gc` twice, the registry does not match reality:\n{err}\n--- rounds\n{history}");
    }

    let stop = world.ds(&["stop", "--all", "--force"]).run();
    assert!(
        matches!(stop.code, 0 | 7),
        "`stop --all --force` exited {}:\n{}\n--- rounds\n{history}",
        stop.code,
        stop.stderr
    );
    let gc = world.ds(&["gc"]).run();
    assert_eq!(
        gc.code, 0,
        "the last `gc`:\n{}\n--- rounds\n{history}",
        gc.stderr
    );
    let clean = wait_until(Duration::from_secs(5), || {
        processes_under(world.tmp.path()).is_empty()
    });
    assert!(
        clean,
        "processes left after `stop --all --force` and `gc`:\n{}\n--- rounds\n{history}",
        describe(&processes_under(world.tmp.path()))
    );
    let missing = missing_worktrees(&world);
    assert!(
        missing.is_empty(),
        "`git worktree list` shows worktrees whose directory is missing: {missing:?}\n--- rounds\n{history}"
    );
}

// ---------------------------------------------------------------------------
// Issue #4, C32 (c): a storm of spawns and stops while a reader lists.

#[test]
fn concurrent_spawn_stop_storm_keeps_every_reader_whole() {
    const WORKERS: u64 = 16;
    const AGENTS: u64 = 64;
    const STORM: Duration = Duration::from_secs(16);
    let world = World::with_config(&fast_config(""));
    // Without an index.html the server answers `ok <agent>`, so an answer
    // tells whose server it is.
    world.git(&["rm", "-q", "index.html"]);
    world.commit("serve the agent's name");

    let deadline = Instant::now() + STORM;
    let storming = AtomicBool::new(true);
    let failures = Mutex::new(Vec::<String>::new());
    let bad_reads = Mutex::new(Vec::<String>::new());
    let commands = AtomicUsize::new(0);
    let reads = AtomicUsize::new(0);

    std::thread::scope(|scope| {
        let reader = scope.spawn(|| {
            while storming.load(Ordering::SeqCst) {
                reads.fetch_add(1, Ordering::SeqCst);
                let problem = match try_list(&world) {
                    Err(err) => Some(err),
                    Ok(views) => check_views(&views).err(),
                };
                if let Some(problem) = problem {
                    bad_reads.lock().expect("lock").push(problem);
                }
            }
        });
        let workers: Vec<_> = (0..WORKERS)
            .map(|worker| {
                let (world, failures, commands) = (&world, &failures, &commands);
                scope.spawn(move || {
                    let mut rng = Rng::new(0x570c_0000 + worker);
                    while Instant::now() < deadline {
                        let agent = format!("s{}", rng.below(AGENTS));
                        let op = if rng.below(2) == 0 { "spawn" } else { "stop" };
                        let out = world.ds(&[op, "--agent", &agent]).run();
                        commands.fetch_add(1, Ordering::SeqCst);
                        let expected = match op {
                            "spawn" => out.code == 0,
                            // 7: the agent never had an instance.
                            _ => matches!(out.code, 0 | 7),
                        };
                        if !expected {
                            failures.lock().expect("lock").push(format!(
                                "worker {worker} (seed {:#x}): `{op} --agent {agent}` exited {} after {:?}: {}",
                                0x570c_0000 + worker,
                                out.code,
                                out.took,
                                out.stderr.trim()
                            ));
                        }
                    }
                })
            })
            .collect();
        for worker in workers {
            worker.join().expect("worker");
        }
        storming.store(false, Ordering::SeqCst);
        reader.join().expect("reader");
    });

    let reads = reads.into_inner();
    let bad_reads = bad_reads.into_inner().expect("lock");
    eprintln!(
        "storm: {} commands by {WORKERS} workers, {reads} reads",
        commands.load(Ordering::SeqCst)
    );
    assert!(
        bad_reads.is_empty(),
        "{} of {reads} `list --json` reads were not whole, e.g.:\n{}",
        bad_reads.len(),
        bad_reads[..bad_reads.len().min(5)].join("\n")
    );
    assert!(reads >= 20, "only {reads} reads ran during the storm");
    let failures = failures.into_inner().expect("lock");
    assert!(
        failures.is_empty(),
        "{} of {} commands failed:\n{}",
        failures.len(),
        commands.into_inner(),
        failures[..failures.len().min(10)].join("\n")
    );

    // Every spawn and stop has finished: nothing may be half-way now.
    let views = try_list(&world).expect("list after the storm");
    let mut running = HashMap::new();
    for view in &views {
        let (agent, state, port) = (agent_of(view), state_of(view), port_in(view));
        assert!(
            !matches!(state, "starting" | "unhealthy"),
            "`{agent}` is still {state} after every command finished: {view:#}"
        );
        if state != "running" {
            continue;
        }
        let url = view["url"].as_str().expect("url");
        assert_eq!(
            get(url).as_deref().map(str::trim),
            Some(format!("ok {agent}").as_str()),
            "`{agent}` is listed running at {url}, which does not answer as it"
        );
        if let Some(other) = running.insert(port, agent) {
            panic!("`{agent}` and `{other}` are both running on port {port}");
        }
    }
    for (port, pid) in ports_held_under(world.tmp.path()) {
        assert!(
            running.contains_key(&port),
            "pid {pid} (`{}`) listens on port {port}, which no running entry holds (running: {running:?})",
            cmdline(pid)
        );
    }

    if !running.is_empty() {
        world.ds(&["stop", "--all"]).ok();
    }
    assert_no_processes_under(world.tmp.path());
    let left: Vec<String> = try_list(&world)
        .expect("list after stop --all")
        .iter()
        .filter(|v| ACTIVE.contains(&state_of(v)))
        .map(|v| agent_of(v).to_string())
        .collect();
    assert!(left.is_empty(), "still active after `stop --all`: {left:?}");
}

/// Whether one `list --json` answer is whole: documented fields and states,
/// each agent once.
fn check_views(views: &[Value]) -> Result<(), String> {
    let mut seen = HashSet::new();
    for view in views {
        for field in FIELDS {
            if view.get(field).is_none() {
                return Err(format!("an element lacks `{field}`: {view}"));
            }
        }
        if !STATES.contains(&state_of(view)) {
            return Err(format!("an element has an undocumented state: {view}"));
        }
        if !seen.insert(agent_of(view).to_string()) {
            return Err(format!("`{}` is listed twice", agent_of(view)));
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// Issue #4: a zombie in the tree counts as dead.

/// A process that makes itself a child subreaper, runs one command (a
/// `devserver spawn`), prints its exit code and output, and then never reaps
/// anything: processes orphaned below it stay zombies until it is killed.
/// It prints `[code, stdout, stderr]` as one JSON line.
const NON_REAPER: &str = r#"
import ctypes, json, subprocess, sys
PR_SET_CHILD_SUBREAPER = 36
if ctypes.CDLL(None, use_errno=True).prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
    print(json.dumps([-1, "", "prctl(PR_SET_CHILD_SUBREAPER) failed"]), flush=True)
    sys.exit(1)
out = subprocess.run(sys.argv[2:], cwd=sys.argv[1], capture_output=True, text=True)
print(json.dumps([out.returncode, out.stdout.strip(), out.stderr]), flush=True)
sys.stdin.readline()
"#;

/// The non-reaping subreaper; SIGKILLed (by pid) and reaped when dropped.
struct NonReaper {
    child: Child,
    _stdin: ChildStdin,
}

impl NonReaper {
    /// Runs `devserver ARGS` under the subreaper, in `world` as the harness
    /// would; returns it and what the command printed on stdout. Panics
    /// unless the command succeeds.
    fn run(world: &World, args: &[&str]) -> (NonReaper, String) {
        let mut command = Command::new(python());
        command
            .args(["-c", NON_REAPER])
            .arg(&world.repo)
            .arg(BIN)
            .args(args)
            .current_dir("/")
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("HOME", world.tmp.path())
            .env("DEVSERVER_HOME", &world.home)
            .env("DEVSERVER_POLL_MS", "10")
            .env("GIT_CONFIG_GLOBAL", "/dev/null")
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .env("NO_COLOR", "1")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped());
        let mut child = command.spawn().expect("python3 starts");
        let stdin = child.stdin.take().expect("stdin");
        let stdout = child.stdout.take().expect("stdout");
        let reaper = NonReaper {
            child,
            _stdin: stdin,
        };
        let mut line = String::new();
        BufReader::new(stdout)
            .read_line(&mut line)
            .expect("the subreaper's output");
        let (code, out, err): (i32, String, String) =
            serde_json::from_str(&line).unwrap_or_else(|e| panic!("subreaper said {line:?}: {e}"));
        assert_eq!(
            code,
            0,
            "`devserver {}` under the subreaper exited {code}:\n{out}\n{err}",
            args.join(" ")
        );
        (reaper, out)
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for NonReaper {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Waits until `pid` is a zombie; panics naming `what` otherwise.
fn await_zombie(pid: u32, what: &str) {
    let zombie = wait_until(Duration::from_secs(5), || proc_state(pid) == Some('Z'));
    assert!(
        zombie,
        "{what} (pid {pid}) did not stay a zombie: state {:?}",
        proc_state(pid)
    );
}

#[test]
fn a_zombie_in_the_tree_counts_as_dead() {
    // 1. A live server with a zombie child it never reaps: running, and
    // `stop` does not wait for the zombie.
    let config = |command: &str| {
        format!("command: '{command}'\nhealth:\n  timeout: 20s\nstop:\n  grace: 10s\n")
    };
    let world = World::with_config(&config(&format!("sleep 0.1 & exec {}", server(""))));
    let url = world.spawn("a");
    let server_pid = world.status("a")["pid"].as_u64().expect("pid");
    let server_pid = u32::try_from(server_pid).expect("pid");
    let has_zombie_child = || {
        std::fs::read_dir("/proc").is_ok_and(|entries| {
            entries
                .flatten()
                .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
                .any(|pid| parent_of(pid) == Some(server_pid) && proc_state(pid) == Some('Z'))
        })
    };
    assert!(
        wait_until(Duration::from_secs(5), has_zombie_child),
        "the server (pid {server_pid}) never had a zombie child"
    );
    let status = world.status("a");
    assert_eq!(
        status["state"], "running",
        "a zombie child does not make a live server dead: {status:#}"
    );
    let stop = world.ds(&["stop", "--agent", "a"]).ok();
    assert!(
        stop.took < Duration::from_secs(4),
        "`stop` with a zombie in the tree took {:?} (grace 10 s)",
        stop.took
    );
    assert!(!port_answers(port_of(&url)), "the port is free");
    assert_no_processes_under(world.tmp.path());
    drop(world);

    // 2. The monitor and the top process both zombies (their parent, a
    // subreaper, never reaps them): the instance is dead, and `stop`
    // returns without waiting out the grace.
    let world = World::with_config(&config(&format!("exec {}", server(""))));
    let (reaper, url) = NonReaper::run(&world, &["spawn", "--agent", "z"]);
    let entry = registry_entry(&world, "z").expect("z's entry");
    let (monitor, _) = recorded(&entry, "monitor").expect("monitor recorded");
    let (top, _) = recorded(&entry, "server").expect("server recorded");
    assert_eq!(
        parent_of(monitor),
        Some(reaper.pid()),
        "the monitor was handed to the subreaper when its CLI exited"
    );
    assert!(signal(monitor, libc::SIGKILL), "kill the monitor");
    await_zombie(monitor, "the monitor");
    let adopted = wait_until(Duration::from_secs(5), || {
        parent_of(top) == Some(reaper.pid())
    });
    assert!(adopted, "the server was handed to the subreaper");
    assert!(signal(top, libc::SIGKILL), "kill the server");
    await_zombie(top, "the server's top process");
    assert!(
        !port_answers(port_of(&url)),
        "the dead server's port is free"
    );

    let status = world.status("z");
    assert!(
        !ACTIVE.contains(&state_of(&status)) && status["pid"].is_null(),
        "`status` reports an instance whose monitor and server are zombies as alive: {status:#}"
    );
    let listed = world.list();
    assert!(
        listed.iter().all(|v| !ACTIVE.contains(&state_of(v))),
        "`list` reports a zombie instance as alive: {listed:#?}"
    );
    let stop = world.ds(&["stop", "--agent", "z"]).ok();
    assert!(
        stop.took < Duration::from_secs(4),
        "`stop` of a zombie instance took {:?}: it waited for zombies (grace 10 s)",
        stop.took
    );
    let gc = world.ds(&["gc"]).ok();
    assert!(gc.took < Duration::from_secs(4), "`gc` took {:?}", gc.took);
    assert_eq!(proc_state(top), Some('Z'), "the zombies are still there");
    let again = world.spawn("z");
    assert!(get(&again).is_some(), "a respawn over zombies answers");
    world.ds(&["stop", "--agent", "z"]).ok();
    assert_no_processes_under(world.tmp.path());
    drop(reaper);
}

// ---------------------------------------------------------------------------
// Issue #4, C32 (b): the state directory on a full filesystem.

/// A world whose state directory is a small tmpfs; unmounted when dropped,
/// after its servers are stopped.
struct TmpfsWorld {
    world: World,
}

impl TmpfsWorld {
    /// None when tmpfs cannot be mounted here.
    fn new(size: &str) -> Option<TmpfsWorld> {
        let world = World::with_config(&fast_config(""));
        fs_err::create_dir_all(&world.home).expect("mkdir state");
        let mounted = Command::new("mount")
            .args(["-t", "tmpfs", "-o"])
            .arg(format!("size={size},mode=0700"))
            .arg("tmpfs")
            .arg(&world.home)
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        mounted.then_some(TmpfsWorld { world })
    }
}

impl Drop for TmpfsWorld {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(self.world.home.join("filler"));
        if self.world.home.join("registry.json").exists() {
            let _ = self.world.ds(&["stop", "--all", "--force"]).run();
        }
        kill_processes_under(self.world.tmp.path());
        let _ = Command::new("umount")
            .arg("-l")
            .arg(&self.world.home)
            .status();
    }
}

/// Writes `path` until the filesystem has no byte left.
fn fill(path: &Path) {
    let mut file = fs_err::File::create(path).expect("create filler");
    for chunk in [65536, 4096, 512, 1] {
        let block = vec![0x5a_u8; chunk];
        while file.write_all(&block).and_then(|()| file.flush()).is_ok() {}
    }
    let _ = file.sync_all();
}

#[test]
fn a_full_state_filesystem_fails_cleanly() {
    let Some(fs) = TmpfsWorld::new("256k") else {
        eprintln!("skipped: cannot mount a tmpfs here (needs root)");
        return;
    };
    let world = &fs.world;
    let url = world.spawn("a");
    let before = registry_entry(world, "a").expect("a's entry");
    fill(&world.home.join("filler"));
    assert!(
        std::fs::write(world.home.join("probe"), b"x").is_err(),
        "the state filesystem is full"
    );
    let _ = std::fs::remove_file(world.home.join("probe"));

    let out = world.ds(&["spawn", "--agent", "b"]).run();
    assert_ne!(
        out.code, 0,
        "`spawn b` on a full disk succeeded:\n{}",
        out.stdout
    );
    assert!(
        out.stderr.to_lowercase().contains("no space"),
        "`spawn b` does not name the cause (no space left):\n{}",
        out.stderr
    );

    let registry = read_registry(world).unwrap_or_else(|e| panic!("{e}"));
    let after = registry_entry(world, "a").expect("a is still in the registry");
    assert_eq!(after, before, "a's entry changed: {registry:#}");
    assert!(
        registry_entry(world, "b").is_none(),
        "the failed spawn left b's entry: {registry:#}"
    );
    assert!(get(&url).is_some(), "a still answers");
    let list = world.ds(&["list", "--json"]).ok();
    assert!(list.stdout.contains("\"a\""), "`list` works on a full disk");
    let temps: Vec<String> = fs_err::read_dir(&world.home)
        .expect("ls state")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().to_string())
        .filter(|n| n.contains(".tmp"))
        .collect();
    assert!(temps.is_empty(), "temporary files left: {temps:?}");

    assert!(
        !world.worktree("b").exists(),
        "b's worktree was left behind"
    );
    let branches = world.git(&["branch", "--list", "devserver/b"]);
    assert!(branches.trim().is_empty(), "b's branch was left behind");
    assert!(
        !world.repo.join(".git/worktrees/b").exists(),
        "b's admin entry was left behind"
    );
    let of_b: Vec<u32> = processes_under(world.tmp.path())
        .into_iter()
        .filter(|p| env_has(*p, "DEVSERVER_AGENT=b") || cmdline(*p).contains("--agent b"))
        .collect();
    assert!(of_b.is_empty(), "processes of b left:\n{}", describe(&of_b));

    // With space again, b spawns and a is untouched.
    fs_err::remove_file(world.home.join("filler")).expect("free the space");
    let b = world.spawn("b");
    assert!(get(&b).is_some(), "b answers once there is space");
    assert_eq!(world.status("a")["state"], "running");
    world.ds(&["stop", "--all"]).ok();
    assert_no_processes_under(world.tmp.path());
}

// ---------------------------------------------------------------------------
// Issue #4: a state directory others own or may write is refused.

/// Puts a path's owner and mode back when dropped.
struct Restore {
    path: PathBuf,
    mode: u32,
}

impl Restore {
    fn new(path: &Path) -> Restore {
        use std::os::unix::fs::PermissionsExt;
        let mode = fs_err::metadata(path).expect("stat").permissions().mode() & 0o7777;
        Restore {
            path: path.to_path_buf(),
            mode,
        }
    }
}

impl Drop for Restore {
    fn drop(&mut self) {
        use std::os::unix::fs::PermissionsExt;
        // SAFETY: geteuid has no preconditions.
        let me = unsafe { libc::geteuid() };
        let _ = std::os::unix::fs::chown(&self.path, Some(me), None);
        let _ = std::fs::set_permissions(&self.path, std::fs::Permissions::from_mode(self.mode));
    }
}

/// Every command, as run against a refused state directory.
const EVERY_COMMAND: [&[&str]; 15] = [
    &["spawn", "--agent", "b"],
    &["spawn", "--agent", "a"],
    &["use", "--agent", "u"],
    &["release", "--agent", "u"],
    &["renew", "--agent", "a"],
    &["url", "--agent", "a"],
    &["list"],
    &["list", "--json"],
    &["list", "--all"],
    &["status", "--agent", "a"],
    &["logs", "--agent", "a"],
    &["stop", "--agent", "a"],
    &["stop", "--all"],
    &["gc"],
    &["gc", "--all"],
];

/// Runs `commands` with `DEVSERVER_HOME=home` and asserts each is refused
/// naming `home` and `reason`.
fn assert_refused(world: &World, home: &Path, commands: &[&[&str]], reason: &str) {
    for args in commands {
        let out = world.ds(args).env("DEVSERVER_HOME", home).run();
        assert_eq!(
            out.code,
            1,
            "`{}` with DEVSERVER_HOME={} ({reason}) exited {}:\n{}\n{}",
            out.label,
            home.display(),
            out.code,
            out.stdout,
            out.stderr
        );
        let named = format!("`{}`", home.display());
        assert!(
            out.stderr.contains(&named) && out.stderr.contains(reason),
            "`{}` does not name {named} and why ({reason:?}):\n{}",
            out.label,
            out.stderr
        );
    }
}

#[test]
fn state_dir_owned_by_another_user_or_world_writable_is_refused() {
    use std::os::unix::fs::PermissionsExt;
    let world = World::with_config(&fast_config(""));
    let url = world.spawn("a");
    let registry = fs_err::read(world.home.join("registry.json")).expect("registry");

    {
        let _restore = Restore::new(&world.home);
        std::os::unix::fs::chown(&world.home, Some(65534), None).expect("chown");
        assert_refused(&world, &world.home, &EVERY_COMMAND, "owned by uid 65534");
    }
    {
        let _restore = Restore::new(&world.home);
        fs_err::set_permissions(&world.home, std::fs::Permissions::from_mode(0o777))
            .expect("chmod");
        assert_refused(&world, &world.home, &EVERY_COMMAND, "writable by others");
    }
    let after = fs_err::read(world.home.join("registry.json")).expect("registry");
    assert!(after == registry, "a refused command changed the registry");
    assert!(get(&url).is_some(), "a refused command stopped a");
    assert!(
        !world.worktree("b").exists(),
        "a refused spawn made a worktree"
    );

    // /tmp itself (world-writable, sticky): only commands that would not
    // write there if they wrongly went ahead.
    let existed: Vec<bool> = ["registry.json", "locks", "logs"]
        .iter()
        .map(|n| Path::new("/tmp").join(n).exists())
        .collect();
    assert_refused(
        &world,
        Path::new("/tmp"),
        &[&["list"], &["list", "--json"], &["status", "--agent", "a"]],
        "writable by others",
    );
    let now: Vec<bool> = ["registry.json", "locks", "logs"]
        .iter()
        .map(|n| Path::new("/tmp").join(n).exists())
        .collect();
    assert_eq!(now, existed, "a command put state straight into /tmp");

    // Back to private: everything works again.
    world.ds(&["url", "--agent", "a"]).ok();
    world.ds(&["stop", "--agent", "a"]).ok();
}

/// The registry file itself, rather than its directory, owned by someone
/// else or writable by others: the issue asks for a refusal there too.
#[test]
fn registry_file_owned_by_another_user_or_writable_by_others_is_refused() {
    use std::os::unix::fs::PermissionsExt;
    let world = World::with_config(&fast_config(""));
    world.spawn("a");
    let file = world.home.join("registry.json");
    let named = format!("`{}`", file.display());
    let reads: [&[&str]; 3] = [&["list"], &["list", "--json"], &["status", "--agent", "a"]];

    let check = |reason: &str| {
        for args in reads {
            let out = world.ds(args).run();
            assert!(
                out.code != 0 && out.stderr.contains(&named) && out.stderr.contains(reason),
                "`{}` trusted {named} ({reason}): exited {}\n{}{}",
                out.label,
                out.code,
                out.stdout,
                out.stderr
            );
        }
    };
    {
        let _restore = Restore::new(&file);
        std::os::unix::fs::chown(&file, Some(65534), None).expect("chown");
        check("owned by uid 65534");
    }
    {
        let _restore = Restore::new(&file);
        fs_err::set_permissions(&file, std::fs::Permissions::from_mode(0o666)).expect("chmod");
        check("writable by others");
    }
}

// ---------------------------------------------------------------------------
// C31/C32: `gc` restores a corrupt registry from its backup.

#[test]
fn gc_restores_a_corrupt_registry_from_its_backup() {
    let world = World::with_config(&fast_config(""));
    let a = world.spawn("a");
    let b = world.spawn("b");
    let path = world.home.join("registry.json");
    let whole = fs_err::read(&path).expect("registry");
    let torn = whole[..whole.len() / 2].to_vec();
    fs_err::write(&path, &torn).expect("truncate");

    let file = format!("`{}`", path.display());
    let backup = format!("`{}`", world.home.join("registry.json.bak").display());
    let list = world.ds(&["list"]).run();
    assert_ne!(
        list.code, 0,
        "`list` read a torn registry:\n{}",
        list.stdout
    );
    assert!(
        list.stderr.contains(&file) && list.stderr.contains(&backup),
        "`list` does not name {file} and {backup}:\n{}",
        list.stderr
    );
    assert!(
        fs_err::read(&path).expect("registry") == torn,
        "`list` changed the torn file"
    );

    let gc = world.ds(&["gc"]).run();
    assert_eq!(
        gc.code, 0,
        "`gc` did not restore the registry:\n{}\n{}",
        gc.stdout, gc.stderr
    );
    let aside: Vec<PathBuf> = fs_err::read_dir(&world.home)
        .expect("ls state")
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("registry.json.corrupt-"))
        })
        .collect();
    assert_eq!(
        aside.len(),
        1,
        "one registry.json.corrupt-* file: {aside:?}"
    );
    assert!(
        fs_err::read(&aside[0]).expect("aside") == torn,
        "the file moved aside is the torn one"
    );
    assert!(
        gc.stderr.contains("corrupt") || gc.stdout.contains("corrupt"),
        "`gc` does not say it restored a corrupt registry:\n{}\n{}",
        gc.stdout,
        gc.stderr
    );

    let views = world.list();
    for (agent, url) in [("a", &a), ("b", &b)] {
        let view = views
            .iter()
            .find(|v| agent_of(v) == agent)
            .unwrap_or_else(|| panic!("`{agent}` was lost: {views:#?}"));
        assert_eq!(view["url"].as_str(), Some(url.as_str()), "{agent}'s url");
        assert!(get(url).is_some(), "{agent} still answers");
        assert_eq!(
            state_of(view),
            "running",
            "`{agent}` runs and answers, but after `gc` restored the backup it is listed as {}: {view:#}",
            state_of(view)
        );
    }
    world.ds(&["stop", "--all"]).ok();
    assert_no_processes_under(world.tmp.path());
}

// ---------------------------------------------------------------------------
// C12: the monitor and the CLI died by SIGKILL; `gc` finds the tree.

#[test]
fn c12_a_server_whose_monitor_and_cli_were_sigkilled_is_found_by_gc() {
    let world = World::with_config(&format!(
        "command: {}\nhealth:\n  timeout: 20s\nstop:\n  grace: 1s\n",
        fixture("chain.sh --lock dev.lock")
    ));
    let url = world.spawn("a");
    let port = port_of(&url);
    let lock = world.worktree("a").join("dev.lock");
    assert!(lock.exists(), "the fixture holds its app lock");

    let entry = registry_entry(&world, "a").expect("a's entry");
    let (monitor, monitor_start) = recorded(&entry, "monitor").expect("monitor");
    let (top, top_start) = recorded(&entry, "server").expect("server");
    assert_eq!(start_time(monitor), Some(monitor_start), "monitor identity");
    assert_eq!(start_time(top), Some(top_start), "server identity");
    assert!(
        cmdline(top).starts_with("sh "),
        "the top is `sh`: {}",
        cmdline(top)
    );
    let tree_before = processes_under(world.tmp.path());

    assert!(signal(monitor, libc::SIGKILL), "kill the monitor");
    assert!(
        wait_until(Duration::from_secs(5), || !is_running(monitor)),
        "the monitor died"
    );
    assert!(signal(top, libc::SIGKILL), "kill the top `sh`");
    assert!(
        wait_until(Duration::from_secs(5), || !is_running(top)),
        "the top `sh` died"
    );
    std::thread::sleep(Duration::from_millis(300));
    let orphans = processes_under(world.tmp.path());
    assert!(
        orphans.len() >= 3,
        "the rest of the chain survives its monitor and top (before: {}):\n{}",
        tree_before.len(),
        describe(&orphans)
    );
    assert!(
        port_answers(port),
        "the orphaned listener still holds {port}"
    );

    let gc = world.ds(&["gc"]).run();
    assert_eq!(gc.code, 0, "`gc`:\n{}\n{}", gc.stdout, gc.stderr);
    assert!(
        gc.stdout.contains("agent `a`"),
        "`gc` reports what it found for a:\n{}",
        gc.stdout
    );
    assert!(gc.took < Duration::from_secs(15), "`gc` took {:?}", gc.took);
    let left = processes_under(world.tmp.path());
    assert!(
        left.is_empty(),
        "`gc` left processes of the orphaned chain:\n{}",
        describe(&left)
    );
    assert!(!port_answers(port), "`gc` freed port {port}");
    let status = world.status("a");
    assert!(
        !ACTIVE.contains(&state_of(&status)),
        "a is dead after `gc`: {status:#}"
    );

    let stale = lock.exists();
    let again = world.ds(&["spawn", "--agent", "a"]).run();
    assert_eq!(
        again.code, 0,
        "the respawn failed (app lock left: {stale}):\n{}",
        again.stderr
    );
    let url = again.stdout.trim();
    assert!(get(url).is_some(), "the respawned server answers");
    if stale {
        let logs = world.ds(&["logs", "--agent", "a"]).ok();
        assert!(
            logs.stdout.contains("stale lock"),
            "the old app lock was left and the respawn does not report it:\n{}",
            logs.stdout
        );
    }
    let holder: u32 = fs_err::read_to_string(&lock)
        .expect("the new server holds the lock")
        .trim()
        .parse()
        .expect("pid in the lock");
    assert!(is_running(holder), "the lock names the live new server");
    world.ds(&["stop", "--agent", "a"]).ok();
    assert_no_processes_under(world.tmp.path());
}
