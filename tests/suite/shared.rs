//! Shared mode: one server, counted users (leases), coordinated start and stop.

use std::time::Duration;

use crate::harness::*;

fn shared_world(extra: &str) -> World {
    World::with_config(&format!("command: {}\n{extra}", server("")))
}

fn shared_status(world: &World) -> serde_json::Value {
    let out = world.ds(&["--shared", "status", "--json"]).ok();
    serde_json::from_str(&out.stdout).expect("status --json parses")
}

fn users(world: &World) -> Vec<String> {
    let status = shared_status(world);
    let mut agents: Vec<String> = status["users"]
        .as_array()
        .expect("users")
        .iter()
        .map(|u| u["agent"].as_str().expect("agent").to_string())
        .collect();
    agents.sort();
    agents
}

/// Test servers (python processes) running under the world's directory.
fn servers(world: &World) -> usize {
    processes_under(world.tmp.path())
        .into_iter()
        .filter(|pid| {
            let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            let cmd = String::from_utf8_lossy(&cmd);
            cmd.contains("server.py") && !cmd.starts_with("sh")
        })
        .count()
}

#[test]
fn c33_twenty_concurrent_uses_start_one_server_with_twenty_leases() {
    let world = shared_world("");
    let children: Vec<_> = (0..20)
        .map(|i| world.ds(&["use", "--agent", &format!("u{i}")]).start())
        .collect();
    let urls: std::collections::HashSet<String> = outputs_of(children).into_iter().collect();

    assert_eq!(urls.len(), 1, "one URL for all: {urls:?}");
    assert_eq!(servers(&world), 1, "exactly one server process");
    assert_eq!(users(&world).len(), 20);
    let url = urls.into_iter().next().expect("url");
    assert_eq!(get(&url).as_deref(), Some("<h1>main</h1>\n"));
}

#[test]
fn c33_the_server_stays_while_any_user_remains_and_stop_by_another_is_refused() {
    let world = shared_world("shared:\n  idle_grace: 0\n");
    for agent in ["a", "b", "c"] {
        world.ds(&["use", "--agent", agent]).ok();
    }
    world.ds(&["release", "--agent", "a"]).ok();
    world.ds(&["release", "--agent", "b"]).ok();
    let url = world
        .ds(&["--shared", "url"])
        .ok()
        .stdout
        .trim()
        .to_string();
    assert!(get(&url).is_some(), "still serving for c");

    let refused = world
        .ds(&["--shared", "stop", "--agent", "d"])
        .run()
        .code(5);
    let refused = refused.stderr_has(&["c (since", "expires", "--force"]);
    assert!(refused.stdout.is_empty());
    assert!(get(&url).is_some(), "still serving after a refused stop");
    assert_eq!(users(&world), ["c"]);

    world
        .ds(&["--shared", "stop", "--agent", "d", "--force"])
        .ok();
    assert!(!port_answers(port_of(&url)));
    world
        .ds(&["--shared", "url", "--agent", "c"])
        .run()
        .code(7)
        .stderr_has(&["stopped by agent `d`", "forced"]);
    let status = shared_status(&world);
    assert_eq!(status["state"], "stopped");
    assert!(status["note"].as_str().expect("note").contains("agent `d`"));
}

#[test]
fn c33_a_users_own_stop_releases_its_lease_only() {
    let world = shared_world("shared:\n  idle_grace: 0\n");
    world.ds(&["use", "--agent", "a"]).ok();
    let url = world
        .ds(&["use", "--agent", "b"])
        .ok()
        .stdout
        .trim()
        .to_string();

    world
        .ds(&["--shared", "stop", "--agent", "a"])
        .run()
        .code(5);
    assert!(get(&url).is_some(), "b still has its server");
    assert_eq!(users(&world), ["b"]);

    world.ds(&["--shared", "stop", "--agent", "b"]).ok();
    assert!(!port_answers(port_of(&url)));
}

#[test]
fn the_last_release_with_no_grace_stops_the_server_and_frees_the_port() {
    let world = shared_world("shared:\n  idle_grace: 0\n");
    let url = world
        .ds(&["use", "--agent", "a"])
        .ok()
        .stdout
        .trim()
        .to_string();
    world
        .ds(&["release", "--agent", "a"])
        .ok()
        .stderr_has(&["last user"]);
    assert!(!port_answers(port_of(&url)));
    assert_eq!(shared_status(&world)["state"], "stopped");
    assert_no_processes_under(world.tmp.path());

    // Releasing twice, or as a stranger, changes nothing and succeeds.
    world.ds(&["release", "--agent", "a"]).ok();
    world.ds(&["release", "--agent", "never-was"]).ok();
}

