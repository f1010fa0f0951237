//! The listeners' accept loop, in place of `axum::serve`, for what that lacks: a cap on open
//! connections and timeouts for slow and idle clients (`config::ConnectionLimits`). Each
//! connection is hyper's HTTP/1.1 on a task of its own, watched by a `ConnClock`: headers that
//! take too long, or a keep-alive connection idle too long, end the task, which closes the
//! socket; a body that takes too long is answered 408 by the JSON extractor (`BodyDeadline`).
//! On shutdown: stop accepting, let every connection finish its request (hyper closes idle
//! ones at once), return when all are closed.

mod clock;
mod ip_guard;

pub use ip_guard::IpGuard;

use crate::config::ConnectionLimits;
use axum::extract::ConnectInfo;
use axum::Router;
use clock::{ConnClock, Phase, Timeouts, WatchedIo};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::server::conn::http1;
use hyper_util::rt::TokioIo;
use hyper_util::service::TowerToHyperService;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::{pin, Pin};
use std::sync::{Arc, LazyLock};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch, OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

/// When the request's body must have arrived in full, set as the router receives it;
/// `http::extract` answers 408 past it.
#[derive(Debug, Clone, Copy)]
pub struct BodyDeadline(pub Instant);

/// Serves `app` on `listener` until `shutdown` resolves, then drains (see the module doc).
/// `name` labels the listener's connection metrics (`api`, `metrics`).
pub async fn serve(
    listener: TcpListener,
    app: Router,
    limits: &ConnectionLimits,
    name: &'static str,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let conn = Arc::new(ConnSettings {
        app,
        timeouts: Timeouts {
            header: limits.header_read_timeout(),
            idle: limits.idle_timeout(),
        },
        body_timeout: limits.body_read_timeout(),
        name,
    });
    let permits = Arc::new(Semaphore::new(limits.max_open));
    let (stop_tx, stop_rx) = watch::channel(false);
    // Each connection task holds a sender; `recv` answers None once every one has ended.
    let (alive_tx, mut alive_rx) = mpsc::channel::<()>(1);
    let mut shutdown = pin!(shutdown);
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = &mut shutdown => break,
        };
        let (stream, peer) = match accepted {
            Ok(pair) => pair,
            Err(e) => {
                accept_failed(e).await;
                continue;
            }
        };
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            refuse(stream, name);
            continue;
        };
        let task = Connection {
            settings: conn.clone(),
            peer,
            stop: stop_rx.clone(),
            _permit: permit,
            _alive: alive_tx.clone(),
        };
        tokio::spawn(task.run(stream));
    }
    drop(listener);
    let _ = stop_tx.send(true);
    drop(alive_tx);
    let _ = alive_rx.recv().await;
    Ok(())
}

/// What every connection of one listener shares.
struct ConnSettings {
    app: Router,
    timeouts: Timeouts,
    body_timeout: Duration,
    name: &'static str,
}

/// One accepted connection; its permit and sender are released when its task ends.
struct Connection {
    settings: Arc<ConnSettings>,
    peer: SocketAddr,
    stop: watch::Receiver<bool>,
    _permit: OwnedSemaphorePermit,
    _alive: mpsc::Sender<()>,
}

impl Connection {
    async fn run(mut self, stream: TcpStream) {
        let s = self.settings.clone();
        let open = crate::metrics::get()
            .connections_open
            .with_label_values(&[s.name]);
        open.inc();
        let clock = Arc::new(ConnClock::new(Instant::now()));
        let io = TokioIo::new(WatchedIo::new(stream, clock.clone()));
        let service = hyper::service::service_fn({
            let (clock, settings, peer) = (clock.clone(), s.clone(), self.peer);
            move |req| settings.call(req, peer, clock.clone())
        });
        // Our clock times the headers: hyper's own header timer also runs while a
        // keep-alive connection idles, which would make the idle timeout the header one.
        let mut builder = http1::Builder::new();
        builder.header_read_timeout(None);
        let mut conn = pin!(builder.serve_connection(io, service));
        let mut draining = false;
        loop {
            let (phase, since) = clock.phase();
            let deadline = s.timeouts.deadline(phase, since);
            tokio::select! {
                result = conn.as_mut() => {
                    if let Err(e) = result {
                        tracing::debug!(peer = %self.peer, error = %e, "connection ended with an error");
                    }
                    break;
                }
                _ = sleep_until(deadline) => {
                    // Unchanged since the deadline was computed: it has passed.
                    if clock.phase() == (phase, since) {
                        cut(s.name, phase, self.peer);
                        break;
                    }
                }
                _ = clock.changed() => {}
                _ = self.stop.wait_for(|stop| *stop), if !draining => {
                    conn.as_mut().graceful_shutdown();
                    draining = true;
                }
            }
        }
        open.dec();
    }
}

