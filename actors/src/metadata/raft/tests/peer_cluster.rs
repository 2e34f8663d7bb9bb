//! Three members over real TCP peer links on loopback: each has its own simulated disk, a
//! `PeerListener` answering with a `RaftPeerService`, and `PeerLinks` to the other two that
//! its `PeerRaftTransport` sends through. Peer timings are shortened as in the peer tests,
//! so a dead connection is noticed and a restarted node reached within a fraction of a second:
//! election and commit, failover of a stopped leader that then rejoins from its disk, and
//! catch-up by a snapshot sent in InstallSnapshot chunks.
//! Also: the largest append and snapshot chunk fit one peer frame, Raft on the data channel is
//! refused, a payload that does not decode is a typed failure, and the transport's errors.
//!
//! Waits are deadline-bounded polls (`eventually`, a watch's `wait_for` under a timeout);
//! nothing sleeps to synchronise, and each test runs under `TEST_TIMEOUT`.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use openraft::raft::{AppendEntriesRequest, InstallSnapshotRequest, VoteRequest};
use openraft::{BasicNode, SnapshotMeta, Vote};
use tokio::net::TcpListener;
use vltava_messages::NodeId;
use vltava_messages::metadata_records::MetadataBatch;
use vltava_messages::peer::{PeerErrorCode, PeerFailure, RaftPayload, encode_payload};
use vltava_storage::sim::SimStorage;

use super::super::config::SNAPSHOT_CHUNK_BYTES;
use super::super::log_store::LOG_READ_BYTES_MAX;
use super::super::{
    MetadataRaft, PeerRaftTransport, RaftConfigBuilder, RaftMember, RaftPeerService, RaftTransport,
    TransportError, propose,
};
use super::harness::{Members, POLL, WAIT, eventually, records, report};
use super::*;
use crate::directory::ActorDirectory;
use crate::metadata::MetadataImage;
use crate::peer::{
    ChannelState, PEER_CONNECTIONS_MAX, PeerChannel, PeerError, PeerIdentity, PeerLinkConfig,
    PeerLinks, PeerListener, PeerListenerConfig, PeerRequest, PeerResponse, PeerService,
    PeerTimings,
};

/// The most any one test may take.
const TEST_TIMEOUT: Duration = Duration::from_secs(60);
/// Failovers measured per run.
const FAILOVER_ROUNDS: usize = 3;
/// The bound each failover over TCP is held to: the in-process tests' 2 s plus the time a
/// stopped listener takes to drain and the links to notice, on two shared cores. The measured
/// times are printed (`--nocapture`).
const FAILOVER_BOUND: Duration = Duration::from_secs(3);
const CLUSTER: &str = "cluster-a";
const LOCALHOST: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

/// The peer tests' shortened bounds, in the production ratios.
fn fast() -> PeerTimings {
    PeerTimings {
        connect_timeout: Duration::from_millis(500),
        handshake_timeout: Duration::from_millis(500),
        listener_handshake_timeout: Duration::from_millis(800),
        write_timeout: Duration::from_millis(500),
        body_read_timeout: Duration::from_millis(500),
        ping_interval: Duration::from_millis(100),
        ping_timeout: Duration::from_millis(400),
        answer_overdue_grace: Duration::from_millis(200),
        check_interval: Duration::from_millis(20),
        backoff_initial: Duration::from_millis(20),
        backoff_max: Duration::from_millis(200),
        refused_backoff: Duration::from_millis(300),
    }
}

async fn bounded(test: impl Future<Output = ()>) {
    tokio::time::timeout(TEST_TIMEOUT, test)
        .await
        .expect("the test finished within its bound");
}

fn identity(id: RaftNodeId) -> PeerIdentity {
    PeerIdentity {
        cluster_id: CLUSTER.into(),
        node_id: NodeId(u32::try_from(id).expect("test ids are small")),
    }
}

/// A running member: Raft, its listener and its links.
struct Running {
    member: RaftMember,
    listener: PeerListener,
    links: PeerLinks,
}

struct Cluster {
    config: Arc<openraft::Config>,
    addresses: BTreeMap<RaftNodeId, SocketAddr>,
    disks: BTreeMap<RaftNodeId, SimStorage>,
    running: BTreeMap<RaftNodeId, Running>,
}

