//! aggregatord: subscribes, validates, stores durably, and shows the history.
//! It knows no rumqttc or sled (only `mqtt::Handle` and `store::Store`), and this
//! file handles no message itself: ingest.rs does.

mod census;
mod control;
mod dashboard;
mod dump;
mod gaps;
mod ingest;
mod metrics;
mod publisher;
mod retention;

pub use dump::{Format, Request, RequestKind};

use crate::alerts::Engine;
use crate::config::{self, AggregatordConfig};
use crate::daemon;
use crate::mqtt;
use crate::store::{self, Store, StoreError};
use anyhow::Context;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tracing::info;

/// How long a clean stop may take to send the last acknowledgements.
const CLOSE_GRACE: Duration = Duration::from_secs(5);
/// How long a clean stop waits for the background tasks (dashboard, control
/// socket, retention, alert publisher, which has its own `CLOSE_GRACE`).
const BACKGROUND_GRACE: Duration = Duration::from_secs(8);
/// How often systemd's `STATUS=` line is refreshed.
const STATUS_EVERY: Duration = Duration::from_secs(10);
/// How often the totals are logged.
const SUMMARY_EVERY: Duration = Duration::from_secs(60);

/// `aggregatord` (the daemon).
pub fn main(config_path: &Path, check_only: bool) -> anyhow::Result<()> {
    daemon::start(config_path, check_only, preflight, run)
}

/// Everything in the config that start-up would refuse, checked up front (and
/// by `--check-config`): both TLS identities and the dashboard's token.
fn preflight(
    config: &AggregatordConfig,
    path: &Path,
    _checking: bool,
) -> anyhow::Result<Vec<String>> {
    let mut notes = Vec::new();
    let (ingest, alerts) = mqtt_settings(config);
    if let Some(tls) = &ingest.broker.tls {
        daemon::check_tls(path, "broker.tls", tls, &mut notes)?;
    }
    if let (Some(tls), Some(_)) = (&alerts.broker.tls, &config.alert_identity) {
        daemon::check_tls(path, "alert_identity", tls, &mut notes)?;
        if let Some(ingest) = &ingest.broker.tls {
            distinct_identities(path, ingest, tls)?;
        }
    }
    if config.http.enabled {
        dashboard::load_token(&config.http, path)?;
    }
    Ok(notes)
}

/// The two connections are two identities to the broker: a certificate with
/// the ingest connection's CN would make them take each other's place.
fn distinct_identities(
    path: &Path,
    ingest: &crate::mqtt::TlsFiles,
    alerts: &crate::mqtt::TlsFiles,
) -> anyhow::Result<()> {
    let cn = |files: &crate::mqtt::TlsFiles, key: &str| {
        crate::mqtt::certificate_identity(files)
            .map(|id| id.common_name)
            .with_context(|| format!("{}: {key}.cert_file", path.display()))
    };
    let (a, b) = (cn(ingest, "broker.tls")?, cn(alerts, "alert_identity")?);
    if a.is_some() && a == b {
        return Err(config::invalid(
            path,
            "alert_identity.cert_file",
            format!(
                "is issued to CN={}, as broker.tls.cert_file is: the alert connection needs an identity of its own (e.g. aggregatord-alerts)",
                a.unwrap_or_default()
            ),
        )
        .into());
    }
    Ok(())
}

/// `aggregatord dump` / `stats`: opens the database directly when aggregatord is
/// stopped, and asks it over its control socket when it is running. With
/// `also` (other instances' configs), readings or stats of all of them, merged
/// by reading identity ([`dump::merge`]).
pub fn dump_main(config_path: &Path, also: &[PathBuf], request: &Request) -> anyhow::Result<()> {
    let out = std::io::stdout().lock();
    let result = if also.is_empty() {
        from_instance(config_path, request, out)
    } else {
        dump_merged(config_path, also, request, out)
    };
    match result {
        // `aggregatord dump | head` is normal use, not an error.
        Err(e)
            if e.downcast_ref::<std::io::Error>()
                .is_some_and(|e| e.kind() == std::io::ErrorKind::BrokenPipe) =>
        {
            Ok(())
        }
        other => other.context(if request.what == RequestKind::Forget {
            "forget"
        } else {
            "dump"
        }),
    }
}

/// One instance's answer: from the running aggregatord over its socket (it
/// has the store open, and knows of a storage failure), or else from the
/// stopped store, opened read-only: a dump never changes what it reads,
/// damage included, nor keeps a daemon from starting (`forget` needs the
/// daemon, and is told so by `dump::answer`).
fn from_instance(
    config_path: &Path,
    request: &Request,
    out: impl std::io::Write,
) -> anyhow::Result<()> {
    let config: AggregatordConfig = config::load(config_path)?;
    if let Some(daemon) = control::connect(&config.storage.socket())? {
        return control::ask(&daemon, request, out);
    }
    let store = Store::open_read_only(&config.storage.path)?;
    let answered = dump::answer(&store, request, out);
    // dump has no log: damage found by the open, or by reading, is said here.
    for d in store.damage() {
        eprintln!("aggregatord: STORAGE DAMAGED: {d}");
    }
    answered.map_err(anyhow::Error::from)
}

