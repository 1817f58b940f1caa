//! aggregatord: subscribes, validates, stores durably, and shows the history.

mod control;
mod dump;
mod ingest;
mod publisher;
mod retention;

pub use dump::{Format, Request, What};

use crate::alerts::Engine;
use crate::config::{self, AggregatordConfig};
use crate::daemon;
use crate::mqtt;
use crate::store::{Store, StoreError};
use anyhow::Context;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tracing::info;

/// How long a clean stop may take to send the last acknowledgements.
const CLOSE_GRACE: Duration = Duration::from_secs(5);

/// `aggregatord` (the daemon).
pub fn main(config_path: &Path, check_only: bool) -> anyhow::Result<()> {
    daemon::start(config_path, check_only, run)
}

/// `aggregatord dump` / `stats`: opens the database directly when aggregatord is
/// stopped, and asks it over its control socket when it is running.
pub fn dump_main(config_path: &Path, request: &Request) -> anyhow::Result<()> {
    let config: AggregatordConfig = config::load(config_path)?;
    let out = std::io::stdout().lock();
    let result = match Store::open(&config.storage.path) {
        Ok(store) => dump::answer(&store, request, out).map_err(anyhow::Error::from),
        Err(StoreError::Locked { .. }) => control::ask(&config.storage.socket(), request, out),
        Err(e) => Err(e.into()),
    };
    match result {
        // `aggregatord dump | head` is normal use, not an error.
        Err(e)
            if e.downcast_ref::<std::io::Error>()
                .is_some_and(|e| e.kind() == std::io::ErrorKind::BrokenPipe) =>
        {
            Ok(())
        }
        other => other.context("dump"),
    }
}

pub async fn run(config: AggregatordConfig) -> anyhow::Result<()> {
    let shutdown = daemon::shutdown_on_signals().context("installing signal handlers")?;
    let store = Store::open(&config.storage.path).context("opening storage")?;
    let settings = |client_id: String, subscriptions, manual_acks| mqtt::Settings {
        client_id,
        broker: config.broker.clone(),
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
    let (mqtt, events) =
        mqtt::connect(settings(config.client_id.to_string(), subscriptions, true))?;
    info!(client_id = %config.client_id, storage = %config.storage.path.display(), "aggregatord started");

    // Background work, all stopped by the same token after ingest ends.
    let background = CancellationToken::new();
    let mut tasks = tokio::task::JoinSet::new();
    tasks.spawn(control::serve(
        config.storage.socket(),
        store.clone(),
        background.clone(),
    ));
    if let Some(keep) = config.storage.retention {
        tasks.spawn(retention::run(store.clone(), keep, background.clone()));
    }
    let alerts_ready = Arc::new(Notify::new());
    let active = store.active_alerts().context("loading active alerts")?;
    if !config.alerts.is_empty()
        || !store
            .alert_outbox()
            .context("reading the alert outbox")?
            .is_empty()
    {
        let (alerts_mqtt, alert_events) = mqtt::connect(settings(
            format!("{}-alerts", config.client_id),
            Vec::new(),
            false,
        ))?;
        let (store, ready, stop) = (store.clone(), alerts_ready.clone(), background.clone());
        tasks.spawn(async move {
            // Nothing arrives on this connection; drain so the supervisor never waits.
            let mut alert_events = alert_events;
            let drain = tokio::spawn(async move { while alert_events.recv().await.is_some() {} });
            let handle = publisher::run(store, alerts_mqtt, ready, stop).await;
            handle.close(CLOSE_GRACE).await;
            drain.abort();
            Ok(())
        });
    }
    if !active.is_empty() {
        info!(
            active = active.len(),
            "alerts still active from before the restart"
        );
    }
    let engine = Engine::new(config.alerts.clone(), active);

    let mut ingest = ingest::Ingest::new(
        config.ingest.clone(),
        store.clone(),
        mqtt,
        engine,
        alerts_ready,
    );
    let result = ingest.run(events, shutdown).await;
    ingest.log_totals("aggregatord stopped");
    background.cancel();
    while let Some(done) = tasks.join_next().await {
        if let Ok(Err(e)) = done {
            tracing::warn!(error = %format!("{e:#}"), "background task failed");
        }
    }
    // Everything acknowledged was flushed before its ack; this leaves sled tidy.
    store.flush().context("final flush")?;
    ingest.into_mqtt().close(CLOSE_GRACE).await;
    result
}
