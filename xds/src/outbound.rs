//! What a stream sends, and when it becomes bytes.
//!
//! Stream tasks queue [`Plan`]s: pointers to the shared resources plus the
//! nonce and version, a few hundred bytes however large the resources are.
//! The prost message, which copies every resource body, is built only when
//! the transport asks the [`ResponseStream`] for the next message, so a
//! stream holds at most one built response and a backlog costs pointers.
//!
//! A server-wide [`Budget`] (bytes) bounds how many built responses exist at
//! once: a response takes its size from the budget when it is built and
//! gives it back when the transport asks for the next one. hyper asks right
//! after handing the encoded bytes of the last one to h2, then keeps the
//! next one until h2's send buffer for the stream has room: for a client
//! that reads slowly, one response waits in h2 (not counted) and one in
//! hyper (counted, its share kept until it moves on). When a
//! thousand proxies sync at once, the others wait for the budget instead of
//! all building their responses together. A client that stops reading
//! never asks for the next response, so its share is returned after
//! [`XdsConfig::response_stall`](crate::XdsConfig) and it cannot starve the
//! others.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryResponse, DiscoveryResponse, Resource as PbResource,
};
use futures::Stream;
use tokio::sync::{mpsc, AcquireError, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinHandle;
use tonic::Status;

use crate::metrics::Metrics;
use crate::resource::Resource;
use crate::types::TypeUrl;

/// A response as queued: what to send, not yet the message.
pub trait Plan: Send + Unpin + 'static {
    type Message: Send + 'static;

    /// About the size of the built message (resource bodies and names).
    fn bytes(&self) -> usize;

    /// Builds the message (copies the resource bodies).
    fn build(self) -> Self::Message;
}

fn resource_bytes(r: &Resource) -> usize {
    r.body.value.len() + r.body.type_url.len() + r.name.len() + r.version.len()
}

/// A state-of-the-world response.
pub struct SotwPlan {
    pub(crate) type_url: TypeUrl,
    pub(crate) version: String,
    pub(crate) nonce: String,
    pub(crate) resources: Vec<Arc<Resource>>,
}

impl Plan for SotwPlan {
    type Message = DiscoveryResponse;

    fn bytes(&self) -> usize {
        self.resources.iter().map(|r| r.body.value.len()).sum()
    }

    fn build(self) -> DiscoveryResponse {
        DiscoveryResponse {
            version_info: self.version,
            resources: self.resources.iter().map(|r| r.body.clone()).collect(),
            type_url: self.type_url.as_str().to_owned(),
            nonce: self.nonce,
            ..Default::default()
        }
    }
}

/// A delta response.
pub struct DeltaPlan {
    pub(crate) type_url: TypeUrl,
    pub(crate) system_version: String,
    pub(crate) nonce: String,
    pub(crate) resources: Vec<Arc<Resource>>,
    pub(crate) removed: Vec<String>,
}

impl Plan for DeltaPlan {
    type Message = DeltaDiscoveryResponse;

    fn bytes(&self) -> usize {
        self.resources
            .iter()
            .map(|r| resource_bytes(r))
            .sum::<usize>()
            + self.removed.iter().map(String::len).sum::<usize>()
    }

    fn build(self) -> DeltaDiscoveryResponse {
        DeltaDiscoveryResponse {
            system_version_info: self.system_version,
            resources: self
                .resources
                .iter()
                .map(|r| PbResource {
                    name: r.name.clone(),
                    version: r.version.clone(),
                    resource: Some(r.body.clone()),
                    ..Default::default()
                })
                .collect(),
            type_url: self.type_url.as_str().to_owned(),
            removed_resources: self.removed,
            nonce: self.nonce,
            ..Default::default()
        }
    }
}

/// Splits resources into groups of at most `max_bytes` of resource data
/// each (a resource larger than that is a group of its own), keeping order.
pub(crate) fn chunks(resources: Vec<Arc<Resource>>, max_bytes: usize) -> Vec<Vec<Arc<Resource>>> {
    let mut out: Vec<Vec<Arc<Resource>>> = Vec::new();
    let mut size = 0;
    for r in resources {
        let n = resource_bytes(&r);
        match out.last_mut() {
            Some(group) if !group.is_empty() && size + n <= max_bytes => {
                size += n;
                group.push(r);
            }
            _ => {
                size = n;
                out.push(vec![r]);
            }
        }
    }
    out
}

/// The server-wide allowance of built, not yet handed over, responses.
pub(crate) struct Budget {
    semaphore: Arc<Semaphore>,
    /// In bytes, at most `u32::MAX` (one acquisition takes a `u32`).
    total: u32,
    stall: Duration,
    metrics: Metrics,
}

impl Budget {
    pub(crate) fn new(bytes: usize, stall: Duration, metrics: Metrics) -> Budget {
        let total = u32::try_from(bytes).unwrap_or(u32::MAX).max(1);
        Budget {
            semaphore: Arc::new(Semaphore::new(total as usize)),
            total,
            stall,
            metrics,
        }
    }

