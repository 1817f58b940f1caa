//! Test harness: a real Mosquitto with the deploy config and a PKI made for the run,
//! the real daemons as child processes, and an MQTT client for watching the wire.
//!
//! Every process started here is killed when its guard drops; a failing test
//! prints the logs of everything it started.

use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

pub const REPO: &str = env!("CARGO_MANIFEST_DIR");
pub const SENSORD: &str = env!("CARGO_BIN_EXE_sensord");
pub const AGGREGATORD: &str = env!("CARGO_BIN_EXE_aggregatord");
/// Upper bound for anything a test waits on; generous because CI machines are slow.
pub const PATIENCE: Duration = Duration::from_secs(20);
/// aggregatord's ingest connection coming up (it also has one for alerts).
pub const INGEST_CONNECTED: &str = "client_id=aggregatord session_present";

pub fn require(program: &str, package: &str) {
    let found = std::env::var_os("PATH")
        .is_some_and(|paths| std::env::split_paths(&paths).any(|d| d.join(program).is_file()));
    assert!(
        found,
        "`{program}` is not on PATH. Install it with: sudo apt-get install -y {package}\n\
         (scripts/test installs everything the tests need)"
    );
}

mod broker;
mod daemons;
mod faults;
mod pki;
mod proc;
mod watcher;

pub use broker::*;
pub use daemons::*;
pub use faults::*;
pub use pki::*;
pub use proc::*;
pub use watcher::*;

/// State written by a reader thread and awaited by the test: a value plus a
/// condition variable, so waiting is on the event itself, never a sleep.
pub struct Shared<T>(Arc<(Mutex<T>, Condvar)>);

impl<T> Clone for Shared<T> {
    fn clone(&self) -> Self {
        Shared(self.0.clone())
    }
}

impl<T> Shared<T> {
    fn new(value: T) -> Self {
        Shared(Arc::new((Mutex::new(value), Condvar::new())))
    }

    fn update(&self, f: impl FnOnce(&mut T)) {
        f(&mut self.lock());
        self.0 .1.notify_all();
    }

    /// A test that failed while holding the lock poisons it; the data is still
    /// fine for printing the failure report, so ignore the poison.
    fn lock(&self) -> std::sync::MutexGuard<'_, T> {
        self.0
             .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Waits up to [`PATIENCE`] for `done`; returns the guard and whether it held.
    fn wait(&self, done: impl Fn(&T) -> bool) -> (std::sync::MutexGuard<'_, T>, bool) {
        self.wait_within(done, PATIENCE)
    }

    fn wait_within(
        &self,
        done: impl Fn(&T) -> bool,
        patience: Duration,
    ) -> (std::sync::MutexGuard<'_, T>, bool) {
        let (guard, timeout) = self
            .0
             .1
            .wait_timeout_while(self.lock(), patience, |v| !done(v))
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        (guard, !timeout.timed_out())
    }
}

/// Records what a reliability or security test measured, in
/// target/reliability/<name>.json; scripts/reliability-report makes RELIABILITY.md.
pub fn record(name: &str, what: &str, result: serde_json::Value) {
    let dir = format!("{REPO}/target/reliability");
    std::fs::create_dir_all(&dir).expect("create target/reliability");
    let entry = serde_json::json!({ "test": name, "what": what, "result": result });
    std::fs::write(format!("{dir}/{name}.json"), entry.to_string()).expect("write result");
}
