//! Isolated mode end to end: worktrees, ports, health, idempotence.

use std::time::Duration;

use crate::harness::*;

#[test]
fn eight_concurrent_spawns_get_distinct_ports_and_healthy_servers() {
    let world = World::new();
    let agents: Vec<String> = (1..=8).map(|i| format!("agent{i}")).collect();
    let children: Vec<_> = agents
        .iter()
        .map(|a| world.ds(&["spawn", "--agent", a]).start())
        .collect();
    let urls = outputs_of(children);

    let ports: std::collections::HashSet<u16> = urls.iter().map(|u| port_of(u)).collect();
    assert_eq!(ports.len(), 8, "ports must be distinct: {urls:?}");
    for url in &urls {
        assert_eq!(get(url).as_deref(), Some("<h1>main</h1>\n"), "{url}");
    }
    let listed = world.list();
    assert_eq!(listed.len(), 8);
    assert!(listed.iter().all(|e| e["state"] == "running"), "{listed:?}");
}

#[test]
fn a_change_in_one_worktree_shows_only_at_that_agents_url() {
    let world = World::new();
    let a = world.spawn("a");
    let b = world.spawn("b");
    fs_err::write(world.worktree("a").join("index.html"), "<h1>A</h1>\n").expect("edit");

    assert_eq!(get(&a).as_deref(), Some("<h1>A</h1>\n"));
    assert_eq!(get(&b).as_deref(), Some("<h1>main</h1>\n"));
    let branch = git_in(&world.worktree("a"), &["rev-parse", "--abbrev-ref", "HEAD"]);
    assert_eq!(branch.trim(), "devserver/a");
    assert!(
        !world.worktree("a").starts_with(&world.repo),
        "worktrees live outside the checkout"
    );
}

#[test]
fn spawning_a_running_agent_returns_the_same_instance() {
    let world = World::new();
    let first = world.spawn("a");
    let pid = world.status("a")["pid"].clone();

    let again = world
        .ds(&["spawn", "--agent", "a"])
        .ok()
        .stderr_has(&["already running"]);
    assert_eq!(again.stdout.trim(), first);
    assert_eq!(world.status("a")["pid"], pid);
    assert_eq!(world.list().len(), 1);
}

#[test]
fn two_spawns_of_one_agent_at_once_make_one_instance() {
    let world = World::with_config(&format!("command: {}\n", server("--delay 1")));
    let one = world.ds(&["spawn", "--agent", "a"]).start();
    let two = world.ds(&["spawn", "--agent", "a"]).start();
    let urls = outputs_of(vec![one, two]);
    assert_eq!(urls[0], urls[1]);
    assert_eq!(world.list().len(), 1);
}

#[test]
fn a_stopped_agent_gets_its_port_and_worktree_back() {
    let world = World::new();
    let url = world.spawn("a");
    fs_err::write(world.worktree("a").join("notes.txt"), "work in progress").expect("edit");
    world.ds(&["stop", "--agent", "a"]).ok();
    assert!(!port_answers(port_of(&url)));

    assert_eq!(world.spawn("a"), url, "same port again");
    let notes = fs_err::read_to_string(world.worktree("a").join("notes.txt")).expect("kept");
    assert_eq!(notes, "work in progress", "the worktree is reused as it is");
}

#[rstest::rstest]
#[case::loopback_v4("127.0.0.1")]
#[case::wildcard_v4("0.0.0.0")]
#[case::wildcard_v6("::")]
#[case::loopback_v6("::1")]
fn a_port_held_by_an_outsider_is_skipped(#[case] host: &str) {
    let low = free_port_pair();
    let Ok(_outsider) = std::net::TcpListener::bind((host, low)) else {
        eprintln!("skipped: cannot bind {host} here (no IPv6?)");
        return;
    };
    let world = World::with_config(&format!(
        "command: {}\nports:\n  range: {low}-{}\n",
        server(""),
        low + 1
    ));
    let url = world.spawn("a");
    assert_eq!(port_of(&url), low + 1);
}

