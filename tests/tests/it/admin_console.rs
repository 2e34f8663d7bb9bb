//! The admin console (`GET /` on the admin endpoint) in a real browser: headless Chromium
//! loads the page from a running node, lets its script fetch the JSON routes, and dumps the
//! DOM the script built. The assertions read that DOM through the page's stable hooks
//! (`data-actor-id`, `data-topic` / `data-partition`, `data-field` / `data-value`), so they
//! check what an operator would see, not only that the routes answer.
//!
//! Chromium is a system package: `scripts/test` (README's test command) installs it. Without
//! it the test fails rather than skips, so that a CI image that lost it cannot pass while
//! checking nothing.

use std::collections::BTreeMap;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use vltava_client::{
    Admin, Cluster, ConsumerConfig, GroupConfig, GroupConsumer, Producer, ProducerConfig,
    ProducerRecord,
};
use vltava_tests::{TestNode, http};

use super::runtime;

/// Where Debian's `chromium` package puts the browser (what `scripts/test` installs).
const CHROMIUM: &str = "/usr/bin/chromium";
/// Virtual time the page may run before the DOM is dumped. The page refreshes every 2 s and
/// Chromium holds virtual time still while a fetch is pending, so this covers the first
/// refresh and two more, however slow the node answers in wall-clock time.
const VIRTUAL_TIME_BUDGET_MS: u64 = 5_000;
/// Wall-clock bound on one browser run; past it the browser's process group is killed.
const CHROMIUM_TIMEOUT: Duration = Duration::from_secs(90);
/// How often the browser process is polled for exit.
const CHROMIUM_POLL: Duration = Duration::from_millis(50);
/// Events produced to partition 1 of the topic, so its high watermark is this number.
const EVENTS_PRODUCED: u64 = 5;
/// The group the page must show, and the offset it commits on partition 1.
const GROUP: &str = "console-readers";
const COMMITTED: u64 = 2;
/// A client id with markup in it: the page must show it as text, never parse it.
const HOSTILE_CLIENT_ID: &str = "<b>console-test</b>";

/// Fails, rather than skips, when the browser is missing: see the module doc.
fn assert_chromium_installed() {
    assert!(
        Path::new(CHROMIUM).exists(),
        "{CHROMIUM} is missing: the admin console test renders the page in headless Chromium, \
         and `bash scripts/test` (README's test command) installs it; run the suite through it, \
         or apt-get install -y chromium"
    );
}

/// Runs headless Chromium on `url` with a fresh profile and returns the DOM it dumps.
fn dump_dom(url: &str) -> String {
    let temp = tempfile::tempdir().expect("temporary directory");
    let stdout_path = temp.path().join("dom.html");
    let stderr_path = temp.path().join("chromium.log");
    let mut child = Command::new(CHROMIUM)
        .args([
            "--headless",
            // Containers and CI runners often run as root, where the sandbox cannot start.
            "--no-sandbox",
            "--disable-gpu",
            // CI containers often have a small /dev/shm; Chromium then crashes without this.
            "--disable-dev-shm-usage",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
        ])
        .arg(format!(
            "--user-data-dir={}",
            temp.path().join("profile").display()
        ))
        .arg(format!("--virtual-time-budget={VIRTUAL_TIME_BUDGET_MS}"))
        .arg("--dump-dom")
        .arg(url)
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&stdout_path).expect("creating the DOM file"))
        .stderr(std::fs::File::create(&stderr_path).expect("creating the log file"))
        // Its own process group, so a hang can be ended with the renderer and helpers too.
        .process_group(0)
        .spawn()
        .expect("spawning chromium");
    let deadline = Instant::now() + CHROMIUM_TIMEOUT;
    let status = loop {
        if let Some(status) = child.try_wait().expect("waiting for chromium") {
            break status;
        }
        if Instant::now() >= deadline {
            // SAFETY: kill(2) on the process group we created, with a valid signal number.
            unsafe {
                libc::kill(-(child.id() as i32), libc::SIGKILL);
            }
            let _ = child.wait();
            panic!(
                "chromium did not finish within {CHROMIUM_TIMEOUT:?}; its log:\n{}",
                std::fs::read_to_string(&stderr_path).unwrap_or_default()
            );
        }
        std::thread::sleep(CHROMIUM_POLL);
    };
    let dom = std::fs::read_to_string(&stdout_path).expect("reading the dumped DOM");
    assert!(
        status.success() && dom.contains("</html>"),
        "chromium failed ({status}); its log:\n{}",
        std::fs::read_to_string(&stderr_path).unwrap_or_default()
    );
    dom
}