#[test]
fn a_use_within_the_idle_grace_keeps_the_server() {
    let world = shared_world("shared:\n  idle_grace: 2s\n");
    let url = world
        .ds(&["use", "--agent", "a"])
        .ok()
        .stdout
        .trim()
        .to_string();
    let pid = shared_status(&world)["pid"].clone();
    world
        .ds(&["release", "--agent", "a"])
        .ok()
        .stderr_has(&["idle grace"]);
    std::thread::sleep(Duration::from_millis(800));
    assert_eq!(world.ds(&["use", "--agent", "b"]).ok().stdout.trim(), url);
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(
        shared_status(&world)["pid"],
        pid,
        "the same server, never restarted"
    );
    assert!(get(&url).is_some());

    world.ds(&["release", "--agent", "b"]).ok();
    assert!(get(&url).is_some(), "up during the grace");
    assert!(wait_until(Duration::from_secs(6), || !port_answers(
        port_of(&url)
    )));
    assert!(wait_until(Duration::from_secs(3), || shared_status(&world)
        ["state"]
        == "stopped"));
    let note = shared_status(&world)["note"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(note.contains("idle grace"), "{note}");
}

#[test]
fn c33_a_lease_tied_to_a_killed_process_stops_counting() {
    let world = shared_world("shared:\n  idle_grace: 0\n");
    let mut agent = std::process::Command::new("sleep")
        .arg("1000")
        .spawn()
        .expect("sleep");
    let pid = agent.id().to_string();
    let url = world
        .ds(&["use", "--agent", "a", "--pid", &pid])
        .ok()
        .stdout
        .trim()
        .to_string();
    assert_eq!(
        shared_status(&world)["users"][0]["pid"].as_u64(),
        Some(u64::from(agent.id()))
    );

    agent.kill().expect("SIGKILL");
    agent.wait().expect("reaped");
    assert!(
        wait_until(Duration::from_secs(5), || !port_answers(port_of(&url))),
        "the monitor stops a server whose only user died"
    );
    assert!(wait_until(Duration::from_secs(2), || shared_status(&world)
        ["state"]
        == "stopped"));
}

#[test]
fn an_expired_lease_stops_counting() {
    let world = shared_world("shared:\n  idle_grace: 0\n");
    let url = world
        .ds(&["use", "--agent", "a", "--ttl", "1"])
        .ok()
        .stdout
        .trim()
        .to_string();
    assert!(get(&url).is_some());
    assert!(
        wait_until(Duration::from_secs(6), || !port_answers(port_of(&url))),
        "stopped once the only lease expired"
    );
}

#[test]
fn use_racing_the_last_release_never_yields_a_dead_url() {
    let world = shared_world("shared:\n  idle_grace: 0\n");
    for round in 0..50 {
        world.ds(&["use", "--agent", "a"]).ok();
        let release = world.ds(&["release", "--agent", "a"]).start();
        let joined = world.ds(&["use", "--agent", "b"]).run();
        let released = release.wait_with_output().expect("release ends");
        assert!(released.status.success(), "round {round}: release failed");

        let joined = joined.code(0);
        let url = joined.stdout.trim();
        assert!(
            get(url).is_some(),
            "round {round}: `use` returned {url}, which does not answer"
        );
        world.ds(&["release", "--agent", "b"]).ok();
    }
}

#[test]
fn list_shows_the_shared_instance_beside_isolated_ones() {
    let world = World::new();
    world.spawn("a");
    world.ds(&["use", "--agent", "b"]).ok();
    let listed = world.list();
    let modes: Vec<&str> = listed
        .iter()
        .map(|e| e["mode"].as_str().expect("mode"))
        .collect();
    assert_eq!(listed.len(), 2, "{listed:?}");
    assert!(
        modes.contains(&"isolated") && modes.contains(&"shared"),
        "{modes:?}"
    );
    world.ds(&["--shared", "stop", "--force"]).ok();
}

#[test]
fn mode_shared_in_the_config_makes_spawn_a_use() {
    let world = shared_world("mode: shared\n");
    let a = world.spawn("a");
    let b = world.spawn("b");
    assert_eq!(a, b);
    assert_eq!(users(&world), ["a", "b"]);
    assert!(
        !world.worktree("a").exists(),
        "the shared server runs in the main checkout"
    );
    world.ds(&["stop", "--force"]).ok();
}

#[test]
fn every_script_works_against_a_real_server() {
    let world = shared_world("shared:\n  idle_grace: 0\n");
    let script = |name: &str, args: &[&str]| {
        let out = std::process::Command::new("bash")
            .arg(
                std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                    .join("scripts")
                    .join(name),
            )
            .args(args)
            .current_dir(&world.repo)
            .env("DEVSERVER_BIN", BIN)
            .env("DEVSERVER_HOME", &world.home)
            .env("HOME", world.tmp.path())
            .output()
            .expect("script runs");
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).trim().to_string(),
        )
    };

    assert_eq!(script("check-dev-server.sh", &[]).0, 7, "not running yet");
    let (code, url) = script("start-dev-server.sh", &["a"]);
    assert_eq!(code, 0);
    assert!(get(&url).is_some());
    assert_eq!(script("use-dev-server.sh", &["b"]), (0, url.clone()));
    assert_eq!(script("check-dev-server.sh", &["b"]), (0, url.clone()));
    assert_eq!(script("stop-dev-server.sh", &["a"]).0, 5, "b still uses it");
    assert_eq!(script("release-dev-server.sh", &["b"]).0, 0);
    assert!(
        !port_answers(port_of(&url)),
        "a's lease went with its stop, b's with its release"
    );
    assert_eq!(script("use-dev-server.sh", &[]).0, 2, "no agent ID");
    let (code, url) = script("use-dev-server.sh", &["c"]);
    assert_eq!(code, 0);
    assert_eq!(script("stop-dev-server.sh", &["d", "--force"]).0, 0);
    assert!(!port_answers(port_of(&url)));
}
