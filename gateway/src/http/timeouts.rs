//! The connection manager's timeouts, as Envoy defines them:
//! - `request_timeout`: the whole request must be received in time, else 408;
//! - `stream_idle_timeout`: no activity on a stream (request body frames,
//!   response body frames) for that long; 408 before the response starts,
//!   a stream reset after (flag `SI`);
//! - `common_http_protocol_options.idle_timeout`: a downstream connection
//!   with no active request for that long is shut down gracefully (HTTP/1
//!   closes, HTTP/2 sends GOAWAY).
//!
//! A request's [`StreamClock`] travels in the request's extensions so the
//! router filter can mark body progress without knowing about timeouts.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use hyper::body::{Body as HttpBody, Frame, SizeHint};
use tokio::time::{Instant, Sleep};

use super::{Body, BoxError};

/// Activity of one downstream stream (request).
#[derive(Debug, Clone)]
pub struct StreamClock(Arc<ClockState>);

#[derive(Debug)]
struct ClockState {
    start: Instant,
    /// Milliseconds after `start` of the last activity.
    last_ms: AtomicU64,
    request_done: AtomicBool,
}

/// Which timeout ended a stream before its response started.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expired {
    Request,
    StreamIdle,
}

impl StreamClock {
    pub fn start() -> Self {
        Self(Arc::new(ClockState {
            start: Instant::now(),
            last_ms: AtomicU64::new(0),
            request_done: AtomicBool::new(false),
        }))
    }

    pub fn touch(&self) {
        let ms = self.0.start.elapsed().as_millis() as u64;
        self.0.last_ms.fetch_max(ms, Ordering::Relaxed);
    }

    /// The last byte of the request was received (`request_timeout` disarms).
    pub fn request_done(&self) {
        self.touch();
        self.0.request_done.store(true, Ordering::Relaxed);
    }

    fn last(&self) -> Instant {
        self.0.start + Duration::from_millis(self.0.last_ms.load(Ordering::Relaxed))
    }

    /// Resolves when one of the timeouts expires; never when both are off.
    pub async fn expired(&self, idle: Option<Duration>, request: Option<Duration>) -> Expired {
        loop {
            let done = self.0.request_done.load(Ordering::Relaxed);
            let request_at = request.filter(|_| !done).map(|d| self.0.start + d);
            let idle_at = idle.map(|d| self.last() + d);
            let next = match (request_at, idle_at) {
                (Some(a), Some(b)) => a.min(b),
                (Some(a), None) | (None, Some(a)) => a,
                (None, None) => return std::future::pending().await,
            };
            tokio::time::sleep_until(next).await;
            let now = Instant::now();
            if request_at.is_some_and(|at| now >= at)
                && !self.0.request_done.load(Ordering::Relaxed)
            {
                return Expired::Request;
            }
            if idle.is_some_and(|d| now >= self.last() + d) {
                return Expired::StreamIdle;
            }
        }
    }
}

/// A request body that reports its progress to the stream's clock.
#[derive(Debug)]
pub struct Tracked<B> {
    inner: B,
    clock: StreamClock,
}

impl<B: HttpBody + Unpin> Tracked<B> {
    pub fn new(inner: B, clock: StreamClock) -> Self {
        if inner.is_end_stream() {
            clock.request_done();
        }
        Self { inner, clock }
    }
}

impl<B: HttpBody + Unpin> HttpBody for Tracked<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<B::Data>, B::Error>>> {
        let r = Pin::new(&mut self.inner).poll_frame(cx);
        match &r {
            Poll::Ready(Some(Ok(_))) if self.inner.is_end_stream() => self.clock.request_done(),
            Poll::Ready(Some(Ok(_))) => self.clock.touch(),
            Poll::Ready(None) => self.clock.request_done(),
            _ => {}
        }
        r
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Counts a connection's active requests and when the last one ended; the
/// idle watcher reads both when its timer fires. Requests only touch two
/// atomics: nothing is woken and no timer is re-armed per request (an
/// HTTP/1 keep-alive connection goes idle after every response).
#[derive(Debug, Clone)]
pub struct ConnActivity(Arc<ActivityState>);

#[derive(Debug)]
struct ActivityState {
    start: Instant,
    active: AtomicU64,
    /// Milliseconds after `start` when the last request ended.
    idle_since_ms: AtomicU64,
}

/// One active request; the count drops when its response body is done.
#[derive(Debug)]
pub struct ActiveGuard(Arc<ActivityState>);

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        let ms = self.0.start.elapsed().as_millis() as u64;
        self.0.idle_since_ms.fetch_max(ms, Ordering::Relaxed);
        self.0.active.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Default for ConnActivity {
    fn default() -> Self {
        Self(Arc::new(ActivityState {
            start: Instant::now(),
            active: AtomicU64::new(0),
            idle_since_ms: AtomicU64::new(0),
        }))
    }
}

impl ConnActivity {
    pub fn begin(&self) -> ActiveGuard {
        self.0.active.fetch_add(1, Ordering::AcqRel);
        ActiveGuard(self.0.clone())
    }

