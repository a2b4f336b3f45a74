//! `devserver run` for CI jobs, and the generated completions and man page.

use std::time::Duration;

use crate::harness::*;

fn fetch_own_url() -> String {
    format!(
        "{} -c \"import os, urllib.request; urllib.request.urlopen(os.environ['DEVSERVER_URL'], timeout=5)\"",
        python()
    )
}

#[rstest::rstest]
#[case::success("exit 0", 0)]
#[case::failure("exit 1", 1)]
#[case::killed("kill -9 $$", 137)]
fn run_passes_the_commands_exit_status_through_and_stops_its_server(
    #[case] script: &str,
    #[case] expected: i32,
) {
    let world = World::new();
    world
        .ds(&["run", "--agent", "ci", "--", "sh", "-c", script])
        .run()
        .code(expected);
    assert_eq!(world.status("ci")["state"], "stopped");
    assert_no_processes_under(world.tmp.path());
}

#[test]
fn run_gives_the_command_its_url_port_agent_and_worktree() {
    let world = World::new();
    let out = world
        .ds(&[
            "run",
            "--agent",
            "ci",
            "--",
            "sh",
            "-c",
            "echo $DEVSERVER_AGENT $DEVSERVER_PORT $DEVSERVER_URL $(pwd)",
        ])
        .ok();
    let fields: Vec<&str> = out.stdout.split_whitespace().collect();
    assert_eq!(fields[0], "ci");
    assert!(
        fields[2].ends_with(&format!(":{}", fields[1])),
        "{fields:?}"
    );
    assert_eq!(
        std::path::Path::new(fields[3]),
        world.worktree("ci").canonicalize().expect("worktree")
    );
}

