//! PeerLinks: round trips, channel independence, refusals, reconnection, stalled and silent
//! peers, the queue bound, the directory, and the registry.

use super::*;
use crate::directory::{ActorKind, PublishedState};

/// Two nodes link to each other; a request and its answer cross on both channels, both ways,
/// and each answer names the node that answered, the node that asked and the channel, so a
/// request routed to the wrong place cannot pass. A handler's failure reaches the caller as
/// `Remote` with its retriable flag; a handler answering with the wrong kind, or panicking,
/// as `ServiceFailed`, and the connection carries on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_round_trip_on_both_channels_both_ways() {
    bounded(async {
        let a = Node::start(1, CLUSTER).await;
        let b = Node::start(2, CLUSTER).await;
        a.link_to(&[&b]).await;
        b.link_to(&[&a]).await;
        let a_to_b = a.link(b.id);
        let b_to_a = b.link(a.id);
        assert_eq!(
            call_until_ok(&a_to_b, PeerChannel::Control, "x").await,
            "2 answers 1 on control: x"
        );
        assert_eq!(
            call_until_ok(&a_to_b, PeerChannel::Data, "y").await,
            "2 answers 1 on data: y"
        );
        assert_eq!(
            call_until_ok(&b_to_a, PeerChannel::Control, "z").await,
            "1 answers 2 on control: z"
        );
        assert_eq!(
            call_until_ok(&b_to_a, PeerChannel::Data, "w").await,
            "1 answers 2 on data: w"
        );
        // Every Raft kind travels, and its answer is of its kind.
        let append = PeerRequest::RaftAppendEntries(RaftPayload {
            payload: b"entries".to_vec(),
        });
        let answer = a_to_b
            .call(PeerChannel::Control, append, Duration::from_secs(2))
            .await
            .expect("an answer");
        assert!(matches!(answer, PeerResponse::RaftAppendEntries(_)));

        let failed = a_to_b
            .call(PeerChannel::Control, vote("fail"), Duration::from_secs(2))
            .await
            .expect_err("the handler fails it");
        let PeerError::Remote { remote, failure } = &failed else {
            panic!("a remote failure, not {failed:?}");
        };
        assert_eq!(*remote, b.id);
        assert_eq!(failure.error_code(), Some(PeerErrorCode::Unavailable));
        assert!(failed.is_retriable());

        let wrong = PeerRequest::RaftAppendEntries(RaftPayload {
            payload: b"wrong-kind".to_vec(),
        });
        let failed = a_to_b
            .call(PeerChannel::Control, wrong, Duration::from_secs(2))
            .await
            .expect_err("a wrong-kind answer is refused");
        assert!(
            matches!(&failed, PeerError::Remote { failure, .. } if failure.error_code() == Some(PeerErrorCode::ServiceFailed)),
            "{failed:?}"
        );
        let panicked = a_to_b
            .call(PeerChannel::Data, vote("panic"), Duration::from_secs(2))
            .await
            .expect_err("a handler that panics");
        assert!(
            matches!(&panicked, PeerError::Remote { failure, .. } if failure.error_code() == Some(PeerErrorCode::ServiceFailed)),
            "{panicked:?}"
        );
        assert_eq!(
            call_until_ok(&a_to_b, PeerChannel::Data, "after the panic").await,
            "2 answers 1 on data: after the panic"
        );
        // Failures are answers: the connection stays.
        assert_eq!(a_to_b.gauges().reconnects(), 0);
        a.shutdown().await;
        b.shutdown().await;
    })
    .await;
}

/// The link's sockets are bound to the node's own address: the accepting side sees them come
/// from 127.0.0.2, not from whatever address the system would pick.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outgoing_connections_come_from_the_node_address() {
    bounded(async {
        let listener = TcpListener::bind((LOCALHOST, 0)).await.expect("bind");
        let own_ip = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2));
        let directory = ActorDirectory::new();
        let link = PeerLinkHandle::spawn(
            NodeId(2),
            listener.local_addr().expect("an address"),
            Arc::new(PeerLinkConfig {
                identity: PeerIdentity {
                    cluster_id: CLUSTER.into(),
                    node_id: NodeId(1),
                },
                bind_ip: own_ip,
                timings: fast(),
            }),
            &directory,
            "n1",
        );
        for _ in 0..2 {
            let (_, from) = tokio::time::timeout(WAIT, listener.accept())
                .await
                .expect("the link connects")
                .expect("accept");
            assert_eq!(from.ip(), own_ip);
        }
        assert_eq!(link.gauges().local_ip, own_ip);
        link.stop();
        link.stopped().await;
    })
    .await;
}

