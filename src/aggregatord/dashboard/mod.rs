//! The HTTP side of aggregatord: a live dashboard page, its JSON API and event
//! stream, Prometheus metrics, and health checks. Loopback by default.
//! It never writes what it shows: ingest updates [`Live`], and the store is only read.
//!
//! | Path | What |
//! |---|---|
//! | `/` | the page (embedded; no internet needed) |
//! | `/events` | Server-Sent Events: a snapshot, then changes |
//! | `/api/state` | the snapshot as JSON |
//! | `/api/history?sensor=TOPIC&since=1h&until=&points=300&tier=auto` | one sensor, downsampled, from the raw readings or a rollup tier |
//! | `/api/alerts` | active alerts and the latest changes |
//! | `/metrics` | Prometheus text format |
//! | `/favicon.ico` | the icon (SVG) |
//! | `/healthz`, `/readyz` | alive; connected to the broker and storage writable |

mod guard;
mod history;
mod live;

pub use live::{Live, SPARK_STEP};

use super::metrics::Metrics;
use crate::contract::Timestamp;
use crate::store::Store;
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use std::fmt::Write as _;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use tracing::info;

const PAGE: &str = include_str!("page.html");
/// How often connected browsers get the message rate.
const RATE_EVERY: Duration = Duration::from_secs(2);

#[derive(Clone)]
pub(super) struct App {
    /// What the page shows; ingest writes it, handlers only read.
    live: Arc<Live>,
    /// For `/metrics` and `/readyz`, and the count of event-stream clients.
    metrics: Arc<Metrics>,
    /// Read only: history queries and recent alert changes.
    store: Store,
    /// Ends every event stream at shutdown, which would otherwise wait for them.
    stop: CancellationToken,
    /// One permit per browser following `/events` (`http.max_clients`).
    clients: Arc<tokio::sync::Semaphore>,
    /// `http.token_file`'s token: required on every request but `/healthz`.
    token: Option<Arc<str>>,
    /// History queries scan storage: a few at a time, the rest wait their turn,
    /// so a crowd of `since=1000y` requests cannot take every core from ingest.
    queries: Arc<tokio::sync::Semaphore>,
}

/// History queries running at once.
const QUERIES_AT_ONCE: usize = 2;

/// Reads and checks `http.token_file`; errors are config errors (exit 78).
pub fn load_token(
    config: &crate::config::HttpConfig,
    config_file: &std::path::Path,
) -> Result<Option<Arc<str>>, crate::config::ConfigError> {
    use std::os::unix::fs::PermissionsExt;
    let Some(path) = &config.token_file else {
        return Ok(None);
    };
    let invalid = |message: String| crate::config::ConfigError::Invalid {
        file: config_file.to_owned(),
        line: None,
        key: "http.token_file".into(),
        message,
    };
    let text =
        std::fs::read_to_string(path).map_err(|e| invalid(format!("{}: {e}", path.display())))?;
    let mode = std::fs::metadata(path).map_or(0, |m| m.permissions().mode());
    if mode & 0o077 != 0 {
        return Err(invalid(format!(
            "{} is readable by group or others (mode {:04o}); chmod 600 it",
            path.display(),
            mode & 0o7777
        )));
    }
    let token = text.trim();
    if token.len() < 16 || !token.chars().all(|c| c.is_ascii_alphanumeric()) {
        return Err(invalid(format!(
            "{}: the token must be 16 or more letters and digits (e.g. openssl rand -hex 32)",
            path.display()
        )));
    }
    Ok(Some(Arc::from(token)))
}

/// Lets a request through if no token is set, it is `/healthz`, or it carries
/// the token (`Authorization: Bearer`, or `?token=` for the page and its
/// EventSource, which cannot set headers).
async fn authorize(
    State(app): State<App>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let Some(want) = app.token.as_deref() else {
        return next.run(request).await;
    };
    // The icon is no secret, and browsers fetch it without the page's query.
    if matches!(request.uri().path(), "/healthz" | "/favicon.ico") {
        return next.run(request).await;
    }
    let bearer = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    let query = request
        .uri()
        .query()
        .and_then(|q| q.split('&').find_map(|kv| kv.strip_prefix("token=")));
    if bearer
        .or(query)
        .is_some_and(|t| same(t.as_bytes(), want.as_bytes()))
    {
        return next.run(request).await;
    }
    (
        StatusCode::UNAUTHORIZED,
        [(header::WWW_AUTHENTICATE, "Bearer")],
        "a token is required (http.token_file): Authorization: Bearer TOKEN, or ?token=TOKEN\n",
    )
        .into_response()
}

