//! Delta ADS. Each response changes or removes named resources; the client
//! merges it into the accepted set of that type, converts the merged set
//! with the same code as state of the world, and applies it whole. A
//! rejected response leaves the accepted set untouched and is NACKed.

use envoy_types::pb::envoy::service::discovery::v3::{
    aggregated_discovery_service_client::AggregatedDiscoveryServiceClient, DeltaDiscoveryRequest,
    DeltaDiscoveryResponse,
};
use envoy_types::pb::google::rpc::Status;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use super::client::{convert, XdsClient};
use super::{TypeKind, XdsError};

type Tx = mpsc::Sender<DeltaDiscoveryRequest>;

async fn send(tx: &Tx, req: DeltaDiscoveryRequest) -> Result<(), XdsError> {
    tx.send(req)
        .await
        .map_err(|_| XdsError::Stream("request stream closed".into()))
}

impl XdsClient {
    fn delta_subscribe(&self, kind: TypeKind) -> DeltaDiscoveryRequest {
        let sub = &self.subs[&kind];
        DeltaDiscoveryRequest {
            node: Some(self.node.clone()),
            type_url: kind.type_url().to_string(),
            // Empty on the first request of a wildcard type means "everything".
            resource_names_subscribe: if kind.wildcard() {
                Vec::new()
            } else {
                sub.names.clone()
            },
            initial_resource_versions: sub
                .resources
                .iter()
                .map(|(n, (v, _))| (n.clone(), v.clone()))
                .collect(),
            ..Default::default()
        }
    }

    /// One delta ADS stream. Returns whether any response was accepted.
    pub(super) async fn delta_once(&mut self) -> Result<bool, (XdsError, bool)> {
        let mut client =
            AggregatedDiscoveryServiceClient::new(self.channel().await.map_err(|e| (e, false))?);
        let (tx, rx) = mpsc::channel::<DeltaDiscoveryRequest>(32);
        for kind in [TypeKind::Cluster, TypeKind::Listener, TypeKind::NameTable] {
            if self.subs.contains_key(&kind) {
                send(&tx, self.delta_subscribe(kind))
                    .await
                    .map_err(|e| (e, false))?;
            }
        }
        for kind in [TypeKind::Endpoint, TypeKind::Secret, TypeKind::Route] {
            if !self.subs[&kind].names.is_empty() {
                send(&tx, self.delta_subscribe(kind))
                    .await
                    .map_err(|e| (e, false))?;
            }
        }
        let mut inbound = match client
            .delta_aggregated_resources(ReceiverStream::new(rx))
            .await
        {
            Ok(r) => r.into_inner(),
            Err(s) if s.code() == tonic::Code::Unimplemented => {
                return Err((XdsError::DeltaUnsupported, false))
            }
            Err(s) => return Err((XdsError::Stream(s.to_string()), false)),
        };
        let mut progress = false;
        let _connected = self.metrics.health.xds_connection();
        loop {
            let msg = loop {
                let warm = self.secrets_warm_deadline();
                tokio::select! {
                    m = inbound.message() => break m,
                    () = self.applier.resolution_changed() => self.apply_resolved().await,
                    () = super::client::sleep_until_some(warm) => self.update_ready(),
                }
            };
            let resp = match msg {
                Ok(Some(r)) => r,
                Ok(None) => return Ok(progress),
                Err(s) if s.code() == tonic::Code::Unimplemented && !progress => {
                    return Err((XdsError::DeltaUnsupported, false))
                }
                Err(e) => return Err((XdsError::Stream(e.to_string()), progress)),
            };
            if self
                .delta_handle(&tx, resp)
                .await
                .map_err(|e| (e, progress))?
            {
                progress = true;
            }
        }
    }

    async fn delta_handle(
        &mut self,
        tx: &Tx,
        resp: DeltaDiscoveryResponse,
    ) -> Result<bool, XdsError> {
        let Some(kind) = TypeKind::from_url(&resp.type_url) else {
            tracing::warn!(type_url = %resp.type_url, "ignoring delta response of an unsubscribed type");
            return Ok(false);
        };
        let mut merged = self.subs[&kind].resources.clone();
        for name in &resp.removed_resources {
            merged.remove(name);
        }
        let mut bad = Vec::new();
        for r in &resp.resources {
            match &r.resource {
                Some(any) => {
                    merged.insert(r.name.clone(), (r.version.clone(), any.clone()));
                }
                None => bad.push(format!("resource {:?} has no body", r.name)),
            }
        }
        let result = if bad.is_empty() {
            let anys: Vec<_> = merged.values().map(|(_, a)| a.clone()).collect();
            match convert(kind, &anys, &self.subs[&kind].names) {
                Ok(update) => self.applier.apply(update).await.map_err(|e| e.to_string()),
                Err(errs) => Err(errs
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join("; ")),
            }
        } else {
            Err(bad.join("; "))
        };
        let mut ack = DeltaDiscoveryRequest {
            type_url: kind.type_url().to_string(),
            response_nonce: resp.nonce.clone(),
            ..Default::default()
        };
        match result {
            Ok(()) => {
                self.metrics
                    .xds_updates_total
                    .with_label_values(&[kind.short(), "ack"])
                    .inc();
                self.metrics.health.xds_accepted(kind.short());
                if let Some(sub) = self.subs.get_mut(&kind) {
                    sub.resources = merged;
                    sub.version = resp.system_version_info.clone();
                    sub.received = true;
                }
                tracing::info!(
                    r#type = kind.short(),
                    changed = resp.resources.len(),
                    removed = resp.removed_resources.len(),
                    "delta xDS update applied"
                );
                send(tx, ack).await?;
                self.delta_resubscribe(tx).await?;
                self.update_ready();
                Ok(true)
            }
            Err(message) => {
                self.metrics
                    .xds_updates_total
                    .with_label_values(&[kind.short(), "nack"])
                    .inc();
                tracing::warn!(r#type = kind.short(), error = %message, "delta xDS update rejected; keeping last good config");
                ack.error_detail = Some(Status {
                    code: 3,
                    message,
                    details: Vec::new(),
                });
                send(tx, ack).await?;
                Ok(false)
            }
        }
    }

    async fn delta_resubscribe(&mut self, tx: &Tx) -> Result<(), XdsError> {
        let wanted = [
            (TypeKind::Endpoint, self.applier.resources().eds_names()),
            (TypeKind::Secret, self.sds_subscription()),
            (TypeKind::Route, self.applier.resources().rds_names()),
        ];
        for (kind, names) in wanted {
            let Some(sub) = self.subs.get_mut(&kind) else {
                continue;
            };
            let subscribe: Vec<String> = names
                .iter()
                .filter(|n| !sub.names.contains(n))
                .cloned()
                .collect();
            let unsubscribe: Vec<String> = sub
                .names
                .iter()
                .filter(|n| !names.contains(n))
                .cloned()
                .collect();
            if subscribe.is_empty() && unsubscribe.is_empty() {
                continue;
            }
            sub.names = names;
            let keep: &Vec<String> = &sub.names;
            sub.resources.retain(|n, _| keep.contains(n));
            let req = DeltaDiscoveryRequest {
                node: Some(self.node.clone()),
                type_url: kind.type_url().to_string(),
                resource_names_subscribe: subscribe,
                resource_names_unsubscribe: unsubscribe,
                ..Default::default()
            };
            send(tx, req).await?;
        }
        Ok(())
    }
}
