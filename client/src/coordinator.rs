//! Reaching a consumer group's coordinator: FindCoordinator with bounded retries, requests sent
//! to the coordinator and retried when it moved, and the capped exponential backoff that every
//! group retry uses.
//!
//! A group lives on the node that leads its partition of `__consumer_offsets`; that node can
//! change (a leader election) or not be ready yet (it is loading the group's offsets). Those
//! cases answer `CoordinatorNotAvailable`, `NotCoordinator` or `CoordinatorLoadInProgress`,
//! all retriable: the client backs off, finds the coordinator again and retries, at most
//! `COORDINATOR_ATTEMPTS_MAX` times per call. The new coordinator holds the group's members
//! (it replayed them from the offsets partition), so a member carries on there with its
//! member id, epoch and partitions.
//!
//! FindCoordinator goes to the node that answered last, and on to the next candidate when one
//! cannot be reached or refuses for a reason of its own (a node cut off from the controller
//! answers `ControllerNotAvailable`): another node may answer at once.

use std::time::Duration;

use vltava_messages::protocol::{
    ErrorCode, FindCoordinatorRequest, FindCoordinatorResponse, RequestBody, ResponseError,
};

use crate::cluster::Cluster;
use crate::error::ClientError;

/// The first pause after a failed group request. Long enough that a coordinator that is
/// loading a small group is ready, short enough not to stall a join.
pub const BACKOFF_INITIAL: Duration = Duration::from_millis(100);
/// The longest pause between two attempts: an election in the cluster takes about this long,
/// and a member must still heartbeat well within its session timeout (45 s by default).
pub const BACKOFF_MAX: Duration = Duration::from_secs(2);
/// Attempts per call to reach a coordinator. With the backoff above, the pauses add up to
/// about 11 s (0.1 + 0.2 + 0.4 + 0.8 + 1.6 + 4 × 2), which covers a leader election of the
/// offsets partition; beyond it the error goes to the caller.
pub const COORDINATOR_ATTEMPTS_MAX: u32 = 10;
/// How long one request to a coordinator (other than a parked heartbeat) may take.
pub const GROUP_REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

const _: () = assert!(BACKOFF_INITIAL.as_millis() <= BACKOFF_MAX.as_millis());
const _: () = assert!(COORDINATOR_ATTEMPTS_MAX >= 1);

/// Capped exponential backoff: `BACKOFF_INITIAL`, doubling, at most `BACKOFF_MAX`.
#[derive(Clone, Debug)]
pub struct Backoff {
    next: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff::new()
    }
}

impl Backoff {
    #[must_use]
    pub const fn new() -> Backoff {
        Backoff {
            next: BACKOFF_INITIAL,
        }
    }

    /// The pause before the next attempt; each call doubles the following one, up to the cap.
    pub fn next_delay(&mut self) -> Duration {
        let delay = self.next;
        self.next = (self.next * 2).min(BACKOFF_MAX);
        delay
    }

    /// Starts over after a success.
    pub fn reset(&mut self) {
        self.next = BACKOFF_INITIAL;
    }
}

/// Whether an error code means "the coordinator moved or is not ready": find it again, retry.
#[must_use]
pub fn is_coordinator_code(code: Option<ErrorCode>) -> bool {
    matches!(
        code,
        Some(
            ErrorCode::CoordinatorNotAvailable
                | ErrorCode::NotCoordinator
                | ErrorCode::CoordinatorLoadInProgress
        )
    )
}

/// Whether a failed group request is worth sending again after finding the coordinator: it
/// moved, is loading, is overloaded, the node asked is cut off from the controller
/// (`ControllerNotAvailable`, which FindCoordinator answers then: another node, or the same one
/// later, knows where the coordinator is), or the connection to it failed.
#[must_use]
pub fn wants_coordinator_retry(error: &ClientError) -> bool {
    match error {
        ClientError::Server(e) => {
            is_coordinator_code(e.error_code())
                || matches!(
                    e.error_code(),
                    Some(
                        ErrorCode::Overloaded
                            | ErrorCode::RequestTimedOut
                            | ErrorCode::ControllerNotAvailable
                    )
                )
        }
        ClientError::Connect { .. }
        | ClientError::ConnectionLost(_)
        | ClientError::Timeout(_)
        | ClientError::NoNodeAvailable(_) => true,
        _ => false,
    }
}