/// Elections never queue behind bulk data: while the data connection waits on a slow handler
/// (and a second data request waits behind it, answers being in order), a control request is
/// answered at once. Were both on one connection, the control answer would wait for the gate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn control_is_answered_while_data_waits_on_a_slow_handler() {
    bounded(async {
        let a = Node::start(1, CLUSTER).await;
        let b = Node::start(2, CLUSTER).await;
        a.link_to(&[&b]).await;
        let link = a.link(b.id);
        call_until_ok(&link, PeerChannel::Data, "warm").await;
        call_until_ok(&link, PeerChannel::Control, "warm").await;

        let received = b.service.received.load(Ordering::Relaxed);
        let slow_link = link.clone();
        let slow = tokio::spawn(async move {
            slow_link
                .call(PeerChannel::Data, vote("slow"), Duration::from_secs(20))
                .await
        });
        let service = Arc::clone(&b.service);
        eventually("the slow request at the handler", || async {
            (service.waiting.load(Ordering::Relaxed) == 1).then_some(())
        })
        .await;
        // Sent once the slow one is in: its handler finishes at once, but its answer waits.
        let behind_link = link.clone();
        let behind = tokio::spawn(async move {
            behind_link
                .call(PeerChannel::Data, vote("behind"), Duration::from_secs(20))
                .await
        });
        eventually("the request behind it handled", || async {
            (service.received.load(Ordering::Relaxed) == received + 2).then_some(())
        })
        .await;

        let started = Instant::now();
        let answer = link
            .call(PeerChannel::Control, vote("vote"), Duration::from_secs(2))
            .await
            .expect("control answers while data is blocked");
        assert_eq!(answer_text(&answer), "2 answers 1 on control: vote");
        assert!(started.elapsed() < Duration::from_secs(1));
        if slow.is_finished() || behind.is_finished() {
            let (slow, behind) = (slow.await, behind.await);
            panic!(
                "data is still blocked: {slow:?} {behind:?}; last error {:?}",
                link.gauges().last_error()
            );
        }

        b.service.gate.add_permits(1);
        let slow = slow.await.expect("the task").expect("the slow answer");
        assert_eq!(answer_text(&slow), "2 answers 1 on data: slow");
        let behind = behind
            .await
            .expect("the task")
            .expect("the answer behind it");
        assert_eq!(answer_text(&behind), "2 answers 1 on data: behind");
        a.shutdown().await;
        b.shutdown().await;
    })
    .await;
}

/// A link to a node of another cluster is refused, with an error naming both cluster ids; calls
/// fail with that refusal at once (not retriable); and the link keeps retrying, but only at its
/// refusal back-off: over a second, each channel tries at most once per half back-off.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_cluster_id_is_refused_naming_both_ids_and_retried_at_the_back_off() {
    bounded(async {
        let a = Node::start(1, CLUSTER).await;
        let b = Node::start(2, "another-cluster").await;
        a.link_to(&[&b]).await;
        let link = a.link(b.id);
        let error = eventually("a refusal", || async {
            match link
                .call(PeerChannel::Control, vote("x"), Duration::from_secs(1))
                .await
            {
                Err(error @ PeerError::Refused { .. }) => Some(error),
                _ => None,
            }
        })
        .await;
        let PeerError::Refused { refusal, .. } = &error else {
            unreachable!()
        };
        assert_eq!(
            *refusal,
            Refusal::ClusterIdMismatch {
                local: CLUSTER.into(),
                remote: "another-cluster".into(),
                remote_node: b.id,
            }
        );
        let text = error.to_string();
        assert!(
            text.contains(CLUSTER) && text.contains("another-cluster"),
            "{text}"
        );
        assert!(!error.is_retriable());
        assert_eq!(link.state(), PeerLinkState::Refused);
        assert_eq!(link.gauges().refusal(), Some(refusal.clone()));
        assert!(b.service.received.load(Ordering::Relaxed) == 0);

        // The listener counts every connection it accepts: the link's attempts.
        let accepted = || {
            b.directory
                .get("n2/peer-listener")
                .expect("the listener")
                .stats
                .handled
                .load(Ordering::Relaxed)
        };
        let window = Duration::from_secs(1);
        let before = accepted();
        let started = Instant::now();
        eventually("a second of retries", || async {
            (started.elapsed() >= window).then_some(())
        })
        .await;
        let attempts = accepted() - before;
        let spacing_min = fast().refused_backoff / 2;
        let per_channel_max = (started.elapsed().as_millis() / spacing_min.as_millis()) as u64 + 1;
        assert!(
            (1..=2 * per_channel_max).contains(&attempts),
            "{attempts} attempts in {:?}: it retries, and no faster than its back-off",
            started.elapsed()
        );
        a.shutdown().await;
        b.shutdown().await;
    })
    .await;
}

