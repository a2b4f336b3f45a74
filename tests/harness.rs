//! The test harness: a temporary repository and state directory per test,
//! a builder for running the devserver binary, and checks on processes.

#![allow(dead_code)]

use std::collections::HashSet;
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_devserver");

/// The fixtures directory of this repository.
pub fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

/// The real Python interpreter (pyenv shims add tens of milliseconds).
pub fn python() -> &'static str {
    static PYTHON: OnceLock<String> = OnceLock::new();
    PYTHON.get_or_init(|| {
        let out = Command::new("python3")
            .args(["-c", "import sys; print(sys.executable)"])
            .output()
            .expect("python3 runs");
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    })
}

/// The command that starts the test server, with extra options.
pub fn server(options: &str) -> String {
    format!("{} {}/server.py {options}", python(), fixtures().display())
}

/// The command that runs a shell fixture (`chain.sh`, `escape.sh`) with
/// extra arguments for the test server.
pub fn fixture(name: &str) -> String {
    format!(
        "FIXTURES={0} PYTHON={1} sh {0}/{name}",
        fixtures().display(),
        python()
    )
}

/// The port of a URL such as `http://127.0.0.1:5201/` or `http://[::1]:5201`.
pub fn port_of(url: &str) -> u16 {
    url.rsplit(':')
        .next()
        .and_then(|p| p.trim_end_matches('/').parse().ok())
        .unwrap_or_else(|| panic!("url {url:?} has a port"))
}

/// One test's world: a git repository and a private state directory.
pub struct World {
    pub tmp: tempfile::TempDir,
    pub repo: PathBuf,
    pub home: PathBuf,
}

impl World {
    /// A repository with `index.html` and a `devserver.yaml` running the
    /// test server, committed on `main`.
    pub fn new() -> World {
        World::with_config(&format!(
            "command: {}\nhealth:\n  timeout: 20s\nstop:\n  grace: 3s\n",
            server("")
        ))
    }

    pub fn with_config(config: &str) -> World {
        let tmp = tempfile::Builder::new()
            .prefix("ds-")
            .tempdir()
            .expect("tempdir");
        let repo = tmp.path().join("app");
        let home = tmp.path().join("state");
        fs_err::create_dir_all(&repo).expect("mkdir repo");
        let world = World { tmp, repo, home };
        world.git(&["init", "-q", "-b", "main"]);
        world.write("index.html", "<h1>main</h1>\n");
        world.write("devserver.yaml", config);
        world.commit("initial");
        world
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.tmp.path().join(rel)
    }

    pub fn write(&self, rel: &str, text: &str) {
        let path = self.repo.join(rel);
        if let Some(parent) = path.parent() {
            fs_err::create_dir_all(parent).expect("mkdir");
        }
        fs_err::write(path, text).expect("write");
    }

    pub fn commit(&self, message: &str) {
        self.git(&["add", "-A"]);
        self.git(&["commit", "-q", "--allow-empty", "-m", message]);
    }

    /// Runs git in the repository; panics on failure.
    pub fn git(&self, args: &[&str]) -> String {
        git_in(&self.repo, args)
    }

    /// Replaces the repository's content with the real Vite fixture app,
    /// committed, with the fixture's installed `node_modules` linked in
    /// (untracked, as in a user's checkout).
    pub fn use_vite_app(&self) {
        let app = fixtures().join("vite-app");
        assert!(
            app.join("node_modules/.bin/vite").exists(),
            "run `npm ci --prefix tests/fixtures/vite-app` first (`.ci/run` does)"
        );
        self.git(&["rm", "-q", "--ignore-unmatch", "index.html"]);
        for name in [
            "index.html",
            "main.js",
            "package.json",
            "package-lock.json",
            "vite.config.js",
        ] {
            fs_err::copy(app.join(name), self.repo.join(name)).expect("copy the Vite fixture");
        }
        self.write(".gitignore", "node_modules/\n");
        self.commit("vite app");
        std::os::unix::fs::symlink(app.join("node_modules"), self.repo.join("node_modules"))
            .expect("link node_modules");
    }

    /// The default worktree path of an agent.
    pub fn worktree(&self, agent: &str) -> PathBuf {
        self.tmp.path().join("app.worktrees").join(agent)
    }

    /// A devserver command run in the repository.
    pub fn ds(&self, args: &[&str]) -> Run {
        Run::new(self, args)
    }

