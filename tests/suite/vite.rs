//! End to end on a real framework dev server: Vite through `npm run dev`.

use std::path::Path;
use std::time::Duration;

use crate::harness::*;

/// The fixture app with its installed `node_modules` (from `.ci/run`).
fn vite_app() -> std::path::PathBuf {
    fixtures().join("vite-app")
}

fn copy_app(to: &Path) {
    for name in [
        "index.html",
        "main.js",
        "package.json",
        "package-lock.json",
        "vite.config.js",
    ] {
        fs_err::copy(vite_app().join(name), to.join(name)).expect("copy fixture");
    }
}

#[test]
fn c09_npm_run_dev_is_spawned_served_and_stopped_with_no_node_left() {
    assert!(
        vite_app().join("node_modules/.bin/vite").exists(),
        "run `npm ci --prefix tests/fixtures/vite-app` first (`.ci/run` does)"
    );
    let world = World::with_config(
        "command: npm run dev -- --port {port} --strictPort --host 127.0.0.1\nsetup:\n  link: [node_modules]\nhealth:\n  timeout: 40s\n",
    );
    copy_app(&world.repo);
    world.write(".gitignore", "node_modules/\n");
    world.commit("vite app");
    std::os::unix::fs::symlink(
        vite_app().join("node_modules"),
        world.repo.join("node_modules"),
    )
    .expect("link");

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
