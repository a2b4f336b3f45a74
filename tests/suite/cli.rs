//! Bad input and CLI conventions: refused agent IDs, missing or broken
//! config, refs and branches that do not exist, `-C`, `DEVSERVER_AGENT`,
//! exit codes, `stop --remove` safety, and the JSON fields scripts rely on.
//!
//! Every refusal is checked twice: for what it says (the rule, the file, the
//! line, the program, the path) and for what it leaves behind (nothing: no
//! worktree directory, no branch, no `.git/worktrees` entry, no registry
//! entry).

use std::path::{Path, PathBuf};

use rstest::rstest;
use serde_json::Value;

use crate::harness::{get, git_in, port_answers, server, Outcome, World};

// ---------------------------------------------------------------------------
// Helpers shared with `failures.rs`.

/// A world whose server answers fast, with short health and stop timeouts.
pub(super) fn world() -> World {
    World::with_config(&config(""))
}

/// The test server's config with `extra` server options.
pub(super) fn config(options: &str) -> String {
    format!(
        "command: {}\nhealth:\n  timeout: 10s\nstop:\n  grace: 2s\n",
        server(options)
    )
}

/// The agents recorded in the registry (none when there is no registry yet).
pub(super) fn registry_agents(world: &World) -> Vec<String> {
    if !world.home.join("registry.json").exists() {
        return Vec::new();
    }
    agents_of(&world.registry())
}

/// The agent names of a registry snapshot.
pub(super) fn agents_of(snapshot: &Value) -> Vec<String> {
    let mut agents: Vec<String> = snapshot["instances"]
        .as_array()
        .expect("registry has `instances`")
        .iter()
        .map(|e| e["agent"].as_str().expect("entry has `agent`").to_string())
        .collect();
    agents.sort();
    agents
}

/// The local branches of the world's repository.
pub(super) fn branches(world: &World) -> Vec<String> {
    world
        .git(&["branch", "--format=%(refname:short)"])
        .lines()
        .map(str::to_string)
        .collect()
}

/// The admin entries under `.git/worktrees/`.
pub(super) fn admin_entries(world: &World) -> Vec<String> {
    let dir = world.repo.join(".git/worktrees");
    match fs_err::read_dir(&dir) {
        Ok(entries) => entries
            .flatten()
            .map(|e| e.file_name().to_string_lossy().to_string())
            .collect(),
        Err(_) => Vec::new(),
    }
}

