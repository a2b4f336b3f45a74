//! The project's `devserver.yaml`: its keys, their defaults, and validation.
//!
//! The file is parsed strictly: an unknown key or a value of the wrong type is
//! an error naming the file, the line and the key, because a misspelt key that
//! is silently ignored leaves a user debugging the wrong thing. Parsing turns
//! the file into [`Settings`], where every default is filled in; nothing else
//! in devserver reads YAML or knows a default.
//!
//! YAML is read with `serde_yaml` 0.9. The crate is no longer maintained
//! upstream, but it is stable, widely used and reports the line and the key
//! path of an error, which is what this module needs from it.

use std::collections::BTreeMap;
use std::fmt;
use std::ops::RangeInclusive;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result};
use serde::de::{self, Deserializer, Visitor};
use serde::Deserialize;

use crate::error::{Code, Failure};

/// The name of the config file looked up at the repository root.
pub const FILE_NAME: &str = "devserver.yaml";

/// The smallest config that works, shown in hints.
pub const MINIMAL_EXAMPLE: &str = "command: npm run dev -- --port {port} --strictPort";

/// Fully resolved settings: the config file with every default applied.
#[derive(Clone, Debug)]
pub struct Settings {
    /// Where the settings came from, for messages.
    pub source: PathBuf,
    pub command: String,
    pub cwd: PathBuf,
    pub env: BTreeMap<String, String>,
    pub url: String,
    pub ports: RangeInclusive<u16>,
    pub health: Health,
    pub worktree: WorktreeSettings,
    pub setup: Setup,
    pub stop_grace: Duration,
    pub lock_timeout: Duration,
    pub log_max_bytes: u64,
    /// `mode: shared`: commands address the shared server by default.
    pub shared: bool,
    /// How long a shared server stays up after its last user leaves.
    pub idle_grace: Duration,
    /// How long a lease lasts unless renewed; `None` for ever.
    pub lease_ttl: Option<Duration>,
    /// How the server is given its port, for the error when it binds another.
    pub port_hint: String,
}

/// How readiness is probed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Probe {
    /// An HTTP GET of this path must answer with a status below 500.
    Http(String),
    /// A TCP connect must succeed.
    Tcp,
}

#[derive(Clone, Debug)]
pub struct Health {
    pub probe: Probe,
    pub timeout: Duration,
}

#[derive(Clone, Debug)]
pub struct WorktreeSettings {
    /// Directory holding the agents' worktrees, relative to the repository root.
    pub dir: String,
    /// Branch name template, `devserver/{agent}` by default.
    pub branch: String,
    /// The revision new branches start from.
    pub base: String,
}

#[derive(Clone, Debug, Default)]
pub struct Setup {
    /// Copied from the main checkout into a new worktree (`.env`, say).
    pub copy: Vec<PathBuf>,
    /// Symlinked from the main checkout into a new worktree (`node_modules`).
    pub link: Vec<PathBuf>,
    /// Shell commands run once in a new worktree, in `cwd`.
    pub run: Vec<String>,
}

/// The file as written, before defaults.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    command: Option<String>,
    mode: Option<FileMode>,
    #[serde(default)]
    shared: FileShared,
    #[serde(default)]
    lease: FileLease,
    cwd: Option<PathBuf>,
    #[serde(default)]
    env: BTreeMap<String, String>,
    url: Option<String>,
    #[serde(default)]
    ports: FilePorts,
    #[serde(default)]
    health: FileHealth,
    #[serde(default)]
    worktree: FileWorktree,
    #[serde(default)]
    setup: FileSetup,
    #[serde(default)]
    stop: FileStop,
    #[serde(default)]
    lock: FileLock,
    #[serde(default)]
    log: FileLog,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "lowercase")]