    /// What a response of `bytes` takes: its size, but never more than the
    /// whole budget (a response larger than that waits for all of it).
    fn share(&self, bytes: usize) -> u32 {
        u32::try_from(bytes)
            .unwrap_or(u32::MAX)
            .clamp(1, self.total)
    }
}

/// A built response's share of the budget; gives it back when dropped.
struct InFlight {
    _permit: OwnedSemaphorePermit,
    bytes: i64,
    metrics: Metrics,
}

impl InFlight {
    fn new(permit: OwnedSemaphorePermit, metrics: &Metrics) -> InFlight {
        let bytes = i64::from(u32::try_from(permit.num_permits()).unwrap_or(u32::MAX));
        metrics.built(bytes);
        InFlight {
            _permit: permit,
            bytes,
            metrics: metrics.clone(),
        }
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.metrics.handed_over(self.bytes);
    }
}

type Acquire = Pin<Box<dyn Future<Output = Result<OwnedSemaphorePermit, AcquireError>> + Send>>;

/// The response stream tonic sends from; see the module docs.
pub struct ResponseStream<P: Plan> {
    rx: mpsc::Receiver<Result<P, Status>>,
    budget: Arc<Budget>,
    /// A plan waiting for its share of the budget.
    waiting: Option<(P, Acquire)>,
    /// The share of the last response handed to the transport, held by a
    /// timer task that gives it back if the transport does not ask for the
    /// next response in time (a client that stopped reading).
    handed: Option<JoinHandle<()>>,
}

impl<P: Plan> ResponseStream<P> {
    pub(crate) fn new(rx: mpsc::Receiver<Result<P, Status>>, budget: Arc<Budget>) -> Self {
        ResponseStream {
            rx,
            budget,
            waiting: None,
            handed: None,
        }
    }

    /// The transport asks for more: the last response is encoded and passed
    /// on, so its share goes back.
    fn release_handed(&mut self) {
        if let Some(timer) = self.handed.take() {
            // Cancelling drops the task's future, and with it the share.
            timer.abort();
        }
    }

    fn hand_over(&mut self, plan: P, permit: OwnedSemaphorePermit) -> P::Message {
        let in_flight = InFlight::new(permit, &self.budget.metrics);
        let stall = self.budget.stall;
        let metrics = self.budget.metrics.clone();
        self.handed = Some(tokio::spawn(async move {
            tokio::time::sleep(stall).await;
            metrics.stalled();
            drop(in_flight);
        }));
        plan.build()
    }
}

impl<P: Plan> Drop for ResponseStream<P> {
    fn drop(&mut self) {
        self.release_handed();
    }
}

impl<P: Plan> Stream for ResponseStream<P> {
    type Item = Result<P::Message, Status>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        this.release_handed();
        loop {
            if let Some((_, acquire)) = &mut this.waiting {
                let acquired = ready!(acquire.as_mut().poll(cx));
                let Some((plan, _)) = this.waiting.take() else {
                    // Just matched as `Some`.
                    return Poll::Pending;
                };
                return match acquired {
                    Ok(permit) => Poll::Ready(Some(Ok(this.hand_over(plan, permit)))),
                    // The budget's semaphore is never closed.
                    Err(_) => Poll::Ready(Some(Ok(plan.build()))),
                };
            }
            let plan = match ready!(this.rx.poll_recv(cx)) {
                None => return Poll::Ready(None),
                Some(Err(status)) => return Poll::Ready(Some(Err(status))),
                Some(Ok(plan)) => plan,
            };
            let share = this.budget.share(plan.bytes());
            match this.budget.semaphore.clone().try_acquire_many_owned(share) {
                Ok(permit) => return Poll::Ready(Some(Ok(this.hand_over(plan, permit)))),
                Err(_) => {
                    this.budget.metrics.budget_wait();
                    let acquire = this.budget.semaphore.clone().acquire_many_owned(share);
                    this.waiting = Some((plan, Box::pin(acquire)));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use envoy_types::pb::google::protobuf::Any;

    fn res(name: &str, size: usize) -> Arc<Resource> {
        Arc::new(Resource::new(
            name,
            Any {
                type_url: String::new(),
                value: vec![0; size],
            },
        ))
    }

    #[test]
    fn chunks_keep_order_and_size() {
        let rs: Vec<_> = (0..10).map(|i| res(&format!("r{i}"), 100)).collect();
        // Each resource is 100 bytes of body, 2 of name, 16 of version.
        let groups = chunks(rs.clone(), 300);
        assert_eq!(
            groups.iter().map(Vec::len).collect::<Vec<_>>(),
            [2, 2, 2, 2, 2]
        );
        let flat: Vec<_> = groups.concat().iter().map(|r| r.name.clone()).collect();
        assert_eq!(flat, rs.iter().map(|r| r.name.clone()).collect::<Vec<_>>());
        // A resource over the limit travels alone.
        let groups = chunks(vec![res("a", 10), res("big", 1000), res("b", 10)], 300);
        assert_eq!(groups.iter().map(Vec::len).collect::<Vec<_>>(), [1, 1, 1]);
        assert!(chunks(Vec::new(), 300).is_empty());
    }
}