/// A link dialling node 3 at an address where node 2 listens is refused, naming both node ids;
/// so are a node the listener does not admit, and a node claiming the listener's own id.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_node_ids_are_refused_naming_both_ids() {
    bounded(async {
        let mut service = TestService::new(NodeId(2));
        Arc::get_mut(&mut service)
            .expect("not shared yet")
            .refused_nodes
            .push(NodeId(7));
        let b = Node::start_with(2, CLUSTER, service, LOCALHOST).await;
        let directory = ActorDirectory::new();
        let refusal_of = |link: PeerLinkHandle| async move {
            let error = eventually("a refusal", || async {
                match link
                    .call(PeerChannel::Control, vote("x"), Duration::from_secs(1))
                    .await
                {
                    Err(PeerError::Refused { refusal, .. }) => Some(refusal),
                    _ => None,
                }
            })
            .await;
            link.stop();
            link.stopped().await;
            error
        };

        let wrong_target = lone_link(3, b.address, &directory);
        let refusal = refusal_of(wrong_target).await;
        assert_eq!(
            refusal,
            Refusal::NodeIdMismatch {
                expected: NodeId(3),
                found: NodeId(2)
            }
        );
        let text = refusal.to_string();
        assert!(text.contains("node 3") && text.contains("node 2"), "{text}");

        let config = |node: u32| {
            Arc::new(PeerLinkConfig {
                identity: PeerIdentity {
                    cluster_id: CLUSTER.into(),
                    node_id: NodeId(node),
                },
                bind_ip: LOCALHOST,
                timings: fast(),
            })
        };
        let stranger = PeerLinkHandle::spawn(NodeId(2), b.address, config(7), &directory, "n7");
        assert_eq!(
            refusal_of(stranger).await,
            Refusal::NotAdmitted {
                node: NodeId(7),
                by: NodeId(2)
            }
        );
        let twin = PeerLinkHandle::spawn(NodeId(2), b.address, config(2), &directory, "n2");
        assert_eq!(
            refusal_of(twin).await,
            Refusal::DuplicateNodeId { node: NodeId(2) }
        );
        assert_eq!(b.service.received.load(Ordering::Relaxed), 0);
        b.shutdown().await;
    })
    .await;
}

/// The dialling side checks the answer too: a peer that accepts any handshake but names another
/// cluster, or another node, is refused by the link itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dialling_side_checks_the_handshake_answer() {
    bounded(async {
        let directory = ActorDirectory::new();
        let (address, _, fake) = fake_peer("elsewhere", 2, FakeAfter::NeverAnswer).await;
        let link = lone_link(2, address, &directory);
        let refusal = eventually("a refusal", || async { link.gauges().refusal() }).await;
        assert_eq!(
            refusal,
            Refusal::ClusterIdMismatch {
                local: CLUSTER.into(),
                remote: "elsewhere".into(),
                remote_node: NodeId(2),
            }
        );
        link.stop();
        link.stopped().await;
        fake.abort();

        let (address, _, fake) = fake_peer(CLUSTER, 9, FakeAfter::NeverAnswer).await;
        let link = lone_link(2, address, &directory);
        let refusal = eventually("a refusal", || async { link.gauges().refusal() }).await;
        assert_eq!(
            refusal,
            Refusal::NodeIdMismatch {
                expected: NodeId(2),
                found: NodeId(9)
            }
        );
        link.stop();
        link.stopped().await;
        fake.abort();
    })
    .await;
}

/// A refusal is logged once, not once per attempt: the link logs at WARN only when the refusal
/// it records differs from the last one, and forgets it once a handshake succeeds.
#[test]
fn a_repeated_refusal_is_noted_once() {
    let gauges = PeerLinkGauges::new(NodeId(2), "127.0.0.1:9421".parse().unwrap(), LOCALHOST);
    let refusal = Refusal::NodeIdMismatch {
        expected: NodeId(2),
        found: NodeId(3),
    };
    assert!(gauges.note_refusal(&refusal));
    assert!(!gauges.note_refusal(&refusal));
    assert!(!gauges.note_refusal(&refusal));
    let other = Refusal::DuplicateNodeId { node: NodeId(1) };
    assert!(gauges.note_refusal(&other));
    gauges.clear_refusal();
    assert!(gauges.note_refusal(&other));
}

