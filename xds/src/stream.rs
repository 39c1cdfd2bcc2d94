//! What every xDS stream shares, whatever its protocol variant.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::SystemTime;

use tokio::sync::watch;
use tonic::Status;
use tracing::{debug, warn};

use crate::cache::Cache;
use crate::generator::{NameSet, Names};
use crate::intern::{intern, intern_set, name_set};
use crate::metrics::Metrics;
use crate::proxy::Proxy;
use crate::push::PushLog;
use crate::resource::ResourceMap;
use crate::server::XdsConfig;
use crate::status::{
    Nack, ProxyStatus, SentRef, StatusHandle, StatusRegistry, StreamKind, SyncState,
};
use crate::types::TypeUrl;

/// State shared by all streams of one server.
pub(crate) struct Shared {
    pub(crate) cache: Cache,
    pub(crate) budget: Arc<crate::outbound::Budget>,
    pub(crate) same: crate::same::SameContent,
    pub(crate) metrics: Metrics,
    /// Kept here so the push log channel never closes, even after the
    /// control plane drops its pushers.
    pub(crate) published: watch::Sender<Arc<PushLog>>,
    pub(crate) statuses: StatusRegistry,
    pub(crate) next_stream: AtomicU64,
    pub(crate) config: XdsConfig,
}

/// What a proxy subscribed to for one type. Names are interned and the set
/// is shared with status, so a subscription costs a pointer per name.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Subscription {
    pub(crate) wildcard: bool,
    pub(crate) names: NameSet,
}

impl Subscription {
    pub(crate) fn wildcard() -> Subscription {
        Subscription {
            wildcard: true,
            names: Arc::default(),
        }
    }

    pub(crate) fn named<S: AsRef<str>>(names: impl IntoIterator<Item = S>) -> Subscription {
        Subscription {
            wildcard: false,
            names: name_set(names),
        }
    }

    /// Shares the name set with every other stream subscribed to the same
    /// names (see [`crate::intern`]); call once a request's changes are in.
    pub(crate) fn share(&mut self) {
        self.names = intern_set(std::mem::take(&mut self.names));
    }

    pub(crate) fn contains(&self, name: &str) -> bool {
        self.wildcard || self.names.contains(name)
    }

    /// Adds a name; the shared name if it was new.
    pub(crate) fn insert(&mut self, name: &str) -> Option<Arc<str>> {
        if self.names.contains(name) {
            return None;
        }
        let name = intern(name);
        Arc::make_mut(&mut self.names).insert(name.clone());
        Some(name)
    }

    /// Removes a name; `true` if it was there.
    pub(crate) fn remove(&mut self, name: &str) -> bool {
        if !self.names.contains(name) {
            return false;
        }
        Arc::make_mut(&mut self.names).remove(name)
    }

    /// What to generate for this subscription: the set itself, shared.
    pub(crate) fn names(&self) -> Names {
        if self.wildcard {
            Names::All
        } else {
            Names::Some(self.names.clone())
        }
    }
}

/// Why a stream ends early.
pub(crate) enum End {
    /// The client went away; nothing to say.
    ClientGone,
    /// The client broke the protocol; tell it why.
    Refuse(Status),
}

/// Per-stream context: who is connected and where the stream is in the push
/// history.
pub(crate) struct StreamCtx {
    pub(crate) shared: Arc<Shared>,
    pub(crate) proxy: Arc<Proxy>,
    /// Per resource type, indexed like [`TypeUrl::ALL`]. A proxy's shape
    /// may depend on the input (which ports it serves), so pushes that may
    /// change more than endpoints clear `shapes_valid`; endpoint-only pushes
    /// (the frequent kind) regenerate only EDS, whose shape never depends
    /// on the input, and keep the shapes.
    shapes: [u64; TypeUrl::ALL.len()],
    shapes_valid: bool,
    pub(crate) id: u64,
    nonces: u64,
    /// Set on per-type services: the only type this stream may carry.
    only: Option<TypeUrl>,
    pub(crate) status: StatusHandle,
    /// The last push this stream has acted on.
    pub(crate) seq: u64,
    pub(crate) input_version: u64,
    pub(crate) push_log: watch::Receiver<Arc<PushLog>>,
}

impl StreamCtx {
    pub(crate) fn new(
        shared: Arc<Shared>,
        proxy: Proxy,
        kind: StreamKind,
        only: Option<TypeUrl>,
    ) -> StreamCtx {
        let id = shared.next_stream.fetch_add(1, Ordering::Relaxed);
        let proxy = Arc::new(proxy);
        let status = shared.statuses.register(ProxyStatus {
            stream_id: id,
            kind,
            proxy: proxy.clone(),
            connected_at: SystemTime::now(),
            types: Default::default(),
        });
        let mut push_log = shared.published.subscribe();
        let (seq, input_version) = {
            let log = push_log.borrow_and_update();
            (log.seq, log.version)
        };
        StreamCtx {
            shapes: [0; TypeUrl::ALL.len()],
            shapes_valid: false,
            shared,
            proxy,
            id,
            nonces: 0,
            only,
            status,
            seq,
            input_version,
            push_log,
        }
    }