impl Cluster {
    /// Binds a port for each member, starts them all, and initialises the quorum with the
    /// bound addresses.
    async fn start(ids: &[RaftNodeId], config: Arc<openraft::Config>) -> Cluster {
        let mut sockets = BTreeMap::new();
        for id in ids {
            let socket = TcpListener::bind(SocketAddr::new(LOCALHOST, 0))
                .await
                .expect("bind a loopback port");
            sockets.insert(*id, socket);
        }
        let mut cluster = Cluster {
            config,
            addresses: sockets
                .iter()
                .map(|(id, s)| (*id, s.local_addr().expect("a bound address")))
                .collect(),
            disks: ids.iter().map(|id| (*id, SimStorage::new())).collect(),
            running: BTreeMap::new(),
        };
        for (id, socket) in sockets {
            cluster.start_member(id, socket).await;
        }
        let nodes: BTreeMap<RaftNodeId, BasicNode> = cluster
            .addresses
            .iter()
            .map(|(id, address)| (*id, BasicNode::new(address.to_string())))
            .collect();
        cluster.raft(ids[0]).initialize(nodes).await.unwrap();
        cluster
    }

    /// Starts member `id` from its disk, serving `socket`.
    async fn start_member(&mut self, id: RaftNodeId, socket: TcpListener) {
        let identity = identity(id);
        let directory = ActorDirectory::new();
        let parent = identity.label();
        let links = PeerLinks::new(
            PeerLinkConfig {
                identity: identity.clone(),
                bind_ip: LOCALHOST,
                timings: fast(),
            },
            directory.clone(),
            &parent,
        );
        let members: BTreeMap<NodeId, SocketAddr> = self
            .addresses
            .iter()
            .map(|(id, address)| (identity_of(*id), *address))
            .collect();
        links.reconcile(&members).await;
        let member = RaftMember::open(
            id,
            Arc::clone(&self.config),
            Arc::new(self.disks[&id].clone()),
            &raft_dir(),
            CLUSTER,
            Arc::new(PeerRaftTransport::new(links.clone())),
        )
        .await
        .unwrap();
        let listener = PeerListener::spawn(
            socket,
            PeerListenerConfig {
                identity,
                timings: fast(),
                connections_max: PEER_CONNECTIONS_MAX,
            },
            Arc::new(RaftPeerService::new(member.raft.clone())),
            &directory,
            &parent,
        )
        .expect("serve the bound socket");
        self.running.insert(
            id,
            Running {
                member,
                listener,
                links,
            },
        );
    }

    /// Starts member `id` again on its old address, from what its disk holds after a power
    /// loss at the moment it stopped (`seed` picks what unsynced bytes survive): every write
    /// it acknowledged was fsynced, so it must rejoin with nothing missing.
    async fn restart(&mut self, id: RaftNodeId, seed: u64) {
        let disk = self.disks[&id].crash_image(seed);
        self.disks.insert(id, disk);
        let socket = TcpListener::bind(self.addresses[&id])
            .await
            .expect("bind the member's port again");
        self.start_member(id, socket).await;
    }

    /// Stops member `id`: its Raft, then its listener (whose connections close) and links.
    async fn stop(&mut self, id: RaftNodeId) {
        let running = self.running.remove(&id).expect("a running member");
        running.member.raft.shutdown().await.unwrap();
        running.listener.stop().await;
        running.links.shutdown().await;
    }

    async fn stop_all(mut self) {
        let ids: Vec<_> = self.running.keys().copied().collect();
        for id in ids {
            self.stop(id).await;
        }
    }
}

impl Members for Cluster {
    fn raft(&self, id: RaftNodeId) -> &MetadataRaft {
        &self.running[&id].member.raft
    }

    fn image(&self, id: RaftNodeId) -> &tokio::sync::watch::Receiver<Arc<MetadataImage>> {
        &self.running[&id].member.image
    }
}

fn identity_of(id: RaftNodeId) -> NodeId {
    identity(id).node_id
}

