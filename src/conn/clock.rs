//! What one connection is doing and since when, so its task knows when to give up on it.
//! The socket wrapper (`WatchedIo`) reports bytes read; the service reports a request handed
//! to the router and its response sent (the response body's drop). Pure state and a `Notify`:
//! the deadline arithmetic is tested without a socket or a clock.

use std::pin::Pin;
use std::sync::Mutex;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::Notify;
use tokio::time::Instant;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Phase {
    /// A request's headers are arriving: since the connection opened, or since the first byte
    /// after the previous response.
    Head,
    /// The router has the request, until its response is sent. Never timed out here: the
    /// body has its own deadline, a running request has `limits.request_timeout_secs`.
    Busy,
    /// Keep-alive: waiting for the next request.
    Idle,
}

#[derive(Debug, Clone, Copy)]
struct State {
    phase: Phase,
    since: Instant,
    /// Bytes arrived while busy (a pipelined request): after the response the next head is
    /// already arriving, so the header timeout applies, not the idle one.
    read_while_busy: bool,
}

/// A std mutex: held for a few instructions, never across an await, by the socket's read path
/// and the connection's own task (no contention worth an async lock).
pub(crate) struct ConnClock {
    state: Mutex<State>,
    changed: Notify,
}

impl ConnClock {
    /// A connection opened at `now`: its first request's headers are due.
    pub fn new(now: Instant) -> Self {
        ConnClock {
            state: Mutex::new(State {
                phase: Phase::Head,
                since: now,
                read_while_busy: false,
            }),
            changed: Notify::new(),
        }
    }

    pub fn phase(&self) -> (Phase, Instant) {
        let s = self.lock();
        (s.phase, s.since)
    }

    /// Resolves after the next phase change (a change before the call counts: `Notify` keeps
    /// one permit).
    pub async fn changed(&self) {
        self.changed.notified().await
    }

    pub fn bytes_read(&self, now: Instant) {
        let mut s = self.lock();
        let phase = s.phase;
        match phase {
            Phase::Idle => self.enter(&mut s, Phase::Head, now),
            Phase::Busy => s.read_while_busy = true,
            Phase::Head => {}
        }
    }

    pub fn request_started(&self, now: Instant) {
        let mut s = self.lock();
        s.read_while_busy = false;
        self.enter(&mut s, Phase::Busy, now);
    }

    pub fn response_ended(&self, now: Instant) {
        let mut s = self.lock();
        if s.phase != Phase::Busy {
            return;
        }
        let next = if s.read_while_busy {
            Phase::Head
        } else {
            Phase::Idle
        };
        s.read_while_busy = false;
        self.enter(&mut s, next, now);
    }

    fn enter(&self, s: &mut State, phase: Phase, now: Instant) {
        s.phase = phase;
        s.since = now;
        self.changed.notify_one();
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // The state is two plain fields: a panic elsewhere cannot leave it half-written.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The header and idle timeouts of a listener.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Timeouts {
    pub header: Duration,
    pub idle: Duration,
}

impl Timeouts {
    /// When a connection in `phase` since `since` is to be closed; None: not while in it.
    pub fn deadline(&self, phase: Phase, since: Instant) -> Option<Instant> {
        match phase {
            Phase::Head => Some(since + self.header),
            Phase::Idle => Some(since + self.idle),
            Phase::Busy => None,
        }
    }
}

/// The socket, reporting each read that brought bytes to the connection's clock. Counting
/// from the first byte (not from the last) is what stops a client that trickles its headers
/// a byte at a time.
pub(crate) struct WatchedIo<T> {
    inner: T,
    clock: std::sync::Arc<ConnClock>,
}

impl<T> WatchedIo<T> {
    pub fn new(inner: T, clock: std::sync::Arc<ConnClock>) -> Self {
        WatchedIo { inner, clock }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for WatchedIo<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let result = Pin::new(&mut this.inner).poll_read(cx, buf);
        if matches!(result, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            this.clock.bytes_read(Instant::now());
        }
        result
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for WatchedIo<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: Timeouts = Timeouts {
        header: Duration::from_secs(10),
        idle: Duration::from_secs(60),
    };

    fn at(start: Instant, secs: u64) -> Instant {
        start + Duration::from_secs(secs)
    }

    fn deadline(clock: &ConnClock) -> Option<Instant> {
        let (phase, since) = clock.phase();
        T.deadline(phase, since)
    }

    #[test]
    fn a_new_connection_owes_its_headers_within_the_header_timeout() {
        let t0 = Instant::now();
        let clock = ConnClock::new(t0);
        clock.bytes_read(at(t0, 3));
        // Bytes trickling in do not push the deadline back.
        assert_eq!(clock.phase().0, Phase::Head);
        assert_eq!(deadline(&clock), Some(at(t0, 10)));
    }

    #[test]
    fn a_request_in_the_router_has_no_connection_deadline() {
        let t0 = Instant::now();
        let clock = ConnClock::new(t0);
        clock.request_started(at(t0, 1));
        clock.bytes_read(at(t0, 2));
        assert_eq!(deadline(&clock), None);
    }

    #[test]
    fn after_a_response_the_idle_timeout_runs_until_the_next_first_byte() {
        let t0 = Instant::now();
        let clock = ConnClock::new(t0);
        clock.request_started(at(t0, 1));
        clock.response_ended(at(t0, 5));
        assert_eq!(clock.phase().0, Phase::Idle);
        assert_eq!(deadline(&clock), Some(at(t0, 65)));
        clock.bytes_read(at(t0, 20));
        assert_eq!(clock.phase().0, Phase::Head);
        assert_eq!(deadline(&clock), Some(at(t0, 30)));
    }

    #[test]
    fn a_pipelined_request_read_while_busy_gets_the_header_timeout_after_the_response() {
        let t0 = Instant::now();
        let clock = ConnClock::new(t0);
        clock.request_started(at(t0, 1));
        clock.bytes_read(at(t0, 2));
        clock.response_ended(at(t0, 4));
        assert_eq!(clock.phase().0, Phase::Head);
        assert_eq!(deadline(&clock), Some(at(t0, 14)));
    }

    #[test]
    fn a_late_response_end_does_not_undo_the_next_request() {
        let t0 = Instant::now();
        let clock = ConnClock::new(t0);
        clock.request_started(at(t0, 1));
        clock.response_ended(at(t0, 2));
        clock.bytes_read(at(t0, 3));
        clock.response_ended(at(t0, 4));
        assert_eq!(clock.phase(), (Phase::Head, at(t0, 3)));
    }
}