#[test]
fn sigterm_to_run_stops_the_command_and_the_server() {
    let world = World::new();
    let run = world
        .ds(&["run", "--agent", "ci", "--", "sleep", "30"])
        .start();
    assert!(wait_until(Duration::from_secs(10), || world
        .ds(&["status", "--agent", "ci", "--json"])
        .run()
        .stdout
        .contains("\"running\"")));
    // SAFETY: plain kill of a process this test started.
    unsafe { libc::kill(run.id() as i32, libc::SIGTERM) };
    let out = run.wait_with_output().expect("run ends");
    assert_eq!(
        out.status.code(),
        Some(143),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(world.status("ci")["state"], "stopped");
    assert_no_processes_under(world.tmp.path());
}

#[test]
fn an_unhealthy_server_is_exit_4_and_the_command_never_runs() {
    let world = World::with_config(&format!(
        "command: {}\nhealth:\n  timeout: 1s\nstop:\n  grace: 1s\n",
        server("--never-listen")
    ));
    let marker = world.path("ran");
    world
        .ds(&[
            "run",
            "--agent",
            "ci",
            "--",
            "touch",
            marker.to_str().expect("utf-8"),
        ])
        .run()
        .code(4);
    assert!(!marker.exists(), "the command must not run");
    assert_no_processes_under(world.tmp.path());
}

#[test]
fn keep_leaves_the_server_running() {
    let world = World::new();
    world
        .ds(&["run", "--agent", "ci", "--keep", "--", "true"])
        .ok();
    assert_eq!(world.status("ci")["state"], "running");
}

#[test]
fn eight_concurrent_runs_share_no_port_and_leave_nothing() {
    let world = World::new();
    let check = fetch_own_url();
    let runs: Vec<_> = (0..8)
        .map(|i| {
            world
                .ds(&[
                    "run",
                    "--agent",
                    &format!("ci-{i}"),
                    "--",
                    "sh",
                    "-c",
                    &check,
                ])
                .start()
        })
        .collect();
    for run in runs {
        let out = run.wait_with_output().expect("run ends");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let listed = world.list();
    assert_eq!(listed.len(), 8);
    assert!(listed.iter().all(|e| e["state"] == "stopped"), "{listed:?}");
    let ports: std::collections::HashSet<u64> = listed
        .iter()
        .map(|e| e["port"].as_u64().expect("port"))
        .collect();
    assert_eq!(ports.len(), 8, "no port clash");
    assert_no_processes_under(world.tmp.path());
}

#[test]
fn shared_run_releases_its_lease() {
    let world = World::with_config(&format!(
        "command: {}\nshared:\n  idle_grace: 0\n",
        server("")
    ));
    world
        .ds(&[
            "--shared",
            "run",
            "--agent",
            "ci",
            "--",
            "sh",
            "-c",
            &fetch_own_url(),
        ])
        .ok();
    let out = world.ds(&["--shared", "status", "--json"]).ok();
    let status: serde_json::Value = serde_json::from_str(&out.stdout).expect("json");
    assert_eq!(status["state"], "stopped");
    assert_no_processes_under(world.tmp.path());
}

#[rstest::rstest]
#[case::bash("bash", "complete")]
#[case::zsh("zsh", "#compdef devserver")]
#[case::fish("fish", "complete -c devserver")]
fn completions_are_generated_for_each_shell(#[case] shell: &str, #[case] marker: &str) {
    let world = World::new();
    let out = world.ds(&["completions", shell]).ok();
    assert!(
        out.stdout.contains(marker),
        "{}",
        &out.stdout[..out.stdout.len().min(300)]
    );
    assert!(out.stdout.contains("spawn") && out.stdout.contains("release"));
}

#[test]
fn the_man_page_is_generated_from_the_cli() {
    let world = World::new();
    let out = world.ds(&["man"]).ok();
    assert!(
        out.stdout.contains(".TH devserver 1"),
        "{}",
        &out.stdout[..out.stdout.len().min(300)]
    );
    assert!(out.stdout.contains("spawn"));
}

#[test]
fn no_colour_or_spinner_when_stderr_is_not_a_terminal() {
    let world = World::new();
    let spawned = world
        .ds(&["spawn", "--agent", "a"])
        .env_remove("NO_COLOR")
        .ok();
    let failed = world
        .ds(&["url", "--agent", "nope"])
        .env_remove("NO_COLOR")
        .run()
        .code(7);
    for text in [&spawned.stderr, &failed.stderr] {
        assert!(!text.contains('\u{1b}'), "escape codes in {text:?}");
    }
    assert!(failed.stderr.starts_with("error: "), "{}", failed.stderr);
}

#[test]
fn quiet_prints_only_the_data() {
    let world = World::new();
    let out = world.ds(&["-q", "spawn", "--agent", "a"]).ok();
    assert!(out.stderr.is_empty(), "{}", out.stderr);
    assert!(out.stdout.trim().starts_with("http://"));
}

#[rstest::rstest]
#[case::sigterm(libc::SIGTERM, 143)]
#[case::sigint(libc::SIGINT, 130)]
fn a_signal_to_run_reaches_the_commands_children_too(#[case] sig: i32, #[case] expected: i32) {
    let world = World::new();
    let run = world
        .ds(&[
            "run",
            "--agent",
            "ci",
            "--",
            "sh",
            "-c",
            "sleep 31; echo after",
        ])
        .start();
    let sleeping = || {
        processes_under(&world.worktree("ci")).iter().any(|p| {
            std::fs::read(format!("/proc/{p}/cmdline")).is_ok_and(|c| c.starts_with(b"sleep"))
        })
    };
    assert!(wait_until(Duration::from_secs(10), sleeping));
    // SAFETY: plain kill of a process this test started.
    unsafe { libc::kill(run.id() as i32, sig) };
    let out = run.wait_with_output().expect("run ends");
    assert_eq!(
        out.status.code(),
        Some(expected),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!String::from_utf8_lossy(&out.stdout).contains("after"));
    assert_no_processes_under(world.tmp.path());
}

#[test]
fn run_stops_what_the_command_left_running() {
    let world = World::new();
    world
        .ds(&[
            "run",
            "--agent",
            "ci",
            "--",
            "sh",
            "-c",
            "setsid sleep 33 & exit 0",
        ])
        .ok();
    assert_no_processes_under(world.tmp.path());
}

#[test]
fn url_and_stop_print_json_too() {
    let world = World::new();
    let url = world.spawn("a");
    let out = world.ds(&["url", "--agent", "a", "--json"]).ok();
    let view: serde_json::Value = serde_json::from_str(&out.stdout).expect("json");
    assert_eq!(view["url"], url.as_str());
    let out = world.ds(&["stop", "--agent", "a", "--json"]).ok();
    let stopped: Vec<serde_json::Value> = serde_json::from_str(&out.stdout).expect("json");
    assert_eq!(stopped[0]["state"], "stopped");
}