    /// Spawns `agent` and returns its URL; panics with the output on failure.
    pub fn spawn(&self, agent: &str) -> String {
        self.ds(&["spawn", "--agent", agent])
            .ok()
            .stdout
            .trim()
            .to_string()
    }

    /// The registry as JSON.
    pub fn registry(&self) -> serde_json::Value {
        let text = fs_err::read_to_string(self.home.join("registry.json")).expect("registry");
        serde_json::from_str(&text).expect("registry parses")
    }

    /// `list --json` as a vector of instances.
    pub fn list(&self) -> Vec<serde_json::Value> {
        let out = self.ds(&["list", "--json"]).ok();
        serde_json::from_str::<Vec<serde_json::Value>>(&out.stdout).expect("list --json parses")
    }

    pub fn status(&self, agent: &str) -> serde_json::Value {
        let out = self.ds(&["status", "--agent", agent, "--json"]).ok();
        serde_json::from_str(&out.stdout).expect("status --json parses")
    }
}

impl Drop for World {
    /// Stops whatever a test left running, then checks nothing survived.
    fn drop(&mut self) {
        if self.home.join("registry.json").exists() {
            let _ = self.ds(&["stop", "--all", "--force"]).run();
        }
        kill_processes_under(self.tmp.path());
    }
}

pub fn git_in(dir: &Path, args: &[&str]) -> String {
    let out = Command::new("git")
        .args([
            "-c",
            "user.name=devserver-test",
            "-c",
            "user.email=test@devserver.invalid",
        ])
        .args([
            "-c",
            "protocol.file.allow=always",
            "-c",
            "init.defaultBranch=main",
        ])
        .args(args)
        .current_dir(dir)
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .output()
        .expect("git runs");
    assert!(
        out.status.success(),
        "git {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).to_string()
}

/// A devserver invocation being built.
#[must_use]
pub struct Run {
    command: Command,
    label: String,
}

impl Run {
    fn new(world: &World, args: &[&str]) -> Run {
        let mut command = Command::new(BIN);
        command
            .args(args)
            .current_dir(&world.repo)
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("HOME", world.tmp.path())
            .env("DEVSERVER_HOME", &world.home)
            .env("DEVSERVER_POLL_MS", "10")
            .env("GIT_CONFIG_GLOBAL", "/dev/null")
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .env("NO_COLOR", "1");
        Run {
            command,
            label: format!("devserver {}", args.join(" ")),
        }
    }

    pub fn env(mut self, key: &str, value: impl AsRef<std::ffi::OsStr>) -> Run {
        self.command.env(key, value);
        self
    }

    pub fn env_remove(mut self, key: &str) -> Run {
        self.command.env_remove(key);
        self
    }

    pub fn dir(mut self, dir: impl AsRef<Path>) -> Run {
        self.command.current_dir(dir);
        self
    }

    pub fn run(mut self) -> Outcome {
        let start = Instant::now();
        let out: Output = self.command.output().expect("devserver runs");
        Outcome {
            label: self.label,
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).to_string(),
            stderr: String::from_utf8_lossy(&out.stderr).to_string(),
            took: start.elapsed(),
        }
    }

    /// Runs and asserts exit code 0.
    pub fn ok(self) -> Outcome {
        self.run().code(0)
    }

    /// Runs in the background.
    pub fn start(mut self) -> std::process::Child {
        self.command
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("devserver starts")
    }
}

/// What a devserver run did.
#[derive(Debug)]
pub struct Outcome {
    pub label: String,
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
    pub took: Duration,
}

impl Outcome {
    /// Asserts the exit code, showing the whole output when it differs.
    pub fn code(self, expected: i32) -> Outcome {
        assert_eq!(
            self.code, expected,
            "`{}` exited {} (expected {expected})\n--- stdout\n{}\n--- stderr\n{}",
            self.label, self.code, self.stdout, self.stderr
        );
        self
    }

    /// Asserts that stderr contains every one of `parts`.
    pub fn stderr_has(self, parts: &[&str]) -> Outcome {
        for part in parts {
            assert!(
                self.stderr.contains(part),
                "`{}`: stderr lacks {part:?}\n--- stderr\n{}",
                self.label,
                self.stderr
            );
        }
        self
    }
}

