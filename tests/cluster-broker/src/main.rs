//! One RMQTT 0.24.0 broker node with the raft cluster plugin, for roomsense's
//! opt-in cluster tests (see ../README.md).
//!
//! Modelled on rmqtt's own server binary, `rmqtt-bin/src/server.rs` in the
//! rmqtt repository at v0.24.0 (crate `rmqttd`, not on crates.io), and kept
//! in the same order so the two can be compared line by line. Differences:
//! - plugins are registered by hand below instead of by rmqtt-bin's build.rs,
//!   which generates the same `register_named` calls from its Cargo.toml;
//! - only the plugins a cluster test needs are linked;
//! - TCP and TLS listeners only (no ws, wss or quic features);
//! - `-f` and `--id` are required, and the config file must exist;
//! - logging goes to stderr only (rmqtt-bin can also write a file);
//! - no jemalloc, and nothing for the `delayed` feature (absent from the
//!   crates.io 0.24.0 release of rmqtt-conf/rmqtt-net; the git tree has it).
//!
//! Usage: cluster-broker -f node1/rmqtt.toml --id 1
//! All of rmqtt's own options work (see rmqtt-conf 0.5.0 src/options.rs):
//! --node-grpc-addrs, --raft-peer-addrs and --raft-leader-id override the
//! same keys of the cluster plugin's config file.

#![deny(unsafe_code)]

use std::path::Path;
use std::time::Duration;

use anyhow::anyhow;
use clap::Parser;

use rmqtt::args::CommandArgs;
use rmqtt::context::{
    CircuitBreakerConfig, CountBasedWindowConfig, ServerContext, TimeBasedWindowConfig, WindowConfig,
};
use rmqtt::net::{tls_provider, Builder};
use rmqtt::node::Node;
use rmqtt::server::MqttServer;
use rmqtt::Result;
use rmqtt_conf::{listener::Listener, logging::Log, Options, Settings};

#[tokio::main]
async fn main() -> Result<()> {
    if let Err(e) = run().await {
        // Also to stderr: the logger may not be up yet when this fails.
        log::error!("{e:#}");
        eprintln!("cluster-broker: {e:#}");
        std::process::exit(1);
    }
    Ok(())
}