/// The remote node's listener goes away and comes back on the same address: calls fail
/// meanwhile with a retriable error, the link reconnects on its own, its reconnect counter
/// rises (one per channel), and requests work again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_link_reconnects_after_the_listener_restarts() {
    bounded(async {
        let a = Node::start(1, CLUSTER).await;
        let mut b = Node::start(2, CLUSTER).await;
        a.link_to(&[&b]).await;
        let link = a.link(b.id);
        call_until_ok(&link, PeerChannel::Control, "before").await;
        call_until_ok(&link, PeerChannel::Data, "before").await;
        assert_eq!(link.gauges().reconnects(), 0);

        b.stop_listener().await;
        let error = eventually("calls failing while the node is away", || async {
            link.call(
                PeerChannel::Control,
                vote("away"),
                Duration::from_millis(500),
            )
            .await
            .err()
        })
        .await;
        assert!(error.is_retriable(), "{error}");
        assert_ne!(link.state(), PeerLinkState::Connected);
        assert!(link.gauges().last_error().is_some());

        b.restart_listener().await;
        assert_eq!(
            call_until_ok(&link, PeerChannel::Control, "after").await,
            "2 answers 1 on control: after"
        );
        assert_eq!(
            call_until_ok(&link, PeerChannel::Data, "after").await,
            "2 answers 1 on data: after"
        );
        eventually("both channels reconnected", || async {
            (link.gauges().reconnects() >= 2 && link.state() == PeerLinkState::Connected)
                .then_some(())
        })
        .await;
        a.shutdown().await;
        b.shutdown().await;
    })
    .await;
}

/// A link waiting out a long back-off dials at once when `reconnect_now` says its peer is
/// back, instead of failing calls until the back-off ends. The story: a restarted controller
/// member was dialled by the Raft leader only when the leader's back-off (up to 2 s) ran out,
/// so it missed every heartbeat meanwhile and a failover soon after took extra elections.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconnect_now_ends_a_back_off_at_once() {
    bounded(async {
        // A back-off far longer than the test waits: only `reconnect_now` can end it in time.
        let slow = PeerTimings {
            backoff_initial: Duration::from_secs(20),
            backoff_max: Duration::from_secs(20),
            ..fast()
        };
        let a = Node::start(1, CLUSTER).await;
        let mut b = Node::start(2, CLUSTER).await;
        let links = PeerLinks::new(
            PeerLinkConfig {
                identity: PeerIdentity {
                    cluster_id: CLUSTER.into(),
                    node_id: a.id,
                },
                bind_ip: LOCALHOST,
                timings: slow,
            },
            a.directory.clone(),
            "n1-slow",
        );
        links.reconcile(&BTreeMap::from([(b.id, b.address)])).await;
        let link = links.get(b.id).expect("a link to node 2");
        call_until_ok(&link, PeerChannel::Control, "before").await;

        b.stop_listener().await;
        eventually("both channels backing off", || async {
            [PeerChannel::Control, PeerChannel::Data]
                .iter()
                .all(|c| link.gauges().channel_state(*c) == ChannelState::BackingOff)
                .then_some(())
        })
        .await;
        b.restart_listener().await;
        let error = link
            .call(
                PeerChannel::Control,
                vote("early"),
                Duration::from_millis(500),
            )
            .await
            .expect_err("still backing off: the link has not dialled again");
        assert!(error.is_retriable(), "{error}");

        let told = Instant::now();
        link.reconnect_now();
        assert_eq!(
            call_until_ok(&link, PeerChannel::Control, "after").await,
            "2 answers 1 on control: after"
        );
        assert_eq!(
            call_until_ok(&link, PeerChannel::Data, "after").await,
            "2 answers 1 on data: after"
        );
        assert!(
            told.elapsed() < Duration::from_secs(5),
            "dialled {:?} after reconnect_now, not at the back-off's end",
            told.elapsed()
        );
        links.shutdown().await;
        a.shutdown().await;
        b.shutdown().await;
    })
    .await;
}

