//! Per-proxy push/ACK status, the data behind `isthmus status` and the admin
//! config dump (the equivalent of `istioctl proxy-status`).
//!
//! Every stream owns a `watch` of its own status and updates it as it goes;
//! the registry only holds the receivers, so reading status never waits on a
//! stream and a stream never waits on a reader.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Weak};
use std::time::SystemTime;

use serde::{Serialize, Serializer};
use tokio::sync::watch;

use crate::held::{sent_map, HeldSet};
use crate::proxy::Proxy;
use crate::resource::ResourceMap;
use crate::types::TypeUrl;

/// Which protocol variant a stream speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum StreamKind {
    StateOfTheWorld,
    Delta,
}

/// Whether the proxy has accepted what was last sent for a type.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum SyncState {
    /// Subscribed, nothing sent yet.
    NotSent,
    /// The last response is waiting for an ACK or NACK.
    Sent,
    /// The proxy ACKed the last response.
    Synced,
    /// The proxy rejected the last response and runs its last good version.
    Nacked,
}

/// A rejected response.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Nack {
    /// The version the proxy refused.
    pub rejected_version: String,
    pub nonce: String,
    /// The proxy's error message (`error_detail.message`).
    pub message: String,
    pub at: SystemTime,
}

/// One resource type on one stream.
#[derive(Clone, Debug, Serialize)]
pub struct TypeStatus {
    pub wildcard: bool,
    /// Shared with the stream (names are shared between streams too), so
    /// status costs nothing per subscribed name.
    #[serde(serialize_with = "names_ser")]
    pub subscribed: Arc<BTreeSet<Arc<str>>>,
    pub state: SyncState,
    /// Version of the last response (the SotW `version_info`; for delta, the
    /// same digest over what the client holds).
    pub sent_version: Option<String>,
    pub sent_nonce: Option<String>,
    pub sent_at: Option<SystemTime>,
    /// The control-plane input version the last response was computed for.
    pub input_version: u64,
    /// Last version the proxy ACKed: what it is running.
    pub acked_version: Option<String>,
    pub last_nack: Option<Nack>,
    /// The generator failed for this proxy; it keeps its last good config.
    pub generate_error: Option<String>,
    pub responses: u64,
    /// What this stream last sent of this type (config dump); see
    /// [`TypeStatus::resources`]. Weak, so the stream can update its map in
    /// place instead of copying it on every push.
    #[serde(serialize_with = "resources_ser", rename = "resources")]
    pub(crate) sent: SentRef,
}

/// Where a stream keeps what it sent: the compact [`HeldSet`].
#[derive(Clone, Debug, Default)]
pub(crate) enum SentRef {
    #[default]
    Nothing,
    Held(Weak<HeldSet>),
}

impl SentRef {
    fn resources(&self) -> Arc<ResourceMap> {
        match self {
            SentRef::Nothing => Arc::default(),
            SentRef::Held(h) => h
                .upgrade()
                .map(|h| Arc::new(sent_map(&h)))
                .unwrap_or_default(),
        }
    }
}

impl Default for TypeStatus {
    fn default() -> Self {
        TypeStatus {
            wildcard: false,
            subscribed: Arc::default(),
            state: SyncState::NotSent,
            sent_version: None,
            sent_nonce: None,
            sent_at: None,
            input_version: 0,
            acked_version: None,
            last_nack: None,
            generate_error: None,
            responses: 0,
            sent: SentRef::Nothing,
        }
    }
}

impl TypeStatus {
    /// The resources this stream last sent of this type (empty once the
    /// stream is gone).
    pub fn resources(&self) -> Arc<ResourceMap> {
        self.sent.resources()
    }

    /// The names subscribed to by name, in order.
    pub fn subscribed_names(&self) -> Vec<&str> {
        self.subscribed.iter().map(|n| &**n).collect()
    }
}

/// One connected stream.
#[derive(Clone, Debug, Serialize)]
pub struct ProxyStatus {
    pub stream_id: u64,
    pub kind: StreamKind,
    pub proxy: Arc<Proxy>,
    pub connected_at: SystemTime,
    pub types: BTreeMap<TypeUrl, TypeStatus>,
}

fn names_ser<S: Serializer>(names: &Arc<BTreeSet<Arc<str>>>, s: S) -> Result<S::Ok, S::Error> {
    s.collect_seq(names.iter().map(|n| &**n))
}

/// Config dump entries as `{name: version}`; the bodies are available
/// programmatically through [`TypeStatus::resources`].
fn resources_ser<S: Serializer>(res: &SentRef, s: S) -> Result<S::Ok, S::Error> {
    let res = res.resources();
    s.collect_map(res.iter().map(|(name, r)| (name, &r.version)))
}

/// The set of live streams' status channels.
#[derive(Clone)]
pub(crate) struct StatusRegistry {
    streams: watch::Sender<BTreeMap<u64, watch::Receiver<ProxyStatus>>>,
}

impl StatusRegistry {
    pub(crate) fn new() -> StatusRegistry {
        StatusRegistry {
            streams: watch::Sender::new(BTreeMap::new()),
        }
    }

    /// Registers a stream; it is removed when the returned handle drops.
    pub(crate) fn register(&self, initial: ProxyStatus) -> StatusHandle {
        let id = initial.stream_id;
        let (tx, rx) = watch::channel(initial);
        self.streams.send_modify(|m| {
            m.insert(id, rx);
        });
        StatusHandle {
            id,
            tx,
            registry: self.clone(),
        }
    }

    pub(crate) fn snapshot(&self) -> Vec<ProxyStatus> {
        self.streams
            .borrow()
            .values()
            .map(|rx| rx.borrow().clone())
            .collect()
    }
}

/// A stream's write side of its status.
pub(crate) struct StatusHandle {
    id: u64,
    tx: watch::Sender<ProxyStatus>,
    registry: StatusRegistry,
}

impl StatusHandle {
    pub(crate) fn update(&self, t: TypeUrl, f: impl FnOnce(&mut TypeStatus)) {
        self.tx.send_modify(|s| f(s.types.entry(t).or_default()));
    }
}

impl Drop for StatusHandle {
    fn drop(&mut self) {
        let id = self.id;
        self.registry.streams.send_modify(|m| {
            m.remove(&id);
        });
    }
}