fn default_config() -> Arc<openraft::Config> {
    RaftConfigBuilder::new(CLUSTER).build().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_members_over_peer_links_elect_commit_and_publish_the_same_image() {
    bounded(async {
        let cluster = Cluster::start(&[1, 2, 3], default_config()).await;
        let leader = cluster.leader(&[1, 2, 3]).await;
        let mut last = 0;
        for batch in 0..5 {
            last = cluster.commit(leader, records(batch * 3, 3)).await;
        }
        let images = [
            cluster.image_at(1, last).await,
            cluster.image_at(2, last).await,
            cluster.image_at(3, last).await,
        ];
        assert_eq!(images[0], images[1]);
        assert_eq!(images[1], images[2]);
        assert_eq!(images[0].topics.len(), 15);
        // A follower does not take writes; the remote Raft's answers name the leader.
        let follower = [1, 2, 3].into_iter().find(|id| *id != leader).unwrap();
        let error = propose(
            cluster.raft(follower),
            MetadataBatch {
                records: records(99, 1),
            },
        )
        .await
        .unwrap_err();
        assert_eq!(error.forward_to(), Some(leader), "{error}");
        cluster.stop_all().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_leader_over_peer_links_is_replaced_and_rejoins_from_its_disk() {
    bounded(async {
        let mut cluster = Cluster::start(&[1, 2, 3], default_config()).await;
        let mut leader = cluster.leader(&[1, 2, 3]).await;
        cluster.commit(leader, records(0, 1)).await;
        let mut elections = Vec::new();
        let mut commits = Vec::new();
        for round in 0..FAILOVER_ROUNDS {
            let others: Vec<_> = [1, 2, 3].into_iter().filter(|id| *id != leader).collect();
            let stopped = Instant::now();
            cluster.stop(leader).await;
            let (new_leader, elected_after) = cluster.elected(&others, stopped).await;
            let last = cluster.commit(new_leader, records(200 + round, 1)).await;
            let committed_after = stopped.elapsed();
            elections.push(elected_after);
            commits.push(committed_after);
            assert!(
                committed_after < FAILOVER_BOUND,
                "round {round}: failover over TCP took {committed_after:?}"
            );
            // Restarted from its disk on its old port, it rejoins through the links and
            // catches up with the write it missed.
            cluster.restart(leader, round as u64).await;
            let image = cluster.image_at(leader, last).await;
            assert_eq!(image, cluster.image_at(new_leader, last).await);
            leader = cluster.leader(&[1, 2, 3]).await;
            let last = cluster.commit(leader, records(300 + round, 1)).await;
            for id in [1, 2, 3] {
                cluster.image_at(id, last).await;
            }
        }
        report(
            "over TCP, stopped leader: new leader elected after",
            &elections,
        );
        report(
            "over TCP, stopped leader: first write committed after",
            &commits,
        );
        cluster.stop_all().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_stopped_past_the_snapshot_threshold_catches_up_over_tcp_by_a_snapshot() {
    bounded(async {
        // Snapshot every 10 entries and keep none a snapshot covers, so the leader's log soon
        // starts past what the stopped member has, and only InstallSnapshot can catch it up.
        let config = RaftConfigBuilder::new(CLUSTER)
            .snapshot_policy(10, 0)
            .build()
            .unwrap();
        let mut cluster = Cluster::start(&[1, 2, 3], config).await;
        let leader = cluster.leader(&[1, 2, 3]).await;
        let behind = [1, 2, 3].into_iter().find(|id| *id != leader).unwrap();
        let mut last = cluster.commit(leader, records(0, 2)).await;
        cluster.image_at(behind, last).await;
        let behind_last_log = cluster
            .raft(behind)
            .wait(Some(WAIT))
            .log_index(Some(last), "the member to stop has the last entry")
            .await
            .unwrap()
            .last_log_index
            .unwrap();
        cluster.stop(behind).await;
        for batch in 0..30 {
            last = cluster.commit(leader, records(10 + batch * 2, 2)).await;
        }
        let purged = cluster
            .raft(leader)
            .wait(Some(WAIT))
            .metrics(
                |m| m.purged.is_some_and(|p| p.index > behind_last_log + 10),
                "the leader purges the entries the stopped member lacks",
            )
            .await
            .unwrap()
            .purged
            .unwrap();

        cluster.restart(behind, 7).await;
        let caught_up = cluster.image_at(behind, last).await;
        assert_eq!(caught_up, cluster.image_at(leader, last).await);
        assert_eq!(caught_up.topics.len(), 62);
        let metrics = cluster.raft(behind).metrics().borrow().clone();
        assert!(
            metrics.snapshot.is_some_and(|s| s.index >= purged.index),
            "entries up to {} exist only in the leader's snapshot, so it was installed: {:?}",
            purged.index,
            metrics.snapshot
        );
        cluster.stop_all().await;
    })
    .await;
}

/// One member alone (initialised as a quorum of one), serving on loopback, and a
/// transport from a node 9 that links to it.
struct Lone {
    cluster: Cluster,
    links: PeerLinks,
    transport: PeerRaftTransport,
    service: RaftPeerService,
}

impl Lone {
    async fn start() -> Lone {
        let cluster = Cluster::start(&[1], default_config()).await;
        cluster.leader(&[1]).await;
        let identity = identity(9);
        let links = PeerLinks::new(
            PeerLinkConfig {
                identity: identity.clone(),
                bind_ip: LOCALHOST,
                timings: fast(),
            },
            ActorDirectory::new(),
            &identity.label(),
        );
        links
            .reconcile(&BTreeMap::from([(identity_of(1), cluster.addresses[&1])]))
            .await;
        let service = RaftPeerService::new(cluster.raft(1).clone());
        Lone {
            cluster,
            transport: PeerRaftTransport::new(links.clone()),
            links,
            service,
        }
    }

    fn vote(&self) -> Vote<RaftNodeId> {
        self.cluster.raft(1).metrics().borrow().vote
    }

    async fn stop(self) {
        self.links.shutdown().await;
        self.cluster.stop_all().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_remote_rafts_answer_and_its_error_come_back_through_the_transport() {
    bounded(async {
        let lone = Lone::start().await;
        // A vote of an older term is answered, not granted: the remote Raft's response.
        let stale = VoteRequest::new(Vote::new(0, 9), None);
        let answer = eventually_async(|| lone.transport.vote(1, stale.clone(), WAIT)).await;
        let response = answer.expect("the remote Raft answers");
        assert!(!response.vote_granted);
        assert_eq!(response.vote, lone.vote());

        // A stopped Raft answers with its error, which travels back as the remote's.
        lone.cluster.raft(1).shutdown().await.unwrap();
        let answer = lone
            .transport
            .vote(1, stale, WAIT)
            .await
            .expect("the listener still answers");
        assert!(
            matches!(answer, Err(openraft::error::RaftError::Fatal(_))),
            "{answer:?}"
        );
        lone.stop().await;
    })
    .await;
}

/// Calls `call` until the link is up (the first calls may find it still connecting).
async fn eventually_async<T, F, Fut>(mut call: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, TransportError>>,
{
    let deadline = Instant::now() + WAIT;
    loop {
        match call().await {
            Ok(answer) => return answer,
            Err(error) => assert!(Instant::now() < deadline, "never reached: {error}"),
        }
        tokio::time::sleep(POLL).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transport_errors_are_unreachable_for_unknown_or_down_nodes() {
    bounded(async {
        let lone = Lone::start().await;
        let request = VoteRequest::new(Vote::new(0, 9), None);
        // No link to node 2, and no vltava node with a Raft id past u32.
        for target in [2, u64::from(u32::MAX) + 1] {
            let error = lone
                .transport
                .vote(target, request.clone(), WAIT)
                .await
                .unwrap_err();
            assert!(
                matches!(error, TransportError::Unreachable { target: t, source: Some(_) } if t == target),
                "{error:?}"
            );
        }
        // Node 1's listener stops: the link goes down and calls fail as unreachable.
        eventually_async(|| lone.transport.vote(1, request.clone(), WAIT)).await.unwrap();
        let Lone {
            mut cluster,
            links,
            transport,
            service: _,
        } = lone;
        cluster.stop(1).await;
        let deadline = Instant::now() + WAIT;
        loop {
            match transport.vote(1, request.clone(), WAIT).await {
                Err(TransportError::Unreachable { source: Some(_), .. }) => break,
                other => assert!(Instant::now() < deadline, "still {other:?}"),
            }
            tokio::time::sleep(POLL).await;
        }
        links.shutdown().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raft_on_the_data_channel_and_undecodable_payloads_are_refused_with_typed_failures() {
    bounded(async {
        let lone = Lone::start().await;
        let from = identity_of(9);
        let good = RaftPayload {
            payload: encode_payload(&VoteRequest::new(Vote::new(0, 9), None)).unwrap(),
        };
        let failure = lone
            .service
            .handle(from, PeerChannel::Data, PeerRequest::RaftVote(good.clone()))
            .await
            .unwrap_err();
        assert_eq!(failure.error_code(), Some(PeerErrorCode::ServiceFailed));
        assert!(!failure.retriable);
        assert!(failure.message.contains("control channel"), "{failure}");
        // Through a real link, the refusal comes back as the remote handler's failure.
        let through_link = eventually_link(|| {
            lone.links.call(
                identity_of(1),
                PeerChannel::Data,
                PeerRequest::RaftVote(good.clone()),
                WAIT,
            )
        })
        .await;
        assert!(
            matches!(
                &through_link,
                Err(PeerError::Remote { failure, .. })
                    if failure.error_code() == Some(PeerErrorCode::ServiceFailed)
            ),
            "{through_link:?}"
        );
        // The same request on the control channel is answered.
        assert!(
            lone.service
                .handle(from, PeerChannel::Control, PeerRequest::RaftVote(good))
                .await
                .is_ok()
        );

        let garbage = RaftPayload {
            payload: b"\xc1 not msgpack".to_vec(),
        };
        for request in [
            PeerRequest::RaftVote(garbage.clone()),
            PeerRequest::RaftAppendEntries(garbage.clone()),
            PeerRequest::RaftInstallSnapshot(garbage),
        ] {
            let failure = lone
                .service
                .handle(from, PeerChannel::Control, request)
                .await
                .unwrap_err();
            assert_eq!(
                failure.error_code(),
                Some(PeerErrorCode::CorruptFrame),
                "{failure}"
            );
        }
        // A vote's payload sent as an append: it decodes as MessagePack, not as the type.
        let vote_as_append = RaftPayload {
            payload: encode_payload(&VoteRequest::new(Vote::new(0, 9), None)).unwrap(),
        };
        let failure = lone
            .service
            .handle(
                from,
                PeerChannel::Control,
                PeerRequest::RaftAppendEntries(vote_as_append),
            )
            .await
            .unwrap_err();
        assert_eq!(
            failure.error_code(),
            Some(PeerErrorCode::CorruptFrame),
            "{failure}"
        );
        lone.stop().await;
    })
    .await;
}

/// The largest an append (entries up to `LOG_READ_BYTES_MAX`) and a snapshot chunk
/// (`SNAPSHOT_CHUNK_BYTES` of bytes that MessagePack writes at two bytes each) get still
/// encode as one peer frame.
#[test]
fn the_largest_append_and_snapshot_chunk_fit_one_peer_frame() {
    let entry_padding = 100 * 1024;
    let mut entries = Vec::new();
    let mut bytes = 0;
    let mut index = 1;
    while bytes < LOG_READ_BYTES_MAX {
        let entry = normal(1, index, vec![topic(&format!("t{index}"), entry_padding)]);
        bytes += super::super::codec::encode_entry(&entry).len() as u64;
        entries.push(entry);
        index += 1;
    }
    let append = AppendEntriesRequest::<TypeConfig> {
        vote: Vote::new_committed(1, 1),
        prev_log_id: None,
        entries,
        leader_commit: None,
    };
    let payload = encode_payload(&append).unwrap();
    PeerRequest::RaftAppendEntries(RaftPayload { payload })
        .encode(1)
        .expect("the largest append fits a frame");

    let chunk = InstallSnapshotRequest::<TypeConfig> {
        vote: Vote::new_committed(1, 1),
        meta: SnapshotMeta {
            last_log_id: Some(log_id(1, 1, 100)),
            last_membership: openraft::StoredMembership::new(
                Some(log_id(1, 1, 1)),
                membership_of(&[1, 2, 3]),
            ),
            snapshot_id: "1-1-100".to_owned(),
        },
        offset: 0,
        data: vec![0xff; usize::try_from(SNAPSHOT_CHUNK_BYTES).unwrap()],
        done: false,
    };
    let payload = encode_payload(&chunk).unwrap();
    assert!(
        payload.len() as u64 > 2 * SNAPSHOT_CHUNK_BYTES,
        "two bytes per 0xff"
    );
    PeerRequest::RaftInstallSnapshot(RaftPayload { payload })
        .encode(1)
        .expect("the largest snapshot chunk fits a frame");
}

/// Calls `call` until the link is up: a call made while it still connects fails as
/// unreachable, and any other outcome is returned.
async fn eventually_link<T, F, Fut>(mut call: F) -> Result<T, PeerError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, PeerError>>,
{
    let deadline = Instant::now() + WAIT;
    loop {
        match call().await {
            Err(PeerError::Unreachable { .. }) if Instant::now() < deadline => {}
            outcome => return outcome,
        }
        tokio::time::sleep(POLL).await;
    }
}

/// How a scripted node 1 answers every Raft request.
#[derive(Clone, Copy, Debug)]
enum Script {
    /// Never answers.
    Hang,
    /// Answers with a handler failure.
    Fail,
    /// Answers with a payload that is not MessagePack.
    Garbage,
}

#[derive(Debug)]
struct ScriptedService(Script);

impl PeerService for ScriptedService {
    async fn handle(
        &self,
        _from: NodeId,
        _channel: PeerChannel,
        _request: PeerRequest,
    ) -> Result<PeerResponse, PeerFailure> {
        match self.0 {
            Script::Hang => std::future::pending().await,
            Script::Fail => Err(PeerFailure::new(PeerErrorCode::Unavailable, "scripted")),
            Script::Garbage => Ok(PeerResponse::RaftVote(RaftPayload {
                payload: b"\xc1 not msgpack".to_vec(),
            })),
        }
    }
}

/// Node 1 answering by `script`, and node 9's transport to it. Waits until node 9's
/// control connection to it is up, so that what a call gets is the script's doing.
async fn scripted(script: Script) -> (PeerListener, PeerLinks, PeerRaftTransport) {
    let listener = PeerListener::bind(
        SocketAddr::new(LOCALHOST, 0),
        PeerListenerConfig {
            identity: identity(1),
            timings: fast(),
            connections_max: PEER_CONNECTIONS_MAX,
        },
        Arc::new(ScriptedService(script)),
        &ActorDirectory::new(),
        &identity(1).label(),
    )
    .await
    .expect("bind a loopback port");
    let links = PeerLinks::new(
        PeerLinkConfig {
            identity: identity(9),
            bind_ip: LOCALHOST,
            timings: fast(),
        },
        ActorDirectory::new(),
        &identity(9).label(),
    );
    links
        .reconcile(&BTreeMap::from([(identity_of(1), listener.local_addr())]))
        .await;
    eventually("node 9's control connection to node 1", || {
        let link = links.get(identity_of(1))?;
        (link.gauges().channel_state(PeerChannel::Control) == ChannelState::Connected).then_some(())
    })
    .await;
    let transport = PeerRaftTransport::new(links.clone());
    (listener, links, transport)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_link_timeout_is_a_transport_timeout() {
    bounded(async {
        let (listener, links, transport) = scripted(Script::Hang).await;
        let timeout = Duration::from_millis(300);
        let started = Instant::now();
        let error = transport
            .vote(1, VoteRequest::new(Vote::new(1, 9), None), timeout)
            .await
            .unwrap_err();
        assert!(
            matches!(error, TransportError::Timeout { target: 1, timeout: t } if t == timeout),
            "{error:?}"
        );
        assert!(started.elapsed() >= timeout, "{:?}", started.elapsed());
        links.shutdown().await;
        listener.stop().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_remote_handler_failure_or_an_undecodable_answer_is_unreachable_with_the_reason() {
    bounded(async {
        for (script, reason) in [
            (Script::Fail, "scripted"),
            (Script::Garbage, "malformed body"),
        ] {
            let (listener, links, transport) = scripted(script).await;
            let error = transport
                .vote(1, VoteRequest::new(Vote::new(1, 9), None), WAIT)
                .await
                .unwrap_err();
            let TransportError::Unreachable {
                target: 1,
                source: Some(source),
            } = &error
            else {
                panic!("{script:?}: {error:?}");
            };
            assert_eq!(source.kind(), std::io::ErrorKind::InvalidData, "{script:?}");
            let text = source.to_string();
            assert!(text.contains(reason), "{script:?}: {text}");
            links.shutdown().await;
            listener.stop().await;
        }
    })
    .await;
}
