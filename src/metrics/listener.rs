//! The HTTP/1 server behind the Prometheus endpoint, built so that no client can starve the daemon:
//!
//! - at most [`Limits::max_connections`] connections are open at once; a new one beyond that closes
//!   the connection that has waited longest without a request in flight (an idle keep-alive or one
//!   that never sent its headers), or, when every connection has a request in flight, is closed at
//!   once. A flood of idle connections therefore costs a bounded number of file descriptors and never
//!   locks out a scrape or `/healthz`;
//! - the request head must arrive within [`Limits::header_read_timeout`] (hyper's timer starts when
//!   it waits for a head, so this also bounds an idle keep-alive connection);
//! - a connection that moves no byte either way for [`Limits::idle_timeout`] is closed (a client that
//!   stops reading its response);
//! - HTTP/1 only: an HTTP/2 preface (h2c) is a malformed request;
//! - heads are bounded by [`Limits::max_head_bytes`] and request bodies by [`Limits::max_body_bytes`]
//!   (the endpoints take none: a larger declared or chunked body is 413).
//!
//! `accept` errors (EMFILE when the process is out of descriptors) are logged and retried after a
//! pause instead of spinning.

use std::collections::HashMap;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::http::{Request, Response, StatusCode, header};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpListener;
use tokio::time::{Instant, Sleep};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// What one client may take.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub max_connections: usize,
    pub header_read_timeout: Duration,
    pub idle_timeout: Duration,
    /// hyper's read buffer, which bounds a request head (hyper's minimum is 8 KiB).
    pub max_head_bytes: usize,
    pub max_body_bytes: u64,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            // Prometheus keeps one connection per scraper; a handful of scrapers and curl is plenty.
            max_connections: 64,
            header_read_timeout: Duration::from_secs(5),
            idle_timeout: Duration::from_secs(30),
            max_head_bytes: 16 * 1024,
            max_body_bytes: 1024,
        }
    }
}

/// After an `accept` error (typically EMFILE/ENFILE), wait this long before the next accept.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(100);
/// On shutdown, how long a connection with a request in flight may take to finish it.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(1);