/// A peer whose process is gone (its connections drop, and dialling finds nothing listening)
/// is marked gone, which the controller takes as a death without waiting out the lease; the
/// mark clears as soon as a connection succeeds again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_whose_port_refuses_after_a_drop_is_marked_gone_until_it_is_back() {
    bounded(async {
        let a = Node::start(1, CLUSTER).await;
        let mut b = Node::start(2, CLUSTER).await;
        a.link_to(&[&b]).await;
        let link = a.link(b.id);
        call_until_ok(&link, PeerChannel::Control, "before").await;
        assert_eq!(link.gauges().gone_since(), None, "up: not gone");

        b.stop_listener().await;
        eventually("marked gone", || async {
            link.gauges().gone_since().map(|_| ())
        })
        .await;
        assert_eq!(
            a.links.gone().keys().copied().collect::<Vec<_>>(),
            vec![b.id.0]
        );

        b.restart_listener().await;
        link.reconnect_now();
        call_until_ok(&link, PeerChannel::Control, "after").await;
        eventually("no longer gone", || async {
            link.gauges().gone_since().is_none().then_some(())
        })
        .await;
        a.shutdown().await;
        b.shutdown().await;
    })
    .await;
}

/// A peer that handshakes and then never reads: the link's writes time out within the write
/// bound, every request it held (written or queued) fails with a retriable `Unreachable`
/// naming the stalled write, the queue never exceeds its bound meanwhile, and the link
/// reconnects.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_that_stops_reading_fails_sends_within_the_write_timeout() {
    bounded(async {
        let directory = ActorDirectory::new();
        let (address, accepted, fake) = fake_peer(CLUSTER, 2, FakeAfter::NeverRead).await;
        let link = lone_link(2, address, &directory);
        eventually("connected", || async {
            (link.gauges().channel_state(PeerChannel::Data) == ChannelState::Connected)
                .then_some(())
        })
        .await;

        // 40 MiB of requests: far more than loopback's socket buffers hold.
        let started = Instant::now();
        let mut calls = Vec::new();
        for _ in 0..40 {
            let link = link.clone();
            calls.push(tokio::spawn(async move {
                let request = PeerRequest::RaftAppendEntries(RaftPayload {
                    payload: vec![7; 1024 * 1024],
                });
                link.call(PeerChannel::Data, request, Duration::from_secs(20))
                    .await
            }));
        }
        let mut depth_max = 0;
        while !calls.iter().all(|c| c.is_finished()) {
            depth_max = depth_max.max(link.gauges().queue_depth_of(PeerChannel::Data));
            assert!(started.elapsed() < WAIT, "the calls end");
            tokio::time::sleep(POLL).await;
        }
        assert!(depth_max <= PEER_QUEUE_MAX as u64, "depth {depth_max}");
        let mut write_timed_out = 0;
        for call in calls {
            let error = call
                .await
                .expect("the task")
                .expect_err("nothing is answered");
            assert!(error.is_retriable(), "{error}");
            if let PeerError::Unreachable {
                fault: LinkFault::WriteTimedOut { .. },
                ..
            } = error
            {
                write_timed_out += 1;
            }
        }
        assert!(write_timed_out > 0, "the stalled write is named");
        // Within the write bound (plus connecting and scheduling), far below the calls' 20 s.
        assert!(
            started.elapsed() < fast().write_timeout * 6,
            "{:?}",
            started.elapsed()
        );
        assert_eq!(link.gauges().queue_depth(), 0);
        eventually("a new connection", || async {
            (accepted.load(Ordering::Relaxed) >= 3 && link.gauges().reconnects() >= 1).then_some(())
        })
        .await;
        // A stalled peer (paused, say) still listens: it is never taken for gone.
        assert_eq!(link.gauges().gone_since(), None);
        link.stop();
        link.stopped().await;
        fake.abort();
    })
    .await;
}

