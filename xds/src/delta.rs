//! Incremental (delta) streams (`DeltaAggregatedResources` and the per-type
//! `Delta*` methods).
//!
//! Per type the stream tracks the subscription and the version of every
//! resource the client holds (seeded from `initial_resource_versions` on a
//! reconnect), and sends only resources whose version differs plus the names
//! of subscribed resources that no longer exist.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use envoy_types::pb::envoy::service::discovery::v3::DeltaDiscoveryRequest;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tonic::Status;
use tracing::debug;

use crate::generator::Names;
use crate::held::{Held, HeldSet};
use crate::inbound::Inbound;
use crate::outbound::{chunks, DeltaPlan};
use crate::resource::SetDigest;
use crate::status::SentRef;
use crate::stream::{End, StreamCtx, Subscription};
use crate::types::TypeUrl;

type Tx = mpsc::Sender<Result<DeltaPlan, Status>>;

#[derive(Default)]
struct TypeState {
    sub: Subscription,
    /// Wildcard because the first request named nothing, not through `*`;
    /// ends as soon as the client names resources without `*`.
    legacy_wildcard: bool,
    /// What the client holds: the resources we sent (shared with the cache
    /// and other streams) and the versions it announced on reconnecting.
    /// Status holds a weak reference for the config dump.
    held: Arc<HeldSet>,
    /// Digest of `held`'s names and versions, reported as the stream's
    /// version in status.
    digest: SetDigest,
    /// Nonce of the last response sent.
    nonce: Option<String>,
    /// Nonces of the responses of the last update (one, or several when it
    /// was split) that the client has not answered yet. A NACK of any of
    /// them counts; the ACK of the last one means the update is applied.
    unanswered: Vec<String>,
    /// The client rejected part of the last update.
    update_nacked: bool,
}

impl TypeState {
    /// Whether `nonce` is one of the last update's responses, and marks it
    /// answered.
    fn answer(&mut self, nonce: &str) -> bool {
        match self.unanswered.iter().position(|n| n == nonce) {
            Some(i) => {
                self.unanswered.swap_remove(i);
                true
            }
            None => false,
        }
    }

    fn sent_ref(&self) -> SentRef {
        SentRef::Held(Arc::downgrade(&self.held))
    }
}

struct Delta {
    ctx: StreamCtx,
    types: BTreeMap<TypeUrl, TypeState>,
    tx: Tx,
}

pub(crate) async fn run(
    ctx: StreamCtx,
    first: DeltaDiscoveryRequest,
    mut inbound: Inbound<DeltaDiscoveryRequest>,
    tx: Tx,
) {
    let _connected = ctx.shared.metrics.connection();
    let mut push_log = ctx.push_log.clone();
    let mut d = Delta {
        ctx,
        types: BTreeMap::new(),
        tx,
    };
    let mut result = d.on_request(first).await;
    while result.is_ok() {
        result = tokio::select! {
            msg = inbound.message() => match msg {
                Ok(Some(req)) => d.on_request(req).await,
                Ok(None) => Err(End::ClientGone),
                Err(status) => {
                    debug!(node = %d.ctx.proxy.node_id, %status, "stream ended by transport");
                    Err(End::ClientGone)
                }
            },
            changed = push_log.changed() => match changed {
                Ok(()) => d.on_push().await,
                Err(_) => Err(End::ClientGone),
            },
        };
    }
    if let Err(End::Refuse(status)) = result {
        let _ = d.tx.send(Err(status)).await;
    }
}

impl Delta {
    async fn on_request(&mut self, req: DeltaDiscoveryRequest) -> Result<(), End> {
        let Some(t) = self.ctx.resolve_type(&req.type_url).map_err(End::Refuse)? else {
            return Ok(());
        };
        let first = !self.types.contains_key(&t);
        let state = self.types.entry(t).or_default();
        if first {
            let held = Arc::make_mut(&mut state.held);
            for (n, v) in req.initial_resource_versions {
                state.digest.add(&n, &v);
                held.insert(Held::announced(n, v));
            }
            // Legacy wildcard: a first request that names nothing.
            state.sub.wildcard = req.resource_names_subscribe.is_empty();
            state.legacy_wildcard = state.sub.wildcard;
        } else if state.legacy_wildcard && !req.resource_names_subscribe.is_empty() {
            state.legacy_wildcard = false;
            state.sub.wildcard = req.resource_names_subscribe.iter().any(|n| n == "*");
        }
        let mut added = BTreeSet::new();
        let mut wildcard_added = false;
        for name in req.resource_names_subscribe {
            if name == "*" {
                wildcard_added |= !state.sub.wildcard;
                state.sub.wildcard = true;
            } else if let Some(name) = state.sub.insert(&name) {
                added.insert(name);
            }
        }
        let mut unsubscribed = false;
        let mut forgotten = Vec::new();
        for name in req.resource_names_unsubscribe {
            unsubscribed = true;
            if name == "*" {
                state.sub.wildcard = false;
            } else {
                state.sub.remove(&name);
                forgotten.push(name);
            }
        }
        if unsubscribed {
            let held = Arc::make_mut(&mut state.held);
            // The client forgets what it unsubscribed from by name; if it
            // subscribes again it gets a fresh copy.
            for name in &forgotten {
                if let Some(h) = held.take(name.as_str()) {
                    state.digest.remove(h.name(), h.version());
                }
            }
            // What only the wildcard covered stays known to the client (it
            // keeps the version) but leaves the config dump.
            let uncovered: Vec<Held> = held
                .iter()
                .filter(|h| h.sent() && !state.sub.contains(h.name()))
                .cloned()
                .collect();
            for h in uncovered {
                held.replace(Held::announced(h.name().to_owned(), h.version().to_owned()));
            }
            self.ctx.note_sent(t, state.sent_ref());
        }
        let answered = !req.response_nonce.is_empty() && state.answer(&req.response_nonce);
        if !added.is_empty() || !forgotten.is_empty() {
            state.sub.share();
        }
        let sub = state.sub.clone();
        if first || wildcard_added || unsubscribed || !added.is_empty() {
            self.ctx.note_subscription(t, &sub);
        }
        if answered {
            match req.error_detail {
                Some(err) => {
                    state.update_nacked = true;
                    self.ctx.record_nack(t, &req.response_nonce, err.message);
                }
                None if !state.update_nacked
                    && state.nonce.as_deref() == Some(&req.response_nonce) =>
                {
                    self.ctx.record_ack(t, &state.digest.version());
                }
                None => {}
            }
        }
        let domain = if first || wildcard_added {
            Some(sub.names())
        } else if !added.is_empty() {
            Some(Names::Some(Arc::new(added)))
        } else {
            None
        };
        match domain {
            Some(domain) => self.respond(t, domain, true, None).await,
            None => Ok(()),
        }
    }