/// Asserts that a refused command left nothing behind for `agent`: no
/// worktree directory (none at all under `app.worktrees`), no branch
/// `devserver/<agent>`, no `.git/worktrees` entry, no registry entry.
pub(super) fn assert_nothing_created(world: &World, agent: &str) {
    let worktrees = world.path("app.worktrees");
    let listing: Vec<PathBuf> = fs_err::read_dir(&worktrees)
        .map(|entries| entries.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    assert!(listing.is_empty(), "worktrees were created: {listing:?}");
    let branches = branches(world);
    assert!(
        !branches.iter().any(|b| b.starts_with("devserver/")),
        "a branch was created for `{agent}`: {branches:?}"
    );
    assert_eq!(
        admin_entries(world),
        Vec::<String>::new(),
        "`.git/worktrees` entries were created"
    );
    assert_eq!(
        registry_agents(world),
        Vec::<String>::new(),
        "registry entries were created"
    );
}

/// Asserts a failure printed as one `error:` line followed by a `hint:` line.
fn assert_one_line_error_with_hint(out: &Outcome) {
    let lines: Vec<&str> = out
        .stderr
        .lines()
        .filter(|l| !l.trim().is_empty())
        .collect();
    let errors: Vec<usize> = (0..lines.len())
        .filter(|&i| lines[i].starts_with("error:"))
        .collect();
    assert_eq!(
        errors.len(),
        1,
        "`{}`: expected one `error:` line\n{}",
        out.label,
        out.stderr
    );
    let next = lines.get(errors[0] + 1).copied().unwrap_or_default();
    assert!(
        next.starts_with("hint:"),
        "`{}`: the error is not one line followed by `hint:`\n{}",
        out.label,
        out.stderr
    );
}

fn canonical(path: &Path) -> PathBuf {
    path.canonicalize().unwrap_or_else(|_| path.to_path_buf())
}

fn json(out: &Outcome) -> Value {
    serde_json::from_str(&out.stdout)
        .unwrap_or_else(|err| panic!("`{}` printed no JSON ({err}):\n{}", out.label, out.stdout))
}

// ---------------------------------------------------------------------------
// Agent IDs.

/// Each ID is passed as `--agent=ID`, so clap cannot mistake it for an option.
#[rstest]
#[case::slash("a/b")]
#[case::dot_dot("..")]
#[case::dot_dot_inside("a..b")]
#[case::space("a b")]
#[case::leading_dash("-x")]
#[case::leading_dot(".hidden")]
#[case::sixty_five_chars(&"a".repeat(65))]
#[case::empty("")]
fn bad_agent_id_is_refused_naming_the_rule_and_creates_nothing(#[case] id: &str) {
    let world = world();
    let out = world.ds(&["spawn", &format!("--agent={id}")]).run().code(2);
    assert!(
        out.stderr.contains("1-64 characters") && out.stderr.contains("A-Z a-z 0-9 . _ -"),
        "the refusal of {id:?} does not state the rule:\n{}",
        out.stderr
    );
    assert_eq!(out.stdout, "", "nothing on stdout");
    assert_nothing_created(&world, id);
}

#[test]
fn sixty_four_char_agent_id_is_accepted() {
    let world = world();
    let id = "a".repeat(64);
    let url = world.spawn(&id);
    assert!(get(&url).is_some(), "{url} answers");
    assert!(world.worktree(&id).is_dir());
}

/// `--agent -x` (separate word) must still be judged as an agent ID, not as
/// an unknown option.
#[test]
fn agent_id_starting_with_a_dash_is_refused_naming_the_rule() {
    let world = world();
    let out = world.ds(&["spawn", "--agent", "-x"]).run().code(2);
    assert!(
        out.stderr.contains("not a valid agent ID") && out.stderr.contains("1-64 characters"),
        "`--agent -x` is not refused with the agent ID rule:\n{}",
        out.stderr
    );
    assert_nothing_created(&world, "-x");
}

#[rstest]
#[case::url(&["url"])]
#[case::status(&["status"])]
#[case::logs(&["logs"])]
#[case::stop(&["stop"])]
fn bad_agent_id_is_refused_by_every_command(#[case] command: &[&str]) {
    let world = world();
    let mut args = command.to_vec();
    args.push("--agent=a/b");
    world
        .ds(&args)
        .run()
        .code(2)
        .stderr_has(&["not a valid agent ID", "1-64 characters"]);
}

#[test]
fn bad_agent_id_in_devserver_agent_is_refused_naming_the_rule() {
    let world = world();
    world
        .ds(&["spawn"])
        .env("DEVSERVER_AGENT", "../x")
        .run()
        .code(2)
        .stderr_has(&["not a valid agent ID", "1-64 characters"]);
    assert_nothing_created(&world, "../x");
}

// ---------------------------------------------------------------------------
// DEVSERVER_AGENT, -C, and the project seen from a worktree.

#[test]
fn devserver_agent_env_is_the_default_agent() {
    let world = world();
    let out = world.ds(&["spawn"]).env("DEVSERVER_AGENT", "envy").ok();
    let url = out.stdout.trim().to_string();
    assert!(
        world.worktree("envy").is_dir(),
        "the env agent got the worktree"
    );
    assert_eq!(registry_agents(&world), ["envy"]);

    let again = world.ds(&["url"]).env("DEVSERVER_AGENT", "envy").ok();
    assert_eq!(again.stdout.trim(), url);
    let status = json(
        &world
            .ds(&["status", "--json"])
            .env("DEVSERVER_AGENT", "envy")
            .ok(),
    );
    assert_eq!(status["agent"], "envy");

    // An explicit --agent wins over the environment.
    let other = world
        .ds(&["url", "--agent", "other"])
        .env("DEVSERVER_AGENT", "envy")
        .run();
    other.code(7);
    world.ds(&["stop"]).env("DEVSERVER_AGENT", "envy").ok();
    assert_eq!(world.status("envy")["state"], "stopped");
}

#[test]
fn missing_agent_without_env_is_bad_usage() {
    let world = world();
    world.ds(&["spawn"]).run().code(2).stderr_has(&["--agent"]);
    assert_nothing_created(&world, "");
}

#[test]
fn dash_c_runs_as_if_started_in_the_repository() {
    let world = world();
    // Relative `-C`, from the directory above the repository.
    let out = world
        .ds(&["-C", "app", "spawn", "--agent", "a"])
        .dir(world.tmp.path())
        .ok();
    let url = out.stdout.trim().to_string();
    assert!(world.worktree("a").is_dir());
    assert!(get(&url).is_some(), "{url} answers");

    // Absolute `-C`, from `/`.
    let repo = world.repo.display().to_string();
    let again = world
        .ds(&["-C", &repo, "url", "--agent", "a"])
        .dir("/")
        .ok();
    assert_eq!(again.stdout.trim(), url);
    let list = world.ds(&["-C", &repo, "list", "--json"]).dir("/").ok();
    let agents: Vec<Value> = serde_json::from_str(&list.stdout).expect("list --json");
    assert_eq!(agents.len(), 1);
    assert_eq!(agents[0]["agent"], "a");
    world
        .ds(&["-C", &repo, "stop", "--agent", "a"])
        .dir("/")
        .ok();
    assert!(!port_answers(
        world.status("a")["port"].as_u64().expect("port") as u16
    ));
}

#[test]
fn dash_c_of_a_missing_directory_is_refused() {
    let world = world();
    let missing = world.path("nowhere");
    let missing = missing.display().to_string();
    world
        .ds(&["-C", &missing, "list"])
        .run()
        .code(2)
        .stderr_has(&[&missing]);
}

#[test]
fn commands_inside_an_agents_worktree_address_the_same_project() {
    let world = world();
    let url_a = world.spawn("a");
    let url_b = world.spawn("b");
    let from_main = world.list();

    let inside = world.worktree("a");
    let list = world.ds(&["list", "--json"]).dir(&inside).ok();
    let from_worktree: Vec<Value> = serde_json::from_str(&list.stdout).expect("list --json");
    let names = |list: &[Value]| {
        let mut names: Vec<String> = list
            .iter()
            .map(|v| v["agent"].as_str().unwrap_or_default().to_string())
            .collect();
        names.sort();
        names
    };
    assert_eq!(names(&from_worktree), ["a", "b"]);
    assert_eq!(names(&from_worktree), names(&from_main));
    for view in &from_worktree {
        assert_eq!(
            canonical(Path::new(view["project"].as_str().expect("project"))),
            canonical(&world.repo)
        );
    }

    // From a subdirectory of the worktree, too.
    fs_err::create_dir_all(inside.join("sub")).expect("mkdir");
    let url = world
        .ds(&["url", "--agent", "b"])
        .dir(inside.join("sub"))
        .ok();
    assert_eq!(url.stdout.trim(), url_b);
    let url = world.ds(&["url", "--agent", "a"]).dir(&inside).ok();
    assert_eq!(url.stdout.trim(), url_a);

    // A spawn from inside the worktree returns the same instance, not a new project's.
    let again = world.ds(&["spawn", "--agent", "b"]).dir(&inside).ok();
    assert_eq!(again.stdout.trim(), url_b);
    assert_eq!(world.list().len(), 2);
}

// ---------------------------------------------------------------------------
// Not a repository, config problems, commands not found.

#[test]
fn outside_a_git_repository_is_a_one_line_error_with_a_hint() {
    let world = world();
    let outside = world.path("not-a-repo");
    fs_err::create_dir_all(&outside).expect("mkdir");
    for args in [
        &["spawn", "--agent", "a"][..],
        &["list"],
        &["url", "--agent", "a"],
    ] {
        let out = world.ds(args).dir(&outside).run().code(1);
        assert!(
            out.stderr.contains("not inside a git repository")
                && out.stderr.contains(&outside.display().to_string()),
            "`{}` does not say that the directory is not a repository:\n{}",
            out.label,
            out.stderr
        );
        assert_one_line_error_with_hint(&out);
    }
    assert!(!world.path("not-a-repo.worktrees").exists());
    assert!(
        fs_err::read_dir(&outside).expect("ls").next().is_none(),
        "nothing written there"
    );
}

#[test]
fn list_all_works_outside_a_git_repository() {
    let world = world();
    let url = world.spawn("a");
    let outside = world.path("not-a-repo");
    fs_err::create_dir_all(&outside).expect("mkdir");
    let out = world.ds(&["list", "--all", "--json"]).dir(&outside).ok();
    let all: Vec<Value> = serde_json::from_str(&out.stdout).expect("list --all --json");
    assert_eq!(all.len(), 1);
    assert_eq!(all[0]["url"], url.as_str());
}

#[test]
fn missing_config_hint_shows_a_minimal_config() {
    let world = world();
    // Nothing to detect either (an `index.html` would be served as a static site).
    world.git(&["rm", "-q", "devserver.yaml", "index.html"]);
    world.commit("no config");
    let out = world.ds(&["spawn", "--agent", "a"]).run().code(1);
    assert!(
        out.stderr.contains("devserver.yaml"),
        "names the file:\n{}",
        out.stderr
    );
    let hint = out
        .stderr
        .split_once("hint:")
        .map(|(_, h)| h)
        .unwrap_or_default();
    assert!(
        hint.contains("command:"),
        "the hint shows a config with `command:`:\n{}",
        out.stderr
    );
    assert_nothing_created(&world, "a");
}

#[test]
fn explicit_config_that_does_not_exist_is_an_error_naming_it() {
    let world = world();
    let missing = world.path("missing.yaml").display().to_string();
    world
        .ds(&["--config", &missing, "spawn", "--agent", "a"])
        .run()
        .code(1)
        .stderr_has(&[&missing]);
    assert_nothing_created(&world, "a");
}

fn assert_config_error(world: &World, line: usize, key: &str) {
    let out = world.ds(&["spawn", "--agent", "a"]).run().code(1);
    let file = world.repo.join("devserver.yaml").display().to_string();
    assert!(
        out.stderr.contains(&file),
        "does not name the file {file}:\n{}",
        out.stderr
    );
    assert!(
        out.stderr.contains(&format!("line {line}")),
        "does not name line {line}:\n{}",
        out.stderr
    );
    assert!(
        out.stderr.contains(key),
        "does not name the key `{key}`:\n{}",
        out.stderr
    );
    assert_nothing_created(world, "a");
}

#[test]
fn unknown_config_key_names_the_file_the_line_and_the_key() {
    let world = World::with_config(&format!(
        "command: {}\nhealth:\n  timeout: 10s\n  tcpp: true\n",
        server("")
    ));
    assert_config_error(&world, 4, "tcpp");
}

#[test]
fn unknown_top_level_key_names_the_file_the_line_and_the_key() {
    let world = World::with_config(&format!(
        "command: {}\nportz:\n  range: 5200-5300\n",
        server("")
    ));
    assert_config_error(&world, 2, "portz");
}

/// A typo in the first key of the file (`comand:`) is the likeliest one.
#[test]
fn unknown_key_on_the_first_line_names_line_1() {
    let world = World::with_config(&format!("comand: {}\n", server("")));
    assert_config_error(&world, 1, "comand");
}

#[rstest]
#[case::grace_list("stop:\n  grace: [1, 2]\n", 3, "grace")]
#[case::tcp_string("health:\n  tcp: yes please\n", 3, "tcp")]
#[case::range_map("ports:\n  range: {from: 5200}\n", 3, "range")]
#[case::timeout_word("health:\n  timeout: soon\n", 3, "timeout")]
#[case::env_list("env:\n  - A=1\n", 3, "env")]
fn wrong_value_type_names_the_file_the_line_and_the_key(
    #[case] tail: &str,
    #[case] line: usize,
    #[case] key: &str,
) {
    let world = World::with_config(&format!("command: {}\n{tail}", server("")));
    assert_config_error(&world, line, key);
}

/// A value of the right type but the wrong shape names the file and the key.
#[rstest]
#[case::reversed_range("ports:\n  range: 5999-5200\n", "ports.range")]
#[case::number_range("ports:\n  range: 5200\n", "ports.range")]
#[case::relative_http("health:\n  http: health\n", "health.http")]
fn invalid_value_names_the_file_and_the_key(#[case] tail: &str, #[case] key: &str) {
    let world = World::with_config(&format!("command: {}\n{tail}", server("")));
    let out = world.ds(&["spawn", "--agent", "a"]).run().code(1);
    let file = world.repo.join("devserver.yaml").display().to_string();
    out.stderr_has(&[&file, key]);
    assert_nothing_created(&world, "a");
}

#[test]
fn command_not_on_path_names_the_program_and_creates_nothing() {
    let world = World::with_config(
        "command: no-such-devserver-xyz --port {port}\nhealth:\n  timeout: 5s\n",
    );
    let out = world.ds(&["spawn", "--agent", "a"]).run().code(1);
    assert!(
        out.stderr.contains("no-such-devserver-xyz"),
        "names the program:\n{}",
        out.stderr
    );
    assert!(
        out.stderr.contains("PATH"),
        "says it is not on PATH:\n{}",
        out.stderr
    );
    assert_one_line_error_with_hint(&out);
    assert_nothing_created(&world, "a");
}

// ---------------------------------------------------------------------------
// --base and --branch.

#[rstest]
#[case::flag(true)]
#[case::config(false)]
fn unknown_base_ref_creates_nothing(#[case] flag: bool) {
    let world = if flag {
        world()
    } else {
        World::with_config(&format!("{}worktree:\n  base: no-such-ref\n", config("")))
    };
    let args: &[&str] = if flag {
        &["spawn", "--agent", "a", "--base", "no-such-ref"]
    } else {
        &["spawn", "--agent", "a"]
    };
    let out = world.ds(args).run().code(1);
    assert!(
        out.stderr.contains("no-such-ref"),
        "names the ref:\n{}",
        out.stderr
    );
    assert_one_line_error_with_hint(&out);
    assert_nothing_created(&world, "a");
    assert!(!branches(&world).contains(&"devserver/a".to_string()));
}

#[test]
fn base_ref_is_where_the_new_branch_starts() {
    let world = world();
    let first = world.git(&["rev-parse", "HEAD"]).trim().to_string();
    world.write("later.txt", "later\n");
    world.commit("later");
    world.ds(&["spawn", "--agent", "a", "--base", &first]).ok();
    let head = git_in(&world.worktree("a"), &["rev-parse", "HEAD"]);
    assert_eq!(head.trim(), first);
}

#[test]
fn branch_checked_out_in_the_main_checkout_is_refused_naming_that_path() {
    let world = world();
    let out = world
        .ds(&["spawn", "--agent", "a", "--branch", "main"])
        .run();
    assert_ne!(
        out.code, 0,
        "checking out `main` twice must fail:\n{}",
        out.stderr
    );
    let repo = world.repo.display().to_string();
    assert!(
        out.stderr.contains("main") && out.stderr.contains(&repo),
        "does not name the branch and the checkout {repo}:\n{}",
        out.stderr
    );
    assert_nothing_created(&world, "a");
}

#[test]
fn missing_branch_is_refused_and_creates_nothing() {
    let world = world();
    let out = world
        .ds(&["spawn", "--agent", "a", "--branch", "no-such-branch"])
        .run()
        .code(1);
    assert!(
        out.stderr.contains("no-such-branch"),
        "names the branch:\n{}",
        out.stderr
    );
    assert_one_line_error_with_hint(&out);
    assert_nothing_created(&world, "a");
    assert!(!branches(&world).contains(&"no-such-branch".to_string()));
}

#[test]
fn existing_branch_is_checked_out_for_the_agent() {
    let world = world();
    world.git(&["branch", "feature"]);
    world
        .ds(&["spawn", "--agent", "a", "--branch", "feature"])
        .ok();
    let head = git_in(&world.worktree("a"), &["rev-parse", "--abbrev-ref", "HEAD"]);
    assert_eq!(head.trim(), "feature");
    assert_eq!(world.status("a")["branch"], "feature");
}

// ---------------------------------------------------------------------------
// Help and exit codes.

#[test]
fn help_lists_the_exit_codes() {
    let world = world();
    let out = world.ds(&["--help"]).ok();
    let table = [
        ("0", "success"),
        ("1", "error"),
        ("2", "usage"),
        ("3", "lock"),
        ("4", "health"),
        ("5", "in use"),
        ("6", "port"),
        ("7", "no such instance"),
    ];
    for (code, words) in table {
        assert!(
            out.stdout.lines().any(|l| {
                let l = l.trim_start();
                l.starts_with(code) && l[1..].starts_with(char::is_whitespace) && l.contains(words)
            }),
            "`devserver --help` has no line for exit code {code} ({words}):\n{}",
            out.stdout
        );
    }
}

#[rstest]
#[case::url("url")]
#[case::status("status")]
#[case::stop("stop")]
#[case::logs("logs")]
fn unknown_agent_exits_7(#[case] command: &str) {
    let world = world();
    world.spawn("a");
    let out = world.ds(&[command, "--agent", "nobody"]).run().code(7);
    assert!(
        out.stderr.contains("nobody"),
        "names the agent:\n{}",
        out.stderr
    );
    assert_eq!(registry_agents(&world), ["a"], "nothing added");
}

#[test]
fn unknown_agent_exits_7_before_anything_ever_ran() {
    let world = world();
    for command in ["url", "status", "stop"] {
        world.ds(&[command, "--agent", "nobody"]).run().code(7);
    }
}

#[test]
fn url_of_a_stopped_agent_exits_7() {
    let world = world();
    world.spawn("a");
    world.ds(&["stop", "--agent", "a"]).ok();
    world
        .ds(&["url", "--agent", "a"])
        .run()
        .code(7)
        .stderr_has(&["stopped"]);
}

#[test]
fn stop_of_a_stopped_agent_succeeds_and_says_it_was_not_running() {
    let world = world();
    let url = world.spawn("a");
    let first = world.ds(&["stop", "--agent", "a"]).ok();
    assert!(
        !first.stderr.contains("not running"),
        "the first stop did stop it:\n{}",
        first.stderr
    );
    assert!(get(&url).is_none(), "{url} still answers after stop");
    let second = world.ds(&["stop", "--agent", "a"]).ok();
    assert!(
        second.stderr.contains("not running"),
        "says it was not running:\n{}",
        second.stderr
    );
    assert_eq!(world.status("a")["state"], "stopped");
}

// ---------------------------------------------------------------------------
// stop --remove.

fn spawned() -> World {
    let world = world();
    world.spawn("a");
    world
}

fn assert_remove_refused(world: &World, problem: &str) {
    let out = world.ds(&["stop", "--agent", "a", "--remove"]).run();
    assert_ne!(
        out.code, 0,
        "`stop --remove` discarded work ({problem}):\n{}",
        out.stderr
    );
    assert!(
        out.stderr.contains(problem),
        "does not name the problem `{problem}`:\n{}",
        out.stderr
    );
    assert!(
        out.stderr.contains("--force"),
        "does not mention `--force`:\n{}",
        out.stderr
    );
    assert!(world.worktree("a").is_dir(), "the worktree is kept");
    assert!(
        branches(world).contains(&"devserver/a".to_string()),
        "the branch is kept"
    );
    assert_eq!(registry_agents(world), ["a"], "the entry is kept");
    assert_eq!(
        world.status("a")["state"],
        "stopped",
        "the server is stopped all the same"
    );
}

#[test]
fn stop_remove_refuses_an_uncommitted_change() {
    let world = spawned();
    fs_err::write(world.worktree("a").join("index.html"), "<h1>changed</h1>\n").expect("edit");
    assert_remove_refused(&world, "uncommitted");
    let kept = fs_err::read_to_string(world.worktree("a").join("index.html")).expect("read");
    assert_eq!(kept, "<h1>changed</h1>\n");
}

#[test]
fn stop_remove_refuses_a_staged_change() {
    let world = spawned();
    let wt = world.worktree("a");
    fs_err::write(wt.join("staged.txt"), "staged\n").expect("write");
    git_in(&wt, &["add", "staged.txt"]);
    assert_remove_refused(&world, "uncommitted");
}

#[test]
fn stop_remove_refuses_an_untracked_file() {
    let world = spawned();
    fs_err::write(world.worktree("a").join("notes.txt"), "mine\n").expect("write");
    assert_remove_refused(&world, "untracked");
    assert!(world.worktree("a").join("notes.txt").exists());
}

#[test]
fn stop_remove_refuses_a_commit_on_no_other_branch() {
    let world = spawned();
    let wt = world.worktree("a");
    fs_err::write(wt.join("work.txt"), "work\n").expect("write");
    git_in(&wt, &["add", "work.txt"]);
    git_in(&wt, &["commit", "-q", "-m", "work"]);
    assert_remove_refused(&world, "commit");
}

#[test]
fn stop_remove_of_a_commit_also_on_another_branch_is_allowed() {
    let world = spawned();
    let wt = world.worktree("a");
    fs_err::write(wt.join("work.txt"), "work\n").expect("write");
    git_in(&wt, &["add", "work.txt"]);
    git_in(&wt, &["commit", "-q", "-m", "work"]);
    world.git(&["branch", "keep", "devserver/a"]);
    world.ds(&["stop", "--agent", "a", "--remove"]).ok();
    assert!(!world.worktree("a").exists());
    assert!(branches(&world).contains(&"keep".to_string()));
}

#[test]
fn stop_remove_of_a_clean_worktree_removes_it() {
    let world = world();
    let url = world.spawn("a");
    world.ds(&["stop", "--agent", "a", "--remove"]).ok();
    assert!(get(&url).is_none(), "{url} still answers");
    assert!(!world.worktree("a").exists(), "the worktree is removed");
    assert!(
        !branches(&world).contains(&"devserver/a".to_string()),
        "the branch is removed"
    );
    assert_eq!(admin_entries(&world), Vec::<String>::new());
    assert_eq!(registry_agents(&world), Vec::<String>::new());
}

#[test]
fn stop_remove_force_removes_worktree_branch_and_entry_despite_work() {
    let world = world();
    let url = world.spawn("a");
    let wt = world.worktree("a");
    fs_err::write(wt.join("work.txt"), "work\n").expect("write");
    git_in(&wt, &["add", "work.txt"]);
    git_in(&wt, &["commit", "-q", "-m", "work"]);
    fs_err::write(wt.join("index.html"), "<h1>changed</h1>\n").expect("edit");
    fs_err::write(wt.join("notes.txt"), "mine\n").expect("write");

    world
        .ds(&["stop", "--agent", "a", "--remove", "--force"])
        .ok();
    assert!(get(&url).is_none(), "{url} still answers");
    assert!(!wt.exists(), "the worktree directory is removed");
    assert!(
        !branches(&world).contains(&"devserver/a".to_string()),
        "the branch is removed"
    );
    assert_eq!(
        admin_entries(&world),
        Vec::<String>::new(),
        "the admin entry is removed"
    );
    assert_eq!(
        registry_agents(&world),
        Vec::<String>::new(),
        "the entry is removed"
    );
    world.ds(&["status", "--agent", "a"]).run().code(7);
    // The main checkout is untouched.
    assert_eq!(world.git(&["status", "--porcelain"]), "");
}

#[test]
fn force_without_remove_is_bad_usage() {
    let world = world();
    world.spawn("a");
    world.ds(&["stop", "--agent", "a", "--force"]).run().code(2);
    assert_eq!(world.status("a")["state"], "running", "nothing was stopped");
}

// ---------------------------------------------------------------------------
// JSON output.

const FIELDS: [&str; 11] = [
    "agent",
    "project",
    "mode",
    "state",
    "url",
    "port",
    "pid",
    "worktree",
    "branch",
    "started_at",
    "log",
];

fn assert_instance_json(view: &Value, world: &World, agent: &str, what: &str) {
    for field in FIELDS {
        assert!(
            view.get(field).is_some(),
            "{what}: no `{field}` in {view:#}"
        );
    }
    assert_eq!(view["agent"], agent, "{what}");
    let project = Path::new(view["project"].as_str().expect("project is a string"));
    assert_eq!(
        canonical(project),
        canonical(&world.repo),
        "{what}: project is the repository root"
    );
    assert_eq!(view["mode"], "isolated", "{what}");
    assert_eq!(view["state"], "running", "{what}");
    let port = view["port"].as_u64().expect("port is a number");
    let url = view["url"].as_str().expect("url is a string");
    assert!(
        url.contains(&format!(":{port}")),
        "{what}: url {url} is on port {port}"
    );
    assert!(get(url).is_some(), "{what}: {url} answers");
    let pid = view["pid"].as_u64().expect("pid is a number");
    assert!(
        Path::new(&format!("/proc/{pid}")).exists(),
        "{what}: pid {pid} is alive"
    );
    let worktree = Path::new(view["worktree"].as_str().expect("worktree is a string"));
    assert_eq!(
        canonical(worktree),
        canonical(&world.worktree(agent)),
        "{what}"
    );
    assert_eq!(view["branch"], format!("devserver/{agent}"), "{what}");
    let started = view["started_at"].as_str().expect("started_at is a string");
    let when = humantime::parse_rfc3339_weak(started)
        .ok()
        .filter(|_| started.contains('T') && (started.ends_with('Z') || started.contains('+')));
    let when = when.unwrap_or_else(|| panic!("{what}: started_at {started:?} is not RFC 3339"));
    let age = std::time::SystemTime::now()
        .duration_since(when)
        .unwrap_or_default();
    assert!(
        age.as_secs() < 120,
        "{what}: started_at {started} is not now"
    );
    let log = Path::new(view["log"].as_str().expect("log is a string"));
    assert!(log.is_file(), "{what}: log {} exists", log.display());
}

#[test]
fn json_outputs_of_spawn_status_and_list_have_the_documented_fields() {
    let world = world();
    let spawned = json(&world.ds(&["spawn", "--agent", "a", "--json"]).ok());
    assert_instance_json(&spawned, &world, "a", "spawn --json");

    let status = world.status("a");
    assert_instance_json(&status, &world, "a", "status --json");
    assert_eq!(status["port"], spawned["port"]);
    assert_eq!(status["pid"], spawned["pid"]);

    let again = json(&world.ds(&["spawn", "--agent", "a", "--json"]).ok());
    assert_instance_json(&again, &world, "a", "second spawn --json");
    assert_eq!(again["url"], spawned["url"]);

    let list = world.list();
    assert_eq!(list.len(), 1);
    assert_instance_json(&list[0], &world, "a", "list --json");

    let all: Vec<Value> =
        serde_json::from_str(&world.ds(&["list", "--json", "--all"]).ok().stdout).expect("json");
    assert_eq!(all.len(), 1);
    assert_instance_json(&all[0], &world, "a", "list --json --all");
}

#[test]
fn list_json_of_no_instances_is_an_empty_array() {
    let world = world();
    let out = world.ds(&["list", "--json"]).ok();
    assert_eq!(
        serde_json::from_str::<Value>(&out.stdout).expect("json"),
        serde_json::json!([])
    );
}

#[test]
fn spawn_prints_only_the_url_on_stdout() {
    let world = world();
    let out = world.ds(&["spawn", "--agent", "a"]).ok();
    let url = out.stdout.trim();
    assert_eq!(
        out.stdout.lines().count(),
        1,
        "one line on stdout:\n{}",
        out.stdout
    );
    assert!(url.starts_with("http://"), "{url}");
    assert!(get(url).is_some(), "{url} answers");
}