/// Serves `app` on `listener` until `shutdown`, then lets requests in flight finish (briefly).
pub async fn serve(
    listener: TcpListener,
    app: Router,
    limits: Limits,
    shutdown: CancellationToken,
) {
    let registry = Registry::new(limits.max_connections);
    let tracker = TaskTracker::new();
    let mut last_error_logged: Option<Instant> = None;
    loop {
        let accepted = tokio::select! {
            () = shutdown.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        let stream = match accepted {
            Ok((stream, _peer)) => stream,
            Err(e) => {
                if last_error_logged.is_none_or(|t| t.elapsed() > Duration::from_secs(60)) {
                    tracing::warn!(error = %e, "Prometheus endpoint cannot accept a connection");
                    last_error_logged = Some(Instant::now());
                }
                tokio::select! {
                    () = shutdown.cancelled() => break,
                    () = tokio::time::sleep(ACCEPT_ERROR_PAUSE) => continue,
                }
            }
        };
        let Some(conn) = registry.admit() else {
            tracing::debug!(
                max = limits.max_connections,
                "Prometheus endpoint: every connection has a request in flight; closing the new one"
            );
            drop(stream);
            continue;
        };
        let app = app.clone();
        let shutdown = shutdown.clone();
        tracker.spawn(async move { serve_connection(stream, app, limits, conn, shutdown).await });
    }
    tracker.close();
    tracker.wait().await;
}

async fn serve_connection(
    stream: tokio::net::TcpStream,
    app: Router,
    limits: Limits,
    conn: Admitted,
    shutdown: CancellationToken,
) {
    let io = TokioIo::new(IdleTimeout::new(stream, limits.idle_timeout));
    let inner = TowerToHyperService::new(app);
    let busy = conn.clone();
    let service = hyper::service::service_fn(move |req: Request<Incoming>| {
        let guard = busy.request_started();
        let too_large = body_too_large(&req, limits.max_body_bytes);
        let call = hyper::service::Service::call(&inner, req);
        async move {
            let response = if too_large {
                Ok(payload_too_large())
            } else {
                call.await
            };
            drop(guard);
            response
        }
    });
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .max_buf_size(limits.max_head_bytes.max(8 * 1024))
        .keep_alive(true);
    let connection = builder.serve_connection(io, service);
    tokio::pin!(connection);
    tokio::select! {
        served = connection.as_mut() => {
            if let Err(e) = served {
                tracing::debug!(error = %e, "Prometheus endpoint connection ended");
            }
        }
        () = conn.evicted() => {}
        () = shutdown.cancelled() => {
            connection.as_mut().graceful_shutdown();
            let _ = tokio::time::timeout(SHUTDOWN_GRACE, connection).await;
        }
    }
}

/// A declared body above the limit, or a chunked one (its length is unknown until read).
fn body_too_large(req: &Request<Incoming>, max: u64) -> bool {
    let headers = req.headers();
    if headers.contains_key(header::TRANSFER_ENCODING) {
        return true;
    }
    headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .is_some_and(|len| len > max)
}

fn payload_too_large() -> Response<Body> {
    let mut r = Response::new(Body::from("request body too large\n"));
    *r.status_mut() = StatusCode::PAYLOAD_TOO_LARGE;
    // The unread body is not drained: the connection ends with this response.
    r.headers_mut().insert(
        header::CONNECTION,
        header::HeaderValue::from_static("close"),
    );
    r
}

/// The open connections: which have a request in flight, and since when the others have waited.
struct Registry {
    max: usize,
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    next_id: u64,
    open: HashMap<u64, Entry>,
}

struct Entry {
    in_flight: usize,
    idle_since: Instant,
    evict: CancellationToken,
}

impl Registry {
    fn new(max: usize) -> Arc<Registry> {
        Arc::new(Registry {
            max: max.max(1),
            inner: Mutex::new(Inner::default()),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A slot for a new connection: free, or taken from the connection idle the longest. `None` when
    /// all `max` connections have a request in flight.
    fn admit(self: &Arc<Self>) -> Option<Admitted> {
        let mut inner = self.lock();
        if inner.open.len() >= self.max {
            let (&oldest, _) = inner
                .open
                .iter()
                .filter(|(_, e)| e.in_flight == 0)
                .min_by_key(|(_, e)| e.idle_since)?;
            if let Some(e) = inner.open.remove(&oldest) {
                e.evict.cancel();
            }
        }
        let id = inner.next_id;
        inner.next_id += 1;
        let evict = CancellationToken::new();
        inner.open.insert(
            id,
            Entry {
                in_flight: 0,
                idle_since: Instant::now(),
                evict: evict.clone(),
            },
        );
        Some(Admitted(Arc::new(Slot {
            id,
            registry: self.clone(),
            evict,
        })))
    }
}

struct Slot {
    id: u64,
    registry: Arc<Registry>,
    evict: CancellationToken,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.registry.lock().open.remove(&self.id);
    }
}

/// One admitted connection's slot; freed when the last clone is dropped.
#[derive(Clone)]
struct Admitted(Arc<Slot>);

impl Admitted {
    async fn evicted(&self) {
        self.0.evict.cancelled().await
    }

    fn request_started(&self) -> InFlight {
        if let Some(e) = self.0.registry.lock().open.get_mut(&self.0.id) {
            e.in_flight += 1;
        }
        InFlight(self.clone())
    }
}

/// A request being answered: its connection is not evicted meanwhile.
struct InFlight(Admitted);

impl Drop for InFlight {
    fn drop(&mut self) {
        let slot = &self.0.0;
        if let Some(e) = slot.registry.lock().open.get_mut(&slot.id) {
            e.in_flight = e.in_flight.saturating_sub(1);
            e.idle_since = Instant::now();
        }
    }
}

/// A stream that fails with `TimedOut` once no byte has moved either way for `timeout`.
struct IdleTimeout<S> {
    inner: S,
    timeout: Duration,
    deadline: Pin<Box<Sleep>>,
}

impl<S> IdleTimeout<S> {
    fn new(inner: S, timeout: Duration) -> IdleTimeout<S> {
        IdleTimeout {
            inner,
            timeout,
            deadline: Box::pin(tokio::time::sleep(timeout)),
        }
    }

    fn progressed(&mut self) {
        self.deadline.as_mut().reset(Instant::now() + self.timeout);
    }

    fn check(&mut self, cx: &mut Context<'_>) -> Poll<io::Error> {
        ready!(self.deadline.as_mut().poll(cx));
        Poll::Ready(io::Error::new(
            io::ErrorKind::TimedOut,
            "no byte moved within the idle timeout",
        ))
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for IdleTimeout<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        match Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Ready(r) => {
                this.progressed();
                Poll::Ready(r)
            }
            Poll::Pending => this.check(cx).map(Err),
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for IdleTimeout<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        match Pin::new(&mut this.inner).poll_write(cx, buf) {
            Poll::Ready(r) => {
                this.progressed();
                Poll::Ready(r)
            }
            Poll::Pending => this.check(cx).map(Err),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        match Pin::new(&mut this.inner).poll_flush(cx) {
            Poll::Pending => this.check(cx).map(Err),
            ready => ready,
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        match Pin::new(&mut this.inner).poll_write_vectored(cx, bufs) {
            Poll::Ready(r) => {
                this.progressed();
                Poll::Ready(r)
            }
            Poll::Pending => this.check(cx).map(Err),
        }
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_full_registry_evicts_the_longest_idle_connection_never_a_busy_one() {
        let registry = Registry::new(2);
        let first = registry.admit().unwrap();
        tokio::time::sleep(Duration::from_millis(5)).await;
        let second = registry.admit().unwrap();
        let third = registry
            .admit()
            .expect("room made by evicting the oldest idle one");
        assert!(first.0.evict.is_cancelled());
        assert!(!second.0.evict.is_cancelled());
        let busy_second = second.request_started();
        let busy_third = third.request_started();
        assert!(
            registry.admit().is_none(),
            "every open connection has a request in flight"
        );
        drop(busy_third);
        let fourth = registry.admit().expect("third is idle again");
        assert!(third.0.evict.is_cancelled());
        assert!(!second.0.evict.is_cancelled());
        drop((busy_second, first, second, third, fourth));
        assert!(registry.lock().open.is_empty());
    }
}
