//! Handshake (kind 0): the first request on every connection. The client says who it is; the
//! server says who it is and, for every kind it knows, the versions it speaks.

use serde::{Deserialize, Serialize};

use super::codec::check_at_most;
use super::error::ProtocolError;
use crate::limits::{CLIENT_ID_BYTES_MAX, SOFTWARE_FIELD_BYTES_MAX};
use crate::types::NodeId;

/// Handshake request, version 1.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HandshakeRequest {
    /// The application's name for itself, for the server's logs and metrics (e.g.
    /// `"billing-consumer-3"`); at most 255 bytes.
    pub client_id: String,
    /// The client library, e.g. `"vltava-client"`; at most 128 bytes.
    pub client_software_name: String,
    /// The client library's version, e.g. `"0.1.0"`; at most 128 bytes.
    pub client_software_version: String,
}

impl HandshakeRequest {
    /// Checks the field limits.
    ///
    /// # Errors
    /// `FieldTooLarge` for a field past its limit.
    pub fn validate(&self) -> Result<(), ProtocolError> {
        check_at_most("client_id bytes", self.client_id.len(), CLIENT_ID_BYTES_MAX)?;
        check_at_most(
            "client_software_name bytes",
            self.client_software_name.len(),
            SOFTWARE_FIELD_BYTES_MAX,
        )?;
        check_at_most(
            "client_software_version bytes",
            self.client_software_version.len(),
            SOFTWARE_FIELD_BYTES_MAX,
        )
    }
}

/// Handshake response, version 1.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HandshakeResponse {
    /// The node the client is connected to.
    pub node_id: NodeId,
    /// The cluster's identity, fixed when the cluster was first started.
    pub cluster_id: String,
    /// The server software, `"vltava-node"`.
    pub server_software_name: String,
    /// The server software's version.
    pub server_software_version: String,
    /// The largest frame, header included, the server accepts (and sends).
    pub frame_bytes_max: u32,
    /// Every kind the server speaks, with its version range.
    pub kinds: Vec<KindVersions>,
}

/// One kind the server speaks.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KindVersions {
    /// The kind number, as in the frame header.
    pub kind: u16,
    /// The kind's name, e.g. `"Produce"`, for logs.
    pub name: String,
    /// The lowest version the server speaks.
    pub version_min: u16,
    /// The highest version the server speaks.
    pub version_max: u16,
}