/// Every instance's readings (as JSON lines, the lossless form), merged; then
/// the limit, and the format asked for.
fn dump_merged(
    first: &Path,
    also: &[PathBuf],
    request: &Request,
    out: impl std::io::Write,
) -> anyhow::Result<()> {
    anyhow::ensure!(
        matches!(request.what, RequestKind::Readings | RequestKind::Stats),
        "--also merges readings and stats only"
    );
    // The limit applies to the merged history, not to each part of it.
    let each = Request {
        what: RequestKind::Readings,
        format: Format::Jsonl,
        query: store::Query {
            limit: None,
            ..request.query.clone()
        },
        latest: None,
    };
    let mut sources = Vec::new();
    for path in std::iter::once(first).chain(also.iter().map(PathBuf::as_path)) {
        let mut lines = Vec::new();
        from_instance(path, &each, &mut lines).with_context(|| path.display().to_string())?;
        let readings = lines
            .split(|b| *b == b'\n')
            .filter(|l| !l.is_empty())
            .map(serde_json::from_slice::<store::StoredReading>)
            .collect::<Result<Vec<_>, _>>()
            .with_context(|| format!("{}: reading its answer", path.display()))?;
        sources.push(readings);
    }
    let merged = dump::merge(sources);
    let limit = request.query.limit.unwrap_or(usize::MAX);
    dump::write_readings(merged.into_iter().take(limit).map(Ok), request, out)?;
    Ok(())
}

/// Ingest's settings, with `max_age` defaulting to the retention window.
fn ingest_config(config: &AggregatordConfig) -> config::IngestConfig {
    let mut ingest = config.ingest.clone();
    ingest.max_age = ingest.max_age.or(config.storage.retention);
    ingest
}

/// The connection settings for aggregatord's two clients: ingest, and alerts.
fn mqtt_settings(config: &AggregatordConfig) -> (mqtt::Settings, mqtt::Settings) {
    let settings = |client_id: String, subscriptions, manual_acks| mqtt::Settings {
        client_id,
        broker: config.broker.to_mqtt(),
        last_will: None,
        birth: Vec::new(),
        subscriptions,
        manual_acks,
    };
    let subscriptions = config
        .subscriptions
        .iter()
        .map(|s| (s.filter.clone(), s.qos))
        .collect();
    let mut alerts = settings(format!("{}-alerts", config.client_id), Vec::new(), false);
    if let (Some(id), Some(tls)) = (&config.alert_identity, &mut alerts.broker.tls) {
        tls.cert_file.clone_from(&id.cert_file);
        tls.key_file.clone_from(&id.key_file);
    }
    (
        settings(config.client_id.to_string(), subscriptions, true),
        alerts,
    )
}