/// Waits for devserver runs started with [`Run::start`]; asserts each
/// succeeded and returns what each printed on stdout, trimmed.
pub fn outputs_of(children: Vec<std::process::Child>) -> Vec<String> {
    children
        .into_iter()
        .map(|child| {
            let out = child.wait_with_output().expect("wait");
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert!(out.status.success(), "{stderr}");
            String::from_utf8_lossy(&out.stdout).trim().to_string()
        })
        .collect()
}

/// GETs `url` and returns the body, or None when nothing answers.
pub fn get(url: &str) -> Option<String> {
    let rest = url.strip_prefix("http://")?;
    let (host, path) = rest
        .split_once('/')
        .map_or((rest, "/".to_string()), |(h, p)| (h, format!("/{p}")));
    let mut stream = TcpStream::connect(host).ok()?;
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .ok()?;
    use std::io::{Read, Write};
    write!(stream, "GET {path} HTTP/1.0\r\nHost: {host}\r\n\r\n").ok()?;
    let mut text = String::new();
    stream.read_to_string(&mut text).ok()?;
    text.split_once("\r\n\r\n")
        .map(|(_, body)| body.to_string())
}

/// Whether anything accepts connections on `port` (127.0.0.1 or ::1).
pub fn port_answers(port: u16) -> bool {
    let timeout = Duration::from_millis(200);
    ["127.0.0.1", "[::1]"].iter().any(|host| {
        let addr = format!("{host}:{port}").parse().expect("addr");
        TcpStream::connect_timeout(&addr, timeout).is_ok()
    })
}

/// Pids of live (non-zombie) processes whose cwd is inside `dir`.
pub fn processes_under(dir: &Path) -> Vec<u32> {
    let dir = dir.canonicalize().unwrap_or_else(|_| dir.to_path_buf());
    let me = std::process::id();
    let mut found = Vec::new();
    let Ok(entries) = fs_err::read_dir("/proc") else {
        return found;
    };
    for entry in entries.flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        if pid == me || is_zombie(pid) {
            continue;
        }
        if let Ok(cwd) = std::fs::read_link(format!("/proc/{pid}/cwd")) {
            if cwd.starts_with(&dir) {
                found.push(pid);
            }
        }
    }
    found
}

fn is_zombie(pid: u32) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return true;
    };
    let state = stat
        .rsplit_once(')')
        .and_then(|(_, rest)| rest.split_whitespace().next());
    matches!(state, Some("Z" | "X") | None)
}

/// Kills (SIGKILL) every process whose cwd is under `dir`: a safety net so
/// a failing test never leaves servers behind.
pub fn kill_processes_under(dir: &Path) {
    for pid in processes_under(dir) {
        // SAFETY: kill has no memory-safety preconditions.
        unsafe { libc::kill(pid as i32, libc::SIGKILL) };
    }
}

/// Polls `check` until it holds or `timeout` passes.
pub fn wait_until(timeout: Duration, mut check: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if check() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    check()
}

/// Asserts that no process runs under `dir`, waiting briefly for exits.
pub fn assert_no_processes_under(dir: &Path) {
    let clean = wait_until(Duration::from_secs(3), || processes_under(dir).is_empty());
    if !clean {
        let pids = processes_under(dir);
        let described: Vec<String> = pids
            .iter()
            .map(|p| {
                let cmd = std::fs::read(format!("/proc/{p}/cmdline")).unwrap_or_default();
                format!("{p}: {}", String::from_utf8_lossy(&cmd).replace('\0', " "))
            })
            .collect();
        panic!(
            "processes left under {}:\n{}",
            dir.display(),
            described.join("\n")
        );
    }
}

/// Two adjacent free ports, for tests that need a narrow range.
pub fn free_port_pair() -> u16 {
    static TAKEN: OnceLock<std::sync::Mutex<HashSet<u16>>> = OnceLock::new();
    let taken = TAKEN.get_or_init(Default::default);
    let mut taken = taken.lock().expect("lock");
    let seed = (std::process::id() as u16).wrapping_mul(7919);
    for i in 0..5000u16 {
        let port = 20000 + (seed.wrapping_add(i.wrapping_mul(2))) % 20000;
        let free = |p: u16| std::net::TcpListener::bind(("0.0.0.0", p)).is_ok() && !port_answers(p);
        if !taken.contains(&port) && !taken.contains(&(port + 1)) && free(port) && free(port + 1) {
            taken.insert(port);
            taken.insert(port + 1);
            return port;
        }
    }
    panic!("no free port pair");
}