impl ConnSettings {
    /// Hands one request to the router with the peer's address (the per-IP guard reads it)
    /// and its body deadline; the connection is busy until the response body is dropped.
    fn call(
        &self,
        mut req: hyper::Request<Incoming>,
        peer: SocketAddr,
        clock: Arc<ConnClock>,
    ) -> impl Future<Output = Result<hyper::Response<TrackedBody>, std::convert::Infallible>> {
        let now = Instant::now();
        clock.request_started(now);
        let busy = BusyGuard(clock);
        req.extensions_mut().insert(ConnectInfo(peer));
        req.extensions_mut()
            .insert(BodyDeadline(now + self.body_timeout));
        let router = TowerToHyperService::new(self.app.clone());
        let response = hyper::service::Service::call(&router, req);
        async move {
            let response = response.await?;
            Ok(response.map(|body| TrackedBody { body, _busy: busy }))
        }
    }
}

/// Marks the connection's request done when dropped: hyper drops a response body once it
/// has written its last frame, or when the connection fails.
struct BusyGuard(Arc<ConnClock>);

impl Drop for BusyGuard {
    fn drop(&mut self) {
        self.0.response_ended(Instant::now());
    }
}

/// A response body that carries its connection's `BusyGuard`.
struct TrackedBody {
    body: axum::body::Body,
    _busy: BusyGuard,
}

impl Body for TrackedBody {
    type Data = axum::body::Bytes;
    type Error = axum::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.get_mut().body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Logs and counts a connection closed for a timeout (dropping it closes the socket).
fn cut(listener: &'static str, phase: Phase, peer: SocketAddr) {
    // A busy connection has no deadline, so it is never cut.
    let reason = if phase == Phase::Head {
        "header_timeout"
    } else {
        "idle_timeout"
    };
    tracing::debug!(%peer, reason, "closing connection");
    crate::metrics::get()
        .connections_dropped
        .with_label_values(&[listener, reason])
        .inc();
}

/// The answer to a connection over the cap: a complete HTTP response, so that a client that
/// reads it learns why, then the close.
static REFUSED: LazyLock<String> = LazyLock::new(|| {
    let body = r#"{"error":{"message":"Too many open connections; retry shortly","type":"server_error","param":null,"code":"too_many_connections"}}"#;
    format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\n\
         retry-after: 1\r\nconnection: close\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    )
});

/// Closes a connection over the cap at once. The answer is written only if the socket takes
/// it without waiting (a fresh socket's send buffer does); nothing here waits on the client.
fn refuse(stream: TcpStream, listener: &'static str) {
    let _ = stream.try_write(REFUSED.as_bytes());
    drop(stream);
    crate::metrics::get()
        .connections_dropped
        .with_label_values(&[listener, "refused"])
        .inc();
}

/// A failed accept. Out of descriptors (EMFILE/ENFILE) or memory: wait a little before the
/// next try rather than spin (a connection closing frees one); a client that reset before
/// we accepted it: go on at once.
async fn accept_failed(e: std::io::Error) {
    use std::io::ErrorKind as K;
    if matches!(
        e.kind(),
        K::ConnectionAborted | K::ConnectionReset | K::ConnectionRefused
    ) {
        return;
    }
    tracing::error!(error = %e, "accept failed; is the descriptor limit (ulimit -n) too low for connections.max_open?");
    tokio::time::sleep(Duration::from_millis(100)).await;
}