    /// Resolves once no request has been active for `d`. Wakes at most
    /// once per `d` while requests come and go, then sleeps exactly until
    /// `d` after the last one ended.
    pub async fn idle_for(&self, d: Duration) {
        loop {
            let at = if self.0.active.load(Ordering::Acquire) > 0 {
                Instant::now() + d
            } else {
                let since = self.0.idle_since_ms.load(Ordering::Relaxed);
                self.0.start + Duration::from_millis(since) + d
            };
            tokio::time::sleep_until(at).await;
            if self.0.active.load(Ordering::Acquire) == 0 {
                let since = self.0.idle_since_ms.load(Ordering::Relaxed);
                if Instant::now() >= self.0.start + Duration::from_millis(since) + d {
                    return;
                }
            }
        }
    }
}

/// A response body that ends the stream (an error makes hyper reset it)
/// when no frame comes for the stream idle timeout, and holds the
/// connection's active-request guard until it is done. The timer is armed
/// only when the body first has to wait, and frames just note the time, so
/// a response that is ready at once never touches the timer wheel.
pub struct Watched {
    inner: Body,
    idle: Option<IdleTimer>,
    expired: bool,
    _active: Option<ActiveGuard>,
}

struct IdleTimer {
    after: Duration,
    last: Instant,
    sleep: Option<Pin<Box<Sleep>>>,
}

impl Watched {
    pub fn wrap(
        resp: http::Response<Body>,
        idle: Option<Duration>,
        active: Option<ActiveGuard>,
    ) -> http::Response<Body> {
        let (parts, inner) = resp.into_parts();
        let idle = idle
            .filter(|_| !inner.is_end_stream())
            .map(|after| IdleTimer {
                after,
                last: Instant::now(),
                sleep: None,
            });
        let body = Watched {
            inner,
            idle,
            expired: false,
            _active: active,
        };
        http::Response::from_parts(parts, http_body_util::BodyExt::boxed_unsync(body))
    }
}

impl IdleTimer {
    /// Whether the stream has been idle for `after` (registering the waker
    /// with the timer otherwise).
    fn poll_expired(&mut self, cx: &mut Context<'_>) -> bool {
        loop {
            let due = self.last + self.after;
            let sleep = self
                .sleep
                .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(due)));
            if sleep.deadline() != due {
                sleep.as_mut().reset(due);
            }
            if sleep.as_mut().poll(cx).is_pending() {
                return false;
            }
            if Instant::now() >= self.last + self.after {
                return true;
            }
        }
    }
}

#[derive(Debug, thiserror::Error)]
#[error("stream idle timeout ({0:?} without activity)")]
pub struct StreamIdleTimeout(Duration);

impl HttpBody for Watched {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        if self.expired {
            return Poll::Ready(None);
        }
        match Pin::new(&mut self.inner).poll_frame(cx) {
            Poll::Ready(r) => {
                if let Some(t) = self.idle.as_mut() {
                    t.last = Instant::now();
                }
                Poll::Ready(r)
            }
            Poll::Pending => {
                let Some(t) = self.idle.as_mut() else {
                    return Poll::Pending;
                };
                if t.poll_expired(cx) {
                    let d = t.after;
                    self.expired = true;
                    return Poll::Ready(Some(Err(Box::new(StreamIdleTimeout(d)))));
                }
                Poll::Pending
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.expired || self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[tokio::test]
    async fn request_timeout_disarms_when_the_request_is_done() {
        let c = StreamClock::start();
        let t = tokio::time::timeout(MS * 5000, c.expired(None, Some(MS * 50))).await;
        assert_eq!(t.ok(), Some(Expired::Request));
        let c = StreamClock::start();
        c.request_done();
        let t = tokio::time::timeout(MS * 300, c.expired(None, Some(MS * 50))).await;
        assert!(t.is_err(), "a received request does not time out");
    }

    #[tokio::test]
    async fn stream_idle_is_reset_by_activity() {
        let c = StreamClock::start();
        let w = c.clone();
        let toucher = tokio::spawn(async move {
            for _ in 0..5 {
                tokio::time::sleep(MS * 40).await;
                w.touch();
            }
        });
        let at = Instant::now();
        let e = c.expired(Some(MS * 150), None).await;
        assert_eq!(e, Expired::StreamIdle);
        // The last touch was at >= 200 ms; idle expiry cannot precede it.
        assert!(at.elapsed() >= MS * 350, "{:?}", at.elapsed());
        toucher.await.expect("toucher");
    }

    #[tokio::test]
    async fn idle_connection_waits_for_active_requests() {
        let a = ConnActivity::default();
        let g = a.begin();
        let idle = tokio::time::timeout(MS * 5000, a.idle_for(MS * 50));
        let dropper = async {
            tokio::time::sleep(MS * 200).await;
            drop(g);
        };
        let at = Instant::now();
        let (r, ()) = tokio::join!(idle, dropper);
        assert!(r.is_ok(), "idle once the request is done");
        assert!(at.elapsed() >= MS * 250, "{:?}", at.elapsed());
    }
}
