//! One writer task per destination (stdout, stderr or a file opened for
//! appending). Lines arrive over a bounded queue; the task writes whatever
//! is queued, then flushes, so bursts become one write.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use tokio::io::{AsyncWrite, AsyncWriteExt, BufWriter};
use tokio::sync::mpsc;

use super::Destination;

const QUEUE: usize = 8192;

#[derive(Debug, Clone)]
pub struct SinkHandle {
    tx: mpsc::Sender<String>,
    dropped: Arc<AtomicU64>,
}

impl SinkHandle {
    /// Starts the writer on the current Tokio runtime (`None` outside one).
    pub fn start(d: Destination) -> Option<SinkHandle> {
        let rt = tokio::runtime::Handle::try_current().ok()?;
        let (tx, rx) = mpsc::channel(QUEUE);
        rt.spawn(run(d, rx));
        Some(SinkHandle {
            tx,
            dropped: Arc::new(AtomicU64::new(0)),
        })
    }

    pub fn write(&self, line: String) {
        if self.tx.try_send(line).is_err() {
            let n = self.dropped.fetch_add(1, Ordering::Relaxed);
            if n.is_power_of_two() {
                tracing::warn!(dropped = n + 1, "access log queue full; lines dropped");
            }
        }
    }

    pub fn is_closed(&self) -> bool {
        self.tx.is_closed()
    }
}

async fn run(d: Destination, mut rx: mpsc::Receiver<String>) {
    let out: Box<dyn AsyncWrite + Unpin + Send> = match &d {
        Destination::Stdout => Box::new(tokio::io::stdout()),
        Destination::Stderr => Box::new(tokio::io::stderr()),
        Destination::File(p) => {
            match tokio::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(p)
                .await
            {
                Ok(f) => Box::new(f),
                Err(e) => {
                    tracing::error!(path = %p.display(), error = %e, "cannot open the access log file (check the directory exists and is writable); its lines are dropped");
                    // Closing the queue lets a later configuration retry.
                    return;
                }
            }
        }
    };
    let mut out = BufWriter::new(out);
    while let Some(line) = rx.recv().await {
        let mut result = out.write_all(line.as_bytes()).await;
        while result.is_ok() {
            match rx.try_recv() {
                Ok(l) => result = out.write_all(l.as_bytes()).await,
                Err(_) => break,
            }
        }
        if let Err(e) = result.and(out.flush().await) {
            tracing::error!(destination = ?d, error = %e, "writing the access log failed; closing it");
            return;
        }
    }
}
