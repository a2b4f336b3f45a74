//! End to end on a real framework dev server: Vite through `npm run dev`.

use std::time::Duration;

use crate::harness::*;

#[test]
fn c09_npm_run_dev_is_spawned_served_and_stopped_with_no_node_left() {
    let world = World::with_config(
        "command: npm run dev -- --port {port} --strictPort --host 127.0.0.1\nsetup:\n  link: [node_modules]\nhealth:\n  timeout: 40s\n",
    );
    world.use_vite_app();

    let a = world.spawn("a");
    let b = world.spawn("b");
    fs_err::write(
        world.worktree("b").join("index.html"),
        "<!doctype html><h1 id=\"agent\">b</h1><script type=\"module\" src=\"/main.js\"></script>\n",
    )
    .expect("edit b");
    let page_a = get(&a).expect("a answers");
    assert!(page_a.contains("<h1 id=\"agent\">main</h1>"), "{page_a}");
    let page_b = get(&b).expect("b answers");
    assert!(page_b.contains("<h1 id=\"agent\">b</h1>"), "{page_b}");

    world.ds(&["stop", "--all"]).ok();
    assert!(!port_answers(
        a.rsplit(':')
            .next()
            .and_then(|p| p.parse().ok())
            .expect("port")
    ));
    assert_no_processes_under(world.tmp.path());
    assert!(wait_until(Duration::from_secs(3), || processes_under(
        world.tmp.path()
    )
    .is_empty()));
}