async fn run() -> Result<()> {
    let opts = Options::parse();
    if opts.version {
        println!("{} rustc/{}", Node::version(), Node::rustc_version());
        return Ok(());
    }
    check_options(&opts)?;

    // Loads, in order: /etc/rmqtt/rmqtt.toml, /etc/rmqtt.toml and ./rmqtt.toml
    // when they exist, RMQTT_* environment variables, then the -f file; then
    // --id overrides node.id (rmqtt-conf 0.5.0 src/lib.rs, Settings::new).
    let conf = Settings::init(opts)?;

    // rustls is built here with both aws-lc-rs and ring (cargo tree -e features),
    // so it cannot pick a process default itself; install aws-lc-rs, which
    // rmqtt-net's TLS listeners use, as rmqtt-bin does.
    tls_provider::default_provider()
        .install_default()
        .map_err(|_| anyhow!("a rustls crypto provider was already installed"))?;

    logger_init(&conf.log)?;

    // This node's identity and "busy" thresholds (node.* keys).
    let node = Node::new(
        conf.node.id,
        conf.node.busy.loadavg,
        conf.node.busy.cpuloadavg,
        conf.node.busy.update_interval,
    );

    log::info!("Starting rmqtt (version={}, rustc={})", Node::version(), Node::rustc_version());
    // Logs node id, rpc address and the cluster options given on the command line.
    let _ = Settings::logs();

    // The gRPC clients the cluster plugin opens to the other nodes use this
    // circuit breaker (circuit_breaker.* keys; defaults when absent).
    let cb_config = {
        let cb = &conf.circuit_breaker;
        let window = match cb.sliding_window_type.as_str() {
            "CountBased" => WindowConfig::CountBased(CountBasedWindowConfig {
                sliding_window_size: cb.sliding_window_size,
            }),
            _ => WindowConfig::TimeBased(TimeBasedWindowConfig {
                sliding_window_duration: cb.sliding_window_duration,
                sliding_window_size: cb.sliding_window_size,
            }),
        };
        CircuitBreakerConfig {
            failure_rate_threshold: cb.failure_rate_threshold,
            window,
            minimum_number_of_calls: cb.minimum_number_of_calls,
            wait_duration_in_open: cb.wait_duration_in_open,
            slow_call_duration_threshold: cb.slow_call_duration_threshold,
            slow_call_rate_threshold: cb.slow_call_rate_threshold,
            name: "grpc".into(),
        }
    };

    // The broker's shared state. `args` carries the command-line cluster
    // options to the cluster plugin (PluginConfig::merge); plugins_config_dir
    // is where each plugin reads `<plugin name>.toml` (plugins.dir).
    let scx = ServerContext::new()
        .args(config_args(conf))
        .node(node)
        .task_exec_workers(conf.task.exec_workers)
        .task_exec_queue_max(conf.task.exec_queue_max)
        .busy_check_enable(conf.node.busy.check_enable)
        .busy_handshaking_limit(conf.node.busy.handshaking)
        .mqtt_max_sessions(conf.mqtt.max_sessions)
        .plugins_config_dir(conf.plugins.dir.as_str())
        .circuit_breaker_config(cb_config)
        .build()
        .await;

    // Node-to-node gRPC server (rpc.server_addr): other nodes forward
    // publishes, session takeovers and health queries to it. It must be up
    // before the cluster plugin starts, as peers call it while joining.
    scx.node.start_grpc_server(scx.clone(), conf.rpc.server_addr, conf.rpc.reuseaddr, conf.rpc.reuseport);

    // Starting the cluster plugin blocks until this node is in the raft
    // cluster (or fails), so the MQTT listeners below open only once joined.
    register_plugins(&scx, &conf.plugins.default_startups, &conf.plugins.disabled_default_startups).await?;

    let listeners = &conf.listeners;
    if !(listeners.wss.is_empty() && listeners.wsss.is_empty() && listeners.quics.is_empty()) {
        return Err(anyhow!("only listener.tcp.* and listener.tls.* are supported by this build"));
    }

    let mut builder = MqttServer::new(scx);

    // Plain TCP listeners (listener.tcp.<name>.*). When the config has neither
    // tcp nor tls listeners, rmqtt-conf adds a default one on 0.0.0.0:1883.
    for listen_cfg in listeners.tcps.values() {
        let listener = config_builder(listen_cfg)
            .bind()
            .map_err(|e| anyhow!("Failed to bind TCP listener on {}: {}", listen_cfg.addr, e))?
            .tcp()?;
        builder = builder.listener(listener);
    }

    // TLS listeners (listener.tls.<name>.*): mutual TLS when cross_certificate = true.
    for listen_cfg in listeners.tlss.values() {
        let listener = config_builder(listen_cfg)
            .bind()
            .map_err(|e| anyhow!("Failed to bind TLS listener on {}: {}", listen_cfg.addr, e))?
            .tls()?;
        builder = builder.listener(listener);
    }

    builder.build().start();
    // Straight to stderr, whatever the log level: scripts wait for this line.
    // The listeners are bound by now (bind() above), and the cluster joined.
    eprintln!("cluster-broker node {} ready", conf.node.id);

    // Run until Ctrl+C or SIGTERM.
    let (shutdown_tx, shutdown_rx) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        use tokio::signal::unix::{signal, SignalKind};
        let mut term_signal = signal(SignalKind::terminate()).expect("Failed to create signal handler");
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term_signal.recv() => {}
        }
        let _ = shutdown_tx.send(());
    });
    let _ = shutdown_rx.await;

    // As rmqtt-bin: no graceful cleanup (the cluster plugin cannot be
    // stopped), just let the log flush and exit.
    tokio::time::sleep(Duration::from_millis(100)).await;
    std::process::exit(0);
}

/// rmqtt-conf loads a missing `-f` file silently (`required(false)`) and
/// falls back to node.id = 0 and default ports, which in a 3-node test would
/// give confusing failures; insist on both.
fn check_options(opts: &Options) -> Result<()> {
    match opts.cfg_name.as_deref() {
        None => return Err(anyhow!("a config file is required: -f <rmqtt.toml>")),
        Some(f) if !Path::new(f).is_file() => return Err(anyhow!("config file not found: {f}")),
        Some(_) => {}
    }
    match opts.node_id {
        Some(id) if id > 0 => Ok(()),
        _ => Err(anyhow!("a node id > 0 is required: --id <N>")),
    }
}

