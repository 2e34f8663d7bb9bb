//! The peer listener on bad input: each bad connection is closed (answered where its header
//! allows), and a live link through the same listener carries on untouched.

use super::*;

/// Garbage, a frame too small, an oversized frame, a request before the handshake, a client's
/// handshake and a refused handshake on the peer port each close their connection (with the
/// documented answer where there is one), while a live link through the same listener keeps
/// working without reconnecting.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_closes_only_its_own_connection() {
    bounded(async {
        let a = Node::start(1, CLUSTER).await;
        let b = Node::start(2, CLUSTER).await;
        a.link_to(&[&b]).await;
        let link = a.link(b.id);
        call_until_ok(&link, PeerChannel::Control, "before").await;
        call_until_ok(&link, PeerChannel::Data, "before").await;

        // Garbage: an HTTP request's first 16 bytes read as a header claim a 1.1 GB frame.
        let mut stream = TcpStream::connect(b.address).await.expect("connect");
        stream
            .write_all(b"GET / HTTP/1.1\r\n")
            .await
            .expect("write");
        let answer = read_until_closed(&mut stream).await;
        let (_, failure) = failure_in(&answer);
        assert_eq!(failure.error_code(), Some(PeerErrorCode::FrameTooLarge));

        // A length below the 12 header bytes it must count: no frame to answer.
        let mut stream = TcpStream::connect(b.address).await.expect("connect");
        stream
            .write_all(&[0, 0, 0, 3, 0x40, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 9])
            .await
            .expect("write");
        assert!(read_until_closed(&mut stream).await.is_empty());

        // An oversized frame with a peer kind: answered by its correlation id, then closed.
        let mut stream = TcpStream::connect(b.address).await.expect("connect");
        let header = FrameHeader {
            length: vltava_messages::limits::FRAME_BYTES_MAX,
            kind: PeerKind::RaftAppendEntries.code(),
            version: 1,
            correlation_id: 77,
        };
        stream.write_all(&header.encode()).await.expect("write");
        let answer = read_until_closed(&mut stream).await;
        let (answered, failure) = failure_in(&answer);
        assert_eq!(answered.correlation_id, 77);
        assert_eq!(failure.error_code(), Some(PeerErrorCode::FrameTooLarge));

        // A request before the handshake.
        let mut stream = TcpStream::connect(b.address).await.expect("connect");
        stream
            .write_all(&vote("early").encode(5).expect("encode"))
            .await
            .expect("write");
        let answer = read_until_closed(&mut stream).await;
        let (answered, failure) = failure_in(&answer);
        assert_eq!(answered.correlation_id, 5);
        assert_eq!(failure.error_code(), Some(PeerErrorCode::HandshakeRequired));

        // A client's Handshake (kind 0) on the peer port.
        let mut stream = TcpStream::connect(b.address).await.expect("connect");
        let client_hello = vltava_messages::protocol::HandshakeRequest {
            client_id: "lost".into(),
            client_software_name: "vltava-client".into(),
            client_software_version: "0".into(),
        };
        let frame = vltava_messages::protocol::Request::Handshake(client_hello)
            .encode(6)
            .expect("encode");
        stream.write_all(&frame).await.expect("write");
        let answer = read_until_closed(&mut stream).await;
        assert_eq!(
            failure_in(&answer).1.error_code(),
            Some(PeerErrorCode::HandshakeRequired)
        );

        // A handshake from another cluster: refused with the listener's identity, then closed.
        let (mut stream, answer) =
            raw_handshake(b.address, "other", 9, 2, PeerChannel::Control).await;
        let failure = answer.expect_err("refused");
        assert_eq!(failure.error_code(), Some(PeerErrorCode::ClusterIdMismatch));
        assert_eq!(failure.cluster_id.as_deref(), Some(CLUSTER));
        assert_eq!(failure.node_id, Some(b.id));
        assert!(failure.message.contains("other") && failure.message.contains(CLUSTER));
        read_until_closed(&mut stream).await;

        // A handshaken connection that then sends garbage is closed too.
        let (mut stream, answer) = raw_handshake(b.address, CLUSTER, 9, 2, PeerChannel::Data).await;
        answer.expect("accepted");
        stream.write_all(&[0xff; 16]).await.expect("write");
        read_until_closed(&mut stream).await;

        // A handshaken connection survives a bad frame whose end is known: it is answered.
        let (mut stream, answer) = raw_handshake(b.address, CLUSTER, 8, 2, PeerChannel::Data).await;
        answer.expect("accepted");
        let unknown = FrameHeader {
            length: 13,
            kind: 0x40fe,
            version: 1,
            correlation_id: 3,
        };
        stream.write_all(&unknown.encode()).await.expect("write");
        stream.write_all(&[0x80]).await.expect("write");
        let (answered, body) = read_frame_raw(&mut stream).await;
        let mut answer = answered.encode().to_vec();
        answer.extend_from_slice(&body);
        let (answered, failure) = failure_in(&answer);
        assert_eq!(answered.correlation_id, 3);
        assert_eq!(failure.error_code(), Some(PeerErrorCode::UnknownKind));
        stream
            .write_all(&vote("still here").encode(4).expect("encode"))
            .await
            .expect("write");
        let (answered, body) = read_frame_raw(&mut stream).await;
        assert_eq!(answered.correlation_id, 4);
        let response = PeerResponse::decode(&answered, &body)
            .expect("decodes")
            .expect("answered");
        assert_eq!(answer_text(&response), "2 answers 8 on data: still here");

        // The live link never noticed.
        assert_eq!(
            call_until_ok(&link, PeerChannel::Control, "after").await,
            "2 answers 1 on control: after"
        );
        assert_eq!(
            call_until_ok(&link, PeerChannel::Data, "after").await,
            "2 answers 1 on data: after"
        );
        assert_eq!(link.gauges().reconnects(), 0);
        assert!(link.gauges().last_error().is_none());
        a.shutdown().await;
        b.shutdown().await;
    })
    .await;
}

