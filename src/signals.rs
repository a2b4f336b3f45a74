//! Waiting for signals synchronously: the signals a process handles are
//! blocked and then taken one at a time with `sigtimedwait`, so no handler
//! runs at an arbitrary point and nothing is lost between checks.
//!
//! A blocked mask is inherited across `fork` and `exec`, so every child
//! started afterwards must get [`reset_in_child`] in its `pre_exec`, or it
//! could never be stopped with SIGTERM.

use std::time::Duration;

/// The signals devserver's long-running processes wait for.
pub const HANDLED: [i32; 4] = [libc::SIGCHLD, libc::SIGTERM, libc::SIGINT, libc::SIGHUP];

/// Blocks [`HANDLED`] in this thread and threads it starts later; returns the set.
pub fn block() -> libc::sigset_t {
    // SAFETY: plain sigset manipulation on a local, then pthread_sigmask.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for signal in HANDLED {
            libc::sigaddset(&mut set, signal);
        }
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        set
    }
}

/// For `pre_exec`: unblocks every signal and restores SIGPIPE's default, so
/// the child starts as if devserver had never touched its signals.
///
/// # Safety
///
/// Only for a forked child before `exec`: it calls async-signal-safe
/// functions only.
pub unsafe fn reset_in_child() {
    // SAFETY: sigemptyset, sigprocmask and signal are async-signal-safe.
    unsafe {
        let mut empty: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut empty);
        libc::sigprocmask(libc::SIG_SETMASK, &empty, std::ptr::null_mut());
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}

/// Waits up to `timeout` for one of the blocked signals in `set`.
pub fn wait(set: &libc::sigset_t, timeout: Duration) -> Option<i32> {
    let spec = libc::timespec {
        tv_sec: timeout.as_secs().try_into().unwrap_or(libc::time_t::MAX),
        tv_nsec: timeout.subsec_nanos().into(),
    };
    // SAFETY: `set` is initialised; a null siginfo pointer is allowed.
    let signal = unsafe { libc::sigtimedwait(set, std::ptr::null_mut(), &spec) };
    (signal > 0).then_some(signal)
}