#[test]
fn running_out_of_ports_is_exit_6() {
    let low = free_port_pair();
    let world = World::with_config(&format!(
        "command: {}\nports:\n  range: {low}-{low}\n",
        server("")
    ));
    world.spawn("a");
    world
        .ds(&["spawn", "--agent", "b"])
        .run()
        .code(6)
        .stderr_has(&["no free port", "ports.range"]);
    assert!(!world.worktree("b").exists());
}

#[test]
fn an_explicit_port_is_used_or_refused() {
    let low = free_port_pair();
    let world = World::new();
    let url = world
        .ds(&["spawn", "--agent", "a", "--port", &low.to_string()])
        .ok()
        .stdout;
    assert_eq!(port_of(url.trim()), low);
    world
        .ds(&["spawn", "--agent", "b", "--port", &low.to_string()])
        .run()
        .code(6)
        .stderr_has(&["reserved by agent `a`"]);
}

#[test]
fn c28_a_server_that_exits_at_once_fails_fast_with_its_log() {
    let world = World::with_config(&format!(
        "command: {}\nhealth:\n  timeout: 30s\n",
        server("--ready-early --exit 3")
    ));
    let out = world.ds(&["spawn", "--agent", "a"]).run().code(4);
    assert!(out.took < Duration::from_secs(10), "took {:?}", out.took);
    let out = out.stderr_has(&["exit code 3", "ready on"]);
    assert!(out.stdout.is_empty());

    assert!(!world.worktree("a").exists(), "no half-made worktree");
    let branches = world.git(&["branch", "--list", "devserver/*"]);
    assert!(branches.trim().is_empty(), "no branch left: {branches}");
    assert!(!world.repo.join(".git/worktrees/devserver-a").exists());
    assert_no_processes_under(world.tmp.path());
}

#[test]
fn c28_ready_is_only_reported_once_the_port_really_answers() {
    let world = World::with_config(&format!("command: {}\n", server("--ready-early --delay 2")));
    let out = world.ds(&["spawn", "--agent", "a"]).ok();
    assert!(
        out.took >= Duration::from_secs(2),
        "healthy before it bound: {:?}",
        out.took
    );
    assert!(get(out.stdout.trim()).is_some());
}

#[test]
fn a_server_that_never_listens_times_out_and_leaves_nothing() {
    let world = World::with_config(&format!(
        "command: {}\nhealth:\n  timeout: 2s\nstop:\n  grace: 1s\n",
        server("--never-listen")
    ));
    let out = world.ds(&["spawn", "--agent", "a"]).run().code(4);
    let out = out.stderr_has(&["did not answer", "freed the port"]);
    assert!(out.took < Duration::from_secs(10), "took {:?}", out.took);
    assert_no_processes_under(world.tmp.path());
    assert!(world.list().is_empty());
}

#[test]
fn a_failing_setup_command_leaves_no_worktree_branch_or_entry() {
    let world = World::with_config(&format!(
        "command: {}\nsetup:\n  run: [\"exit 9\"]\n",
        server("")
    ));
    world
        .ds(&["spawn", "--agent", "a"])
        .run()
        .code(1)
        .stderr_has(&["exit 9"]);
    assert!(!world.worktree("a").exists());
    assert!(world
        .git(&["branch", "--list", "devserver/*"])
        .trim()
        .is_empty());
    assert!(!world.repo.join(".git/worktrees/devserver-a").exists());
    assert!(world.list().is_empty());
}