/// The listener holds at most `PEER_INFLIGHT_REQUESTS_MAX` requests of one connection: a
/// peer pipelining more than that (here 30 requests its handler parks) finds the listener
/// reading no further until answers are written, and then gets every answer, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_listener_admits_a_bounded_number_of_requests_per_connection() {
    bounded(async {
        let b = Node::start(2, CLUSTER).await;
        let (mut stream, answer) = raw_handshake(b.address, CLUSTER, 4, 2, PeerChannel::Data).await;
        answer.expect("accepted");
        let pipelined = 30u64;
        for id in 1..=pipelined {
            stream
                .write_all(&vote("slow").encode(id).expect("encode"))
                .await
                .expect("write");
        }
        let service = Arc::clone(&b.service);
        eventually("the handler holding the bound", || async {
            (service.received.load(Ordering::Relaxed) == PEER_INFLIGHT_REQUESTS_MAX as u64)
                .then_some(())
        })
        .await;
        // The rest stays unread while the bound is held. Absence can only be watched for a
        // while: 300 ms is dozens of scheduling rounds, in which a listener reading on would
        // have handed over the other 14 requests.
        let watch_until = Instant::now() + Duration::from_millis(300);
        while Instant::now() < watch_until {
            assert_eq!(
                service.received.load(Ordering::Relaxed),
                PEER_INFLIGHT_REQUESTS_MAX as u64
            );
            tokio::time::sleep(POLL).await;
        }
        b.service.gate.add_permits(pipelined as usize);
        for id in 1..=pipelined {
            let (answered, _) = read_frame_raw(&mut stream).await;
            assert_eq!(answered.correlation_id, id, "answers in request order");
        }
        b.shutdown().await;
    })
    .await;
}

/// A connection that says nothing is closed after the listener's handshake bound, without an
/// answer, so a silent stranger cannot hold a connection slot.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_connection_is_closed_after_the_handshake_bound() {
    bounded(async {
        let b = Node::start(2, CLUSTER).await;
        let mut stream = TcpStream::connect(b.address).await.expect("connect");
        let started = Instant::now();
        assert!(read_until_closed(&mut stream).await.is_empty());
        let waited = started.elapsed();
        let bound = fast().listener_handshake_timeout;
        assert!(
            waited >= bound - Duration::from_millis(50) && waited < bound * 3,
            "{waited:?}"
        );
        b.shutdown().await;
    })
    .await;
}

