//! Owns the listening sockets. An update binds every new address first and
//! commits only if all binds succeed, so a bad LDS update is rejected
//! whole and the running listeners stay. A listener whose name and address
//! are unchanged keeps its socket and swaps its config in place: new
//! connections see the new chains; established ones keep theirs and, if
//! their chain was changed or removed, are closed after the drain time.
//! Removed listeners stop accepting at once and their connections are
//! closed after the drain time.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::drain::drain_deadline;
use super::original_dst::{self, HandoffTarget, Handoffs};
use crate::proxy::connection::{self, ProxyContext};
use crate::state::ListenerRuntime;

#[derive(Debug, thiserror::Error)]
pub enum ListenerError {
    #[error(
        "listener {name:?}: cannot bind {address}: {source} (is the port in use or privileged?)"
    )]
    Bind {
        name: String,
        address: SocketAddr,
        source: std::io::Error,
    },
    #[error("listener manager has stopped")]
    Stopped,
}

enum Command {
    Apply {
        listeners: Vec<Arc<ListenerRuntime>>,
        reply: oneshot::Sender<Result<(), ListenerError>>,
    },
    Shutdown {
        reply: oneshot::Sender<()>,
    },
}

/// Handle to the listener-owning task.
#[derive(Clone, Debug)]
pub struct ListenerManager {
    tx: mpsc::Sender<Command>,
    bound: watch::Receiver<BTreeMap<String, SocketAddr>>,
    by_port: watch::Receiver<ListenersByPort>,
}

/// Running listeners by bound port (the QUIC tunnel dispatches streams by port).
pub type ListenersByPort = BTreeMap<u16, Arc<ListenerRuntime>>;

impl std::fmt::Debug for Command {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Command::Apply { listeners, .. } => f
                .debug_struct("Apply")
                .field("count", &listeners.len())
                .finish(),
            Command::Shutdown { .. } => f.write_str("Shutdown"),
        }
    }
}

struct Running {
    configured: SocketAddr,
    /// For `bind_to_port: false` listeners, the configured address.
    bound: SocketAddr,
    /// Whether a socket is bound (else the listener only takes hand-offs).
    listening: bool,
    draining_rx: watch::Receiver<bool>,
    config: watch::Sender<Arc<ListenerRuntime>>,
    stop: CancellationToken,
    draining: watch::Sender<bool>,
}

impl ListenerManager {
    /// Starts the owner task. Connection tasks are tracked by `tracker` so
    /// shutdown can wait for them.
    pub fn spawn(ctx: ProxyContext, drain_time: Duration, tracker: TaskTracker) -> Self {
        let (tx, rx) = mpsc::channel(8);
        let (bound_tx, bound) = watch::channel(BTreeMap::new());
        let (by_port_tx, by_port) = watch::channel(BTreeMap::new());
        let (handoff_tx, handoff_rx) = watch::channel(Handoffs::new());
        let links = Links {
            bound: bound_tx,
            by_port: by_port_tx,
            handoffs: handoff_tx,
            handoffs_rx: handoff_rx,
        };
        tokio::spawn(owner(rx, ctx, drain_time, tracker, links));
        Self { tx, bound, by_port }
    }

    /// Replaces the whole listener set (LDS is state of the world).
    pub async fn apply(&self, listeners: Vec<Arc<ListenerRuntime>>) -> Result<(), ListenerError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Command::Apply { listeners, reply })
            .await
            .map_err(|_| ListenerError::Stopped)?;
        rx.await.map_err(|_| ListenerError::Stopped)?
    }

    /// Stops accepting everywhere and starts draining every connection.
    pub async fn shutdown(&self) {
        let (reply, rx) = oneshot::channel();
        if self.tx.send(Command::Shutdown { reply }).await.is_ok() {
            let _ = rx.await;
        }
    }

    /// Running listeners by bound port.
    pub fn by_port(&self) -> watch::Receiver<ListenersByPort> {
        self.by_port.clone()
    }

    /// Actual bound addresses by listener name (port 0 resolved).
    pub fn bound(&self) -> watch::Receiver<BTreeMap<String, SocketAddr>> {
        self.bound.clone()
    }
}

