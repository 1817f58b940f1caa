//! Plumbing both daemons share: logging, signals, systemd notifications,
//! exit codes.
//! It knows neither rumqttc nor sled, nor either daemon's logic: `start` runs the
//! future it is handed.

use crate::config::{LogConfig, LogFormat};
use std::collections::HashMap;
use std::hash::Hash;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tracing_subscriber::{prelude::*, EnvFilter};

/// `EX_CONFIG` from sysexits.h: systemd and operators read it as "fix the config".
pub const EX_CONFIG: u8 = 78;

/// Every file created from now on is its owner's alone (umask 077), as the
/// units' `UMask=0077` says, also outside systemd. sled creates files while it
/// runs and when it closes (segments, `snap.*` snapshots); the storage folder
/// is 0700 already, but a copied folder keeps its files' modes.
pub fn private_files() {
    rustix::process::umask(rustix::fs::Mode::from_bits_truncate(0o077));
}

/// Logs to journald when stderr is connected to the journal (we run under
/// systemd), else to stderr: human-readable lines, or JSON when configured.
/// `RUST_LOG` overrides the configured level.
pub fn init_logging(config: &LogConfig) {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(&config.level));
    let registry = tracing_subscriber::registry().with(filter);
    if stderr_is_journal() {
        if let Ok(journald) = crate::journal::Journald::connect() {
            registry.with(journald).init();
            return;
        }
    }
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let fmt = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_target(false);
    match config.format {
        LogFormat::Text => registry.with(fmt.with_ansi(ansi)).init(),
        LogFormat::Json => registry.with(fmt.json().flatten_event(true)).init(),
    }
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

/// What signals ask of a daemon: stop (SIGTERM, SIGINT) or reload (SIGHUP).
pub struct Signals {
    /// Cancelled at the first SIGTERM or SIGINT: the one stop token every task ends with.
    pub shutdown: CancellationToken,
    /// Notified once per SIGHUP (a permit is kept if nobody is waiting yet).
    pub reload: Arc<Notify>,
}

/// Installs the handlers. A second SIGTERM/SIGINT exits at once, for an operator
/// who does not want to wait for the grace period.
pub fn signals() -> std::io::Result<Signals> {
    use tokio::signal::unix::{signal, SignalKind};
    let shutdown = CancellationToken::new();
    let reload = Arc::new(Notify::new());
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut hup = signal(SignalKind::hangup())?;
    // Past a file-size limit the kernel sends SIGXFSZ, which would kill us. With
    // a handler the write fails with EFBIG instead: storage reports the error and
    // aggregatord waits (unacknowledged) until there is room again.
    let mut xfsz = signal(SignalKind::from_raw(rustix::process::Signal::XFSZ.as_raw()))?;
    tokio::spawn(async move { while xfsz.recv().await.is_some() {} });
    let (cancel, hup_notify) = (shutdown.clone(), reload.clone());
    tokio::spawn(async move {
        let mut stopping = false;
        loop {
            let name = tokio::select! {
                _ = term.recv() => "SIGTERM",
                _ = int.recv() => "SIGINT",
                _ = hup.recv() => {
                    tracing::info!("SIGHUP: reloading the configuration");
                    hup_notify.notify_one();
                    continue;
                }
            };
            if stopping {
                tracing::warn!(signal = name, "second stop signal; exiting now");
                std::process::exit(1);
            }
            tracing::info!(signal = name, "stopping");
            notify(&[sd_notify::NotifyState::Stopping]);
            stopping = true;
            cancel.cancel();
        }
    });
    Ok(Signals { shutdown, reload })
}

