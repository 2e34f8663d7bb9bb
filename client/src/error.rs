//! The client's error type.

use vltava_messages::protocol::{ErrorCode, ProtocolError, ResponseError};

/// Everything a client call can fail with.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ClientError {
    #[error("connection to {addr} failed: {reason}")]
    Connect { addr: String, reason: String },
    #[error("connection lost: {0}")]
    ConnectionLost(String),
    #[error("protocol error: {0}")]
    Protocol(String),
    #[error("server error {}: {}", .0.name, .0.message)]
    Server(ResponseError),
    #[error("request timed out after {0} ms")]
    Timeout(u64),
    #[error("no node reachable among {0}")]
    NoNodeAvailable(String),
    #[error("unknown topic {0}")]
    UnknownTopic(String),
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// The producer or group consumer was closed.
    #[error("the client is closed")]
    Closed,
    /// A group request that needs membership (a commit) came while the consumer is not a
    /// member: before its first join, or between losing its membership and joining again.
    #[error("not a member of group {group_id} (not joined yet, or rejoining)")]
    NotGroupMember { group_id: String },
    /// The admin endpoint answered with an HTTP error.
    #[error("admin endpoint answered {status}: {message}")]
    Admin { status: u16, message: String },
}

impl From<ProtocolError> for ClientError {
    fn from(e: ProtocolError) -> Self {
        ClientError::Protocol(e.to_string())
    }
}

impl ClientError {
    /// Whether sending the same request again (perhaps after refreshing metadata) may work.
    #[must_use]
    pub fn is_retriable(&self) -> bool {
        match self {
            ClientError::Server(e) => e.retriable,
            ClientError::Connect { .. }
            | ClientError::ConnectionLost(_)
            | ClientError::Timeout(_)
            | ClientError::NoNodeAvailable(_)
            | ClientError::NotGroupMember { .. } => true,
            _ => false,
        }
    }

    /// The server's error code, if the server refused.
    #[must_use]
    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            ClientError::Server(e) => e.error_code(),
            _ => None,
        }
    }

    /// Whether the error means the client's metadata is stale (refresh, then retry): the
    /// routing errors of PROTOCOL.md's *Riding out failures*, and a connection or request
    /// that failed without an answer.
    #[must_use]
    pub fn wants_metadata_refresh(&self) -> bool {
        matches!(
            self.code(),
            Some(
                ErrorCode::NotLeader
                    | ErrorCode::FencedLeaderEpoch
                    | ErrorCode::UnknownTopic
                    | ErrorCode::UnknownPartition
                    | ErrorCode::LeaderNotAvailable
                    | ErrorCode::PartitionOffline
                    // A node whose log failed gives up leadership: the metadata names the next.
                    | ErrorCode::StorageError
            )
        ) || matches!(
            self,
            // A request that timed out may have gone to a leader that is paused or cut off
            // while the cluster moved its partitions: the metadata says where they went.
            ClientError::ConnectionLost(_)
                | ClientError::Connect { .. }
                | ClientError::Timeout(_)
                | ClientError::NoNodeAvailable(_)
        )
    }
}

/// Turns an optional per-partition error into a result.
pub(crate) fn check(error: Option<ResponseError>) -> Result<(), ClientError> {
    error.map_or(Ok(()), |e| Err(ClientError::Server(e)))
}