/// What the owner task publishes.
struct Links {
    bound: watch::Sender<BTreeMap<String, SocketAddr>>,
    by_port: watch::Sender<ListenersByPort>,
    handoffs: watch::Sender<Handoffs>,
    handoffs_rx: watch::Receiver<Handoffs>,
}

async fn owner(
    mut rx: mpsc::Receiver<Command>,
    ctx: ProxyContext,
    drain_time: Duration,
    tracker: TaskTracker,
    links: Links,
) {
    let Links {
        bound: bound_tx,
        by_port: by_port_tx,
        handoffs: handoff_tx,
        handoffs_rx,
    } = links;
    let mut running: BTreeMap<String, Running> = BTreeMap::new();
    while let Some(cmd) = rx.recv().await {
        match cmd {
            Command::Apply { listeners, reply } => {
                let env = AcceptEnv {
                    ctx: ctx.clone(),
                    drain_time,
                    tracker: tracker.clone(),
                    handoffs: handoffs_rx.clone(),
                };
                let r = apply(&mut running, listeners, &env).await;
                bound_tx.send_replace(running.iter().map(|(n, r)| (n.clone(), r.bound)).collect());
                by_port_tx.send_replace(
                    running
                        .values()
                        .filter(|r| r.listening)
                        .map(|r| (r.bound.port(), r.config.borrow().clone()))
                        .collect(),
                );
                handoff_tx.send_replace(
                    running
                        .values()
                        .map(|r| {
                            (
                                r.configured,
                                HandoffTarget {
                                    config: r.config.subscribe(),
                                    draining: r.draining_rx.clone(),
                                },
                            )
                        })
                        .collect(),
                );
                let _ = reply.send(r);
            }
            Command::Shutdown { reply } => {
                for (name, r) in std::mem::take(&mut running) {
                    tracing::info!(listener = %name, "stopping listener for shutdown");
                    retire(r);
                }
                bound_tx.send_replace(BTreeMap::new());
                by_port_tx.send_replace(BTreeMap::new());
                handoff_tx.send_replace(Handoffs::new());
                let _ = reply.send(());
            }
        }
    }
}

fn retire(r: Running) {
    r.stop.cancel();
    r.draining.send_replace(true);
}

/// What every accept loop shares.
#[derive(Clone)]
struct AcceptEnv {
    ctx: ProxyContext,
    drain_time: Duration,
    tracker: TaskTracker,
    handoffs: watch::Receiver<Handoffs>,
}

