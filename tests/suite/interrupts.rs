//! Spawns interrupted by signals, and stops racing spawns.

use std::time::Duration;

use crate::harness::*;

fn signal(child: &std::process::Child, sig: i32) {
    // SAFETY: plain kill of a process this test started.
    unsafe { libc::kill(child.id() as i32, sig) };
}

fn big_world(files: usize, config: &str) -> World {
    let world = World::with_config(config);
    for i in 0..files {
        world.write(&format!("d{}/f{i}.txt", i % 40), &format!("file {i}\n"));
    }
    world.commit("many files");
    world
}

#[test]
fn sigint_during_warm_up_undoes_the_spawn() {
    let world = World::with_config(&format!("command: {}\n", server("--delay 30")));
    let spawn = world.ds(&["spawn", "--agent", "a"]).start();
    assert!(wait_until(Duration::from_secs(10), || processes_under(
        world.tmp.path()
    )
    .iter()
    .any(|p| std::fs::read(format!("/proc/{p}/cmdline")).is_ok_and(
        |c| String::from_utf8_lossy(&c).contains("server.py")
    ))));
    signal(&spawn, libc::SIGINT);
    let out = spawn.wait_with_output().expect("spawn ends");
    assert_eq!(
        out.status.code(),
        Some(130),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("interrupted"));

    assert_no_processes_under(world.tmp.path());
    assert!(!world.worktree("a").exists(), "the new worktree is removed");
    assert!(world.list().is_empty(), "no entry stuck in `starting`");
}

#[test]
fn a_spawn_killed_mid_checkout_is_cleaned_up_by_the_next_one() {
    let world = big_world(3000, &format!("command: {}\n", server("")));
    let spawn = world.ds(&["spawn", "--agent", "k"]).start();
    assert!(wait_until(Duration::from_secs(20), || world
        .worktree("k")
        .join(".git")
        .exists()));
    signal(&spawn, libc::SIGKILL);
    let _ = spawn.wait_with_output();

    let again = world
        .ds(&["spawn", "--agent", "k"])
        .ok()
        .stderr_has(&["interrupted"]);
    assert!(get(again.stdout.trim()).is_some());
    let status = git_in(&world.worktree("k"), &["status", "--short"]);
    assert!(
        status.trim().is_empty(),
        "a complete checkout, not a half-made one:\n{status}"
    );
}

#[test]
fn a_spawn_killed_during_warm_up_is_stopped_by_the_next_one() {
    let world = World::with_config(&format!("command: {}\n", server("--delay 1")));
    let spawn = world.ds(&["spawn", "--agent", "w"]).start();
    assert!(wait_until(Duration::from_secs(10), || world
        .home
        .join("registry.json")
        .exists()
        && world.registry()["instances"][0]["monitor"].is_object()));
    signal(&spawn, libc::SIGKILL);
    let _ = spawn.wait_with_output();

    let url = world.ds(&["spawn", "--agent", "w"]).ok().stdout;
    assert!(get(url.trim()).is_some());
    assert_eq!(world.list().len(), 1);
    assert_eq!(world.status("w")["state"], "running");
}

#[test]
fn stop_during_a_spawn_waits_only_for_the_lock_timeout() {
    let world = World::with_config(&format!(
        "command: {}\nhealth:\n  timeout: 30s\n",
        server("--delay 20")
    ));
    let spawn = world.ds(&["spawn", "--agent", "s"]).start();
    assert!(wait_until(Duration::from_secs(10), || world
        .home
        .join("registry.json")
        .exists()));
    let out = world
        .ds(&["stop", "--agent", "s"])
        .env("DEVSERVER_LOCK_TIMEOUT", "1")
        .run()
        .code(3);
    assert!(out.took < Duration::from_secs(8), "took {:?}", out.took);
    out.stderr_has(&["instance lock", "pid"]);
    signal(&spawn, libc::SIGTERM);
    let _ = spawn.wait_with_output();
    assert_no_processes_under(world.tmp.path());
}

#[test]
fn c22_a_stopped_agent_whose_worktree_was_deleted_spawns_again() {
    let world = World::new();
    world.spawn("z");
    world.ds(&["stop", "--agent", "z"]).ok();
    fs_err::remove_dir_all(world.worktree("z")).expect("rm -rf");
    let url = world.spawn("z");
    assert!(get(&url).is_some());
    assert!(world.worktree("z").join("index.html").exists());
}

#[test]
fn stop_remove_of_a_deleted_worktree_prunes_it_and_its_branch() {
    let world = World::new();
    world.spawn("z");
    world.ds(&["stop", "--agent", "z"]).ok();
    fs_err::remove_dir_all(world.worktree("z")).expect("rm -rf");
    world.ds(&["stop", "--agent", "z", "--remove"]).ok();
    assert!(!world.repo.join(".git/worktrees/devserver-z").exists());
    assert!(world
        .git(&["branch", "--list", "devserver/z"])
        .trim()
        .is_empty());
    assert!(world.list().is_empty());
}

#[test]
fn stop_all_works_with_devserver_agent_set() {
    let world = World::new();
    world.spawn("a");
    world.spawn("b");
    world
        .ds(&["stop", "--all"])
        .env("DEVSERVER_AGENT", "a")
        .ok();
    assert!(world.list().iter().all(|e| e["state"] == "stopped"));
}

#[test]
fn a_different_port_for_a_running_agent_is_refused() {
    let world = World::new();
    let url = world.spawn("a");
    let other = free_port_pair();
    world
        .ds(&["spawn", "--agent", "a", "--port", &other.to_string()])
        .run()
        .code(1)
        .stderr_has(&["already runs on port", "stop it first"]);
    assert!(get(&url).is_some());
}
