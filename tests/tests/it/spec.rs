//! What PROTOCOL.md promises a client, checked against the real node: the cases a client
//! written from the document alone tripped on (issue 11). Each test's doc says what was wrong.

use std::time::Duration;

use vltava_messages::protocol::{
    ErrorCode, HandshakeRequest, RESPONSE_BIT, Request, RequestKind, Response,
};
use vltava_tests::{TestNode, eventually};

use crate::bad_input::Raw;

fn hello() -> Request {
    Request::Handshake(HandshakeRequest {
        client_id: "spec".into(),
        client_software_name: "test".into(),
        client_software_version: "0".into(),
    })
}

/// Over the connection limit a client used to see a bare close (EOF or a reset), though
/// PROTOCOL.md documents `TooManyConnections`. A node allowing one connection answers a
/// second one's handshake with the error, under the handshake's correlation id, and closes
/// it; once the first connection ends, a new one is served again.
#[test]
fn a_connection_past_the_limit_gets_too_many_connections_then_a_close() {
    let node = TestNode::start_with(&["--connections-max", "1"]);
    let first = Raw::handshaken(&node);

    let mut second = Raw::open(&node);
    second.send_bytes(&hello().encode(77).unwrap());
    let (header, answer) = second
        .read_frame()
        .expect("an answer to the handshake, not a bare close");
    assert_eq!(header.correlation_id, 77);
    assert_eq!(header.kind, RequestKind::Handshake.code() | RESPONSE_BIT);
    let Response::Failed(failed) = answer else {
        panic!("expected a failure, got {answer:?}");
    };
    assert_eq!(
        failed.error.error_code(),
        Some(ErrorCode::TooManyConnections)
    );
    assert!(failed.error.retriable);
    assert!(second.closed(), "the node closes the refused connection");

    drop(first);
    assert!(
        eventually(Duration::from_secs(10), || {
            let mut again = Raw::open(&node);
            matches!(again.call(&hello()), Some(Response::Handshake(_)))
        }),
        "a connection is served again once the first has closed:\n{}",
        node.log_text()
    );
}