/// The plugins this tool links, registered under their crate names: the
/// name picks the config file `<plugins.dir>/<name>.toml`.
///
/// A plugin starts now (new + init + start) when it is started by default
/// or listed in plugins.default_startups, and is not listed in
/// plugins.disabled_default_startups: the rule rmqtt-bin's build.rs writes
/// into its generated plugin.rs. The flags are those of rmqtt-bin's
/// [package.metadata.plugins]: only rmqtt-http-api starts by default, and
/// rmqtt-cluster-raft is immutable (cannot be stopped once started).
async fn register_plugins(scx: &ServerContext, startups: &[String], disabled: &[String]) -> Result<()> {
    let start = |name: &str, default_startup: bool| {
        (default_startup || startups.iter().any(|s| s == name)) && !disabled.iter().any(|s| s == name)
    };
    let failed = |name: &str, e: anyhow::Error| anyhow!("Failed to register '{name}' plug-in, {e:#}");

    // First: makes this node join (or, for leader_id, found) the raft cluster.
    // Replaces the router and shared state so subscriptions, sessions and
    // $share groups are cluster-wide.
    let name = "rmqtt-cluster-raft";
    rmqtt_cluster_raft::register_named(scx, name, start(name, false), true)
        .await
        .map_err(|e| failed(name, e))?;

    // Retained messages (in memory; the cluster plugin copies them to peers).
    let name = "rmqtt-retainer";
    rmqtt_retainer::register_named(scx, name, start(name, false), false).await.map_err(|e| failed(name, e))?;

    // $share/<group>/<topic>: picks one member of a group (strategy in its config).
    let name = "rmqtt-shared-subscription";
    rmqtt_shared_subscription::register_named(scx, name, start(name, false), false)
        .await
        .map_err(|e| failed(name, e))?;

    // Last, so that its HTTP port answering means the others have started.
    // Its HTTP server binds at registration even if not started.
    #[cfg(feature = "http-api")]
    {
        let name = "rmqtt-http-api";
        rmqtt_http_api::register_named(scx, name, start(name, true), false).await.map_err(|e| failed(name, e))?;
    }
    Ok(())
}

/// The listener settings of rmqtt.toml, as rmqtt-bin passes them to
/// rmqtt-net's listener builder (minus `delayed_publish`, which the 0.5.0
/// releases of rmqtt-conf and rmqtt-net do not have).
fn config_builder(cfg: &Listener) -> Builder {
    Builder::new()
        .name(cfg.name.as_str())
        .laddr(cfg.addr)
        .max_connections(cfg.max_connections)
        .max_handshaking_limit(cfg.max_handshaking_limit)
        .max_packet_size(cfg.max_packet_size.as_u32())
        .backlog(cfg.backlog)
        .nodelay(cfg.nodelay)
        .reuseaddr(cfg.reuseaddr)
        .reuseport(cfg.reuseport)
        .tcp_keepalive(cfg.tcp_keepalive)
        .allow_anonymous(cfg.allow_anonymous)
        .min_keepalive(cfg.min_keepalive)
        .max_keepalive(cfg.max_keepalive)
        .allow_zero_keepalive(cfg.allow_zero_keepalive)
        .keepalive_backoff(cfg.keepalive_backoff)
        .max_inflight(cfg.max_inflight)
        .handshake_timeout(cfg.handshake_timeout)
        .max_mqueue_len(cfg.max_mqueue_len)
        .mqueue_rate_limit(cfg.mqueue_rate_limit.0, cfg.mqueue_rate_limit.1)
        .max_clientid_len(cfg.max_clientid_len)
        .max_qos_allowed(cfg.max_qos_allowed)
        .max_topic_levels(cfg.max_topic_levels)
        .session_expiry_interval(cfg.session_expiry_interval)
        .max_session_expiry_interval(cfg.max_session_expiry_interval)
        .message_retry_interval(cfg.message_retry_interval)
        .message_expiry_interval(cfg.message_expiry_interval)
        .max_subscriptions(cfg.max_subscriptions)
        .max_topic_aliases(cfg.max_topic_aliases)
        .tls_cross_certificate(cfg.cross_certificate)
        .tls_cert(cfg.cert.clone())
        .tls_key(cfg.key.clone())
        .tls_client_ca_certs(cfg.client_ca_certs.clone())
        .limit_subscription(cfg.limit_subscription)
        .proxy_protocol(cfg.proxy_protocol)
        .proxy_protocol_timeout(cfg.proxy_protocol_timeout)
        .cert_cn_as_username(cfg.cert_cn_as_username)
        .cert_subject_dn_as_username(cfg.cert_subject_dn_as_username)
        .collect_cert_info(cfg.collect_cert_info)
        .idle_timeout(cfg.idle_timeout)
}

/// The command-line cluster options, handed to the plugins through the
/// server context (rmqtt 0.24.0 src/args.rs).
fn config_args(cfg: &Settings) -> CommandArgs {
    CommandArgs {
        node_id: cfg.opts.node_id,
        plugins_default_startups: cfg.opts.plugins_default_startups.clone(),
        node_grpc_addrs: cfg.opts.node_grpc_addrs.clone(),
        raft_peer_addrs: cfg.opts.raft_peer_addrs.clone(),
        raft_leader_id: cfg.opts.raft_leader_id,
    }
}

/// stderr logging at log.level (RUST_LOG overrides), or none for log.to = "off".
/// rmqtt logs through the `log` crate; tracing-subscriber's default
/// `tracing-log` feature forwards those records.
fn logger_init(cfg: &Log) -> Result<()> {
    if cfg.to.off() {
        return Ok(());
    }
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(cfg.level.as_str()));
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(filter)
        .with_ansi(false)
        .with_target(true)
        .try_init()
        .map_err(|e| anyhow!("logger init failed: {e}"))
}