#[test]
fn setup_copies_links_and_runs_in_a_new_worktree() {
    let world = World::with_config(&format!(
        "command: {}\nsetup:\n  copy: [.env]\n  link: [shared]\n  run: [\"echo $DEVSERVER_AGENT > setup.txt\"]\n",
        server("")
    ));
    fs_err::write(world.repo.join(".env"), "SECRET=1\n").expect(".env");
    fs_err::create_dir(world.repo.join("shared")).expect("shared");
    world.spawn("a");

    let wt = world.worktree("a");
    assert_eq!(
        fs_err::read_to_string(wt.join(".env")).expect("copied"),
        "SECRET=1\n"
    );
    assert!(wt
        .join("shared")
        .symlink_metadata()
        .expect("linked")
        .file_type()
        .is_symlink());
    assert_eq!(
        fs_err::read_to_string(wt.join("setup.txt"))
            .expect("ran")
            .trim(),
        "a"
    );
}

#[test]
fn the_server_gets_its_port_url_and_agent_in_env_and_placeholders() {
    let world = World::with_config(&format!(
        "command: echo \"port={{port}} agent={{agent}} env=$PORT,$DEVSERVER_PORT,$DEVSERVER_AGENT,$DEVSERVER_URL,$GREETING\" > env.txt && exec {}\nenv:\n  GREETING: hi-{{agent}}\n",
        server("")
    ));
    let url = world.spawn("a");
    let port = port_of(&url);
    let text = fs_err::read_to_string(world.worktree("a").join("env.txt")).expect("env.txt");
    assert_eq!(
        text.trim(),
        format!("port={port} agent=a env={port},{port},a,{url},hi-a")
    );
}

#[test]
fn base_and_branch_choose_what_the_worktree_checks_out() {
    let world = World::new();
    world.git(&["checkout", "-q", "-b", "feature"]);
    world.write("index.html", "<h1>feature</h1>\n");
    world.commit("feature");
    world.git(&["checkout", "-q", "main"]);

    let from_base = world
        .ds(&["spawn", "--agent", "a", "--base", "feature"])
        .ok()
        .stdout;
    assert_eq!(get(from_base.trim()).as_deref(), Some("<h1>feature</h1>\n"));

    let on_branch = world
        .ds(&["spawn", "--agent", "b", "--branch", "feature"])
        .ok()
        .stdout;
    assert_eq!(get(on_branch.trim()).as_deref(), Some("<h1>feature</h1>\n"));
    assert_eq!(world.status("b")["branch"], "feature");
}

#[test]
fn submodules_are_initialised_in_a_new_worktree() {
    let world = World::new();
    let lib = world.path("lib");
    fs_err::create_dir_all(&lib).expect("lib dir");
    git_in(&lib, &["init", "-q", "-b", "main"]);
    fs_err::write(lib.join("lib.txt"), "from the submodule\n").expect("write");
    git_in(&lib, &["add", "-A"]);
    git_in(&lib, &["commit", "-q", "-m", "lib"]);
    world.git(&[
        "submodule",
        "add",
        "-q",
        lib.to_str().expect("utf-8"),
        "vendor/lib",
    ]);
    world.commit("add submodule");

    world.spawn("a");
    let text = fs_err::read_to_string(world.worktree("a").join("vendor/lib/lib.txt"));
    assert_eq!(text.expect("submodule checked out"), "from the submodule\n");
}

#[test]
fn logs_show_the_servers_output() {
    let world = World::new();
    let url = world.spawn("a");
    let out = world.ds(&["logs", "--agent", "a"]).ok();
    assert!(
        out.stdout
            .contains(&format!("listening on {}", port_of(&url))),
        "{}",
        out.stdout
    );
    let one = world.ds(&["logs", "--agent", "a", "--lines", "1"]).ok();
    assert_eq!(one.stdout.lines().count(), 1);
}

#[test]
fn the_server_survives_the_cli_and_its_session() {
    let world = World::new();
    let url = world.spawn("a");
    let pid = world.status("a")["pid"].as_u64().expect("pid") as u32;
    let stat = fs_err::read_to_string(format!("/proc/{pid}/stat")).expect("stat");
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .expect("comm")
        .1
        .split_whitespace()
        .collect();
    assert_eq!(
        fields[3],
        pid.to_string(),
        "the server leads its own session"
    );
    assert_eq!(fields[2], pid.to_string(), "and its own process group");
    assert_ne!(fields[3], std::process::id().to_string());
    assert!(get(&url).is_some());
}

