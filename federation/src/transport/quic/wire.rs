//! Bytes on a peer stream. Every stream opens with a hello naming the
//! sender's Raft node id, the stream's kind and the sender's incarnation (a
//! random number drawn each time its transport starts), so the receiver can
//! bind the TLS identity to that id before reading any Raft message, and
//! learns when a peer restarted: its own connection to that peer then
//! belongs to the dead process and is replaced at once, instead of swallowing
//! messages until QUIC's idle timeout (see `PeerSender`).
//!
//! - message stream (unidirectional): hello, then frames of a 4-byte
//!   big-endian length and a protobuf `raft::eraftpb::Message`, each at most
//!   `max_message_bytes`;
//! - snapshot stream (bidirectional, one per snapshot): hello, an 8-byte
//!   big-endian length (at most `max_snapshot_bytes`) and one `MsgSnapshot`
//!   message, read in bounded chunks; the receiver answers one status byte
//!   once the snapshot is queued for its node, so the leader learns whether it
//!   arrived.
//! - request stream (bidirectional, one per request): hello, a 4-byte
//!   big-endian length and a JSON membership request (at most
//!   `MAX_REQUEST_BYTES`), answered the same way (see `membership`).

use raft::eraftpb::MessageType;

const MAGIC: &[u8; 4] = b"IRFT";
/// Version 2 added the incarnation.
const VERSION: u8 = 2;
pub const HELLO_LEN: usize = 22;

/// Read size while assembling a snapshot: memory grows with the bytes that
/// actually arrived, never with what a header claims.
pub const SNAPSHOT_CHUNK: usize = 256 << 10;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamKind {
    Messages,
    Snapshot,
    Request,
}

/// Largest membership request or reply on a request stream.
pub const MAX_REQUEST_BYTES: usize = 64 << 10;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Hello {
    pub node_id: u64,
    pub kind: StreamKind,
    /// Differs between two runs of the same node; never 0.
    pub incarnation: u64,
}

impl Hello {
    pub fn encode(&self) -> [u8; HELLO_LEN] {
        let mut out = [0u8; HELLO_LEN];
        out[..4].copy_from_slice(MAGIC);
        out[4] = VERSION;
        out[5] = match self.kind {
            StreamKind::Messages => 0,
            StreamKind::Snapshot => 1,
            StreamKind::Request => 2,
        };
        out[6..14].copy_from_slice(&self.node_id.to_be_bytes());
        out[14..].copy_from_slice(&self.incarnation.to_be_bytes());
        out
    }

    pub fn decode(b: &[u8; HELLO_LEN]) -> Result<Hello, String> {
        if &b[..4] != MAGIC {
            return Err(
                "stream does not start with the Isthmus Raft hello (wrong protocol?)".into(),
            );
        }
        if b[4] != VERSION {
            return Err(format!(
                "peer speaks Raft transport version {}, this node speaks {VERSION}; upgrade the older member",
                b[4]
            ));
        }
        let kind = match b[5] {
            0 => StreamKind::Messages,
            1 => StreamKind::Snapshot,
            2 => StreamKind::Request,
            k => return Err(format!("unknown stream kind {k}")),
        };
        let mut id = [0u8; 8];
        id.copy_from_slice(&b[6..14]);
        let node_id = u64::from_be_bytes(id);
        if node_id == 0 {
            return Err("hello names node id 0".into());
        }
        let mut inc = [0u8; 8];
        inc.copy_from_slice(&b[14..]);
        let incarnation = u64::from_be_bytes(inc);
        if incarnation == 0 {
            return Err("hello names incarnation 0".into());
        }
        Ok(Hello {
            node_id,
            kind,
            incarnation,
        })
    }
}

/// Status byte a snapshot receiver answers with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SnapshotAck {
    Accepted = 0,
    TooLarge = 1,
    Malformed = 2,
    Busy = 3,
}

impl SnapshotAck {
    pub fn from_byte(b: u8) -> Option<SnapshotAck> {
        Some(match b {
            0 => SnapshotAck::Accepted,
            1 => SnapshotAck::TooLarge,
            2 => SnapshotAck::Malformed,
            3 => SnapshotAck::Busy,
            _ => return None,
        })
    }
}

/// Message types raft-rs only generates inside a node; one arriving from the
/// network is forged.
pub fn is_local(t: MessageType) -> bool {
    matches!(
        t,
        MessageType::MsgHup
            | MessageType::MsgBeat
            | MessageType::MsgUnreachable
            | MessageType::MsgSnapStatus
            | MessageType::MsgCheckQuorum
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hello_round_trips_and_rejects_garbage() {
        let h = Hello {
            node_id: u64::MAX - 3,
            kind: StreamKind::Snapshot,
            incarnation: 0x0102_0304_0506_0708,
        };
        assert_eq!(Hello::decode(&h.encode()), Ok(h));
        let mut bad = h.encode();
        bad[0] = b'X';
        assert!(Hello::decode(&bad).is_err());
        let mut v1 = h.encode();
        v1[4] = 1;
        assert!(Hello::decode(&v1).unwrap_err().contains("version 1"));
        let zero = Hello {
            node_id: 0,
            kind: StreamKind::Messages,
            incarnation: 1,
        };
        assert!(Hello::decode(&zero.encode()).is_err());
        let no_incarnation = Hello {
            node_id: 1,
            kind: StreamKind::Messages,
            incarnation: 0,
        };
        assert!(Hello::decode(&no_incarnation.encode())
            .unwrap_err()
            .contains("incarnation"));
    }
}
