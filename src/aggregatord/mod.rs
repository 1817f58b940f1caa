//! aggregatord: subscribes, validates, stores durably, and shows the history.

mod dump;
mod ingest;

pub use dump::Format;

use crate::config::{self, AggregatordConfig};
use crate::daemon;
use crate::mqtt;
use crate::store::Store;
use anyhow::Context;
use std::path::Path;
use std::time::Duration;
use tracing::info;

/// How long a clean stop may take to send the last acknowledgements.
const CLOSE_GRACE: Duration = Duration::from_secs(5);

/// `aggregatord` (the daemon).
pub fn main(config_path: &Path, check_only: bool) -> anyhow::Result<()> {
    daemon::start(config_path, check_only, run)
}

/// `aggregatord dump`.
pub fn dump_main(config_path: &Path, format: Format, rejected: bool) -> anyhow::Result<()> {
    let config: AggregatordConfig = config::load(config_path)?;
    let store = Store::open(&config.storage.path)?;
    let out = std::io::stdout().lock();
    let result = if rejected {
        dump::rejected(&store, format, out)
    } else {
        dump::readings(&store, format, out)
    };
    match result {
        // `aggregatord dump | head` is normal use, not an error.
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        other => other.context("writing the dump"),
    }
}

pub async fn run(config: AggregatordConfig) -> anyhow::Result<()> {
    let shutdown = daemon::shutdown_on_signals().context("installing signal handlers")?;
    let store = Store::open(&config.storage.path).context("opening storage")?;
    let (mqtt, events) = mqtt::connect(mqtt::Settings {
        client_id: config.client_id.to_string(),
        broker: config.broker.clone(),
        last_will: None,
        birth: Vec::new(),
        subscriptions: config
            .subscriptions
            .iter()
            .map(|s| (s.filter.clone(), s.qos))
            .collect(),
        manual_acks: true,
    })?;
    info!(
        client_id = %config.client_id,
        storage = %config.storage.path.display(),
        "aggregatord started"
    );

    let mut ingest = ingest::Ingest::new(config.ingest.clone(), store.clone(), mqtt);
    let result = ingest.run(events, shutdown).await;
    ingest.log_totals("aggregatord stopped");
    // Everything acknowledged was flushed before its ack; this covers the rest
    // (rejected messages) and leaves sled's files tidy.
    store.flush().context("final flush")?;
    ingest.into_mqtt().close(CLOSE_GRACE).await;
    result
}
