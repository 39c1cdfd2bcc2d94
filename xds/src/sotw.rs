//! State-of-the-world streams (`StreamAggregatedResources` and the per-type
//! `Stream*` methods).
//!
//! Per type the stream remembers what the client subscribed to, what it was
//! last sent (by name and version), and the nonce of the last response. A
//! request carrying that nonce is an ACK or NACK; a request carrying an older
//! nonce is stale and ignored, as the protocol requires, because a newer
//! response is already on its way and the client will answer that one.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use envoy_types::pb::envoy::service::discovery::v3::DiscoveryRequest;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tonic::Status;
use tracing::debug;

use crate::generator::Names;
use crate::held::{Held, HeldSet};
use crate::inbound::Inbound;
use crate::outbound::SotwPlan;
use crate::resource::{set_version, Resource, ResourceMap, SetDigest};
use crate::status::SentRef;
use crate::stream::{End, StreamCtx, Subscription};
use crate::types::TypeUrl;

type Tx = mpsc::Sender<Result<SotwPlan, Status>>;

struct TypeState {
    sub: Subscription,
    /// Subscribed with an empty name list: stays wildcard while the client
    /// keeps sending empty lists.
    legacy_wildcard: bool,
    /// What the client holds after our responses: exactly the subscribed
    /// resources that exist, as pointers to the shared resources (no names
    /// of its own: a thousand streams holding a thousand clusters each
    /// would otherwise copy a million names).
    sent: Arc<HeldSet>,
    /// Digest of `sent`: the `version_info` of the last response.
    digest: SetDigest,
    nonce: Option<String>,
}

impl TypeState {
    fn new(sub: Subscription, legacy_wildcard: bool) -> TypeState {
        TypeState {
            sub,
            legacy_wildcard,
            sent: Arc::new(HeldSet::new()),
            digest: SetDigest::default(),
            nonce: None,
        }
    }

    /// Replaces what the client holds (resume).
    fn reset_sent(&mut self, sent: &ResourceMap) {
        self.digest = SetDigest::default();
        for (n, r) in sent.iter() {
            self.digest.add(n, &r.version);
        }
        self.sent = Arc::new(sent.values().map(|r| Held(r.clone())).collect());
    }

    /// Drops what the subscription no longer covers, in place.
    fn forget_unsubscribed(&mut self) {
        let sub = &self.sub;
        let digest = &mut self.digest;
        Arc::make_mut(&mut self.sent).retain(|h| {
            let keep = sub.contains(h.name());
            if !keep {
                digest.remove(h.name(), h.version());
            }
            keep
        });
    }
}

struct Sotw {
    ctx: StreamCtx,
    types: BTreeMap<TypeUrl, TypeState>,
    tx: Tx,
}

pub(crate) async fn run(
    ctx: StreamCtx,
    first: DiscoveryRequest,
    mut inbound: Inbound<DiscoveryRequest>,
    tx: Tx,
) {
    let _connected = ctx.shared.metrics.connection();
    let mut push_log = ctx.push_log.clone();
    let mut s = Sotw {
        ctx,
        types: BTreeMap::new(),
        tx,
    };
    let mut result = s.on_request(first).await;
    while result.is_ok() {
        result = tokio::select! {
            msg = inbound.message() => match msg {
                Ok(Some(req)) => s.on_request(req).await,
                Ok(None) => Err(End::ClientGone),
                Err(status) => {
                    debug!(node = %s.ctx.proxy.node_id, %status, "stream ended by transport");
                    Err(End::ClientGone)
                }
            },
            changed = push_log.changed() => match changed {
                Ok(()) => s.on_push().await,
                // The server keeps a sender, so this only happens at shutdown.
                Err(_) => Err(End::ClientGone),
            },
        };
    }
    if let Err(End::Refuse(status)) = result {
        let _ = s.tx.send(Err(status)).await;
    }
}

