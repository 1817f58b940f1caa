//! The local control socket: how `aggregatord dump` and `stats` reach a running
//! aggregatord (sled lets only one process open the database).
//! It writes no records itself (dump.rs does) and forgets nothing: a `forget`
//! goes to ingest as a [`Forget`].
//!
//! Protocol: the client sends one JSON [`Request`] line; the daemon answers
//! `ok` or `error: …` on one line, then the output, then closes. The socket is
//! mode 0600: whoever may read it may read the data (run as the daemon's user).

use super::dump::{self, Request};
use crate::daemon::RateLimit;
use crate::store::Store;
use anyhow::Context;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncReadExt};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

/// Longest request line accepted (a query is a few hundred bytes).
const MAX_REQUEST: u64 = 64 * 1024;
/// Requests answered at once; more wait in the kernel's backlog.
const MAX_CLIENTS: usize = 16;
/// A client must send its request line within this (the dump command does at once).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// A reader that stops reading (a paused pager) is cut off after this.
const WRITE_TIMEOUT: Duration = Duration::from_secs(30);

/// An `aggregatord forget` request, handed to ingest (which owns the alert
/// engine, the census and the dashboard's state); the reply is the report, or
/// why nothing was forgotten.
pub struct Forget {
    /// What to forget: a room, or sensors by topic, id or type (times are ignored).
    pub query: crate::store::Query,
    /// Ingest's answer; dropped unanswered if ingest stops, which the client is told.
    pub reply: tokio::sync::oneshot::Sender<Result<String, String>>,
}

/// Serves dump (and forget) requests until `stop`. Removes the socket file when done.
pub async fn serve(
    path: PathBuf,
    store: Store,
    forget: tokio::sync::mpsc::Sender<Forget>,
    stop: CancellationToken,
) -> anyhow::Result<()> {
    // A socket file left by a crash would make bind fail; only a socket is removed.
    if std::fs::symlink_metadata(&path)
        .is_ok_and(|m| std::os::unix::fs::FileTypeExt::is_socket(&m.file_type()))
    {
        let _ = std::fs::remove_file(&path);
    }
    let listener = tokio::net::UnixListener::bind(&path)
        .with_context(|| format!("{}: cannot create the control socket", path.display()))?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
        .with_context(|| format!("{}: cannot restrict the control socket", path.display()))?;
    debug!(socket = %path.display(), "control socket ready");
    let slots = Arc::new(Semaphore::new(MAX_CLIENTS));
    let mut failures = 0u32;
    let mut warned = RateLimit::new(Duration::from_secs(10));
    loop {
        // A free slot first: at the cap, further clients wait in the backlog
        // instead of each holding a task and a file descriptor here.
        let slot = tokio::select! {
            () = stop.cancelled() => break,
            slot = slots.clone().acquire_owned() => match slot {
                Ok(slot) => slot,
                Err(_) => break,
            },
        };
        let stream = tokio::select! {
            () = stop.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    failures = 0;
                    stream
                }
                Err(e) => {
                    // EMFILE and friends do not go away by retrying at once
                    // (that once wrote 3.7 million warnings in 5 s): back off.
                    failures = failures.saturating_add(1);
                    if let Some(suppressed) = warned.allow(()) {
                        warn!(error = %e, suppressed, "control socket accept failed; backing off");
                    }
                    let pause = Duration::from_millis(10 << failures.min(7));
                    tokio::select! {
                        () = stop.cancelled() => break,
                        () = tokio::time::sleep(pause) => continue,
                    }
                }
            },
        };
        let (store, forget) = (store.clone(), forget.clone());
        tokio::spawn(async move {
            if let Err(e) = answer(stream, store, forget).await {
                debug!(error = %e, "control request ended early");
            }
            drop(slot);
        });
    }
    let _ = std::fs::remove_file(&path);
    Ok(())
}

async fn answer(
    stream: tokio::net::UnixStream,
    store: Store,
    forget: tokio::sync::mpsc::Sender<Forget>,
) -> std::io::Result<()> {
    let mut reader = tokio::io::BufReader::new(stream);
    let mut line = String::new();
    let mut limited = (&mut reader).take(MAX_REQUEST);
    tokio::time::timeout(REQUEST_TIMEOUT, limited.read_line(&mut line))
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "no request line"))??;
    if let Ok(request) = serde_json::from_str::<Request>(&line) {
        if request.what == dump::RequestKind::Forget {
            let (reply, answer) = tokio::sync::oneshot::channel();
            let sent = forget
                .send(Forget {
                    query: request.query,
                    reply,
                })
                .await;
            let text = match (sent, answer.await) {
                (Ok(()), Ok(Ok(report))) => format!("ok\n{report}"),
                (Ok(()), Ok(Err(why))) => format!("error: {why}\n"),
                _ => "error: aggregatord is stopping\n".to_owned(),
            };
            let mut stream = reader.into_inner();
            return tokio::io::AsyncWriteExt::write_all(&mut stream, text.as_bytes()).await;
        }
    }
    let stream = reader.into_inner().into_std()?;
    stream.set_nonblocking(false)?;
    // A reader that stops reading (a paused pager) must not hold up shutdown.
    stream.set_write_timeout(Some(WRITE_TIMEOUT))?;
    // The dump itself is blocking I/O over sled and the socket.
    tokio::task::spawn_blocking(move || {
        let mut stream = stream;
        match serde_json::from_str::<Request>(&line) {
            Ok(request) => {
                stream.write_all(b"ok\n")?;
                dump::answer(&store, &request, &mut stream)
            }
            Err(e) => writeln!(stream, "error: bad request: {e}"),
        }
    })
    .await
    .map_err(std::io::Error::other)?
}

/// Asks the running daemon; copies its answer to `out`.
/// A connection to the running aggregatord's socket at `path`; `None` when
/// none is running (no socket, or one a crash left that nobody listens on).
pub fn connect(path: &Path) -> anyhow::Result<Option<UnixStream>> {
    match UnixStream::connect(path) {
        Ok(stream) => Ok(Some(stream)),
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused
            ) =>
        {
            Ok(None)
        }
        Err(e) => Err(e).with_context(|| {
            format!(
                "cannot reach the running aggregatord's socket {}",
                path.display()
            )
        }),
    }
}

/// Sends `request` to the running aggregatord over `stream` (from
/// [`connect`]) and copies its answer to `out`.
pub fn ask(stream: &UnixStream, request: &Request, mut out: impl Write) -> anyhow::Result<()> {
    let mut writer = stream;
    serde_json::to_writer(&mut writer, request)?;
    writer.write_all(b"\n")?;
    let mut reader = BufReader::new(stream);
    let mut status = String::new();
    reader.read_line(&mut status)?;
    match status.trim_end() {
        "ok" => {
            std::io::copy(&mut reader, &mut out)?;
            Ok(())
        }
        other => anyhow::bail!("aggregatord: {}", other.trim_start_matches("error: ")),
    }
}
