//! Growing the voter set: the leader promotes learners that have caught up
//! with its log while the federation has fewer voters than its maximum.

use std::time::Duration;

use raft::eraftpb::ConfChangeType;

use super::single;
use crate::handle::{FederationError, Handle, NodeStatus, Role};

/// A learner this close to the leader's last index counts as caught up.
const PROMOTE_MAX_LAG: u64 = 256;

/// On the leader, promotes caught-up learners to voters while there are
/// fewer than `max_voters` voters. Runs on every member (only the leader
/// acts) until the node stops.
pub fn spawn_promoter(
    handle: Handle,
    max_voters: usize,
    interval: Duration,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let status = match handle.status().await {
                Ok(s) => s,
                Err(FederationError::Stopped) => return,
                Err(_) => continue,
            };
            let Some(node) = promotable(&status, max_voters) else {
                continue;
            };
            match handle
                .change_membership(single(ConfChangeType::AddNode, node), Vec::new())
                .await
            {
                Ok(()) => tracing::info!(node, "promoted a caught-up learner to voter"),
                Err(FederationError::Stopped) => return,
                Err(e) => tracing::warn!(node, error = %e, "cannot promote learner yet"),
            }
        }
    })
}

/// The learner to promote now, if any: only on the leader, only while
/// voters are below the maximum, only a learner that is replicating and
/// close to the leader's log.
pub fn promotable(status: &NodeStatus, max_voters: usize) -> Option<u64> {
    if status.role != Role::Leader || status.voters.len() >= max_voters {
        return None;
    }
    status
        .peers
        .iter()
        .filter(|p| p.learner && p.state == "Replicate" && p.lag <= PROMOTE_MAX_LAG)
        .min_by_key(|p| (p.lag, p.id))
        .map(|p| p.id)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::handle::PeerStatus;

    fn status(voters: Vec<u64>, peers: Vec<(u64, bool, &str, u64)>) -> NodeStatus {
        NodeStatus {
            id: 1,
            role: Role::Leader,
            leader: 1,
            term: 2,
            commit: 100,
            applied: 100,
            last_index: 100,
            first_index: 1,
            snapshot_index: 0,
            revision: 10,
            learners: peers.iter().filter(|p| p.1).map(|p| p.0).collect(),
            voters,
            peers: peers
                .into_iter()
                .map(|(id, learner, state, lag)| PeerStatus {
                    id,
                    match_index: 100u64.saturating_sub(lag),
                    next_index: 101u64.saturating_sub(lag),
                    lag,
                    learner,
                    state: state.to_string(),
                })
                .collect(),
        }
    }

    #[test]
    fn promotes_only_caught_up_learners_below_the_voter_limit() {
        let s = status(
            vec![1, 2, 3],
            vec![
                (2, false, "Replicate", 0),
                (3, false, "Replicate", 0),
                (4, true, "Snapshot", 100),
                (5, true, "Replicate", 3),
                (6, true, "Replicate", 5000),
            ],
        );
        assert_eq!(promotable(&s, 5), Some(5));
        assert_eq!(promotable(&s, 3), None, "voter limit reached");
        let mut follower = s.clone();
        follower.role = Role::Follower;
        assert_eq!(promotable(&follower, 5), None, "only the leader promotes");
        let lagging = status(vec![1], vec![(6, true, "Replicate", 5000)]);
        assert_eq!(promotable(&lagging, 5), None);
    }
}
