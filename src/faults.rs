//! Fault injection for tests: points in the code where a test can stop a
//! daemon at the worst moment, to prove a promise instead of hoping for it.
//! It knows nothing of what it holds: each call site names its point and says what
//! is at stake.
//!
//! Compiled in only with the cargo feature `failpoints` (scripts/test enables
//! it; release builds and `cargo install` do not), using tikv's `fail` crate.
//! A test sets `FAILPOINTS` in the daemon's environment, in fail-rs syntax:
//! `ingest::before_flush=return` holds the first batch that has messages to
//! acknowledge just before its fsync; `ingest::before_flush=2*off->return`
//! lets two such batches through first.

/// Reads `FAILPOINTS` from the environment. Call once, at start-up.
pub fn setup() {
    #[cfg(feature = "failpoints")]
    {
        // The scenario guard keeps the configuration for the process's lifetime.
        std::mem::forget(fail::FailScenario::setup());
    }
}

/// If `FAILPOINTS` configures `name` (and `when` holds), logs that this thread
/// is held at `name`, with `detail` (what is at stake, for the test to check),
/// and blocks it for good: the test then kills the process.
/// A no-op without the `failpoints` feature.
#[inline]
pub fn hold(name: &str, when: bool, detail: std::fmt::Arguments<'_>) {
    #[cfg(feature = "failpoints")]
    if when && fail::eval(name, |_| ()).is_some() {
        tracing::warn!(
            failpoint = name,
            "failpoint: holding this thread until killed ({detail})"
        );
        loop {
            std::thread::park();
        }
    }
    #[cfg(not(feature = "failpoints"))]
    let _ = (name, when, detail);
}
