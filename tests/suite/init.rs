//! `devserver init`, framework detection, and servers that ignore their port.

use std::time::Duration;

use crate::harness::*;

/// A world whose repository has no `devserver.yaml`, with `files` committed.
fn bare_world(files: &[(&str, &str)]) -> World {
    let world = World::new();
    world.git(&["rm", "-q", "devserver.yaml", "index.html"]);
    for (name, text) in files {
        world.write(name, text);
    }
    world.commit("app");
    world
}

#[rstest::rstest]
#[case::vite_npm(&[("package.json", r#"{"scripts":{"dev":"vite"},"devDependencies":{"vite":"7"}}"#), ("package-lock.json", "{}")], "npm run dev -- --port {port} --strictPort")]
#[case::sveltekit_pnpm(&[("package.json", r#"{"scripts":{"dev":"vite dev"},"devDependencies":{"@sveltejs/kit":"2","vite":"7"}}"#), ("pnpm-lock.yaml", "")], "pnpm run dev --port {port} --strictPort")]
#[case::vue_yarn(&[("package.json", r#"{"scripts":{"dev":"vite"},"dependencies":{"vue":"3"},"devDependencies":{"vite":"7"}}"#), ("yarn.lock", "")], "yarn run dev --port {port} --strictPort")]
#[case::react_router(&[("package.json", r#"{"scripts":{"dev":"react-router dev"},"devDependencies":{"@react-router/dev":"7","vite":"6"}}"#)], "npm run dev -- --port {port} --strictPort")]
#[case::next_bun(&[("package.json", r#"{"scripts":{"dev":"next dev"},"dependencies":{"next":"15"}}"#), ("bun.lock", "")], "bun run dev -p {port}")]
#[case::astro(&[("package.json", r#"{"scripts":{"dev":"astro dev"},"dependencies":{"astro":"5"}}"#)], "npm run dev -- --port {port}")]
#[case::nuxt(&[("package.json", r#"{"scripts":{"dev":"nuxt dev"},"dependencies":{"nuxt":"3"}}"#)], "npm run dev -- --port {port}")]
#[case::angular(&[("package.json", r#"{"scripts":{"start":"ng serve"},"devDependencies":{"@angular/cli":"19"}}"#)], "npm run start -- --port {port}")]
#[case::django(&[("manage.py", "")], "python3 manage.py runserver 127.0.0.1:{port}")]
#[case::flask(&[("app.py", ""), ("requirements.txt", "flask\n")], "flask --app app run --port {port}")]
#[case::rails(&[("Gemfile", "gem 'rails'\n"), ("bin/rails", "")], "bin/rails server -p {port}")]
#[case::static_site(&[("index.html", "<h1>x</h1>")], "python3 -m http.server {port}")]
fn init_writes_the_command_of_each_detected_kind(
    #[case] files: &[(&str, &str)],
    #[case] command: &str,
) {
    let world = bare_world(files);
    let out = world.ds(&["init"]).ok().stderr_has(&["detected"]);
    assert!(
        out.stdout.trim().ends_with("devserver.yaml"),
        "{}",
        out.stdout
    );
    let written = fs_err::read_to_string(world.repo.join("devserver.yaml")).expect("written");
    assert!(written.contains(command), "{written}");
}

#[test]
fn init_never_overwrites_without_force() {
    let world = World::new();
    let before = fs_err::read_to_string(world.repo.join("devserver.yaml")).expect("config");
    world
        .ds(&["init"])
        .run()
        .code(1)
        .stderr_has(&["already exists", "--force"]);
    assert_eq!(
        fs_err::read_to_string(world.repo.join("devserver.yaml")).expect("config"),
        before
    );
    world.ds(&["init", "--force"]).ok();
    let after = fs_err::read_to_string(world.repo.join("devserver.yaml")).expect("config");
    assert!(after.contains("http.server"), "{after}");
}

#[test]
fn an_undetectable_repository_gets_the_minimal_config_to_write() {
    let world = bare_world(&[("README.md", "nothing to serve")]);
    world
        .ds(&["init"])
        .run()
        .code(1)
        .stderr_has(&["cannot tell", "command:"]);
    world
        .ds(&["spawn", "--agent", "a"])
        .run()
        .code(1)
        .stderr_has(&["devserver.yaml", "command:"]);
    assert!(!world.worktree("a").exists());
}

#[test]
fn init_prints_the_agents_md_section() {
    let world = World::new();
    let out = world.ds(&["init", "--agents-md"]).ok();
    assert!(
        out.stdout.contains("devserver spawn --agent"),
        "{}",
        out.stdout
    );
    assert!(out.stdout.contains("devserver stop --agent"));
}

#[test]
fn spawn_without_a_config_uses_detection_and_says_so() {
    let world = bare_world(&[("index.html", "<h1>static</h1>\n")]);
    let out = world
        .ds(&["spawn", "--agent", "a"])
        .ok()
        .stderr_has(&["detected a static site"]);
    assert_eq!(get(out.stdout.trim()).as_deref(), Some("<h1>static</h1>\n"));
}

#[test]
fn a_server_that_ignores_its_port_fails_naming_the_port_it_bound() {
    let other = free_port_pair();
    let world = World::with_config(&format!(
        "command: {}\nhealth:\n  timeout: 30s\n",
        server(&format!("--bind-port {other}"))
    ));
    let out = world.ds(&["spawn", "--agent", "a"]).run().code(4);
    assert!(
        out.took < Duration::from_secs(15),
        "fails before the timeout: {:?}",
        out.took
    );
    out.stderr_has(&[
        "ignored its port",
        &format!("listens on port {other} instead"),
        "{port}",
    ]);
    assert_no_processes_under(world.tmp.path());
}

#[test]
fn spawn_works_in_a_vite_app_with_no_config_at_all() {
    let world = World::new();
    world.git(&["rm", "-q", "devserver.yaml"]);
    world.use_vite_app();

    let out = world
        .ds(&["spawn", "--agent", "a"])
        .ok()
        .stderr_has(&["detected Vite"]);
    let page = get(out.stdout.trim()).expect("vite answers");
    assert!(page.contains("<h1 id=\"agent\">main</h1>"), "{page}");
    world.ds(&["stop", "--agent", "a"]).ok();
    assert_no_processes_under(world.tmp.path());
}
