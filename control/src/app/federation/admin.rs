//! The federation's operator endpoints on the admin port, behind
//! `isthmus federation status|join|leave|snapshot save`:
//!
//! - `GET /federation/status`: this node's Raft status with member names and roles;
//! - `POST /federation/join?name=NAME&address=HOST:PORT`: add a member (learner, promoted when caught up);
//! - `POST /federation/leave?node=NAME|ID`: remove a member (leadership moves first if it leads);
//! - `GET /federation/snapshot`: a consistent registry image (after a ReadIndex), with its CRC32
//!   in `x-isthmus-crc32` so the CLI can check what it writes.
//!
//! These change membership, so the admin port must only be reachable by
//! operators (bind it to loopback or a management network; see
//! docs/federation.md).

use std::collections::BTreeMap;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Response, StatusCode};
use http_body_util::Full;
use isthmus_federation::membership::Membership;
use isthmus_federation::recovery;
use isthmus_federation::{Handle, NodeStatus};
use serde::{Deserialize, Serialize};

use super::node_id;

/// Header carrying the CRC32 (hex) of a snapshot body.
pub const CRC_HEADER: &str = "x-isthmus-crc32";

const MEMBERSHIP_TIMEOUT: Duration = Duration::from_secs(30);

/// What the admin port needs to serve the federation endpoints.
#[derive(Clone)]
pub struct FederationAdmin {
    pub handle: Handle,
    pub membership: Membership,
    /// Names of members known from configuration (peers, seeds, this node);
    /// registered clusters are named from the registry.
    pub names: BTreeMap<u64, String>,
}

/// `GET /federation/status`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StatusView {
    pub node: u64,
    pub name: String,
    pub role: String,
    pub leader: u64,
    pub leader_name: String,
    pub term: u64,
    pub commit: u64,
    pub applied: u64,
    pub last_index: u64,
    pub revision: u64,
    pub members: Vec<MemberView>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MemberView {
    pub id: u64,
    pub name: String,
    /// voter, learner, or witness (a voter with no cluster in the registry).
    pub role: String,
    /// Entries behind the leader's log (known on the leader only).
    pub lag: Option<u64>,
    pub replication: Option<String>,
}

impl FederationAdmin {
    fn name_of(&self, id: u64, clusters: &BTreeMap<u64, String>) -> String {
        clusters
            .get(&id)
            .or_else(|| self.names.get(&id))
            .cloned()
            .unwrap_or_else(|| format!("node-{id}"))
    }

    pub fn view(&self, s: &NodeStatus) -> StatusView {
        let snap = self.handle.snapshot_stale();
        let clusters: BTreeMap<u64, String> = snap
            .clusters
            .keys()
            .map(|c| (node_id(c), c.clone()))
            .collect();
        let role_of = |id: u64| {
            if s.learners.contains(&id) {
                "learner"
            } else if clusters.contains_key(&id) {
                "voter"
            } else {
                "witness"
            }
        };
        let mut members = Vec::new();
        for id in s.voters.iter().chain(s.learners.iter()) {
            let peer = s.peers.iter().find(|p| p.id == *id);
            let (lag, replication) = if *id == s.id && s.leader == s.id {
                (Some(0), Some("Leader".to_string()))
            } else {
                (peer.map(|p| p.lag), peer.map(|p| p.state.clone()))
            };
            members.push(MemberView {
                id: *id,
                name: self.name_of(*id, &clusters),
                role: role_of(*id).to_string(),
                lag,
                replication,
            });
        }
        members.sort_by(|a, b| a.name.cmp(&b.name));
        StatusView {
            node: s.id,
            name: self.name_of(s.id, &clusters),
            role: format!("{:?}", s.role),
            leader: s.leader,
            leader_name: if s.leader == 0 {
                "none".into()
            } else {
                self.name_of(s.leader, &clusters)
            },
            term: s.term,
            commit: s.commit,
            applied: s.applied,
            last_index: s.last_index,
            revision: s.revision,
            members,
        }
    }

    /// A member named by cluster name or numeric node id.
    fn resolve(&self, node: &str) -> u64 {
        node.parse::<u64>().unwrap_or_else(|_| node_id(node))
    }

    pub async fn route(
        &self,
        method: &Method,
        path: &str,
        param: impl Fn(&str) -> Option<String>,
    ) -> Response<Full<Bytes>> {
        match (method, path) {
            (&Method::GET, "/federation/status") => match self.handle.status().await {
                Ok(s) => json(StatusCode::OK, &self.view(&s)),
                Err(e) => text(StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
            },
            (&Method::GET, "/federation/snapshot") => match self.handle.consistent_image().await {
                Ok(image) => match serde_json::to_vec(&image) {
                    Ok(body) => {
                        let crc = format!("{:08x}", recovery::checksum(&body));
                        let mut resp = Response::new(Full::new(Bytes::from(body)));
                        resp.headers_mut().insert(
                            http::header::CONTENT_TYPE,
                            http::HeaderValue::from_static("application/json"),
                        );
                        if let Ok(v) = http::HeaderValue::from_str(&crc) {
                            resp.headers_mut().insert(CRC_HEADER, v);
                        }
                        resp
                    }
                    Err(e) => text(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
                },
                Err(e) => text(StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
            },
            (&Method::POST, "/federation/leave") => {
                let Some(node) = param("node") else {
                    return text(StatusCode::BAD_REQUEST, "missing ?node=NAME|ID".into());
                };
                let id = self.resolve(&node);
                match self.membership.leave(id, MEMBERSHIP_TIMEOUT).await {
                    Ok(leader) => text(
                        StatusCode::OK,
                        format!(
                            "{node} (node {id}) removed from the federation; leader: node {leader}"
                        ),
                    ),
                    Err(e) => text(StatusCode::CONFLICT, e.to_string()),
                }
            }
            (&Method::POST, "/federation/join") => {
                let (Some(name), Some(address)) = (param("name"), param("address")) else {
                    return text(
                        StatusCode::BAD_REQUEST,
                        "missing ?name=CLUSTER&address=HOST:PORT".into(),
                    );
                };
                let id = node_id(&name);
                match self
                    .membership
                    .add(id, &name, &address, MEMBERSHIP_TIMEOUT)
                    .await
                {
                    Ok(_) => text(
                        StatusCode::OK,
                        format!("{name} (node {id}) added as a learner; it becomes a voter once caught up while the federation has fewer voters than its maximum"),
                    ),
                    Err(e) => text(StatusCode::CONFLICT, e.to_string()),
                }
            }
            (_, "/federation/status" | "/federation/snapshot") => {
                text(StatusCode::METHOD_NOT_ALLOWED, "use GET".into())
            }
            (_, "/federation/leave" | "/federation/join") => {
                text(StatusCode::METHOD_NOT_ALLOWED, "use POST".into())
            }
            _ => text(StatusCode::NOT_FOUND, format!("no such endpoint {path}")),
        }
    }
}

fn text(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::from(format!("{body}\n"))));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("text/plain"),
    );
    resp
}

fn json<T: Serialize>(status: StatusCode, value: &T) -> Response<Full<Bytes>> {
    let body = serde_json::to_vec_pretty(value).unwrap_or_default();
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    resp
}
