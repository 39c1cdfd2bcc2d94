//! When an established connection must end: after the drain time, once its
//! listener is removed (or the proxy shuts down) or once the filter chain it
//! runs on is no longer in the listener's config. Connections on chains that
//! survive an update (same match, TLS and filter config) are left alone;
//! secret rotation alone never drains.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{oneshot, watch};

use crate::config::FilterChainConfig;
use crate::state::ListenerRuntime;

fn chain_present(listener: &ListenerRuntime, mine: &FilterChainConfig) -> bool {
    listener
        .chains
        .iter()
        .chain(listener.default_chain.iter())
        .any(|c| c.config == *mine)
}

/// Resolves `drain_time` after the connection has to drain; never resolves
/// for a connection that may keep running.
pub async fn drain_deadline(
    mut draining: watch::Receiver<bool>,
    mut config: watch::Receiver<Arc<ListenerRuntime>>,
    chosen: oneshot::Receiver<FilterChainConfig>,
    drain_time: Duration,
) {
    let mut chosen = Some(chosen);
    let mut mine: Option<FilterChainConfig> = None;
    let mut draining_open = true;
    let mut config_open = true;
    loop {
        if *draining.borrow() {
            break;
        }
        if let Some(m) = &mine {
            if !chain_present(&config.borrow(), m) {
                break;
            }
        }
        tokio::select! {
            r = draining.changed(), if draining_open => draining_open = r.is_ok(),
            r = config.changed(), if config_open => config_open = r.is_ok(),
            c = async {
                match chosen.as_mut() {
                    Some(rx) => rx.await.ok(),
                    None => std::future::pending().await,
                }
            } => {
                chosen = None;
                mine = c;
            }
        }
    }
    tokio::time::sleep(drain_time).await;
}