/// A peer that reads but never answers. With nothing asked, the control connection's ping
/// goes unanswered and the link replaces that connection alone (the idle data connection,
/// which is not pinged, stays). Then a call on each channel fails with `Timeout` at its own
/// timeout, and the overdue answer makes the link replace the data connection too, so neither
/// channel stays blocked behind an answer that never comes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_that_never_answers_times_out_and_is_reconnected() {
    bounded(async {
        let directory = ActorDirectory::new();
        let (address, _, fake) = fake_peer(CLUSTER, 2, FakeAfter::NeverAnswer).await;
        let link = lone_link(2, address, &directory);
        eventually("connected", || async {
            (link.state() == PeerLinkState::Connected).then_some(())
        })
        .await;
        eventually("the control connection replaced for its ping", || async {
            (link.gauges().reconnects() >= 1).then_some(())
        })
        .await;
        let last_error = link.gauges().last_error().expect("a last error");
        assert!(
            last_error.starts_with("control: no answer to a ping"),
            "{last_error}"
        );
        assert_eq!(link.gauges().rtt(), None, "no ping was ever answered");

        let reconnects = link.gauges().reconnects();
        let timeout = Duration::from_millis(300);
        let started = Instant::now();
        let error = link
            .call(PeerChannel::Data, vote("hello?"), timeout)
            .await
            .expect_err("no answer");
        assert!(
            matches!(error, PeerError::Timeout { remote: NodeId(2), timeout: t } if t == timeout),
            "{error:?}"
        );
        assert!(error.is_retriable());
        assert!(started.elapsed() < timeout + Duration::from_millis(500));
        // The control connection is replaced every ping timeout meanwhile, so a control call
        // ends with its own timeout or with the connection's death, retriable either way.
        let error = link
            .call(PeerChannel::Control, vote("hello?"), timeout)
            .await
            .expect_err("no answer");
        assert!(
            matches!(
                error,
                PeerError::Timeout { .. }
                    | PeerError::Unreachable {
                        fault: LinkFault::PingTimedOut { .. },
                        ..
                    }
            ),
            "{error:?}"
        );
        assert!(error.is_retriable());
        eventually(
            "the data connection replaced for its overdue answer",
            || async {
                let last_error = link.gauges().last_error()?;
                (link.gauges().reconnects() > reconnects
                    && last_error.starts_with("data: an answer is overdue"))
                .then_some(())
            },
        )
        .await;
        link.stop();
        link.stopped().await;
        fake.abort();
    })
    .await;
}

/// A peer whose answers are not the protocol (garbage, or an answer to a request never sent)
/// is not trusted: the request fails with a retriable `Unreachable` naming what was wrong, and
/// the link drops the connection and dials again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_sending_bad_answers_is_dropped_and_redialled() {
    bounded(async {
        let directory = ActorDirectory::new();
        for (after, expected) in [
            (FakeAfter::Garbage, "broke the protocol"),
            (FakeAfter::WrongCorrelationId, "out of order"),
        ] {
            let (address, accepted, fake) = fake_peer(CLUSTER, 2, after).await;
            let link = lone_link(2, address, &directory);
            let error = eventually("a failed call", || async {
                match link
                    .call(PeerChannel::Data, vote("x"), Duration::from_secs(2))
                    .await
                {
                    Err(error @ PeerError::Unreachable { .. })
                        if error.to_string().contains(expected) =>
                    {
                        Some(error)
                    }
                    _ => None,
                }
            })
            .await;
            assert!(error.is_retriable(), "{error}");
            eventually("dialled again", || async {
                (accepted.load(Ordering::Relaxed) >= 3).then_some(())
            })
            .await;
            link.stop();
            link.stopped().await;
            fake.abort();
        }
    })
    .await;
}

/// A peer that accepts connections but never answers the handshake: each attempt gives up at
/// the handshake bound (never hangs), calls made while the link backs off fail at once with a
/// retriable `Unreachable` naming the handshake, and the link keeps dialling.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_that_never_answers_the_handshake_fails_calls_while_the_link_retries() {
    bounded(async {
        let listener = TcpListener::bind((LOCALHOST, 0)).await.expect("bind");
        let address = listener.local_addr().expect("an address");
        let accepted = Arc::new(AtomicU64::new(0));
        let counter = Arc::clone(&accepted);
        let holder = tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((stream, _)) = listener.accept().await {
                counter.fetch_add(1, Ordering::Relaxed);
                held.push(stream);
            }
        });
        let directory = ActorDirectory::new();
        let started = Instant::now();
        let link = lone_link(2, address, &directory);
        let error = eventually("a call failing at once", || async {
            let started = Instant::now();
            let result = link
                .call(PeerChannel::Control, vote("x"), Duration::from_secs(5))
                .await;
            match result {
                Err(error @ PeerError::Unreachable { .. })
                    if started.elapsed() < Duration::from_millis(100) =>
                {
                    Some(error)
                }
                _ => None,
            }
        })
        .await;
        assert!(error.to_string().contains("no handshake answer"), "{error}");
        assert!(error.is_retriable());
        // Each attempt waits out the handshake bound, so two channels make at most this many
        // attempts in the time so far; and they keep trying.
        eventually("a second attempt per channel", || async {
            (accepted.load(Ordering::Relaxed) >= 4).then_some(())
        })
        .await;
        let attempts = accepted.load(Ordering::Relaxed);
        let bound = 2 * (started.elapsed().as_millis() / fast().handshake_timeout.as_millis() + 1);
        assert!(u128::from(attempts) <= bound, "{attempts} attempts");
        link.stop();
        link.stopped().await;
        holder.abort();
    })
    .await;
}