/// Tells systemd (if it started us with `Type=notify`); a no-op otherwise.
pub fn notify(state: &[sd_notify::NotifyState<'_>]) {
    if std::env::var_os("NOTIFY_SOCKET").is_some() {
        if let Err(e) = sd_notify::notify(state) {
            tracing::debug!(error = %e, "sd_notify failed");
        }
    }
}

pub fn notify_ready(status: &str) {
    notify(&[
        sd_notify::NotifyState::Ready,
        sd_notify::NotifyState::Status(status),
    ]);
}

pub fn notify_status(status: &str) {
    notify(&[sd_notify::NotifyState::Status(status)]);
}

/// `RELOADING=1` with the `MONOTONIC_USEC` that systemd wants beside it.
pub fn notify_reloading() {
    match sd_notify::NotifyState::monotonic_usec_now() {
        Ok(now) => notify(&[sd_notify::NotifyState::Reloading, now]),
        Err(_) => notify(&[sd_notify::NotifyState::Reloading]),
    }
}

/// How often to send `WATCHDOG=1`: half the period systemd asked for.
pub fn watchdog_every() -> Option<Duration> {
    sd_notify::watchdog_enabled().map(|d| d / 2)
}

/// A tick for the main loop to pet the watchdog on; never fires without one.
pub struct Watchdog(Option<tokio::time::Interval>);

impl Watchdog {
    pub fn new() -> Watchdog {
        Watchdog(watchdog_every().map(tokio::time::interval))
    }

    /// Resolves when the next `WATCHDOG=1` is due, and sends it.
    pub async fn tick(&mut self) {
        match &mut self.0 {
            Some(interval) => {
                interval.tick().await;
                notify(&[sd_notify::NotifyState::Watchdog]);
            }
            None => std::future::pending().await,
        }
    }
}

impl Default for Watchdog {
    fn default() -> Self {
        Watchdog::new()
    }
}

/// Re-reads the config for a reload, telling systemd; `None` (logged, naming
/// file, line and key) keeps the daemon on its current config.
pub fn reload_config<C: crate::config::DaemonConfig>(path: &std::path::Path) -> Option<C> {
    notify_reloading();
    match crate::config::load::<C>(path) {
        Ok(config) => Some(config),
        Err(e) => {
            tracing::error!(error = %e, "reload failed; still running on the previous configuration");
            None
        }
    }
}

/// The common start of both daemons: load and validate the config, check the
/// files it names (`preflight`: certificates, keys, tokens; `--check-config`
/// stops after it, so it says `ok` only for what the daemon would start with),
/// set up logging, then run `daemon` on a single-threaded runtime. One thread is
/// plenty for a handful of sockets; blocking work (fsync) goes to
/// `spawn_blocking`. `daemon` gets the config file's path back, for reloads.
pub fn start<C, F>(
    config_path: &std::path::Path,
    check_only: bool,
    preflight: impl FnOnce(&C, &std::path::Path, bool) -> anyhow::Result<Vec<String>>,
    daemon: impl FnOnce(C, std::path::PathBuf) -> F,
) -> anyhow::Result<()>
where
    C: crate::config::DaemonConfig,
    F: std::future::Future<Output = anyhow::Result<()>>,
{
    use anyhow::Context;
    let config: C = crate::config::load(config_path)?;
    let notes = preflight(&config, config_path, check_only)?;
    if check_only {
        for note in notes {
            println!("note: {note}");
        }
        println!("{}: ok", config_path.display());
        return Ok(());
    }
    init_logging(config.log());
    crate::faults::setup();
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?
        .block_on(daemon(config, config_path.to_owned()))
}

/// Checks one TLS identity for [`start`]'s preflight; errors name the config
/// file and the key (`broker.tls`) they come from, and stay config errors.
pub fn check_tls(
    config_path: &std::path::Path,
    key: &str,
    files: &crate::mqtt::TlsFiles,
    notes: &mut Vec<String>,
) -> anyhow::Result<()> {
    use anyhow::Context;
    let note = crate::mqtt::check_tls_files(files)
        .with_context(|| format!("{}: {key}", config_path.display()))?;
    notes.extend(note.map(|n| format!("{key}.key_file: {n}")));
    Ok(())
}

/// Whether the wall clock can be believed: not before this release was made.
/// A board without a real-time clock starts in 1970 (or wherever its image
/// was made) until NTP sets it.
pub fn clock_is_set() -> bool {
    // 2026-12-01T00:00:00Z: no build of this code is older.
    const RELEASED: i64 = 1_796_083_200;
    chrono::Utc::now().timestamp() >= RELEASED
}

/// Maps a daemon's result to its exit status, printing the error chain.
/// Configuration errors exit 78 (`EX_CONFIG`), everything else 1.
pub fn exit_status(result: anyhow::Result<()>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // A certificate or key named in the config that cannot be used is a
            // config problem too: fix the file, don't restart in a loop.
            let is_config = e.chain().any(|c| {
                c.downcast_ref::<crate::config::ConfigError>().is_some()
                    || c.downcast_ref::<crate::mqtt::TlsError>().is_some()
                    || matches!(
                        c.downcast_ref::<crate::mqtt::MqttError>(),
                        Some(crate::mqtt::MqttError::Tls(_))
                    )
            });
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
    /// The least time between two lines for one key.
    every: Duration,
    /// Per key: when a line last went through, and how many were held back since. Keys
    /// are never removed, so keep them few (reasons, not topics).
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