/// A node's new connection on a channel replaces its old one, which the listener closes: a
/// node that restarted leaves no half-open connection behind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_connection_replaces_the_old_one_of_its_node_and_channel() {
    bounded(async {
        let b = Node::start(2, CLUSTER).await;
        let (mut old, answer) = raw_handshake(b.address, CLUSTER, 5, 2, PeerChannel::Control).await;
        answer.expect("accepted");
        let (mut other_channel, answer) =
            raw_handshake(b.address, CLUSTER, 5, 2, PeerChannel::Data).await;
        answer.expect("accepted");
        let (mut new, answer) = raw_handshake(b.address, CLUSTER, 5, 2, PeerChannel::Control).await;
        answer.expect("accepted");
        read_until_closed(&mut old).await;
        for stream in [&mut new, &mut other_channel] {
            stream
                .write_all(&vote("alive").encode(1).expect("encode"))
                .await
                .expect("write");
            let (answered, _) = read_frame_raw(stream).await;
            assert_eq!(answered.correlation_id, 1);
        }
        b.shutdown().await;
    })
    .await;
}

/// The listener tells its service of each accepted handshake, by node and channel, and of
/// no refused one: the node uses it to end its own link's back-off to a peer that dials in.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_service_hears_of_each_accepted_handshake() {
    bounded(async {
        let b = Node::start(2, CLUSTER).await;
        let (_refused, answer) =
            raw_handshake(b.address, "another-cluster", 5, 2, PeerChannel::Control).await;
        answer.expect_err("refused");
        let (_control, answer) =
            raw_handshake(b.address, CLUSTER, 5, 2, PeerChannel::Control).await;
        answer.expect("accepted");
        let (_data, answer) = raw_handshake(b.address, CLUSTER, 5, 2, PeerChannel::Data).await;
        answer.expect("accepted");
        let expected = vec![
            (NodeId(5), PeerChannel::Control),
            (NodeId(5), PeerChannel::Data),
        ];
        eventually("both handshakes reported", || async {
            let seen = b
                .service
                .connected
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .clone();
            (seen == expected).then_some(())
        })
        .await;
        b.shutdown().await;
    })
    .await;
}

/// PROTOCOL.md's table of peer bounds gives the values of these constants.
#[test]
fn protocol_md_gives_the_peer_bounds() {
    const PROTOCOL_MD: &str = include_str!("../../../../PROTOCOL.md");
    let start = PROTOCOL_MD
        .find("<!-- begin peer-bounds -->")
        .expect("the table");
    let end = PROTOCOL_MD
        .find("<!-- end peer-bounds -->")
        .expect("its end");
    let table = &PROTOCOL_MD[start..end];
    let row = |bound: &str| -> String {
        table
            .lines()
            .find(|line| line.starts_with(&format!("| {bound} |")))
            .unwrap_or_else(|| panic!("a row for {bound}"))
            .split(" | ")
            .nth(1)
            .expect("a value")
            .to_owned()
    };
    let secs = |d: Duration| format!("{} s", d.as_secs());
    let t = PeerTimings::default();
    assert_eq!(row("Peer connections"), PEER_CONNECTIONS_MAX.to_string());
    assert_eq!(
        row("Request bytes in flight"),
        format!("{} MiB", PEER_BYTES_IN_FLIGHT_MAX >> 20)
    );
    assert_eq!(
        row("Wait for the handshake"),
        secs(t.listener_handshake_timeout)
    );
    assert_eq!(row("Wait for a frame's body"), secs(t.body_read_timeout));
    assert_eq!(row("Writing one frame"), secs(t.write_timeout));
    assert_eq!(row("Connect"), secs(t.connect_timeout));
    assert_eq!(
        row("Wait for the handshake answer"),
        secs(t.handshake_timeout)
    );
    assert_eq!(
        row("Requests queued per channel"),
        PEER_QUEUE_MAX.to_string()
    );
    assert_eq!(
        row("Ping interval / timeout"),
        format!("{} / {}", secs(t.ping_interval), secs(t.ping_timeout))
    );
    assert_eq!(
        row("Answer overdue past its request's timeout"),
        secs(t.answer_overdue_grace)
    );
    assert_eq!(
        row("Back-off between attempts"),
        format!(
            "{} ms doubling to {}, each wait between half and all of it",
            t.backoff_initial.as_millis(),
            secs(t.backoff_max)
        )
    );
    let in_flight: Vec<&str> = table
        .lines()
        .filter(|line| line.starts_with("| Requests in flight per connection |"))
        .map(|line| line.split(" | ").nth(1).expect("a value"))
        .collect();
    assert_eq!(
        in_flight,
        vec![
            PEER_INFLIGHT_REQUESTS_MAX.to_string(),
            format!("{} + 1 ping", PEER_INFLIGHT_REQUESTS_MAX - 1)
        ]
    );
    assert_eq!(t.refused_backoff, t.backoff_max, "After a refusal: the cap");
}