    async fn on_push(&mut self) -> Result<(), End> {
        let Some((affected, triggered_at)) = self.ctx.take_push() else {
            return Ok(());
        };
        for t in TypeUrl::ALL {
            let Some(state) = self.types.get(&t) else {
                continue;
            };
            if let Some(domain) = affected.names_for(t, &state.sub) {
                self.respond(t, domain, false, triggered_at).await?;
            }
        }
        Ok(())
    }

    /// Sends what changed within `domain`. `answer_missing` (on a new
    /// subscription): names the client asked for that do not exist are
    /// listed in `removed_resources`, so the client need not wait out its
    /// initial fetch timeout to learn that.
    async fn respond(
        &mut self,
        t: TypeUrl,
        domain: Names,
        answer_missing: bool,
        triggered_at: Option<Instant>,
    ) -> Result<(), End> {
        let Ok(generated) = self.ctx.generate(t, &domain).await else {
            return Ok(());
        };
        let Some(state) = self.types.get_mut(&t) else {
            return Ok(());
        };
        let (same, seq) = (&self.ctx.shared.same, self.ctx.seq);
        let updates: Vec<_> = generated
            .iter()
            .filter(|(n, r)| {
                state.sub.contains(n)
                    && match state.held.get(n.as_str()) {
                        Some(h) if h.version() == r.version => false,
                        // Same message, other map order: the client is current.
                        Some(h) if h.sent() => !same.check(seq, &h.0, r),
                        _ => true,
                    }
            })
            .map(|(_, r)| r.clone())
            .collect();
        let gone = |n: &str| !generated.contains_key(n);
        let mut removed: Vec<String> = match &domain {
            Names::All => state
                .held
                .iter()
                .filter(|h| gone(h.name()))
                .map(|h| h.name().to_owned())
                .collect(),
            Names::Some(set) => set
                .iter()
                .filter(|n| state.held.contains(&***n) && gone(n))
                .map(|n| n.to_string())
                .collect(),
        };
        if let (true, Names::Some(asked)) = (answer_missing, &domain) {
            removed.extend(
                asked
                    .iter()
                    .filter(|n| gone(n) && !state.held.contains(&***n))
                    .map(|n| n.to_string()),
            );
        }
        // A new wildcard subscription is always answered, empty or not: a
        // client with nothing of this type (an east-west gateway of a
        // cluster that exports nothing) must learn that to become ready.
        let answer_empty_wildcard = answer_missing && domain == Names::All;
        if updates.is_empty() && removed.is_empty() && !answer_empty_wildcard {
            return Ok(());
        }
        // Status holds only a weak reference, so this updates in place
        // unless other streams share the set (see `held::share`).
        let held = Arc::make_mut(&mut state.held);
        for name in &removed {
            if let Some(h) = held.take(name.as_str()) {
                state.digest.remove(h.name(), h.version());
            }
        }
        for r in &updates {
            if let Some(old) = held.replace(Held(r.clone())) {
                state.digest.remove(old.name(), old.version());
            }
            state.digest.add(&r.name, &r.version);
        }
        crate::held::share(&mut state.held);
        // One response per `delta_response_bytes` of resources, which bounds
        // what a stream builds, and h2 buffers for it, at a time (see
        // `XdsConfig::delta_response_bytes`).
        let groups = match chunks(updates, self.ctx.shared.config.delta_response_bytes) {
            g if g.is_empty() => vec![Vec::new()],
            g => g,
        };
        let system_version = self.ctx.input_version.to_string();
        let mut removed = Some(removed);
        let plans: Vec<DeltaPlan> = groups
            .into_iter()
            .map(|resources| DeltaPlan {
                type_url: t,
                system_version: system_version.clone(),
                nonce: self.ctx.next_nonce(),
                resources,
                // Removals travel with the first response.
                removed: removed.take().unwrap_or_default(),
            })
            .collect();
        state.unanswered = plans.iter().map(|p| p.nonce.clone()).collect();
        state.update_nacked = false;
        let nonce = plans.last().map(|p| p.nonce.clone()).unwrap_or_default();
        state.nonce = Some(nonce.clone());
        let version = state.digest.version();
        let sent = state.sent_ref();
        self.ctx
            .record_sent(t, &version, &nonce, sent, triggered_at);
        for plan in plans {
            self.tx.send(Ok(plan)).await.map_err(|_| End::ClientGone)?;
        }
        Ok(())
    }
}
