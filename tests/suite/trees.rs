//! Stopping whole process trees: wrappers, escaped descendants, orphans.

use std::time::Duration;

use crate::harness::*;

#[test]
fn c13_stop_kills_a_descendant_that_left_the_session() {
    let world = World::with_config(&format!("command: {}\n", fixture("escape.sh")));
    let url = world.spawn("a");
    let out = world.ds(&["stop", "--agent", "a"]).ok();
    assert!(out.took < Duration::from_secs(3), "took {:?}", out.took);
    assert!(!port_answers(port_of(&url)));
    assert_no_processes_under(world.tmp.path());
}

#[test]
fn c10_stop_ends_a_five_level_chain_that_ignores_sigterm() {
    let world = World::with_config(&format!(
        "command: {}\nstop:\n  grace: 1s\n",
        fixture("chain.sh")
    ));
    let url = world.spawn("a");
    world.ds(&["stop", "--agent", "a"]).ok();
    assert!(!port_answers(port_of(&url)));
    assert_no_processes_under(world.tmp.path());
}

#[test]
fn c09_stop_returns_as_soon_as_the_tree_is_gone() {
    let world = World::with_config(&format!("command: {}\nstop:\n  grace: 10s\n", server("")));
    world.spawn("a");
    let out = world.ds(&["stop", "--agent", "a"]).ok();
    assert!(
        out.took < Duration::from_secs(2),
        "no fixed sleep: took {:?}",
        out.took
    );
}

#[test]
fn c12_stop_finds_the_tree_after_its_monitor_was_killed() {
    let world = World::with_config(&format!("command: {}\n", fixture("escape.sh")));
    let url = world.spawn("a");
    let monitor = world.registry()["instances"][0]["monitor"]["pid"]
        .as_u64()
        .expect("monitor");
    // SAFETY: plain kill of a process this test started.
    unsafe { libc::kill(monitor as i32, libc::SIGKILL) };
    assert!(
        port_answers(port_of(&url)),
        "the server outlives its monitor"
    );

    world.ds(&["stop", "--agent", "a"]).ok();
    assert!(!port_answers(port_of(&url)));
    assert_no_processes_under(world.tmp.path());
    world.spawn("a");
}

#[test]
fn c11_a_respawn_answers_with_the_new_build_not_an_orphan() {
    let world = World::with_config(&format!(
        "command: {}\n",
        fixture("chain.sh --id build-{agent}-$$")
    ));
    let url = world.spawn("a");
    let first = get(&format!("{url}/id")).expect("first id");
    world.ds(&["stop", "--agent", "a"]).ok();
    let again = world.spawn("a");
    assert_eq!(again, url);
    let second = get(&format!("{url}/id")).expect("second id");
    assert_ne!(first, second, "the old tree must be gone");
}