/// The `<tr …>…</tr>` of the partitions table for `topic`/`partition`.
fn partition_row<'a>(dom: &'a str, topic: &str, partition: u32) -> &'a str {
    let table = &dom[dom.find(r#"id="partitions""#).expect("a partitions table")..];
    let start = table
        .find(&format!(
            r#"data-topic="{topic}" data-partition="{partition}""#
        ))
        .unwrap_or_else(|| panic!("no partitions row for {topic}-{partition} in:\n{table}"));
    let row = &table[start..];
    &row[..row.find("</tr>").expect("a closed row")]
}

/// Goal: an operator opening the console sees the node as the JSON routes describe it.
/// Method: a node with a 3-partition topic, events produced to partition 1 and a client
/// connection held open; Chromium renders the page; the DOM must hold the actor tree (the
/// root, the three Partition actors, the ClientSession), the partitions table with the high
/// watermark of each partition, the header, and the groups section in the state `/groups` is
/// in, with the hostile client id shown as text.
#[test]
fn console_renders_actor_tree_partitions_and_connections_in_a_browser() {
    assert_chromium_installed();
    let node = TestNode::start();
    let topic = "console";
    let runtime = runtime();
    // Held until the end: its connection is the ClientSession the page must show.
    let cluster = runtime.block_on(async {
        let cluster = Cluster::connect(&node.bootstrap(), HOSTILE_CLIENT_ID)
            .await
            .expect("connecting");
        Admin::new(cluster.clone())
            .create_topic(topic, 3, 1, BTreeMap::new())
            .await
            .expect("creating the topic");
        let producer = Producer::new(cluster.clone(), ProducerConfig::default())
            .await
            .expect("a producer");
        let mut deliveries = Vec::new();
        for i in 0..EVENTS_PRODUCED {
            let record = ProducerRecord {
                topic: topic.into(),
                partition: Some(1),
                value: Some(format!("event {i}").into_bytes()),
                ..ProducerRecord::default()
            };
            deliveries.push(producer.send(record).await.expect("sending"));
        }
        producer.flush().await.expect("flushing");
        for delivery in deliveries {
            delivery.wait().await.expect("delivered");
        }
        cluster
    });
    // The JSON the page reads, so that a wrong page and a wrong node are told apart.
    let (status, body) = node.admin_get("/partitions");
    assert_eq!(status, 200, "{body}");
    let partitions: serde_json::Value = serde_json::from_str(&body).expect("JSON");
    let high_watermark = partitions["partitions"]
        .as_array()
        .expect("a partitions list")
        .iter()
        .find(|p| p["topic"] == topic && p["partition"] == 1)
        .map(|p| p["high_watermark"].clone());
    assert_eq!(
        high_watermark,
        Some(serde_json::json!(EVENTS_PRODUCED)),
        "{body}"
    );
    let (_, body) = node.admin_get("/cluster");
    let cluster_view: serde_json::Value = serde_json::from_str(&body).expect("JSON");
    let cluster_id = cluster_view["cluster_id"].as_str().expect("a cluster id");

    // A group with one live member that committed offset 2 of partition 1: the page must show
    // its lag (high watermark 5 minus 2).
    let mut member = runtime.block_on(async {
        let mut config = GroupConfig::new(GROUP);
        config.auto_commit = false;
        config.commit_on_revoke = false;
        let mut member = GroupConsumer::new(cluster.clone(), ConsumerConfig::default(), config)
            .expect("a group consumer");
        member.subscribe(&[topic]).expect("subscribing");
        let deadline = Instant::now() + Duration::from_secs(30);
        while member.assignment().is_empty() {
            assert!(Instant::now() < deadline, "the member got no partitions");
            member.poll().await.expect("polling");
        }
        let offsets = BTreeMap::from([((topic.to_owned(), 1), COMMITTED)]);
        member.commit_offsets(offsets).await.expect("committing");
        member
    });

    let dom = dump_dom(&format!("http://{}/", node.admin_addr));

    let tree = &dom[dom.find(r#"id="actor-tree""#).expect("an actor tree")..];
    let tree = &tree[..tree.find("</tbody>").expect("a closed actor tree")];
    assert!(
        tree.contains(r#"data-actor-id="n1/node" data-kind="NodeSupervisor""#),
        "the NodeSupervisor root is in the tree:\n{tree}"
    );
    for partition in 0..3 {
        let id =
            format!(r#"data-actor-id="n1/partition/{topic}-{partition}" data-kind="Partition""#);
        assert!(tree.contains(&id), "{id} is in the tree:\n{tree}");
    }
    assert!(
        tree.contains(r#"data-kind="ClientSession""#),
        "the open client connection is in the tree:\n{tree}"
    );
    assert!(
        !tree.contains(r#"data-status="failed""#),
        "no actor is failed:\n{tree}"
    );

    let row = partition_row(&dom, topic, 1);
    let expected = format!(r#"data-field="high_watermark" data-value="{EVENTS_PRODUCED}""#);
    assert!(row.contains(&expected), "{expected} in the row:\n{row}");
    for partition in [0, 2] {
        let row = partition_row(&dom, topic, partition);
        assert!(
            row.contains(r#"data-field="high_watermark" data-value="0""#),
            "nothing was produced to {topic}-{partition}:\n{row}"
        );
    }

    assert!(
        dom.contains(&format!(r#"id="cluster-id">{cluster_id}<"#)),
        "the header shows the cluster id {cluster_id}"
    );
    assert!(
        dom.contains(r#"data-ready="true""#),
        "the header shows the node ready"
    );
    // The Cluster panel: a single node has no metadata quorum, and lists itself.
    assert!(
        dom.contains(r#"id="raft-summary" data-role="none">single node: no metadata quorum<"#),
        "the cluster panel says there is no quorum:\n{dom}"
    );
    assert!(
        dom.contains(r#"<tr data-node-id="1" class="this-node">"#),
        "the cluster panel lists this node:\n{dom}"
    );
    // The banner stays hidden unless a fetch failed (its text is in the script, so look at
    // the element, not for the words).
    assert!(
        dom.contains(r#"<div id="banner" class="banner" role="alert" hidden="">"#),
        "no fetch failed:\n{dom}"
    );

    let groups = &dom[dom.find(r#"id="groups""#).expect("a groups section")..];
    let groups = &groups[..groups.find("</section>").expect("a closed groups section")];
    match node.admin_get("/groups").0 {
        404 => assert!(
            groups.starts_with(r#"id="groups" data-available="false">"#)
                && groups.contains("Consumer groups are not available on this node yet."),
            "without /groups the section says so quietly:\n{groups}"
        ),
        _ => assert!(
            groups.starts_with(r#"id="groups" data-available="true">"#),
            "with /groups the section renders it:\n{groups}"
        ),
    }
    assert!(
        groups.contains(&format!(r#"data-group-id="{GROUP}""#)),
        "the group is shown:\n{groups}"
    );
    let lag = EVENTS_PRODUCED - COMMITTED;
    assert!(
        groups.contains(&format!(r#"data-field="lag" data-value="{lag}""#)),
        "the group's lag {lag} is shown:\n{groups}"
    );
    runtime.block_on(member.close()).expect("leaving the group");

    let connections = &dom[dom
        .find(r#"id="connections""#)
        .expect("a connections table")..];
    let connections = &connections[..connections.find("</tbody>").expect("a closed table")];
    assert!(
        connections.contains("&lt;b&gt;console-test&lt;/b&gt;"),
        "the client id is shown as text:\n{connections}"
    );
    assert!(
        !dom.contains(HOSTILE_CLIENT_ID),
        "the client id's markup never reaches the DOM as markup"
    );
    drop(cluster);
}

/// Goal: with `--admin-token`, nothing on the admin endpoint answers without the token, the
/// console page included. Method: GET / without, with a wrong and with the right token.
/// The page holds no data, but the endpoint guards every route alike, so a browser opening
/// the console must send the header itself (an extension or a proxy); the page's own token
/// prompt then serves the JSON routes it fetches.
#[test]
fn with_an_admin_token_the_console_page_needs_the_token_too() {
    let node = TestNode::start_with(&["--admin-token", "secret"]);
    for headers in [&[][..], &["Authorization: Bearer wrong"][..]] {
        let (status, body) = http("GET", &node.admin_addr, "/", headers);
        assert_eq!(status, 401, "GET / with {headers:?}: {body}");
        let error: serde_json::Value = serde_json::from_str(&body).expect("a JSON error");
        assert_eq!(error["error"]["status"], 401, "{body}");
    }
    let (status, body) = http(
        "GET",
        &node.admin_addr,
        "/",
        &["Authorization: Bearer secret"],
    );
    assert_eq!(status, 200, "{body}");
    assert!(
        body.contains(r#"id="actor-tree""#),
        "the console page:\n{body}"
    );
    let (status, body) = http(
        "GET",
        &node.admin_addr,
        "/actors",
        &["Authorization: Bearer secret"],
    );
    assert_eq!(status, 200, "{body}");
    // A browser opens the page with the token in the query; only the page takes it there.
    let (status, _) = http("GET", &node.admin_addr, "/?access_token=secret", &[]);
    assert_eq!(status, 200);
    let (status, _) = http("GET", &node.admin_addr, "/?access_token=wrong", &[]);
    assert_eq!(status, 401);
    let (status, _) = http("GET", &node.admin_addr, "/actors?access_token=secret", &[]);
    assert_eq!(status, 401, "data routes take the token only as a header");
}