/// Compares without stopping at the first difference (no timing hint).
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |d, (x, y)| d | (x ^ y)) == 0
}

/// What the HTTP server serves from.
pub struct Server {
    /// `http:` from the config: address, caps and timeout.
    pub config: crate::config::HttpConfig,
    /// From `http.token_file` ([`load_token`]).
    pub token: Option<Arc<str>>,
    /// What the page shows; shared with ingest, which writes it.
    pub live: Arc<Live>,
    /// The counters; shared with ingest.
    pub metrics: Arc<Metrics>,
    /// For history and recent alerts; only read.
    pub store: Store,
}

/// Runs the HTTP server on a thread and runtime of its own until `stop`:
/// however many browsers or history queries there are, they never share a
/// thread with ingest and its MQTT connection (whose keep-alive once lapsed
/// under a crowd of event streams).
pub async fn serve(server: Server, stop: CancellationToken) -> anyhow::Result<()> {
    use anyhow::Context;
    let (done, result) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("dashboard".into())
        .spawn(move || {
            let result = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .context("starting the dashboard's runtime")
                .and_then(|rt| rt.block_on(run(server, stop)));
            let _ = done.send(result);
        })
        .context("starting the dashboard's thread")?;
    result.await.context("the dashboard's thread ended")?
}

async fn run(server: Server, stop: CancellationToken) -> anyhow::Result<()> {
    use anyhow::Context;
    let Server {
        config,
        token,
        live,
        metrics,
        store,
    } = server;
    let app = App {
        live,
        metrics,
        store,
        stop: stop.clone(),
        clients: Arc::new(tokio::sync::Semaphore::new(config.max_clients)),
        token,
        queries: Arc::new(tokio::sync::Semaphore::new(QUERIES_AT_ONCE)),
    };
    let router = Router::new()
        .route("/", get(|| async { Html(PAGE) }))
        .route("/events", get(events))
        .route("/api/state", get(state))
        .route("/api/history", get(history::history))
        .route("/api/alerts", get(alerts))
        .route("/metrics", get(metrics_text))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/favicon.ico", get(favicon))
        .route("/readyz", get(ready))
        .route_layer(axum::middleware::from_fn_with_state(app.clone(), authorize))
        .with_state(app);
    let listen = config.listen;
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("dashboard: cannot listen on {listen}"))?;
    let bound = listener.local_addr()?;
    if !bound.ip().is_loopback() {
        tracing::warn!(%bound, "dashboard reachable from other machines (http.listen is not loopback)");
    }
    info!(url = %format!("http://{bound}/"), "dashboard listening");
    let listener = guard::Guarded::new(listener, config.max_connections, config.idle_timeout);
    axum::serve(listener, router)
        .with_graceful_shutdown(async move { stop.cancelled().await })
        .await
        .context("dashboard server")
}

/// A small SVG icon (browsers take SVG at this path when the type says so):
/// without one every page load logs a 404.
async fn favicon() -> Response {
    const ICON: &str = concat!(
        r##"<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 16 16">"##,
        r##"<rect width="16" height="16" rx="3" fill="#1d2330"/>"##,
        r##"<path d="M3 12 L6 7 L9 9 L13 4" fill="none" stroke="#60a5fa" stroke-width="2"/></svg>"##
    );
    (
        [
            (header::CONTENT_TYPE, "image/svg+xml"),
            (header::CACHE_CONTROL, "max-age=86400"),
        ],
        ICON,
    )
        .into_response()
}

async fn state(State(app): State<App>) -> Json<serde_json::Value> {
    Json(app.live.snapshot(Timestamp::now_millis()))
}

/// The store's count of damage found (at open, or by any read since).
fn note_damage(app: &App) -> u64 {
    let damage = app.store.damage().len() as u64;
    app.metrics.storage_damage.store(damage, Relaxed);
    damage
}

async fn metrics_text(State(app): State<App>) -> Response {
    note_damage(&app);
    let mut text = app.metrics.render();
    let store = app.store.clone();
    // A look at file sizes: off the runtime's thread all the same. Left
    // out while storage fails.
    if let Ok(Ok(usage)) = tokio::task::spawn_blocking(move || store.usage()).await {
        crate::aggregatord::metrics::Metrics::render_usage(&mut text, &usage);
    }
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response()
}