#[test]
fn list_checks_state_live() {
    let world = World::new();
    world.spawn("a");
    let pid = world.status("a")["pid"].as_u64().expect("pid") as i32;
    let monitor = world.registry()["instances"][0]["monitor"]["pid"]
        .as_u64()
        .expect("monitor") as i32;
    // SAFETY: plain kill of processes this test started.
    unsafe {
        libc::kill(monitor, libc::SIGKILL);
        libc::kill(-pid, libc::SIGKILL);
    }
    assert!(wait_until(Duration::from_secs(5), || world.list()[0]
        ["state"]
        == "exited"));
}

/// Waits until the agent's entry is reserved and returns its port.
fn reserved_port(world: &World, agent: &str) -> u16 {
    let mut port = 0;
    let found = wait_until(Duration::from_secs(10), || {
        let Ok(text) = fs_err::read_to_string(world.home.join("registry.json")) else {
            return false;
        };
        let registry: serde_json::Value = serde_json::from_str(&text).expect("parses");
        let entry = registry["instances"]
            .as_array()
            .and_then(|all| all.iter().find(|e| e["agent"] == agent).cloned());
        port = entry.and_then(|e| e["port"].as_u64()).unwrap_or(0) as u16;
        port != 0
    });
    assert!(found, "no reservation for {agent}");
    port
}

#[rstest::rstest]
#[case::server_fails_with_address_in_use("", "127.0.0.1")]
#[case::outsider_answers_instead_of_the_server("--host ::1", "[::1]")]
fn c02_a_port_taken_during_warm_up_moves_the_spawn_to_another_port(
    #[case] options: &str,
    #[case] host: &str,
) {
    let world = World::with_config(&format!(
        "command: {}\nurl: http://{host}:{{port}}\n",
        server(&format!("--delay 1.5 {options}"))
    ));
    let spawn = world.ds(&["spawn", "--agent", "a"]).start();
    let port = reserved_port(&world, "a");
    let outsider = std::net::TcpListener::bind(("127.0.0.1", port)).expect("outsider binds");
    std::thread::spawn(move || {
        for stream in outsider.incoming().flatten() {
            use std::io::Write;
            let mut stream = stream;
            let _ = stream.write_all(b"HTTP/1.0 200 OK\r\n\r\noutsider");
        }
    });

    let out = spawn.wait_with_output().expect("spawn ends");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("trying another port"), "{stderr}");
    let url = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert_ne!(port_of(&url), port);
    assert_eq!(get(&url).as_deref(), Some("<h1>main</h1>\n"));
    assert_eq!(
        world.status("a")["port"].as_u64(),
        Some(u64::from(port_of(&url)))
    );
}

#[test]
fn c03_a_host_without_ipv6_still_works() {
    let probe = std::process::Command::new("unshare")
        .args([
            "-n",
            "sh",
            "-c",
            "ip link set lo up && sysctl -qw net.ipv6.conf.all.disable_ipv6=1",
        ])
        .status();
    if !probe.is_ok_and(|s| s.success()) {
        eprintln!("skipped: cannot make a network namespace here (needs root, unshare and ip)");
        return;
    }
    let world = World::new();
    let script = format!(
        "ip link set lo up && sysctl -qw net.ipv6.conf.all.disable_ipv6=1 && \
         url=$({BIN} spawn --agent a) && {py} -c 'import sys,urllib.request; print(urllib.request.urlopen(sys.argv[1]).read().decode())' \"$url\" && \
         {BIN} stop --agent a",
        py = python()
    );
    let out = std::process::Command::new("unshare")
        .args(["-n", "sh", "-c", &script])
        .current_dir(&world.repo)
        .env("DEVSERVER_HOME", &world.home)
        .env("HOME", world.tmp.path())
        .output()
        .expect("unshare runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("<h1>main</h1>"), "{stdout}");
}
