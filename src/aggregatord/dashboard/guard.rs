//! The dashboard's listener: a cap on open connections and an idle timeout on
//! each, so that half-open or stalled clients cannot use up file descriptors
//! or memory (issue 18: 1,100 idle connections reached the open-files limit).
//! It knows nothing of HTTP: it counts connections and watches bytes, not requests.

use axum::serve::Listener;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::{Instant, Sleep};

/// Accepts connections while fewer than its cap are open; closes the rest at
/// once (the client sees a reset rather than a hang).
pub struct Guarded {
    /// The bound socket; axum's own accept (with its backoff on errors) runs on it.
    listener: TcpListener,
    /// One permit per open connection: `http.max_connections`.
    open: Arc<Semaphore>,
    /// `http.idle_timeout`, given to each connection.
    idle: Duration,
    /// Connections closed at the cap so far; warned about at each power of two.
    refused: u64,
}

impl Guarded {
    pub fn new(listener: TcpListener, max_connections: usize, idle: Duration) -> Self {
        Guarded {
            listener,
            open: Arc::new(Semaphore::new(max_connections)),
            idle,
            refused: 0,
        }
    }
}

impl Listener for Guarded {
    type Io = Conn;
    type Addr = std::net::SocketAddr;

    async fn accept(&mut self) -> (Conn, Self::Addr) {
        loop {
            // axum's own accept loop: it backs off on errors such as EMFILE.
            let (stream, addr) = Listener::accept(&mut self.listener).await;
            let Ok(permit) = self.open.clone().try_acquire_owned() else {
                self.refused += 1;
                if self.refused.is_power_of_two() {
                    tracing::warn!(
                        refused = self.refused,
                        "dashboard: too many open connections (http.max_connections); closing new ones"
                    );
                }
                drop(stream);
                continue;
            };
            return (Conn::new(stream, permit, self.idle), addr);
        }
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        self.listener.local_addr()
    }
}

/// A connection that fails with `TimedOut` once it has moved no byte either
/// way for `idle`, and gives its slot back when dropped.
pub struct Conn {
    /// The client's socket.
    stream: TcpStream,
    /// Its place under the cap, given back on drop.
    _slot: OwnedSemaphorePermit,
    /// How long it may move no byte either way.
    idle: Duration,
    /// When it times out unless a byte moves first; pushed back on every read or write.
    deadline: Pin<Box<Sleep>>,
}

impl Conn {
    fn new(stream: TcpStream, slot: OwnedSemaphorePermit, idle: Duration) -> Self {
        Conn {
            stream,
            _slot: slot,
            idle,
            deadline: Box::pin(tokio::time::sleep(idle)),
        }
    }

    fn progressed(&mut self) {
        let next = Instant::now() + self.idle;
        self.deadline.as_mut().reset(next);
    }

    /// On `Pending`: has the deadline passed?
    fn expired(&mut self, cx: &mut Context<'_>) -> bool {
        self.deadline.as_mut().poll(cx).is_ready()
    }
}

fn timed_out() -> io::Error {
    io::Error::new(io::ErrorKind::TimedOut, "idle connection")
}

impl Conn {
    /// A poll's result: progress resets the deadline; waiting past it fails.
    fn watch<T>(
        &mut self,
        cx: &mut Context<'_>,
        polled: Poll<io::Result<T>>,
    ) -> Poll<io::Result<T>> {
        match polled {
            Poll::Ready(r) => {
                self.progressed();
                Poll::Ready(r)
            }
            Poll::Pending if self.expired(cx) => Poll::Ready(Err(timed_out())),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl AsyncRead for Conn {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.stream).poll_read(cx, buf);
        this.watch(cx, polled)
    }
}

impl AsyncWrite for Conn {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.stream).poll_write(cx, buf);
        this.watch(cx, polled)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        match Pin::new(&mut this.stream).poll_flush(cx) {
            Poll::Pending if this.expired(cx) => Poll::Ready(Err(timed_out())),
            other => other,
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }
}
