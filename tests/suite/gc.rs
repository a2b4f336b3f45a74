//! Leases of isolated instances, and `gc` after crashes: orphans found and
//! stopped, worktrees pruned one by one, nothing of anyone's work lost.

use std::time::Duration;

use crate::harness::*;

fn entry_pid(world: &World, agent: &str, field: &str) -> i32 {
    let registry = world.registry();
    let entry = registry["instances"]
        .as_array()
        .and_then(|all| all.iter().find(|e| e["agent"] == agent).cloned())
        .expect("entry");
    entry[field]["pid"].as_i64().expect("pid") as i32
}

fn sigkill(pid: i32) {
    // SAFETY: plain kill of a process this test started.
    unsafe { libc::kill(pid, libc::SIGKILL) };
}

#[test]
fn a_lease_tied_to_a_process_stops_the_server_when_it_dies() {
    let world = World::new();
    let mut agent = std::process::Command::new("sleep")
        .arg("1000")
        .spawn()
        .expect("sleep");
    let url = world
        .ds(&["spawn", "--agent", "a", "--pid", &agent.id().to_string()])
        .ok()
        .stdout;
    agent.kill().expect("SIGKILL");
    agent.wait().expect("reaped");

    assert!(
        wait_until(Duration::from_secs(5), || !port_answers(port_of(
            url.trim()
        ))),
        "the monitor stops the server without waiting for gc"
    );
    assert!(wait_until(Duration::from_secs(3), || world.status("a")
        ["state"]
        == "stopped"));
    let note = world.status("a")["note"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(note.contains(&format!("pid {}", agent.id())), "{note}");
    assert_no_processes_under(world.tmp.path());
}

#[test]
fn an_expired_lease_stops_the_server_and_renew_extends_it() {
    let world = World::new();
    let short = world
        .ds(&["spawn", "--agent", "a", "--ttl", "1"])
        .ok()
        .stdout;
    let kept = world
        .ds(&["spawn", "--agent", "b", "--ttl", "2"])
        .ok()
        .stdout;
    world
        .ds(&["renew", "--agent", "b", "--ttl", "1h"])
        .ok()
        .stderr_has(&["renewed"]);

    assert!(wait_until(Duration::from_secs(6), || !port_answers(
        port_of(short.trim())
    )));
    std::thread::sleep(Duration::from_secs(2));
    assert!(get(kept.trim()).is_some(), "the renewed lease keeps b");
    world.ds(&["renew", "--agent", "a"]).run().code(7);
}

#[test]
fn a_ttl_of_zero_never_expires() {
    let world = World::new();
    world.ds(&["spawn", "--agent", "a", "--ttl", "0"]).ok();
    let registry = world.registry();
    assert!(registry["instances"][0]["users"][0]["expires"].is_null());
}

#[test]
fn c10_killing_only_the_top_process_ends_the_whole_chain() {
    let world = World::with_config(&format!(
        "command: {}\nstop:\n  grace: 1s\n",
        fixture("chain.sh")
    ));
    let url = world.spawn("a");
    sigkill(entry_pid(&world, "a", "server"));

    assert!(wait_until(Duration::from_secs(6), || !port_answers(
        port_of(&url)
    )));
    assert_no_processes_under(world.tmp.path());
    assert!(wait_until(Duration::from_secs(3), || world.status("a")
        ["state"]
        == "exited"));
    assert_eq!(world.status("a")["exit_status"], 137);
    world.ds(&["gc"]).ok();
    assert_eq!(world.spawn("a"), url, "the port is free again");
}

#[test]
fn c12_gc_stops_a_tree_whose_monitor_and_top_process_were_killed() {
    let world = World::with_config(&format!("command: {}\n", fixture("chain.sh")));
    let url = world.spawn("a");
    sigkill(entry_pid(&world, "a", "monitor"));
    sigkill(entry_pid(&world, "a", "server"));
    assert!(
        wait_until(Duration::from_secs(5), || world.status("a")["state"]
            == "exited"),
        "status sees the instance is dead"
    );
    assert!(
        port_answers(port_of(&url)),
        "the orphaned layers still serve"
    );

    let dry = world.ds(&["gc", "--dry-run"]).ok();
    assert!(
        dry.stdout.lines().all(|l| l.starts_with("would")),
        "{}",
        dry.stdout
    );
    assert!(port_answers(port_of(&url)), "a dry run changes nothing");

    let out = world.ds(&["gc"]).ok();
    assert!(out.stdout.contains("agent `a`"), "{}", out.stdout);
    assert!(!port_answers(port_of(&url)));
    assert_no_processes_under(world.tmp.path());
    assert_eq!(world.spawn("a"), url);
}

#[test]
fn gc_json_lists_what_it_did() {
    let world = World::new();
    world.spawn("a");
    sigkill(entry_pid(&world, "a", "monitor"));
    sigkill(-entry_pid(&world, "a", "server"));
    // SIGKILL is delivered asynchronously; gc acts on what is dead.
    assert!(wait_until(Duration::from_secs(5), || world.status("a")
        ["state"]
        == "exited"));
    let out = world.ds(&["gc", "--json"]).ok();
    let findings: Vec<serde_json::Value> = serde_json::from_str(&out.stdout).expect("json");
    assert_eq!(findings.len(), 1, "{findings:?}");
    assert_eq!(findings[0]["agent"], "a");
    assert_eq!(findings[0]["changed"], true);
    let again: Vec<serde_json::Value> =
        serde_json::from_str(&world.ds(&["gc", "--json"]).ok().stdout).expect("json");
    assert!(again.is_empty(), "{again:?}");
}

#[test]
fn c22_a_deleted_worktree_is_pruned_and_respawned_fresh() {
    let world = World::new();
    world.spawn("a");
    world.ds(&["stop", "--agent", "a"]).ok();
    fs_err::remove_dir_all(world.worktree("a")).expect("rm -rf");

    let out = world.ds(&["gc"]).ok();
    assert!(out.stdout.contains("pruned"), "{}", out.stdout);
    assert!(!world.repo.join(".git/worktrees/devserver-a").exists());
    assert!(world.list().is_empty(), "the entry is dropped");
    assert!(
        !world
            .git(&["branch", "--list", "devserver/a"])
            .trim()
            .is_empty(),
        "the branch is kept"
    );

    world.spawn("a");
    assert!(
        world.worktree("a").join("index.html").exists(),
        "a fresh worktree"
    );
}

#[test]
fn c23_gc_never_prunes_a_locked_or_working_worktree_or_anyone_elses() {
    let world = World::new();
    for agent in ["a", "b", "c"] {
        world.spawn(agent);
    }
    world.ds(&["stop", "--all"]).ok();

    // a: locked by the user, then deleted.
    world.git(&[
        "worktree",
        "lock",
        "--reason",
        "on a USB disk",
        world.worktree("a").to_str().expect("utf-8"),
    ]);
    fs_err::remove_dir_all(world.worktree("a")).expect("rm a");
    // b: a staged change, then its directory moved away for a while.
    fs_err::write(world.worktree("b").join("staged.txt"), "work").expect("write");
    git_in(&world.worktree("b"), &["add", "staged.txt"]);
    let away = world.path("b-away");
    fs_err::rename(world.worktree("b"), &away).expect("move b away");
    // c: a worktree the user made by hand, and deleted: not devserver's.
    let by_hand = world.path("by-hand");
    world.git(&["worktree", "add", "-q", by_hand.to_str().expect("utf-8")]);
    fs_err::remove_dir_all(&by_hand).expect("rm by-hand");

    let out = world.ds(&["gc"]).ok();
    assert!(
        out.stdout.contains("agent `a`") && out.stdout.contains("locked"),
        "{}",
        out.stdout
    );
    assert!(
        out.stdout.contains("agent `b`") && out.stdout.contains("staged change"),
        "{}",
        out.stdout
    );
    assert!(
        world
            .repo
            .join(".git/worktrees/devserver-a/locked")
            .exists(),
        "a's lock kept"
    );
    assert!(
        world.repo.join(".git/worktrees/devserver-b").exists(),
        "b's admin entry kept"
    );
    assert!(
        world.repo.join(".git/worktrees/by-hand").exists(),
        "not devserver's: untouched"
    );

    fs_err::rename(&away, world.worktree("b")).expect("restore b");
    let staged = git_in(&world.worktree("b"), &["diff", "--cached", "--name-only"]);
    assert_eq!(staged.trim(), "staged.txt", "b's staged work survived");
    world.spawn("b");
}

#[test]
fn c15_gc_never_signals_a_process_that_reused_a_recorded_pid() {
    let world = World::new();
    world.spawn("a");
    world.ds(&["stop", "--agent", "a"]).ok();
    let mut bystander = std::process::Command::new("sleep")
        .arg("1000")
        .spawn()
        .expect("sleep");

    let path = world.home.join("registry.json");
    let mut registry = world.registry();
    let fake = serde_json::json!({"pid": bystander.id(), "start_time": 1});
    registry["instances"][0]["state"] = "running".into();
    registry["instances"][0]["server"] = fake.clone();
    registry["instances"][0]["monitor"] = fake;
    fs_err::write(&path, serde_json::to_vec(&registry).expect("json")).expect("write");

    world.ds(&["gc"]).ok();
    assert_eq!(world.status("a")["state"], "exited");
    assert!(
        bystander.try_wait().expect("try_wait").is_none(),
        "never signalled"
    );
    bystander.kill().expect("kill");
    bystander.wait().expect("reap");
}

#[test]
fn gc_removes_temporary_files_of_killed_writers() {
    let world = World::new();
    world.spawn("a");
    let mut dead = std::process::Command::new("true").spawn().expect("true");
    dead.wait().expect("reaped");
    let stale = world.home.join(format!("registry.json.tmp-{}", dead.id()));
    fs_err::write(&stale, b"{\"half\":").expect("write");
    world.ds(&["gc"]).ok();
    assert!(!stale.exists());
    assert_eq!(world.list().len(), 1);
}
