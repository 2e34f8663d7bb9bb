//! Bad input on a real node's peer port: a wrong cluster id, a wrong target node id, an
//! unknown node, itself, garbage, an oversized frame, a request before the handshake, a
//! handshake never finished, and more connections than the limit (a peer that stops reading
//! its answers is covered by the peer links' own tests, `actors/src/peer/tests`). Each gets its typed refusal
//! or a closed connection, never a crash or a hang, and the node keeps serving clients and
//! the cluster keeps taking changes.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use vltava_messages::NodeId;
use vltava_messages::peer::{
    PeerChannel, PeerErrorCode, PeerHandshakeRequest, PeerHandshakeResponse, PeerKind,
    decode_response_body, encode_request_body,
};
use vltava_messages::protocol::{FRAME_HEADER_BYTES, FrameHeader};
use vltava_tests::cluster::TestCluster;

use super::{FAILOVER_BOUND, admin, listed_nodes, runtime, until_ok};

/// How long the test waits for one answer or for a connection to be closed. The node's own
/// bounds are shorter (5 s for a handshake, 10 s for a frame's body).
const ANSWER_WAIT: Duration = Duration::from_secs(15);

fn connect(address: SocketAddr) -> TcpStream {
    let stream = TcpStream::connect_timeout(&address, ANSWER_WAIT).expect("the peer port accepts");
    stream.set_read_timeout(Some(ANSWER_WAIT)).unwrap();
    stream.set_write_timeout(Some(ANSWER_WAIT)).unwrap();
    stream
}

/// Reads one frame: its header and body; `None` when the node closed the connection.
fn read_frame(stream: &mut TcpStream) -> Option<(FrameHeader, Vec<u8>)> {
    let mut header = [0u8; FRAME_HEADER_BYTES];
    match stream.read_exact(&mut header) {
        Ok(()) => {}
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::UnexpectedEof | std::io::ErrorKind::ConnectionReset
            ) =>
        {
            return None;
        }
        Err(e) => panic!("no answer and no close within {ANSWER_WAIT:?}: {e}"),
    }
    let header = FrameHeader::parse(&header);
    let mut body = vec![0u8; header.length as usize - 12];
    stream.read_exact(&mut body).expect("the frame's body");
    Some((header, body))
}

/// Whether the node closed the connection (EOF or reset) within `ANSWER_WAIT`, after any
/// answer it wrote first (at most one frame's worth).
fn closed(stream: &mut TcpStream) -> bool {
    let mut buf = [0u8; 4096];
    let mut answered = 0usize;
    loop {
        match stream.read(&mut buf) {
            Ok(0) => return true,
            Ok(n) if answered + n <= 64 * 1024 => answered += n,
            Ok(_) => return false,
            Err(e) => return matches!(e.kind(), std::io::ErrorKind::ConnectionReset),
        }
    }
}

fn hello(cluster_id: &str, node_id: u32, target: u32) -> Vec<u8> {
    encode_request_body(
        PeerKind::PeerHandshake,
        1,
        &PeerHandshakeRequest {
            cluster_id: cluster_id.to_owned(),
            node_id: NodeId(node_id),
            target_node_id: NodeId(target),
            channel: PeerChannel::Control,
            software_version: "test".to_owned(),
            kinds: PeerKind::handshake_list(),
        },
    )
    .unwrap()
}

/// Sends a handshake and returns the refusal's code (`None`: accepted).
fn handshake(address: SocketAddr, bytes: &[u8]) -> Option<PeerErrorCode> {
    let mut stream = connect(address);
    stream.write_all(bytes).unwrap();
    let (header, body) = read_frame(&mut stream).expect("a handshake answer");
    let answer =
        decode_response_body::<PeerHandshakeResponse>(&header, PeerKind::PeerHandshake, &body)
            .expect("a well-formed answer");
    match answer {
        Ok(_) => None,
        Err(failure) => {
            assert!(
                closed(&mut stream),
                "a refused handshake closes the connection"
            );
            Some(failure.error_code().expect("a known code"))
        }
    }
}