pub async fn run(
    mut config: AggregatordConfig,
    config_path: std::path::PathBuf,
) -> anyhow::Result<()> {
    let signals = daemon::signals().context("installing signal handlers")?;
    let Some(store) = open_store(&config.storage.path, &signals.shutdown).await? else {
        return Ok(());
    };
    let (ingest_settings, alert_settings) = mqtt_settings(&config);
    let (mqtt, mut events) = mqtt::connect(ingest_settings)?;
    info!(client_id = %config.client_id, storage = %config.storage.path.display(), "aggregatord started");
    for s in &config.subscriptions {
        if let Some((group, _)) = s.shared() {
            tracing::warn!(filter = %s.filter, group, by_topic = s.by_topic, "shared subscription: this instance stores its share only; seq gaps, meter checks and the dashboard see only that share (SCALING.md)");
        }
    }

    // Background work, all stopped by the same token after ingest ends.
    let background = CancellationToken::new();
    let mut tasks = tokio::task::JoinSet::new();
    let (forget_tx, forget_rx) = tokio::sync::mpsc::channel(4);
    tasks.spawn(control::serve(
        config.storage.socket(),
        store.clone(),
        forget_tx,
        background.clone(),
    ));
    let metrics = Arc::new(metrics::Metrics::default());
    let rollups = &config.storage.rollups;
    let policy = retention::Policy {
        keep: config.storage.retention,
        max_bytes: config.storage.max_size.map(|m| m.as_u64()),
        tiers: [
            (crate::store::Tier::Minute, rollups.minutes),
            (crate::store::Tier::Hour, rollups.hours),
        ]
        .into_iter()
        .filter_map(|(tier, keep)| Some((tier, keep?)))
        .collect(),
    };
    // Always: besides deleting by the policy, it compacts segments.
    tasks.spawn(retention::run(
        store.clone(),
        policy,
        metrics.clone(),
        background.clone(),
    ));
    let alerts_ready = Arc::new(Notify::new());
    let (alert_settings_tx, alert_settings_rx) =
        tokio::sync::watch::channel(alert_settings.clone());
    let active = store.active_alerts().context("loading active alerts")?;
    // Always, even without rules: a reload may add some, and the outbox may
    // hold changes from before a restart.
    let (alerts_mqtt, alert_events) = mqtt::connect(alert_settings)?;
    tasks.spawn(publish_alerts(
        store.clone(),
        alerts_mqtt,
        alert_events,
        alert_settings_rx,
        alerts_ready.clone(),
        background.clone(),
    ));
    if !active.is_empty() {
        info!(
            active = active.len(),
            "alerts still active from before the restart"
        );
    }
    let rules = crate::alerts::rules(&config.alerts).map_err(anyhow::Error::msg)?;
    let (engine, orphans) = Engine::new(rules, active.clone());

    let _ = metrics.acks_sent.set(mqtt.acks_sent());
    metrics
        .storage_ok
        .store(true, std::sync::atomic::Ordering::Relaxed);
    let live = Arc::new(dashboard::Live::default());
    if config.http.enabled {
        let token = dashboard::load_token(&config.http, &config_path)?;
        warm_up(&live, &store, &active).context("loading the last hour for the dashboard")?;
        tasks.spawn(dashboard::serve(
            dashboard::Server {
                config: config.http.clone(),
                token,
                live: live.clone(),
                metrics: metrics.clone(),
                store: store.clone(),
            },
            background.clone(),
        ));
    }
    let census = census::Census::new(
        store
            .topics()
            .context("loading the known sensors")?
            .into_iter()
            .filter_map(|t| match crate::contract::topic::parse(&t) {
                crate::contract::topic::Parsed::Reading { prefix, .. } => {
                    Some((prefix.to_owned(), t.clone()))
                }
                _ => None,
            }),
        crate::contract::Timestamp::now_millis(),
    );
    let mut ingest = ingest::Ingest::new(
        ingest_config(&config),
        store.clone(),
        mqtt.acker(),
        engine,
        census,
        ingest::Outputs {
            metrics,
            live,
            alerts_ready,
        },
        ingest::Inputs {
            stop: signals.shutdown.clone(),
            forget_requests: forget_rx,
        },
    );
    // Alerts whose rule was removed while we were stopped: cleared now.
    ingest.record_alerts(orphans).await?;
    daemon::notify_ready(&ingest.status_line(&mqtt.describe_link()));

    // The main loop: the one place that waits on signals and timers. Ingest's
    // work is done in the loop's body, never cancelled, so a stop or a reload
    // lands between batches, never inside one.
    let mut status = tokio::time::interval(STATUS_EVERY);
    let mut summary = tokio::time::interval(SUMMARY_EVERY);
    summary.tick().await;
    let mut watchdog = daemon::Watchdog::new();
    let result = loop {
        tokio::select! {
            () = signals.shutdown.cancelled() => break Ok(()),
            () = signals.reload.notified() => {
                if let Some(new) = daemon::reload_config::<AggregatordConfig>(&config_path) {
                    match reload(&mut ingest, &mqtt, &config, &new, &alert_settings_tx).await {
                        Ok(()) => config = new,
                        Err(e) => {
                            tracing::error!(error = %format!("{e:#}"), "reload failed; still running on the previous configuration");
                        }
                    }
                }
                daemon::notify_ready(&ingest.status_line(&mqtt.describe_link()));
            }
            // Ingest runs in this loop too: if it stalls, so does the watchdog,
            // and systemd restarts us.
            () = watchdog.tick() => {}
            _ = status.tick() => daemon::notify_status(&ingest.status_line(&mqtt.describe_link())),
            _ = summary.tick() => ingest.log_totals("ingest totals"),
            work = ingest.next(&mut events) => match work {
                ingest::Work::Closed => break Ok(()),
                work => if let Err(e) = ingest.handle(work, &mut events).await {
                    break Err(e);
                }
            },
        }
    };
    ingest.log_totals("aggregatord stopped");
    background.cancel();
    let stopped = tokio::time::timeout(BACKGROUND_GRACE, async {
        while let Some(done) = tasks.join_next().await {
            if let Ok(Err(e)) = done {
                tracing::warn!(error = %format!("{e:#}"), "background task failed");
            }
        }
    })
    .await;
    if stopped.is_err() {
        tracing::warn!(grace = ?BACKGROUND_GRACE, "background tasks did not stop in time; abandoning them");
        tasks.abort_all();
    }
    // Everything acknowledged was flushed before its ack; this leaves sled tidy.
    store.checkpoint().context("final flush")?;
    // Unread events are redelivered next time; dropping them now means the
    // connection task never waits on us while it sends the last acks.
    drop(events);
    mqtt.close(CLOSE_GRACE).await;
    result
}