    pub(crate) fn next_nonce(&mut self) -> String {
        self.nonces += 1;
        format!("{}-{}", self.id, self.nonces)
    }

    /// The type a request is about. `Ok(None)`: a type this server does not
    /// serve on ADS, which the caller ignores (Envoy may ask for others).
    pub(crate) fn resolve_type(&self, url: &str) -> Result<Option<TypeUrl>, Status> {
        match self.only {
            Some(t) if url.is_empty() || url == t.as_str() => Ok(Some(t)),
            Some(t) => Err(Status::invalid_argument(format!(
                "this is the {t} service, which serves {}, but the request asks for {url:?}",
                t.as_str()
            ))),
            None if url.is_empty() => Err(Status::invalid_argument(
                "requests on the aggregated (ADS) stream must set type_url",
            )),
            None => {
                let t = TypeUrl::parse(url);
                if t.is_none() {
                    warn!(node = %self.proxy.node_id, type_url = url, "ignoring request for a resource type this server does not serve");
                }
                Ok(t)
            }
        }
    }

    /// Generates through the shared cache; a failure is recorded in status
    /// and returned so the caller keeps the proxy's last good state.
    pub(crate) async fn generate(
        &mut self,
        t: TypeUrl,
        names: &Names,
    ) -> Result<Arc<ResourceMap>, Arc<str>> {
        if !self.shapes_valid {
            self.shapes = self.shared.cache.shapes(&self.proxy);
            self.shapes_valid = true;
        }
        let result = self
            .shared
            .cache
            .get(&self.proxy, self.shapes[t.index()], self.seq, t, names)
            .await;
        match &result {
            Ok(_) => self.status.update(t, |s| s.generate_error = None),
            Err(e) => {
                warn!(node = %self.proxy.node_id, r#type = %t, error = %e, "generating resources failed; the proxy keeps its last good config");
                self.status
                    .update(t, |s| s.generate_error = Some(e.to_string()));
            }
        }
        result
    }

    /// Publishes a new subscription in status.
    pub(crate) fn note_subscription(&self, t: TypeUrl, sub: &Subscription) {
        let names = sub.names.clone();
        let wildcard = sub.wildcard;
        self.status.update(t, |s| {
            s.wildcard = wildcard;
            s.subscribed = names;
        });
    }

    /// Takes the newest push, returning what changed since the last one
    /// this stream acted on.
    pub(crate) fn take_push(
        &mut self,
    ) -> Option<(crate::push::Affected, Option<tokio::time::Instant>)> {
        let log = self.push_log.borrow_and_update().clone();
        let affected = log.since(self.seq)?;
        if affected.full || !affected.types.is_empty() {
            self.shapes_valid = false;
        }
        self.seq = log.seq;
        self.input_version = log.version;
        Some((affected, log.triggered_at))
    }

    pub(crate) fn record_sent(
        &self,
        t: TypeUrl,
        version: &str,
        nonce: &str,
        resources: SentRef,
        triggered_at: Option<tokio::time::Instant>,
    ) {
        self.shared
            .metrics
            .pushed(t, triggered_at.map(|at| at.elapsed()));
        let input_version = self.input_version;
        self.status.update(t, |s| {
            s.state = SyncState::Sent;
            s.sent_version = Some(version.to_owned());
            s.sent_nonce = Some(nonce.to_owned());
            s.sent_at = Some(SystemTime::now());
            s.input_version = input_version;
            s.responses += 1;
            s.sent = resources;
        });
    }

    /// Points the config dump at the stream's current map. Needed after any
    /// in-place update (`Arc::make_mut` detaches weak references).
    pub(crate) fn note_sent(&self, t: TypeUrl, resources: SentRef) {
        self.status.update(t, |s| s.sent = resources);
    }

    pub(crate) fn record_ack(&self, t: TypeUrl, version: &str) {
        debug!(node = %self.proxy.node_id, r#type = %t, version, "ACK");
        self.status.update(t, |s| {
            s.state = SyncState::Synced;
            s.acked_version = Some(version.to_owned());
        });
    }

    /// The proxy keeps running its last ACKed version; so do we, in status.
    pub(crate) fn record_nack(&self, t: TypeUrl, nonce: &str, message: String) {
        warn!(node = %self.proxy.node_id, r#type = %t, nonce, error = %message, "proxy rejected (NACKed) a response; it keeps its last good config");
        self.shared.metrics.nacked(t);
        self.status.update(t, |s| {
            s.state = SyncState::Nacked;
            s.last_nack = Some(Nack {
                rejected_version: s.sent_version.clone().unwrap_or_default(),
                nonce: nonce.to_owned(),
                message,
                at: SystemTime::now(),
            });
        });
    }

    /// A resumed stream whose client already runs the current version.
    pub(crate) fn record_resumed(&self, t: TypeUrl, version: &str, resources: SentRef) {
        let input_version = self.input_version;
        self.status.update(t, |s| {
            s.state = SyncState::Synced;
            s.acked_version = Some(version.to_owned());
            s.sent_version = Some(version.to_owned());
            s.input_version = input_version;
            s.sent = resources;
        });
    }
}