async fn ready(State(app): State<App>) -> Response {
    let connected = app.metrics.connected.load(Relaxed);
    let storage = app.metrics.storage_ok.load(Relaxed);
    let mut body = format!("broker: {}\nstorage: {}\n", ok(connected), ok(storage));
    // Ready all the same: what is damaged is past, ingest works. Said here
    // (and in the metric) so that a health check's reader sees it.
    let damage = note_damage(&app);
    if damage > 0 {
        let _ = writeln!(
            body,
            "damage: {damage} damaged regions found (see the log: STORAGE DAMAGED)"
        );
    }
    let status = if connected && storage {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, body).into_response()
}

fn ok(b: bool) -> &'static str {
    if b {
        "ok"
    } else {
        "not ready"
    }
}

pub(super) fn bad_request(message: impl Into<String>) -> Response {
    (StatusCode::BAD_REQUEST, format!("{}\n", message.into())).into_response()
}

async fn alerts(State(app): State<App>) -> Response {
    let store = app.store.clone();
    let recent = tokio::task::spawn_blocking(move || {
        let all: Result<Vec<_>, _> = store.alerts().collect();
        all.map(|mut v| {
            v.reverse();
            v.truncate(100);
            v
        })
    })
    .await;
    match recent {
        Ok(Ok(recent)) => {
            Json(serde_json::json!({ "active": app.live.active_alerts(), "recent": recent }))
                .into_response()
        }
        _ => (StatusCode::INTERNAL_SERVER_ERROR, "storage unavailable\n").into_response(),
    }
}

/// Counts a connected browser, and holds its place, for as long as its stream lives.
struct Client {
    /// To count the browser out again when its stream ends.
    metrics: Arc<Metrics>,
    /// Its `http.max_clients` place, given back on drop.
    _place: tokio::sync::OwnedSemaphorePermit,
}

impl Drop for Client {
    fn drop(&mut self) {
        self.metrics.dashboard_clients.fetch_sub(1, Relaxed);
    }
}

/// A comment line, so that proxies and the idle timeout see a live stream.
const KEEP_ALIVE_EVERY: Duration = Duration::from_secs(15);

/// Server-Sent Events: the shared snapshot, then changes. Every event is
/// framed once and shared by all clients (`Bytes` clones, not copies), and a
/// client that does not read simply stops being polled: what it misses is
/// replaced by a fresh snapshot when it catches up, and a client that stops
/// reading altogether is cut off by the connection's idle timeout.
async fn events(State(app): State<App>) -> Response {
    use tokio::sync::broadcast::error::RecvError;
    let Ok(place) = app.clients.clone().try_acquire_owned() else {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            [(header::RETRY_AFTER, "10")],
            "too many dashboard clients (http.max_clients)\n",
        )
            .into_response();
    };
    // Subscribe before taking the snapshot, so no change falls between them.
    let rx = app.live.subscribe();
    let snapshot = app.live.snapshot_event(Timestamp::now_millis());
    app.metrics.dashboard_clients.fetch_add(1, Relaxed);
    let client = Client {
        metrics: app.metrics.clone(),
        _place: place,
    };
    let mut rate = tokio::time::interval(RATE_EVERY);
    rate.reset();
    let mut keep_alive = tokio::time::interval(KEEP_ALIVE_EVERY);
    keep_alive.reset();
    let state = (Some(snapshot), rx, rate, keep_alive, app, client);
    let stream = futures_util::stream::unfold(
        state,
        |(first, mut rx, mut rate, mut keep_alive, app, client)| async move {
            if let Some(first) = first {
                return Some((
                    Ok::<_, std::convert::Infallible>(first),
                    (None, rx, rate, keep_alive, app, client),
                ));
            }
            let event = tokio::select! {
                () = app.stop.cancelled() => return None,
                _ = keep_alive.tick() => axum::body::Bytes::from_static(b":\n\n"),
                _ = rate.tick() => {
                    let r = app.live.rate(Timestamp::now_millis());
                    live::sse_frame(&serde_json::json!({ "type": "rate", "data": r }).to_string())
                }
                message = rx.recv() => match message {
                    Ok(event) => event,
                    // Fell behind: start over from a fresh snapshot.
                    Err(RecvError::Lagged(_)) => app.live.snapshot_event(Timestamp::now_millis()),
                    Err(RecvError::Closed) => return None,
                },
            };
            Some((Ok(event), (None, rx, rate, keep_alive, app, client)))
        },
    );
    (
        [
            (header::CONTENT_TYPE, "text/event-stream"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        axum::body::Body::from_stream(stream),
    )
        .into_response()
}