/// The queue bound: with the remote handler blocked, a channel accepts `PEER_QUEUE_MAX`
/// requests and refuses the next at once with a retriable `Overloaded`, while the other
/// channel is unaffected; once the handler moves, every accepted request is answered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sends_past_the_queue_bound_are_overloaded() {
    bounded(async {
        let a = Node::start(1, CLUSTER).await;
        let b = Node::start(2, CLUSTER).await;
        a.link_to(&[&b]).await;
        let link = a.link(b.id);
        call_until_ok(&link, PeerChannel::Data, "warm").await;
        let mut calls = Vec::new();
        for _ in 0..PEER_QUEUE_MAX {
            let link = link.clone();
            calls.push(tokio::spawn(async move {
                link.call(PeerChannel::Data, vote("slow"), Duration::from_secs(20))
                    .await
            }));
        }
        let deadline = Instant::now() + WAIT;
        while link.gauges().queue_depth_of(PeerChannel::Data) < PEER_QUEUE_MAX as u64 {
            if let Some(i) = calls.iter().position(|c| c.is_finished()) {
                let ended = calls.remove(i).await;
                panic!("a call ended early: {ended:?}");
            }
            assert!(Instant::now() < deadline, "timed out waiting for a full queue");
            tokio::time::sleep(POLL).await;
        }
        let started = Instant::now();
        let error = link
            .call(PeerChannel::Data, vote("one more"), Duration::from_secs(5))
            .await
            .expect_err("past the bound");
        assert!(
            matches!(error, PeerError::Overloaded { channel: PeerChannel::Data, max, .. } if max == PEER_QUEUE_MAX),
            "{error:?}"
        );
        assert!(error.is_retriable());
        assert!(started.elapsed() < Duration::from_millis(500), "refused at once");
        // What the remote holds is what the listener admits per connection, less the ping slot.
        assert!(b.service.waiting.load(Ordering::Relaxed) <= PEER_INFLIGHT_REQUESTS_MAX as u64);
        call_until_ok(&link, PeerChannel::Control, "still fine").await;

        b.service.gate.add_permits(PEER_QUEUE_MAX);
        for call in calls {
            call.await.expect("the task").expect("answered once the gate opens");
        }
        assert_eq!(link.gauges().queue_depth(), 0);
        a.shutdown().await;
        b.shutdown().await;
    })
    .await;
}

/// The admin directory shows the link as a `PeerLink` under its node, publishing the remote
/// node and address, its state, queue depth, reconnects and the control connection's
/// round-trip time; the link leaves the directory when it stops.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_directory_shows_the_peer_link_and_its_gauges() {
    bounded(async {
        let a = Node::start(1, CLUSTER).await;
        let b = Node::start(2, CLUSTER).await;
        a.link_to(&[&b]).await;
        let entry = a.directory.get("n1/peer-link/2").expect("registered");
        assert_eq!(entry.kind, ActorKind::PeerLink);
        assert_eq!(entry.parent.as_deref(), Some("n1"));
        let Some(PublishedState::PeerLink(gauges)) = entry.state else {
            panic!("a PeerLink publishes its gauges");
        };
        let gauges = gauges
            .downcast::<PeerLinkGauges>()
            .expect("a PeerLink publishes PeerLinkGauges");
        assert_eq!(gauges.remote, b.id);
        assert_eq!(gauges.address, b.address);
        let rtt = eventually("connected with a round-trip time", || async {
            (gauges.state() == PeerLinkState::Connected)
                .then(|| gauges.rtt())
                .flatten()
        })
        .await;
        assert!(rtt < Duration::from_secs(1));
        assert_eq!(gauges.queue_depth(), 0);
        assert_eq!(gauges.reconnects(), 0);
        assert_eq!(gauges.state().name(), "connected");

        // Depth shows in the gauges and in the directory's mailbox depth alike.
        let link = a.link(b.id);
        let slow_link = link.clone();
        let slow = tokio::spawn(async move {
            slow_link
                .call(PeerChannel::Data, vote("slow"), Duration::from_secs(20))
                .await
        });
        eventually("a request outstanding", || async {
            (gauges.queue_depth_of(PeerChannel::Data) == 1 && entry.stats.depth() == 1)
                .then_some(())
        })
        .await;
        b.service.gate.add_permits(1);
        slow.await.expect("the task").expect("the answer");
        assert_eq!(gauges.queue_depth(), 0);
        // The writer task counts a frame's bytes once its write returns, which may be after
        // the answer came back.
        eventually("traffic counted", || async {
            let (sent, bytes_out, bytes_in) = gauges.traffic_of(PeerChannel::Data);
            (sent >= 1 && bytes_out > 0 && bytes_in > 0).then_some(())
        })
        .await;

        assert_eq!(
            b.directory.get("n2/peer-listener").map(|e| e.kind),
            Some(ActorKind::Listener)
        );
        a.links.shutdown().await;
        assert!(a.directory.get("n1/peer-link/2").is_none());
        assert_eq!(gauges.state(), PeerLinkState::Stopped);
        let error = link
            .call(PeerChannel::Control, vote("x"), Duration::from_secs(1))
            .await
            .expect_err("a stopped link");
        assert!(matches!(
            error,
            PeerError::Unreachable {
                fault: LinkFault::Stopped,
                ..
            }
        ));
        a.shutdown().await;
        b.shutdown().await;
    })
    .await;
}