impl Sotw {
    async fn on_request(&mut self, req: DiscoveryRequest) -> Result<(), End> {
        let Some(t) = self.ctx.resolve_type(&req.type_url).map_err(End::Refuse)? else {
            return Ok(());
        };
        let Some(state) = self.types.get_mut(&t) else {
            let names = req.resource_names.into_iter().collect();
            // First request for this type on this stream; a nonce it carries
            // belongs to an earlier stream and means nothing here.
            return self.subscribe_new(t, names, req.version_info).await;
        };
        if req.response_nonce.is_empty() {
            // A client re-requesting without a nonce starts over for the type.
            self.types.remove(&t);
            let names = req.resource_names.into_iter().collect();
            return self.subscribe_new(t, names, String::new()).await;
        }
        if state.nonce.as_deref() != Some(req.response_nonce.as_str()) {
            debug!(node = %self.ctx.proxy.node_id, r#type = %t, nonce = req.response_nonce, "ignoring request with a stale nonce");
            return Ok(());
        }
        match req.error_detail {
            Some(err) => self.ctx.record_nack(t, &req.response_nonce, err.message),
            None => self.ctx.record_ack(t, &req.version_info),
        }
        if (state.legacy_wildcard && req.resource_names.is_empty())
            || same_names(&state.sub, &req.resource_names)
        {
            // The common case, every ACK: no allocation.
            return Ok(());
        }
        state.legacy_wildcard = false;
        let new_sub = subscription(req.resource_names.into_iter().collect());
        let old_sub = std::mem::replace(&mut state.sub, new_sub.clone());
        state.forget_unsubscribed();
        self.ctx.note_sent(t, sent_ref(&state.sent));
        self.ctx.note_subscription(t, &new_sub);
        if t.is_full_state() {
            return self.respond(t, new_sub.names(), true, None).await;
        }
        // Other types are per resource: the client keeps what it holds, so
        // only newly named resources need sending, and a shrink needs nothing.
        let domain = if new_sub.wildcard && !old_sub.wildcard {
            Names::All
        } else {
            let added: BTreeSet<Arc<str>> =
                new_sub.names.difference(&old_sub.names).cloned().collect();
            if added.is_empty() {
                return Ok(());
            }
            Names::Some(Arc::new(added))
        };
        self.respond(t, domain, true, None).await
    }

    async fn subscribe_new(
        &mut self,
        t: TypeUrl,
        names: BTreeSet<String>,
        client_version: String,
    ) -> Result<(), End> {
        let legacy_wildcard = names.is_empty();
        let sub = if legacy_wildcard {
            Subscription::wildcard()
        } else {
            subscription(names)
        };
        self.ctx.note_subscription(t, &sub);
        self.types
            .insert(t, TypeState::new(sub.clone(), legacy_wildcard));
        if !client_version.is_empty() && self.resume(t, &sub, &client_version).await {
            return Ok(());
        }
        self.respond(t, sub.names(), true, None).await
    }

    /// A reconnecting client names the version it runs. When that is what
    /// we would send (versions are content digests, equal on every replica),
    /// skip the resend and wait for the next change.
    async fn resume(&mut self, t: TypeUrl, sub: &Subscription, client_version: &str) -> bool {
        let Ok(generated) = self.ctx.generate(t, &sub.names()).await else {
            return false;
        };
        if set_version(generated.iter().map(|(n, r)| (n, &r.version))) != client_version {
            return false;
        }
        debug!(node = %self.ctx.proxy.node_id, r#type = %t, version = client_version, "client resumed at the current version");
        if let Some(state) = self.types.get_mut(&t) {
            state.reset_sent(&generated);
            self.ctx
                .record_resumed(t, client_version, sent_ref(&state.sent));
        }
        true
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

    /// Regenerates `domain` of type `t` and sends what the client lacks.
    /// `force` answers a (re)subscription: send even if nothing changed.
    async fn respond(
        &mut self,
        t: TypeUrl,
        domain: Names,
        force: bool,
        triggered_at: Option<Instant>,
    ) -> Result<(), End> {
        let Ok(generated) = self.ctx.generate(t, &domain).await else {
            return Ok(());
        };
        let Some(state) = self.types.get_mut(&t) else {
            return Ok(());
        };
        let (same, seq) = (&self.ctx.shared.same, self.ctx.seq);
        let updates: Vec<Arc<Resource>> = generated
            .iter()
            .filter(|(n, r)| {
                state.sub.contains(n)
                    && state
                        .sent
                        .get(n.as_str())
                        .is_none_or(|h| !same.check(seq, &h.0, r))
            })
            .map(|(_, r)| r.clone())
            .collect();
        let gone = |n: &str| !generated.contains_key(n);
        let removals: Vec<String> = match &domain {
            Names::All => state
                .sent
                .iter()
                .map(Held::name)
                .filter(|n| gone(n))
                .map(str::to_owned)
                .collect(),
            Names::Some(set) => set
                .iter()
                .filter(|n| state.sent.contains(&***n) && gone(n))
                .map(|n| n.to_string())
                .collect(),
        };
        if !force && updates.is_empty() && removals.is_empty() {
            return Ok(());
        }
        // Status holds only a weak reference, so this updates in place.
        let sent = Arc::make_mut(&mut state.sent);
        for n in &removals {
            if let Some(old) = sent.take(n.as_str()) {
                state.digest.remove(n, old.version());
            }
        }
        for r in &updates {
            if let Some(old) = sent.replace(Held(r.clone())) {
                state.digest.remove(old.name(), old.version());
            }
            state.digest.add(&r.name, &r.version);
        }
        let body: Vec<&Arc<Resource>> = if t.is_full_state() {
            sent.iter().map(|h| &h.0).collect()
        } else if force {
            match &domain {
                Names::All => sent.iter().map(|h| &h.0).collect(),
                Names::Some(set) => set
                    .iter()
                    .filter_map(|n| sent.get(&**n).map(|h| &h.0))
                    .collect(),
            }
        } else if updates.is_empty() {
            // Only removals: the client drops those with their clusters or
            // listeners; nothing to send.
            self.ctx.note_sent(t, sent_ref(&state.sent));
            return Ok(());
        } else {
            updates.iter().collect()
        };
        // Pointers: the bodies are copied only when the transport asks for
        // the message (see `outbound.rs`).
        let resources = body.into_iter().cloned().collect();
        crate::held::share(&mut state.sent);
        let version = state.digest.version();
        let nonce = self.ctx.next_nonce();
        state.nonce = Some(nonce.clone());
        self.ctx
            .record_sent(t, &version, &nonce, sent_ref(&state.sent), triggered_at);
        let response = SotwPlan {
            type_url: t,
            version,
            nonce,
            resources,
        };
        self.tx
            .send(Ok(response))
            .await
            .map_err(|_| End::ClientGone)
    }
}

/// Whether a request's names are exactly the current named subscription.
fn same_names(sub: &Subscription, names: &[String]) -> bool {
    let wildcard = names.iter().any(|n| n == "*");
    let named = names.len() - usize::from(wildcard);
    // Requests do not repeat names; if one does, the slow path sorts it out.
    wildcard == sub.wildcard
        && named == sub.names.len()
        && names
            .iter()
            .all(|n| n == "*" || sub.names.contains(n.as_str()))
}

fn subscription(names: BTreeSet<String>) -> Subscription {
    let mut sub = Subscription::named(names.iter().filter(|n| *n != "*"));
    sub.wildcard = names.contains("*");
    sub
}

/// Status's view of what the stream sent.
fn sent_ref(sent: &Arc<HeldSet>) -> SentRef {
    SentRef::Held(Arc::downgrade(sent))
}
