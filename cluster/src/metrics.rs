//! Names of the metrics this crate records (documented in the README's metrics table).

/// Data-plane frames written to peers.
pub const PEER_FRAMES_SENT: &str = "tidewater_peer_frames_sent_total";
/// Raft messages dropped on the way to a peer (down, slow, or outbox full).
pub const PEER_MESSAGES_DROPPED: &str = "tidewater_peer_messages_dropped_total";
