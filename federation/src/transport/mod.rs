//! Node-to-node delivery of Raft messages. The node only needs "send this to
//! peer N" (best effort, never blocking) and a stream of inbound messages;
//! Raft itself retries whatever gets lost.

use raft::eraftpb::Message;

pub mod mem;
pub mod quic;

/// Capacity of the inbound queue a transport feeds into a node.
pub const INBOUND_QUEUE: usize = 4096;

/// Transports report whether a `MsgSnapshot` reached its peer by queuing a
/// `MsgSnapStatus` message (`from` = the peer, `to` = this node, `reject` =
/// not delivered) on the node's inbound queue; the node hands it to raft-rs.
/// Node-local message types arriving from the network are dropped by the
/// transport, so only the transport itself can produce these.
pub trait Transport: Send + Sync + 'static {
    /// Queues `msg` for `msg.to`. Never blocks; a message to an unknown,
    /// slow or dead peer is dropped (and counted) rather than stalling the
    /// node or other peers.
    fn send(&self, msg: Message);

    /// Tells the transport where a peer lives (membership changes). The
    /// default ignores it, for transports whose routing is fixed.
    fn set_peer(&self, _id: u64, _addr: &str) {}
}
