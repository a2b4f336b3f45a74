//! devserver's integration tests: the real binary against real git
//! repositories and real server processes, each test in its own temporary
//! directory with its own `DEVSERVER_HOME`, so tests run in parallel and
//! never touch a user's state. Everything is in one test binary.

mod harness;
mod suite;