async fn apply(
    running: &mut BTreeMap<String, Running>,
    listeners: Vec<Arc<ListenerRuntime>>,
    env: &AcceptEnv,
) -> Result<(), ListenerError> {
    // Phase 1: bind every new address; nothing changes if one fails.
    let mut fresh: Vec<(Arc<ListenerRuntime>, Option<TcpListener>)> = Vec::new();
    let mut in_place: Vec<Arc<ListenerRuntime>> = Vec::new();
    for l in listeners {
        let keep = running.get(&l.config.name).is_some_and(|r| {
            r.configured == l.config.address && r.listening == l.config.bind_to_port
        });
        if keep {
            in_place.push(l);
            continue;
        }
        if !l.config.bind_to_port {
            fresh.push((l, None));
            continue;
        }
        // The same name on a new address: the old socket may hold the port
        // we want only if addresses collide, which is handled by the OS.
        match TcpListener::bind(l.config.address).await {
            Ok(sock) => fresh.push((l, Some(sock))),
            Err(source) => {
                return Err(ListenerError::Bind {
                    name: l.config.name.clone(),
                    address: l.config.address,
                    source,
                })
            }
        }
    }
    // Phase 2: commit.
    let mut keep_names: Vec<String> = in_place.iter().map(|l| l.config.name.clone()).collect();
    keep_names.extend(fresh.iter().map(|(l, _)| l.config.name.clone()));
    let removed: Vec<String> = running
        .keys()
        .filter(|n| !keep_names.contains(n) || fresh.iter().any(|(l, _)| &l.config.name == *n))
        .cloned()
        .collect();
    for name in removed {
        if let Some(r) = running.remove(&name) {
            tracing::info!(listener = %name, address = %r.bound, "listener removed; draining its connections");
            retire(r);
        }
    }
    for l in in_place {
        if let Some(r) = running.get(&l.config.name) {
            r.config.send_replace(l);
        }
    }
    for (l, sock) in fresh {
        let name = l.config.name.clone();
        let (config_tx, config_rx) = watch::channel(l.clone());
        let stop = CancellationToken::new();
        let (draining_tx, draining_rx) = watch::channel(false);
        let listening = sock.is_some();
        let bound = match sock {
            Some(sock) => {
                let bound = sock.local_addr().unwrap_or(l.config.address);
                tracing::info!(listener = %name, address = %bound, "listener bound");
                tokio::spawn(accept_loop(
                    sock,
                    config_rx,
                    stop.clone(),
                    draining_rx.clone(),
                    env.clone(),
                ));
                bound
            }
            None => {
                tracing::info!(listener = %name, address = %l.config.address, "listener not bound (bind_to_port: false); receives hand-offs only");
                l.config.address
            }
        };
        running.insert(
            name,
            Running {
                configured: l.config.address,
                bound,
                listening,
                draining_rx,
                config: config_tx,
                stop,
                draining: draining_tx,
            },
        );
    }
    Ok(())
}

async fn accept_loop(
    sock: TcpListener,
    config: watch::Receiver<Arc<ListenerRuntime>>,
    stop: CancellationToken,
    draining: watch::Receiver<bool>,
    env: AcceptEnv,
) {
    let AcceptEnv {
        ctx,
        drain_time,
        tracker,
        handoffs,
    } = env;
    let mut backoff = Duration::from_millis(5);
    loop {
        let accepted = tokio::select! {
            _ = stop.cancelled() => return,
            a = sock.accept() => a,
        };
        match accepted {
            Ok((stream, peer)) => {
                backoff = Duration::from_millis(5);
                let mut listener = config.borrow().clone();
                let mut draining = draining.clone();
                let mut updates = config.clone();
                let original = if listener.config.original_dst {
                    original_dst::read(&stream)
                } else {
                    None
                };
                if let (Some(dst), true) = (original, listener.config.use_original_dst) {
                    let table = handoffs.borrow();
                    if let Some(t) = original_dst::resolve(&table, &listener.config.name, dst) {
                        tracing::debug!(from = %listener.config.name, to = %t.config.borrow().config.name, original = %dst, "handing off redirected connection");
                        listener = t.config.borrow().clone();
                        draining = t.draining.clone();
                        updates = t.config.clone();
                    }
                }
                let name = listener.config.name.clone();
                let metrics = ctx.metrics.clone();
                metrics
                    .downstream_cx_total
                    .with_label_values(&[&name])
                    .inc();
                metrics
                    .downstream_cx_active
                    .with_label_values(&[&name])
                    .inc();
                let ctx = ctx.clone();
                updates.mark_unchanged();
                let (chosen_tx, chosen_rx) = tokio::sync::oneshot::channel();
                tracker.spawn(async move {
                    tokio::select! {
                        _ = connection::handle(listener, ctx, stream, peer, original, chosen_tx) => {}
                        _ = drain_deadline(draining, updates, chosen_rx, drain_time) => {
                            tracing::info!(listener = %name, %peer, "connection closed at the end of the drain period");
                        }
                    }
                    metrics.downstream_cx_active.with_label_values(&[&name]).dec();
                });
            }
            Err(e) => {
                // Usually EMFILE/ENFILE: back off instead of spinning.
                tracing::warn!(error = %e, "accept failed; backing off");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(1));
            }
        }
    }
}
