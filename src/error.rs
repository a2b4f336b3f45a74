//! Exit codes and the user-facing error type.
//!
//! Command code uses `anyhow` and adds context at every call that touches the
//! outside world. Where the failure decides the exit code, or where the user
//! needs a hint, the code returns a [`Failure`] somewhere in the chain; `main`
//! finds it, prints the whole chain once, then the hint, and exits with its
//! code. Nothing else in devserver prints errors or exits.

use std::fmt;

/// The process exit codes devserver documents (README, `--help`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Code {
    /// Any error not listed below.
    Error = 1,
    /// Bad usage: an unknown flag, a bad value, a bad agent ID.
    Usage = 2,
    /// Waiting for a lock (registry or instance) timed out.
    LockTimeout = 3,
    /// The server did not become healthy (exited, timed out, wrong port).
    Unhealthy = 4,
    /// Refused because the instance is in use by someone else.
    InUse = 5,
    /// No free port was left in the configured range.
    NoPort = 6,
    /// No such instance.
    NoInstance = 7,
    /// Interrupted by a signal (SIGINT, SIGTERM or SIGHUP) and rolled back.
    Interrupted = 130,
}

impl Code {
    /// The code as the process exit status.
    pub fn as_u8(self) -> u8 {
        self as u8
    }
}

/// The table printed at the end of `--help`.
pub const EXIT_CODES_HELP: &str = "\
Exit codes:
  0  success
  1  error
  2  bad usage
  3  lock wait timed out
  4  server did not become healthy
  5  refused because the instance is in use
  6  no free port in the range
  7  no such instance
  130  interrupted (SIGINT, SIGTERM or SIGHUP); what it had made was undone";

/// An error that carries its exit code and an optional hint for the user.
#[derive(Debug)]
pub struct Failure {
    pub code: Code,
    pub message: String,
    pub hint: Option<String>,
}

impl Failure {
    pub fn new(code: Code, message: impl Into<String>) -> Self {
        Failure {
            code,
            message: message.into(),
            hint: None,
        }
    }

    pub fn with_hint(mut self, hint: impl Into<String>) -> Self {
        self.hint = Some(hint.into());
        self
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Failure {}

/// Ends devserver with the exit status of a command it ran (`run`), with
/// nothing printed: the command already spoke for itself.
#[derive(Debug)]
pub struct ChildExit(pub u8);

impl fmt::Display for ChildExit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "the command exited with status {}", self.0)
    }
}

impl std::error::Error for ChildExit {}

/// The exit code and hint of an error chain: the first [`Failure`] found, else 1.
pub fn classify(err: &anyhow::Error) -> (Code, Option<String>) {
    for cause in err.chain() {
        if let Some(failure) = cause.downcast_ref::<Failure>() {
            return (failure.code, failure.hint.clone());
        }
    }
    (Code::Error, None)
}

#[cfg(test)]
mod tests {
    use super::*;
    use anyhow::Context;

    #[test]
    fn classify_finds_failure_below_context() {
        let err = Err::<(), _>(Failure::new(Code::NoPort, "no port").with_hint("widen it"))
            .context("spawning `a`")
            .unwrap_err();
        assert_eq!(classify(&err), (Code::NoPort, Some("widen it".into())));
    }

    #[test]
    fn plain_errors_are_code_one() {
        let err = anyhow::anyhow!("boom");
        assert_eq!(classify(&err).0, Code::Error);
    }
}
