//! Runs the HTTP/2 streams of one downstream connection on that
//! connection's own task.
//!
//! hyper hands each HTTP/2 stream to an executor. With `tokio::spawn`
//! every stream is a task of its own, and every request crosses the
//! scheduler between the connection's task (which reads and writes the
//! frames) and the stream's task (which routes and forwards it) several
//! times. Polled here instead, a stream's wake-up is a wake-up of the
//! connection's task, which then polls only the streams that were woken.
//! Envoy likewise serves every stream of a connection on the worker that
//! owns the connection. A stream that panics ends itself, as a task would,
//! not the connection.

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use futures::stream::FuturesUnordered;
use futures::{FutureExt, StreamExt};

type Stream = Pin<Box<dyn Future<Output = ()> + Send>>;

/// Streams handed over and not yet started. hyper calls the executor only
/// while the connection or one of its streams is being polled, and both
/// are polled on the connection's task, so the task picks them up after
/// that poll and nothing needs waking. An HTTP/1.1 connection never
/// spawns: the flag keeps its cost to one load per poll.
#[derive(Default)]
struct Spawned {
    any: AtomicBool,
    queue: Mutex<Vec<Stream>>,
}

/// The executor hyper's HTTP/2 server spawns streams (and the send halves
/// of upgraded streams) on.
#[derive(Clone)]
pub struct StreamExec(Arc<Spawned>);

/// The streams of one connection; [`Streams::poll_run`] runs them.
pub struct Streams {
    spawned: Arc<Spawned>,
    running: FuturesUnordered<Stream>,
}

/// An executor and the set of streams it spawns into.
pub fn local() -> (StreamExec, Streams) {
    let spawned = Arc::new(Spawned::default());
    let streams = Streams {
        spawned: spawned.clone(),
        running: FuturesUnordered::new(),
    };
    (StreamExec(spawned), streams)
}

impl<F> hyper::rt::Executor<F> for StreamExec
where
    F: Future<Output = ()> + Send + 'static,
{
    fn execute(&self, fut: F) {
        let fut = AssertUnwindSafe(fut).catch_unwind().map(|r| {
            if r.is_err() {
                tracing::error!("an HTTP/2 stream panicked; it was reset");
            }
        });
        lock(&self.0.queue).push(Box::pin(fut));
        self.0.any.store(true, Ordering::Release);
    }
}

fn lock(queue: &Mutex<Vec<Stream>>) -> std::sync::MutexGuard<'_, Vec<Stream>> {
    // Only pushes and a drain happen under the lock: a panic cannot leave
    // the list half-changed.
    queue.lock().unwrap_or_else(|p| p.into_inner())
}

impl Streams {
    /// Starts the streams spawned since the last call and polls every
    /// stream that was woken. Ready once none is left running.
    pub fn poll_run(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        loop {
            // A load first: the swap's locked write would be paid on every
            // poll of every HTTP/1.1 connection.
            if self.spawned.any.load(Ordering::Relaxed)
                && self.spawned.any.swap(false, Ordering::Acquire)
            {
                self.running.extend(lock(&self.spawned.queue).drain(..));
            }
            if self.running.is_empty() {
                return Poll::Ready(());
            }
            match self.running.poll_next_unpin(cx) {
                // A stream that ended may have spawned another (an upgrade).
                Poll::Ready(Some(())) => continue,
                Poll::Ready(None) => return Poll::Ready(()),
                Poll::Pending if self.spawned.any.load(Ordering::Acquire) => continue,
                Poll::Pending => return Poll::Pending,
            }
        }
    }

    /// Runs the streams still going once the connection itself has ended,
    /// so their upstream requests and access log lines complete as they
    /// would have on tasks of their own.
    pub async fn finish(mut self) {
        std::future::poll_fn(|cx| self.poll_run(cx)).await;
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicUsize;
    use std::time::Duration;

    use hyper::rt::Executor;

    use super::*;

    #[tokio::test]
    async fn runs_spawned_streams_including_ones_spawned_by_streams() {
        let (exec, mut streams) = local();
        let done = Arc::new(AtomicUsize::new(0));
        for _ in 0..3 {
            let (d, e) = (done.clone(), exec.clone());
            exec.execute(async move {
                tokio::time::sleep(Duration::from_millis(5)).await;
                let d2 = d.clone();
                e.execute(async move {
                    d2.fetch_add(1, Ordering::SeqCst);
                });
                d.fetch_add(1, Ordering::SeqCst);
            });
        }
        drop(exec);
        std::future::poll_fn(|cx| streams.poll_run(cx)).await;
        assert_eq!(done.load(Ordering::SeqCst), 6);
    }

    #[tokio::test]
    async fn a_panicking_stream_ends_alone() {
        let (exec, streams) = local();
        let done = Arc::new(AtomicUsize::new(0));
        exec.execute(async { panic!("stream bug") });
        let d = done.clone();
        exec.execute(async move {
            tokio::task::yield_now().await;
            d.fetch_add(1, Ordering::SeqCst);
        });
        streams.finish().await;
        assert_eq!(done.load(Ordering::SeqCst), 1);
    }
}