/// Opens the database, waiting while that fails for an I/O reason (a full
/// disk) or while another process holds it (a dump): exiting would only have
/// systemd start us again into the same failure, and the broker keeps our
/// session's messages meanwhile, since we have not connected. `None` if told
/// to stop first. A damaged database is fatal: waiting will not change it.
async fn open_store(path: &Path, stop: &CancellationToken) -> anyhow::Result<Option<Store>> {
    let mut retry = Duration::from_millis(200);
    let mut failing = false;
    loop {
        let p = path.to_owned();
        let opened = tokio::task::spawn_blocking(move || Store::open(&p))
            .await
            .context("storage task panicked")?;
        match opened {
            Ok(store) => {
                if failing {
                    info!("storage works again; starting");
                }
                return Ok(Some(store));
            }
            // Held by another process: a dump of the stopped store, most
            // likely, which lets go in a moment.
            Err(e @ StoreError::Locked { .. }) => {
                if !std::mem::replace(&mut failing, true) {
                    tracing::warn!(error = %e, "waiting for the database");
                }
                daemon::notify_status(&format!("waiting for storage: {e}"));
            }
            Err(e) if e.is_io() => {
                if !std::mem::replace(&mut failing, true) {
                    tracing::error!(error = %e, "STORAGE FAILED: cannot open the database; retrying until it works (the broker keeps what arrives meanwhile)");
                }
                daemon::notify_status(&format!("waiting for storage: {e}"));
            }
            Err(e) => return Err(anyhow::Error::from(e).context("opening storage")),
        }
        tokio::select! {
            () = stop.cancelled() => return Ok(None),
            () = tokio::time::sleep(retry) => {}
        }
        retry = (retry * 2).min(Duration::from_secs(5));
    }
}

/// The dashboard starts with the last hour of readings and the active alerts.
fn warm_up(
    live: &dashboard::Live,
    store: &Store,
    active: &[crate::contract::Alert],
) -> anyhow::Result<()> {
    let hour_ago = crate::contract::Timestamp(
        crate::contract::Timestamp::now_millis().0 - chrono::Duration::hours(1),
    );
    // Only what the sparklines keep (one point per step): reading the whole
    // hour could be millions of rows for fast sensors.
    for r in store.thinned(hour_ago, dashboard::SPARK_STEP) {
        live.reading(&r?, true);
    }
    for a in active {
        live.alert(a);
    }
    Ok(())
}

/// The alert connection's task: publishes the outbox, follows reloads.
async fn publish_alerts(
    store: Store,
    mqtt: mqtt::Handle,
    mut events: tokio::sync::mpsc::Receiver<mqtt::Event>,
    mut settings: tokio::sync::watch::Receiver<mqtt::Settings>,
    ready: Arc<Notify>,
    stop: CancellationToken,
) -> anyhow::Result<()> {
    {
        let publisher = publisher::run(store, &mqtt, ready, stop);
        tokio::pin!(publisher);
        loop {
            tokio::select! {
                () = &mut publisher => break,
                // Nothing arrives on this connection; drain so the supervisor never waits.
                Some(_) = events.recv() => {}
                Ok(()) = settings.changed() => {
                    let new = settings.borrow_and_update().clone();
                    if let Err(e) = mqtt.reconfigure(new) {
                        tracing::error!(error = %e, "alert connection keeps its previous settings");
                    }
                }
            }
        }
    }
    // Nobody reads events any more; dropped, so the connection task never waits on them.
    drop(events);
    mqtt.close(CLOSE_GRACE).await;
    Ok(())
}

/// Applies a reloaded config: rules and batching live, broker/TLS/subscription
/// changes by reconnecting; storage settings only at the next start.
async fn reload(
    ingest: &mut ingest::Ingest,
    mqtt: &mqtt::Handle,
    old: &AggregatordConfig,
    new: &AggregatordConfig,
    alert_settings: &tokio::sync::watch::Sender<mqtt::Settings>,
) -> anyhow::Result<()> {
    let changed = config::changed_keys(old, new);
    // Everything that can refuse the new config first, so a refusal changes nothing.
    let rules = crate::alerts::rules(&new.alerts).map_err(anyhow::Error::msg)?;
    let (ingest_settings, alerts) = mqtt_settings(new);
    let reconnecting = mqtt.reconfigure(ingest_settings)?;
    alert_settings.send_replace(alerts);
    ingest.reconfigure(ingest_config(new), rules).await?;
    if new.storage != old.storage {
        tracing::warn!("storage settings take effect at the next start");
    }
    info!(changed = ?changed, reconnecting, "configuration reloaded");
    Ok(())
}