/// The address (`host:port`) of a FindCoordinator answer.
#[must_use]
pub fn coordinator_addr(found: &FindCoordinatorResponse) -> String {
    format!("{}:{}", found.host, found.port)
}

/// Asks any node which node coordinates `group_id`, retrying (with backoff, at most
/// `COORDINATOR_ATTEMPTS_MAX` times) while the answer is a retriable coordinator error.
pub async fn find_coordinator(
    cluster: &Cluster,
    group_id: &str,
) -> Result<FindCoordinatorResponse, ClientError> {
    let mut backoff = Backoff::new();
    let mut attempt = 1;
    loop {
        match find_coordinator_once(cluster, group_id).await {
            Err(e) if wants_coordinator_retry(&e) && attempt < COORDINATOR_ATTEMPTS_MAX => {
                tracing::debug!(group_id, attempt, error = %e, "cannot find the coordinator yet");
                attempt += 1;
                tokio::time::sleep(backoff.next_delay()).await;
            }
            other => return other,
        }
    }
}

/// One FindCoordinator round, no backoff (for callers that retry themselves): the node that
/// answered last first, then each other candidate once while a node cannot be reached or
/// answers an error worth asking elsewhere (`wants_coordinator_retry`); the first answer, or
/// the last error. At most one request per known node, each bounded by
/// `GROUP_REQUEST_TIMEOUT`.
pub async fn find_coordinator_once(
    cluster: &Cluster,
    group_id: &str,
) -> Result<FindCoordinatorResponse, ClientError> {
    let request = FindCoordinatorRequest {
        group_id: group_id.to_owned(),
    };
    let mut last_error = None;
    for addr in cluster.candidates() {
        let answer = match cluster.connection_to(&addr).await {
            Ok(connection) => connection.send(&request, GROUP_REQUEST_TIMEOUT).await,
            Err(e) => Err(e),
        };
        match answer {
            Ok(found) => {
                cluster.set_preferred(&addr);
                return Ok(found);
            }
            Err(e) if wants_coordinator_retry(&e) => {
                tracing::debug!(group_id, %addr, error = %e, "FindCoordinator failed here; asking the next node");
                last_error = Some(e);
            }
            Err(e) => return Err(e),
        }
    }
    Err(last_error.unwrap_or_else(|| ClientError::NoNodeAvailable("no node to ask".into())))
}

/// Sends `request` to the coordinator of `group_id`, finding it first. A retriable coordinator
/// error (for the whole request, or the one that `item_error` picks out of the answer, for
/// requests that carry errors per group) makes it find the coordinator again and retry, with
/// backoff, at most `COORDINATOR_ATTEMPTS_MAX` attempts in all.
pub async fn send_to_coordinator<R, F>(
    cluster: &Cluster,
    group_id: &str,
    request: &R,
    item_error: F,
) -> Result<R::Response, ClientError>
where
    R: RequestBody,
    F: Fn(&R::Response) -> Option<&ResponseError>,
{
    let mut backoff = Backoff::new();
    let mut attempt = 1;
    loop {
        let result = async {
            let found = find_coordinator_once(cluster, group_id).await?;
            cluster
                .connection_to(&coordinator_addr(&found))
                .await?
                .send(request, GROUP_REQUEST_TIMEOUT)
                .await
        }
        .await;
        let retry = match &result {
            Err(e) => wants_coordinator_retry(e),
            Ok(answer) => item_error(answer).is_some_and(|e| is_coordinator_code(e.error_code())),
        };
        if !retry || attempt >= COORDINATOR_ATTEMPTS_MAX {
            return result;
        }
        tracing::debug!(
            group_id,
            attempt,
            "the coordinator moved or is not ready; retrying"
        );
        attempt += 1;
        tokio::time::sleep(backoff.next_delay()).await;
    }
}

#[cfg(test)]
mod tests;