/// The registry follows membership: links to new members (never to itself), a replaced link
/// for a member whose address changed, a stopped link for a member that left (its handles'
/// calls fail), and `UnknownNode` for a node without a link.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_registry_reconciles_membership() {
    bounded(async {
        let a = Node::start(1, CLUSTER).await;
        let b = Node::start(2, CLUSTER).await;
        let c = Node::start(3, CLUSTER).await;
        let mut members = BTreeMap::from([(a.id, a.address), (b.id, b.address), (c.id, c.address)]);
        let outcome = a.links.reconcile(&members).await;
        assert_eq!(outcome.added, vec![b.id, c.id]);
        assert!(outcome.removed.is_empty() && outcome.readdressed.is_empty());
        assert!(a.links.get(a.id).is_none(), "no link to itself");
        let to_c = a.link(c.id);
        call_until_ok(&to_c, PeerChannel::Control, "hi").await;

        // Node 3 leaves; node 2 moves to node 3's listener address (which then answers as
        // node 3, so the new link is refused: it really dials the new address).
        members.remove(&c.id);
        members.insert(b.id, c.address);
        let outcome = a.links.reconcile(&members).await;
        assert_eq!(outcome.removed, vec![c.id]);
        assert_eq!(outcome.readdressed, vec![b.id]);
        assert!(outcome.added.is_empty());
        assert_eq!(a.links.members(), BTreeMap::from([(b.id, c.address)]));
        assert!(a.directory.get("n1/peer-link/3").is_none());
        let error = to_c
            .call(PeerChannel::Control, vote("x"), Duration::from_secs(1))
            .await
            .expect_err("a removed link");
        assert!(matches!(
            error,
            PeerError::Unreachable {
                fault: LinkFault::Stopped,
                ..
            }
        ));
        let error = a
            .links
            .call(
                c.id,
                PeerChannel::Control,
                vote("x"),
                Duration::from_secs(1),
            )
            .await
            .expect_err("no link");
        assert!(matches!(error, PeerError::UnknownNode { remote } if remote == c.id));
        let moved = a.link(b.id);
        assert_eq!(moved.address(), c.address);
        let refusal = eventually("the moved link dials the new address", || async {
            moved.gauges().refusal()
        })
        .await;
        assert_eq!(
            refusal,
            Refusal::NodeIdMismatch {
                expected: b.id,
                found: c.id
            }
        );
        a.shutdown().await;
        b.shutdown().await;
        c.shutdown().await;
    })
    .await;
}

/// The back-off doubles from its first value up to its cap, and each wait lies between half
/// of its step and all of it.
#[test]
fn back_off_doubles_to_its_cap_with_jitter() {
    let mut jitter = super::super::wire::Jitter::new(7);
    let initial = Duration::from_millis(100);
    let max = Duration::from_secs(2);
    for failures in 0..40 {
        let step = (initial * 2u32.pow(failures.min(5))).min(max);
        for _ in 0..50 {
            let wait = super::super::wire::backoff(initial, max, failures, &mut jitter);
            assert!(
                wait >= step / 2 && wait <= step,
                "{failures}: {wait:?} vs {step:?}"
            );
        }
    }
}
