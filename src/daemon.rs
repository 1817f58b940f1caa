//! Plumbing both daemons share: logging, signals, exit codes.

use std::collections::HashMap;
use std::hash::Hash;
use std::process::ExitCode;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;
use tracing_subscriber::{prelude::*, EnvFilter};

/// `EX_CONFIG` from sysexits.h: systemd and operators read it as "fix the config".
pub const EX_CONFIG: u8 = 78;

/// Logs to journald when stderr is connected to the journal (we run under
/// systemd), else human-readable lines on stderr. `RUST_LOG` sets the level
/// (default `info`).
pub fn init_logging() {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let registry = tracing_subscriber::registry().with(filter);
    if stderr_is_journal() {
        if let Ok(journald) = tracing_journald::layer() {
            registry.with(journald).init();
            return;
        }
    }
    registry
        .with(
            tracing_subscriber::fmt::layer()
                .with_writer(std::io::stderr)
                .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
                .with_target(false),
        )
        .init();
}

/// systemd sets `JOURNAL_STREAM=dev:inode` for the stream it connected; a child
/// that inherited the variable but whose stderr was redirected must not use it.
fn stderr_is_journal() -> bool {
    use std::os::unix::fs::MetadataExt;
    let Ok(value) = std::env::var("JOURNAL_STREAM") else {
        return false;
    };
    let Some((dev, ino)) = value.split_once(':') else {
        return false;
    };
    let Ok(meta) = std::fs::metadata("/proc/self/fd/2") else {
        return false;
    };
    dev.parse() == Ok(meta.dev()) && ino.parse() == Ok(meta.ino())
}

/// Cancels the returned token on SIGTERM or SIGINT. A second such signal exits at
/// once, for an operator who does not want to wait for the grace period.
pub fn shutdown_on_signals() -> std::io::Result<CancellationToken> {
    use tokio::signal::unix::{signal, SignalKind};
    let token = CancellationToken::new();
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut hup = signal(SignalKind::hangup())?;
    let cancel = token.clone();
    tokio::spawn(async move {
        let mut stopping = false;
        loop {
            let name = tokio::select! {
                _ = term.recv() => "SIGTERM",
                _ = int.recv() => "SIGINT",
                _ = hup.recv() => {
                    // Without a handler SIGHUP would kill us; reload is not built yet.
                    tracing::warn!("SIGHUP received; configuration reload is not supported yet, ignoring");
                    continue;
                }
            };
            if stopping {
                tracing::warn!(signal = name, "second stop signal; exiting now");
                std::process::exit(1);
            }
            tracing::info!(signal = name, "stopping");
            stopping = true;
            cancel.cancel();
        }
    });
    Ok(token)
}

/// The common start of both daemons: load and validate the config (`--check-config`
/// stops there), set up logging, then run `daemon` on a single-threaded runtime.
/// One thread is plenty for a handful of sockets; blocking work (fsync) goes to
/// `spawn_blocking`.
pub fn start<C, F>(
    config_path: &std::path::Path,
    check_only: bool,
    daemon: impl FnOnce(C) -> F,
) -> anyhow::Result<()>
where
    C: crate::config::DaemonConfig,
    F: std::future::Future<Output = anyhow::Result<()>>,
{
    use anyhow::Context;
    let config: C = crate::config::load(config_path)?;
    if check_only {
        println!("{}: ok", config_path.display());
        return Ok(());
    }
    init_logging();
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?
        .block_on(daemon(config))
}

/// Maps a daemon's result to its exit status, printing the error chain.
/// Configuration errors exit 78 (`EX_CONFIG`), everything else 1.
pub fn exit_status(result: anyhow::Result<()>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let is_config = e
                .chain()
                .any(|c| c.downcast_ref::<crate::config::ConfigError>().is_some());
            // tracing may not be set up (config errors come first), so use stderr.
            eprintln!("error: {e:#}");
            if is_config {
                ExitCode::from(EX_CONFIG)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}

/// Lets a log line through at most once per `every` per key, counting the rest,
/// so that a flood of bad input cannot flood the journal.
pub struct RateLimit<K> {
    every: Duration,
    seen: HashMap<K, (Instant, u64)>,
}

impl<K: Hash + Eq> RateLimit<K> {
    pub fn new(every: Duration) -> Self {
        RateLimit {
            every,
            seen: HashMap::new(),
        }
    }

    /// `Some(suppressed)` when a line for `key` may be logged now, with the
    /// number held back since the last one.
    pub fn allow(&mut self, key: K) -> Option<u64> {
        let now = Instant::now();
        match self.seen.get_mut(&key) {
            Some((last, suppressed)) if now.duration_since(*last) < self.every => {
                *suppressed += 1;
                None
            }
            Some((last, suppressed)) => {
                *last = now;
                Some(std::mem::take(suppressed))
            }
            None => {
                self.seen.insert(key, (now, 0));
                Some(0)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rate_limit_counts_what_it_holds_back() {
        let mut limit = RateLimit::new(Duration::from_secs(3600));
        assert_eq!(limit.allow("a"), Some(0));
        assert_eq!(limit.allow("a"), None);
        assert_eq!(limit.allow("a"), None);
        assert_eq!(limit.allow("b"), Some(0));
        let mut fast = RateLimit::new(Duration::ZERO);
        assert_eq!(fast.allow("a"), Some(0));
        assert_eq!(fast.allow("a"), Some(0));
    }
}