#[test]
fn bad_peer_input_gets_a_typed_refusal_or_a_closed_connection_and_the_node_goes_on() {
    let cluster = TestCluster::start(3, &[]);
    let address = cluster.peer_address(1);
    let rt = runtime();
    let cluster_id = rt.block_on(async {
        until_ok(FAILOVER_BOUND, || super::metadata(&cluster.node(1).addr))
            .await
            .cluster_id
    });

    // Identities: another cluster, another node at this address, an unknown node, itself.
    assert_eq!(
        handshake(address, &hello("another-cluster", 2, 1)),
        Some(PeerErrorCode::ClusterIdMismatch)
    );
    assert_eq!(
        handshake(address, &hello(&cluster_id, 2, 3)),
        Some(PeerErrorCode::NodeIdMismatch)
    );
    assert_eq!(
        handshake(address, &hello(&cluster_id, 9, 1)),
        Some(PeerErrorCode::NodeNotAdmitted)
    );
    assert_eq!(
        handshake(address, &hello(&cluster_id, 1, 1)),
        Some(PeerErrorCode::DuplicateNodeId)
    );

    // A request before the handshake: HandshakeRequired, then the connection closes.
    let mut stream = connect(address);
    stream
        .write_all(&encode_request_body(PeerKind::Ping, 7, &BTreeMap::<String, u8>::new()).unwrap())
        .unwrap();
    let (header, body) = read_frame(&mut stream).expect("an answer");
    assert_eq!(header.correlation_id, 7);
    let failure = decode_response_body::<PeerHandshakeResponse>(&header, PeerKind::Ping, &body);
    assert!(
        matches!(&failure, Err(_) | Ok(Err(_))),
        "a refusal, not a pong: {failure:?}"
    );
    assert!(closed(&mut stream));

    // Garbage: not a peer frame at all. Closed.
    let mut stream = connect(address);
    stream.write_all(&[0xde; 64]).unwrap();
    assert!(closed(&mut stream), "garbage closes the connection");

    // A frame announcing 64 MiB: refused (FrameTooLarge) before anything is allocated.
    let mut stream = connect(address);
    let mut oversized = Vec::new();
    oversized.extend_from_slice(&(64u32 << 20).to_be_bytes());
    oversized.extend_from_slice(&PeerKind::PeerHandshake.code().to_be_bytes());
    oversized.extend_from_slice(&1u16.to_be_bytes());
    oversized.extend_from_slice(&3u64.to_be_bytes());
    stream.write_all(&oversized).unwrap();
    if let Some((header, _)) = read_frame(&mut stream) {
        assert_eq!(header.correlation_id, 3, "the refusal answers the frame");
    }
    assert!(
        closed(&mut stream),
        "an oversized frame closes the connection"
    );

    // A handshake that never completes: the node gives up on it by its own bound.
    let mut stream = connect(address);
    stream.write_all(&[0, 0, 0]).unwrap();
    assert!(closed(&mut stream), "a half-sent handshake is closed");

    // More connections than the limit (256): the extra ones are closed; none of it stops
    // the node.
    let crowd: Vec<TcpStream> = (0..300)
        .filter_map(|_| TcpStream::connect(address).ok())
        .collect();
    assert!(!crowd.is_empty());

    // Through all of it the node serves clients and the cluster takes changes.
    rt.block_on(async {
        let nodes = until_ok(FAILOVER_BOUND, || listed_nodes(&cluster.node(1).addr)).await;
        assert_eq!(nodes.len(), 3, "{nodes:?}");
        let admin = admin(std::slice::from_ref(&cluster.node(1).addr)).await;
        until_ok(FAILOVER_BOUND, || {
            admin.create_topic("after-bad-input", 3, 1, BTreeMap::new())
        })
        .await;
    });
    drop(crowd);
    assert!(
        cluster.nodes.iter().all(|n| n.accepts()),
        "every node still accepts clients"
    );
}