enum FileMode {
    Isolated,
    Shared,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileShared {
    #[serde(default, deserialize_with = "duration")]
    idle_grace: Option<Duration>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileLease {
    #[serde(default, deserialize_with = "duration")]
    ttl: Option<Duration>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FilePorts {
    range: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileHealth {
    http: Option<String>,
    tcp: Option<bool>,
    #[serde(default, deserialize_with = "duration")]
    timeout: Option<Duration>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileWorktree {
    dir: Option<String>,
    branch: Option<String>,
    base: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileSetup {
    #[serde(default)]
    copy: Vec<PathBuf>,
    #[serde(default)]
    link: Vec<PathBuf>,
    #[serde(default)]
    run: Vec<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileStop {
    #[serde(default, deserialize_with = "duration")]
    grace: Option<Duration>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileLock {
    #[serde(default, deserialize_with = "duration")]
    timeout: Option<Duration>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileLog {
    max_size: Option<String>,
}

/// Finds the config: `explicit` if given, else `devserver.yaml` in `root`.
///
/// Returns `None` when no explicit file was named and the root has none.
pub fn locate(root: &Path, explicit: Option<&Path>) -> Option<PathBuf> {
    if let Some(path) = explicit {
        return Some(path.to_path_buf());
    }
    let path = root.join(FILE_NAME);
    path.is_file().then_some(path)
}

/// Reads and validates the config file at `path`.
pub fn load(path: &Path) -> Result<Settings> {
    let text = fs_err::read_to_string(path).context("cannot read the config file")?;
    parse(&text, path)
}

/// Parses config text; `path` is used in messages only.
pub fn parse(text: &str, path: &Path) -> Result<Settings> {
    // An empty file is valid YAML for "nothing", which serde_yaml rejects.
    let file: FileConfig = if text.trim().is_empty() {
        FileConfig::default()
    } else {
        serde_yaml::from_str(text).map_err(|err| invalid(path, &with_line(&err, text)))?
    };
    resolve(file, path).map_err(|err| add_line(err, text))
}

/// Adds the line to a validation error that names its key (`ports.range`),
/// as the parser does for type errors.
fn add_line(err: anyhow::Error, text: &str) -> anyhow::Error {
    let Some(failure) = err.downcast_ref::<Failure>() else {
        return err;
    };
    let key = failure.message.split('`').skip(3).step_by(2).find(|k| {
        !k.is_empty()
            && k.chars()
                .all(|c| c.is_ascii_lowercase() || c == '.' || c == '_')
    });
    let line = key.and_then(|key| line_of(text, key));
    match line {
        Some(line) if !failure.message.contains(" line ") => {
            let mut failure =
                Failure::new(failure.code, format!("{} (line {line})", failure.message));
            failure.hint = err.downcast_ref::<Failure>().and_then(|f| f.hint.clone());
            failure.into()
        }
        _ => err,
    }
}

/// The 1-based line where the last part of a dotted key is written.
fn line_of(text: &str, key: &str) -> Option<usize> {
    let leaf = key.rsplit('.').next()?;
    text.lines()
        .position(|l| {
            let l = l.trim_start();
            l.strip_prefix(leaf)
                .is_some_and(|rest| rest.trim_start().starts_with(':'))
                || l.contains(&format!("{leaf}:"))
        })
        .map(|i| i + 1)
}

/// The parser's message, with the line added where serde_yaml leaves it out
/// (it does for an error at the very start of the document).
fn with_line(err: &serde_yaml::Error, text: &str) -> String {
    let message = err.to_string();
    if message.contains(" line ") {
        return message;
    }
    if let Some(at) = err.location() {
        return format!("{message} at line {} column {}", at.line(), at.column());
    }
    let key = message
        .split_once("unknown field `")
        .and_then(|(_, rest)| rest.split_once('`'))
        .map(|(key, _)| key);
    let line = key.and_then(|key| {
        text.lines().position(|l| {
            l.trim_start()
                .strip_prefix(key)
                .is_some_and(|r| r.trim_start().starts_with(':'))
        })
    });
    match line {
        Some(index) => format!("{message} at line {}", index + 1),
        None => message,
    }
}

fn invalid(path: &Path, detail: &str) -> anyhow::Error {
    Failure::new(
        Code::Error,
        format!("invalid config `{}`: {detail}", path.display()),
    )
    .with_hint("every key is listed, with its default, in `config.example.yaml`")
    .into()
}

fn resolve(file: FileConfig, path: &Path) -> Result<Settings> {
    let Some(command) = file.command.filter(|c| !c.trim().is_empty()) else {
        return Err(Failure::new(
            Code::Error,
            format!("config `{}` has no `command`", path.display()),
        )
        .with_hint(format!(
            "add the command that starts the dev server, e.g. `{MINIMAL_EXAMPLE}`"
        ))
        .into());
    };

    let ports = match file.ports.range {
        Some(text) => parse_range(&text).map_err(|detail| invalid(path, &detail))?,
        None => 5200..=5999,
    };
    let health = resolve_health(file.health).map_err(|detail| invalid(path, &detail))?;
    let log_max_bytes = match file.log.max_size {
        Some(text) => parse_size(&text).map_err(|detail| invalid(path, &detail))?,
        None => 10 * 1024 * 1024,
    };
    if let Some(cwd) = &file.cwd {
        ensure_relative(cwd).map_err(|detail| invalid(path, &detail))?;
    }

    Ok(Settings {
        source: path.to_path_buf(),
        command,
        cwd: file.cwd.unwrap_or_else(|| PathBuf::from(".")),
        env: file.env,
        url: file.url.unwrap_or_else(|| "http://127.0.0.1:{port}".into()),
        ports,
        health,
        worktree: WorktreeSettings {
            dir: file
                .worktree
                .dir
                .unwrap_or_else(|| "../{name}.worktrees".into()),
            branch: file
                .worktree
                .branch
                .unwrap_or_else(|| "devserver/{agent}".into()),
            base: file.worktree.base.unwrap_or_else(|| "HEAD".into()),
        },
        setup: Setup {
            copy: file.setup.copy,
            link: file.setup.link,
            run: file.setup.run,
        },
        stop_grace: file.stop.grace.unwrap_or(Duration::from_secs(5)),
        lock_timeout: file.lock.timeout.unwrap_or(Duration::from_secs(30)),
        log_max_bytes,
        shared: matches!(file.mode, Some(FileMode::Shared)),
        idle_grace: file.shared.idle_grace.unwrap_or(Duration::from_secs(30)),
        lease_ttl: match file.lease.ttl {
            Some(ttl) if ttl.is_zero() => None,
            Some(ttl) => Some(ttl),
            None => Some(Duration::from_secs(4 * 3600)),
        },
        port_hint: crate::detect::GENERIC_PORT_HINT.to_string(),
    })
}

fn resolve_health(file: FileHealth) -> Result<Health, String> {
    let probe = match (file.http, file.tcp) {
        (Some(_), Some(true)) => {
            return Err("`health.http` and `health.tcp` exclude each other".into())
        }
        (Some(path), _) if !path.starts_with('/') => {
            return Err(format!(
                "`health.http` must be a path starting with `/`, got `{path}`"
            ))
        }
        (Some(path), _) => Probe::Http(path),
        (None, Some(true)) => Probe::Tcp,
        (None, _) => Probe::Http("/".into()),
    };
    Ok(Health {
        probe,
        timeout: file.timeout.unwrap_or(Duration::from_secs(60)),
    })
}

fn ensure_relative(cwd: &Path) -> Result<(), String> {
    let escapes = cwd.is_absolute()
        || cwd
            .components()
            .any(|c| matches!(c, std::path::Component::ParentDir));
    if escapes {
        return Err(format!(
            "`cwd` must be a subdirectory of the repository, got `{}`",
            cwd.display()
        ));
    }
    Ok(())
}

/// Parses `5200-5999` into an inclusive range.
pub fn parse_range(text: &str) -> Result<RangeInclusive<u16>, String> {
    let bad = || format!("`ports.range` must look like `5200-5999`, got `{text}`");
    let (low, high) = text.split_once('-').ok_or_else(bad)?;
    let low: u16 = low.trim().parse().map_err(|_| bad())?;
    let high: u16 = high.trim().parse().map_err(|_| bad())?;
    if low == 0 || low > high {
        return Err(format!(
            "`ports.range` `{text}` is empty or starts at 0; write it low-high, e.g. `5200-5999`"
        ));
    }
    Ok(low..=high)
}

/// Parses a byte size such as `10M`, `512k` or `1048576`.
fn parse_size(text: &str) -> Result<u64, String> {
    let trimmed = text
        .trim()
        .trim_end_matches(['b', 'B'])
        .trim_end_matches(['i']);
    let (digits, unit) = match trimmed.char_indices().find(|(_, c)| !c.is_ascii_digit()) {
        Some((at, _)) => trimmed.split_at(at),
        None => (trimmed, ""),
    };
    let factor = match unit.trim() {
        "" => 1,
        "k" | "K" => 1 << 10,
        "m" | "M" => 1 << 20,
        "g" | "G" => 1 << 30,
        _ => return Err(format!("`log.max_size` must look like `10M`, got `{text}`")),
    };
    let value: u64 = digits
        .parse()
        .map_err(|_| format!("`log.max_size` must look like `10M`, got `{text}`"))?;
    Ok(value.saturating_mul(factor).max(4096))
}

/// Accepts a number of seconds or a human duration such as `500ms` or `2m`.
fn duration<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<Duration>, D::Error> {
    struct DurationVisitor;

    impl Visitor<'_> for DurationVisitor {
        type Value = Option<Duration>;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a duration such as `30s`, `500ms` or a number of seconds")
        }

        fn visit_u64<E: de::Error>(self, secs: u64) -> Result<Self::Value, E> {
            Ok(Some(Duration::from_secs(secs)))
        }

        fn visit_i64<E: de::Error>(self, secs: i64) -> Result<Self::Value, E> {
            u64::try_from(secs)
                .map(|s| Some(Duration::from_secs(s)))
                .map_err(|_| E::custom("a duration cannot be negative"))
        }

        fn visit_f64<E: de::Error>(self, secs: f64) -> Result<Self::Value, E> {
            Duration::try_from_secs_f64(secs)
                .map(Some)
                .map_err(|_| E::custom("a duration cannot be negative"))
        }

        fn visit_str<E: de::Error>(self, text: &str) -> Result<Self::Value, E> {
            humantime::parse_duration(text)
                .map(Some)
                .map_err(|err| E::custom(format!("bad duration `{text}`: {err}")))
        }
    }

    deserializer.deserialize_any(DurationVisitor)
}

/// Replaces the placeholders devserver knows and leaves every other brace alone,
/// so shell text such as `awk '{print $1}'` survives.
pub fn expand<V: AsRef<str>>(template: &str, vars: &[(&str, V)]) -> String {
    let mut out = template.to_string();
    for (name, value) in vars {
        out = out.replace(&format!("{{{name}}}"), value.as_ref());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use rstest::rstest;

    fn parse_ok(text: &str) -> Settings {
        parse(text, Path::new("devserver.yaml")).expect("config should parse")
    }

    fn parse_err(text: &str) -> String {
        format!(
            "{:#}",
            parse(text, Path::new("devserver.yaml")).unwrap_err()
        )
    }

    #[test]
    fn defaults_fill_every_key() {
        let s = parse_ok("command: ./serve\n");
        assert_eq!(s.ports, 5200..=5999);
        assert_eq!(s.url, "http://127.0.0.1:{port}");
        assert_eq!(s.health.probe, Probe::Http("/".into()));
        assert_eq!(s.health.timeout, Duration::from_secs(60));
        assert_eq!(s.worktree.branch, "devserver/{agent}");
        assert_eq!(s.worktree.dir, "../{name}.worktrees");
        assert_eq!(s.worktree.base, "HEAD");
        assert_eq!(s.stop_grace, Duration::from_secs(5));
        assert_eq!(s.lock_timeout, Duration::from_secs(30));
        assert_eq!(s.cwd, PathBuf::from("."));
        assert!(!s.shared);
        assert_eq!(s.idle_grace, Duration::from_secs(30));
        assert_eq!(s.lease_ttl, Some(Duration::from_secs(4 * 3600)));
    }

    #[test]
    fn shared_mode_and_leases() {
        let s = parse_ok("command: x\nmode: shared\nshared: {idle_grace: 0}\nlease: {ttl: 0}\n");
        assert!(s.shared);
        assert_eq!(s.idle_grace, Duration::ZERO);
        assert_eq!(s.lease_ttl, None);
        assert!(parse_err("command: x\nmode: both\n").contains("mode"));
    }

    /// Pins a deliberate decision: unknown keys are errors, not ignored.
    #[test]
    fn unknown_key_names_file_line_and_key() {
        let msg = parse_err("command: x\nhealth:\n  htp: /\n");
        assert!(msg.contains("devserver.yaml"), "{msg}");
        assert!(msg.contains("htp"), "{msg}");
        assert!(msg.contains("line 3"), "{msg}");
    }

    #[rstest]
    #[case("command: x\nports:\n  range: 6000-5000\n", "line 3")]
    #[case("command: x\nhealth: {http: nopath}\n", "line 2")]
    #[case("command: x\nlog:\n  max_size: 10Q\n", "line 3")]
    #[case("command: x\ncwd: ../up\n", "line 2")]
    fn invalid_values_name_their_line(#[case] text: &str, #[case] line: &str) {
        let msg = parse_err(text);
        assert!(msg.contains(line), "{msg}");
    }

    #[test]
    fn unknown_key_on_the_first_line_names_line_1() {
        let msg = parse_err("comand: x\n");
        assert!(msg.contains("line 1"), "{msg}");
    }

    #[test]
    fn wrong_type_names_key_and_line() {
        let msg = parse_err("command: x\nstop:\n  grace: [1]\n");
        assert!(msg.contains("grace"), "{msg}");
        assert!(msg.contains("line 3"), "{msg}");
    }

    #[test]
    fn missing_command_is_an_error_with_example() {
        let err = parse("ports:\n  range: 6000-6010\n", Path::new("d.yaml")).unwrap_err();
        let (code, hint) = crate::error::classify(&err);
        assert_eq!(code, Code::Error);
        assert!(hint.expect("has hint").contains("{port}"));
    }

    #[rstest]
    #[case("30", Duration::from_secs(30))]
    #[case("1.5", Duration::from_millis(1500))]
    #[case("\"500ms\"", Duration::from_millis(500))]
    #[case("2m", Duration::from_secs(120))]
    fn durations_accept_numbers_and_text(#[case] value: &str, #[case] expected: Duration) {
        let s = parse_ok(&format!("command: x\nstop:\n  grace: {value}\n"));
        assert_eq!(s.stop_grace, expected);
    }

    #[rstest]
    #[case("5200-5999", Some(5200..=5999))]
    #[case("7000 - 7000", Some(7000..=7000))]
    #[case("6000", None)]
    #[case("6000-5000", None)]
    #[case("0-10", None)]
    #[case("a-b", None)]
    fn port_ranges(#[case] text: &str, #[case] expected: Option<RangeInclusive<u16>>) {
        assert_eq!(parse_range(text).ok(), expected);
    }

    #[test]
    fn tcp_health_and_conflicts() {
        assert_eq!(
            parse_ok("command: x\nhealth: {tcp: true}\n").health.probe,
            Probe::Tcp
        );
        assert!(parse_err("command: x\nhealth: {tcp: true, http: /}\n").contains("exclude"));
        assert!(parse_err("command: x\nhealth: {http: health}\n").contains("`/`"));
    }

    #[test]
    fn cwd_must_stay_inside() {
        assert!(parse_err("command: x\ncwd: ../other\n").contains("cwd"));
        assert_eq!(parse_ok("command: x\ncwd: web\n").cwd, PathBuf::from("web"));
    }

    #[test]
    fn expand_leaves_unknown_braces() {
        let out = expand("serve --port {port} | awk '{print}'", &[("port", "5201")]);
        assert_eq!(out, "serve --port 5201 | awk '{print}'");
    }

    /// The documented example must be a valid config that states the defaults.
    #[test]
    fn config_example_parses_and_matches_the_defaults() {
        let text = include_str!("../config.example.yaml");
        let example = parse_ok(text);
        let defaults = parse_ok(&format!("command: {}\n", example.command));
        assert_eq!(format!("{example:?}"), format!("{defaults:?}"));
    }

    #[test]
    fn empty_file_means_no_command() {
        assert!(parse_err("").contains("no `command`"));
    }
}
