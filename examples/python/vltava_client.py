#!/usr/bin/env python3
"""A small vltava client in Python, written from PROTOCOL.md (and STORAGE.md for records).

It needs only the `msgpack` package. Section numbers below (section 2, 6.7, ...) are those
of PROTOCOL.md at the repository root.

Run the demo against a node:  python3 vltava_client.py 127.0.0.1:9420
Run through a failover:        python3 vltava_client.py --failover HOST:PORT[,HOST:PORT...] TOPIC ROUNDS
"""

from __future__ import annotations

import os
import random
import socket
import struct
import sys
import time
from dataclasses import dataclass, field
from itertools import zip_longest

import msgpack

CLIENT_VERSION = "0.1.0"

# Request kinds (section 4) and the versions this client speaks of each.
HANDSHAKE, METADATA, CREATE_TOPICS, PRODUCE, FETCH, LIST_OFFSETS = 0, 1, 2, 7, 8, 9
INIT_PRODUCER_ID = 10
FIND_COORDINATOR, GROUP_HEARTBEAT, OFFSET_COMMIT, OFFSET_FETCH, DESCRIBE_GROUPS = 11, 12, 13, 14, 16
CLIENT_VERSIONS = {kind: (1, 1) for kind in (HANDSHAKE, METADATA, CREATE_TOPICS, PRODUCE, FETCH, LIST_OFFSETS,
                                             INIT_PRODUCER_ID, FIND_COORDINATOR, GROUP_HEARTBEAT, OFFSET_COMMIT,
                                             OFFSET_FETCH, DESCRIBE_GROUPS)}
RESPONSE_BIT = 0x8000
FRAME_HEADER = struct.Struct(">IHHQ")  # length, kind, version, correlation_id (section 2)
FRAME_BYTES_MAX = 8 * 1024 * 1024

# The 61-byte record batch header (section 7): base_offset, batch_length,
# partition_leader_epoch, magic, crc, attributes, last_offset_delta, first_timestamp,
# max_timestamp, producer_id, producer_epoch, base_sequence, record_count.
BATCH_HEADER = struct.Struct(">QIIBIHIqqqhiI")
BATCH_FIELDS = ("base_offset", "batch_length", "partition_leader_epoch", "magic", "crc", "attributes",
                "last_offset_delta", "first_timestamp", "max_timestamp", "producer_id", "producer_epoch",
                "base_sequence", "record_count")
CRC_START = 21  # the CRC covers bytes 21 to the end of the batch


class VltavaError(Exception):
    """An error map from the node (section 5): the whole request failed, or one entry did."""

    def __init__(self, error):
        self.code = error.get("code")
        self.name = error.get("name")
        self.retriable = bool(error.get("retriable"))
        self.error = error
        super().__init__(f"{self.name} (code {self.code}): {error.get('message', '')}")


def check_entry(entry):
    """Raises the per-topic or per-partition `error` of a success body entry, if any."""
    if entry.get("error") is not None:
        raise VltavaError(entry["error"])
    return entry


# --- Checksums and hashes -------------------------------------------------------------

def _crc32c_table():
    table = []
    for n in range(256):
        crc = n
        for _ in range(8):
            crc = (crc >> 1) ^ 0x82F63B78 if crc & 1 else crc >> 1
        table.append(crc)
    return table


_CRC32C_TABLE = _crc32c_table()


def crc32c(data):
    """CRC-32C (Castagnoli, reflected polynomial 0x82F63B78), as record batches use (section 7)."""
    crc = 0xFFFFFFFF
    for byte in data:
        crc = _CRC32C_TABLE[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


def fnv1a_32(data):
    """FNV-1a, 32 bits: the key hash of "Choosing a partition" (section 7)."""
    h = 2166136261
    for byte in data:
        h = ((h ^ byte) * 16777619) & 0xFFFFFFFF
    return h


def partition_for_key(key, partition_count):
    """The partition of a keyed event, the same in every client (PROTOCOL.md, section 7)."""
    return fnv1a_32(key) % partition_count


# --- Records (STORAGE.md, "Records") --------------------------------------------------

def put_varint(out, n):
    """Appends `n` zig-zag encoded, 7 bits at a time, least significant group first."""
    z = ((n << 1) ^ (n >> 63)) & 0xFFFFFFFFFFFFFFFF
    while z >= 0x80:
        out.append((z & 0x7F) | 0x80)
        z >>= 7
    out.append(z)


def get_varint(buf, pos, max_bytes=10):
    """Reads a zig-zag varint at `pos`; returns (value, next position)."""
    raw = 0
    for i in range(max_bytes):
        if pos + i >= len(buf):
            raise ValueError("varint runs past the end of its buffer")
        byte = buf[pos + i]
        raw |= (byte & 0x7F) << (7 * i)
        if byte & 0x80 == 0:
            return (raw >> 1) ^ -(raw & 1), pos + i + 1
    raise ValueError("varint too long")


def _put_sized(out, data):
    if data is None:
        put_varint(out, -1)
    else:
        put_varint(out, len(data))
        out += data


def _get_sized(buf, pos):
    length, pos = get_varint(buf, pos, 5)
    if length < 0:
        return None, pos
    if pos + length > len(buf):
        raise ValueError("field runs past its record")
    return bytes(buf[pos:pos + length]), pos + length


@dataclass
class Record:
    """One event. `offset` is set on records read back; headers are (str, bytes) pairs."""
    key: bytes | None
    value: bytes | None
    timestamp: int
    headers: list = field(default_factory=list)
    offset: int | None = None


def build_batch(records, producer=None):
    """Builds an uncompressed record batch (section 7) from `records`: non-idempotent, or
    stamped with `producer` = (producer_id, producer_epoch, base_sequence) (section 6.10).

    The base offset and partition leader epoch are 0: the leader writes them.
    """
    producer_id, producer_epoch, base_sequence = producer if producer is not None else (-1, -1, -1)
    first_ts = records[0].timestamp
    body = bytearray()
    for index, rec in enumerate(records):
        r = bytearray([0])  # record attributes, unused
        put_varint(r, rec.timestamp - first_ts)
        put_varint(r, index)  # offset_delta: the record's index in the batch
        _put_sized(r, rec.key)
        _put_sized(r, rec.value)
        put_varint(r, len(rec.headers))
        for hkey, hvalue in rec.headers:
            _put_sized(r, hkey.encode("utf-8"))
            _put_sized(r, hvalue)
        put_varint(body, len(r))
        body += r
    max_ts = max(rec.timestamp for rec in records)
    header = BATCH_HEADER.pack(0, BATCH_HEADER.size - 12 + len(body), 0, 1, 0, 0, len(records) - 1,
                               first_ts, max_ts, producer_id, producer_epoch, base_sequence, len(records))
    batch = bytearray(header) + body
    struct.pack_into(">I", batch, 17, crc32c(batch[CRC_START:]))
    return bytes(batch)


def parse_batches(buf):
    """Splits concatenated batches (a Fetch `records` bin), checks each one's CRC and yields
    (header dict, [Record]) with absolute offsets and timestamps (section 7, 6.8)."""
    pos = 0
    while pos < len(buf):
        if len(buf) - pos < BATCH_HEADER.size:
            raise ValueError("truncated batch header")
        h = dict(zip(BATCH_FIELDS, BATCH_HEADER.unpack_from(buf, pos)))
        end = pos + 12 + h["batch_length"]
        if end > len(buf):
            raise ValueError("truncated batch")
        batch = buf[pos:end]
        if h["magic"] != 1:
            raise ValueError(f"unsupported batch magic {h['magic']}")
        actual = crc32c(batch[CRC_START:])
        if actual != h["crc"]:
            raise ValueError(f"CRC mismatch at offset {h['base_offset']}: {actual:#010x} != {h['crc']:#010x}")
        if h["attributes"] & 0b111:
            raise ValueError("compressed batches need an LZ4 or zstd library; this client has none")
        log_append_time = bool(h["attributes"] & 0b1000)
        records, rpos = [], BATCH_HEADER.size
        for _ in range(h["record_count"]):
            length, rpos = get_varint(batch, rpos, 5)
            rend = rpos + length
            p = rpos + 1  # skip the record attributes byte
            ts_delta, p = get_varint(batch, p)
            offset_delta, p = get_varint(batch, p, 5)
            key, p = _get_sized(batch, p)
            value, p = _get_sized(batch, p)
            header_count, p = get_varint(batch, p, 5)
            headers = []
            for _ in range(header_count):
                hkey, p = _get_sized(batch, p)
                hvalue, p = _get_sized(batch, p)
                headers.append((hkey.decode("utf-8"), hvalue))
            if p != rend:
                raise ValueError("record framing does not match its length")
            timestamp = h["max_timestamp"] if log_append_time else h["first_timestamp"] + ts_delta
            records.append(Record(key, value, timestamp, headers, h["base_offset"] + offset_delta))
            rpos = rend
        if rpos != len(batch):
            raise ValueError("bytes left over after the records")
        yield h, records
        pos = end


# --- Connections (sections 1, 2, 4) -----------------------------------------------------

class Connection:
    """One TCP connection to one node, handshaken (section 4). Requests are sent one at a
    time; answers are matched by correlation id (section 2)."""

    def __init__(self, address, client_id="python-example", timeout=90.0):
        host, port = address.rsplit(":", 1)
        self.sock = socket.create_connection((host, int(port)), timeout=timeout)
        self.correlation_id = 0
        self.versions = {HANDSHAKE: 1}
        self.frame_bytes_max = FRAME_BYTES_MAX
        hello = self.request(HANDSHAKE, {"client_id": client_id, "client_software_name": "vltava-python-example",
                                         "client_software_version": CLIENT_VERSION})
        self.node_id, self.cluster_id = hello["node_id"], hello["cluster_id"]
        self.frame_bytes_max = hello.get("frame_bytes_max", FRAME_BYTES_MAX)
        spoken = {k["kind"]: (k["version_min"], k["version_max"]) for k in hello["kinds"]}
        for kind, (lo, hi) in CLIENT_VERSIONS.items():
            node_lo, node_hi = spoken.get(kind, (1, 0))
            if max(lo, node_lo) <= min(hi, node_hi):  # the highest version both speak
                self.versions[kind] = min(hi, node_hi)

    def close(self):
        self.sock.close()

    def _read_exact(self, n):
        buf = bytearray()
        while len(buf) < n:
            chunk = self.sock.recv(n - len(buf))
            if not chunk:
                raise ConnectionError("the node closed the connection")
            buf += chunk
        return bytes(buf)

    def request(self, kind, body):
        """Sends one request and returns its success body (a dict). A failed request as a
        whole (`{"error": {...}}`, section 5) raises VltavaError."""
        if kind not in self.versions:
            raise RuntimeError(f"the node speaks no version of kind {kind} this client speaks")
        self.correlation_id += 1
        version = self.versions[kind]
        payload = msgpack.packb(body, use_bin_type=True)
        self.sock.sendall(FRAME_HEADER.pack(12 + len(payload), kind, version, self.correlation_id) + payload)
        length, rkind, rversion, cid = FRAME_HEADER.unpack(self._read_exact(FRAME_HEADER.size))
        if length < 12 or 4 + length > self.frame_bytes_max:
            raise ConnectionError(f"bad frame length {length}")
        answer = msgpack.unpackb(self._read_exact(length - 12), raw=False)
        if rkind != kind | RESPONSE_BIT or rversion != version or cid != self.correlation_id:
            raise ConnectionError(f"unexpected answer: kind {rkind:#06x} v{rversion}, correlation id {cid}")
        if not isinstance(answer, dict):
            raise ConnectionError("the body is not a map")
        if answer.get("error") is not None:
            raise VltavaError(answer["error"])
        return answer

    # The requests of section 6, each returning its success body.

    def metadata(self, topics=None):
        return self.request(METADATA, {} if topics is None else {"topics": topics})

    def create_topics(self, topics, timeout_ms=30000):
        return self.request(CREATE_TOPICS, {"topics": topics, "timeout_ms": timeout_ms, "validate_only": False})

    def produce(self, topic, partition, batches, leader_epoch=None, acks=-1, timeout_ms=30000):
        """Appends `batches` (bytes each) to one partition; returns its produce_result."""
        entry = {"partition": partition, "records": b"".join(batches)}
        if leader_epoch is not None:
            entry["current_leader_epoch"] = leader_epoch
        answer = self.request(PRODUCE, {"acks": acks, "timeout_ms": timeout_ms,
                                        "topics": [{"name": topic, "partitions": [entry]}]})
        return check_entry(answer["topics"][0]["partitions"][0])

    def fetch(self, topic, positions, max_wait_ms=5000, min_bytes=1, max_bytes=1 << 20):
        """Reads from `positions` ({partition: offset}); returns {partition: fetch_result}."""
        parts = [{"partition": p, "fetch_offset": off, "partition_max_bytes": max_bytes} for p, off in positions.items()]
        answer = self.request(FETCH, {"max_wait_ms": max_wait_ms, "min_bytes": min_bytes, "max_bytes": max_bytes,
                                      "topics": [{"name": topic, "partitions": parts}]})
        return {r["partition"]: check_entry(r) for r in answer["topics"][0]["partitions"]}

    def init_producer_id(self, current=None):
        """A new idempotent producer identity, or with `current` = (producer_id, producer_epoch)
        the next epoch of it (section 6.10): (producer_id, producer_epoch)."""
        body = {} if current is None else {"producer_id": current[0], "producer_epoch": current[1]}
        answer = self.request(INIT_PRODUCER_ID, body)
        return answer["producer_id"], answer["producer_epoch"]

    def list_offsets(self, topic, partitions, spec):
        """`spec` is "earliest" or "latest"; returns {partition: offset}."""
        parts = [{"partition": p, "spec": spec} for p in partitions]
        answer = self.request(LIST_OFFSETS, {"topics": [{"name": topic, "partitions": parts}]})
        return {r["partition"]: check_entry(r)["offset"] for r in answer["topics"][0]["partitions"]}


    # Consumer groups (sections 6.11 to 6.19).

    def find_coordinator(self, group_id):
        return self.request(FIND_COORDINATOR, {"group_id": group_id})

    def heartbeat(self, group_id, member_id, member_epoch, owned, subscribed=None, max_wait_ms=0):
        """One ConsumerGroupHeartbeat; `owned` is {topic: [partitions]}."""
        body = {"group_id": group_id, "member_id": member_id, "member_epoch": member_epoch,
                "owned_partitions": [{"topic": t, "partitions": sorted(ps)} for t, ps in owned.items()],
                "max_wait_ms": max_wait_ms}
        if subscribed is not None:
            body["subscribed_topics"] = subscribed
        return self.request(GROUP_HEARTBEAT, body)

    def commit(self, group_id, member_id, member_epoch, topic, offsets):
        """OffsetCommit of {partition: next offset}; returns {partition: error or None}."""
        parts = [{"partition": p, "offset": o, "metadata": ""} for p, o in offsets.items()]
        answer = self.request(OFFSET_COMMIT, {"group_id": group_id, "member_id": member_id,
                                              "member_epoch": member_epoch,
                                              "topics": [{"topic": topic, "partitions": parts}]})
        return {r["partition"]: r.get("error") for r in answer["topics"][0]["partitions"]}

    def committed(self, group_id):
        """OffsetFetch of every committed partition: {(topic, partition): offset}."""
        answer = self.request(OFFSET_FETCH, {"group_id": group_id})
        return {(t["topic"], p["partition"]): p.get("offset") for t in answer["topics"] for p in t["partitions"]}


# --- Through failover (section 10, "Riding out failures") ---------------------------------

# What to do about an error (section 10): refresh metadata and retry on the routing errors,
# retry after a back-off on the other retriable ones, give up on the rest.
REFRESH_METADATA = {"NotLeader", "FencedLeaderEpoch", "UnknownTopic", "UnknownPartition", "LeaderNotAvailable",
                    "PartitionOffline", "StorageError"}
RETRY_BACKOFF_S, RETRY_BACKOFF_MAX_S = 0.05, 0.25  # doubled per failure, with jitter, up to the cap
DELIVERY_TIMEOUT_S = 120.0  # how long one write may keep being retried (the Rust default)
PRODUCE_TIMEOUT_MS = 5000  # the produce request's own timeout_ms
FETCH_MAX_WAIT_MS = 500
TIMEOUT_SLACK_S = 5.0  # on top of a request's own timeout, for the answer's way back
METADATA_TIMEOUT_S = 3.0  # a live node answers metadata at once
CONNECT_TIMEOUT_S = 5.0  # TCP connect and handshake; a paused node accepts TCP and says nothing


class Backoff:
    """Capped exponential back-off with jitter (section 10)."""

    def __init__(self):
        self.next_s = RETRY_BACKOFF_S

    def sleep(self):
        time.sleep(self.next_s * random.uniform(0.5, 1.0))
        self.next_s = min(self.next_s * 2, RETRY_BACKOFF_MAX_S)


class Cluster:
    """What a client knows of the cluster (section 10): node addresses, each partition's
    leader and leader epoch from the newest metadata seen (`metadata_version` never goes
    back), and one connection per node, dropped when it fails or times out (its answers can
    no longer be matched)."""

    def __init__(self, bootstrap, client_id="python-example"):
        self.bootstrap = list(bootstrap)
        self.client_id = client_id
        self.nodes = {}  # node_id -> "host:port"
        self.partitions = {}  # topic -> {partition: (leader node_id or None, leader_epoch)}
        self.version = None
        self.connections = {}  # "host:port" -> Connection
        self.preferred = None

    def connection(self, address):
        conn = self.connections.get(address)
        if conn is None:
            conn = Connection(address, self.client_id, timeout=CONNECT_TIMEOUT_S)
            self.connections[address] = conn
        return conn

    def forget(self, address):
        conn = self.connections.pop(address, None)
        if conn is not None:
            try:
                conn.close()
            except OSError:
                pass

    def refresh(self):
        """Metadata from the first node that answers within METADATA_TIMEOUT_S: the last one
        that answered, then the bootstrap addresses, then the other known nodes."""
        candidates = []
        for address in [self.preferred] + self.bootstrap + list(self.nodes.values()):
            if address is not None and address not in candidates:
                candidates.append(address)
        last_error = None
        for address in candidates:
            try:
                conn = self.connection(address)
                conn.sock.settimeout(METADATA_TIMEOUT_S)
                meta = conn.metadata()
            except (OSError, ConnectionError, VltavaError) as e:
                self.forget(address)
                last_error = e
                continue
            self.preferred = address
            version = meta.get("metadata_version")
            if self.version is not None and version is not None and version < self.version:
                return  # older than what is known: keep that
            self.version = version
            self.nodes = {n["node_id"]: f"{n['host']}:{n['port']}" for n in meta["nodes"]}
            self.partitions = {t["name"]: {p["partition"]: (p.get("leader"), p["leader_epoch"]) for p in t["partitions"]}
                               for t in meta["topics"] if t.get("error") is None}
            return
        raise ConnectionError(f"no node answered metadata: {last_error}")

    def leader(self, topic, partition):
        """(address, leader_epoch) of the partition's leader, refreshing once if unknown."""
        for attempt in (0, 1):
            leader, epoch = self.partitions.get(topic, {}).get(partition, (None, 0))
            if leader is not None and leader in self.nodes:
                return self.nodes[leader], epoch
            if attempt == 0:
                self.refresh()
        raise VltavaError({"code": 47, "name": "LeaderNotAvailable", "retriable": True,
                           "message": f"no leader known for {topic}-{partition}"})

    def call(self, topic, partition, send, timeout_s, deadline):
        """Runs `send(connection, leader_epoch)` against the partition's leader until it
        succeeds, a final error, or `deadline` (time.monotonic()): the routing errors refresh
        the metadata, every retriable error and lost or silent connection backs off and
        retries (section 10)."""
        backoff = Backoff()
        while True:
            address = None
            try:
                address, epoch = self.leader(topic, partition)
                conn = self.connection(address)
                conn.sock.settimeout(timeout_s)
                return send(conn, epoch)
            except VltavaError as e:
                if not e.retriable or time.monotonic() >= deadline:
                    raise
                print(f"retrying {topic}-{partition} at {address}: {e}", file=sys.stderr, flush=True)
                if e.name in REFRESH_METADATA:
                    self._refresh_quietly()
            except (OSError, ConnectionError) as e:  # refused, reset, or no answer in time
                if address is not None:
                    self.forget(address)
                if time.monotonic() >= deadline:
                    raise TimeoutError(f"{topic}-{partition}: {e}") from e
                print(f"retrying {topic}-{partition} at {address}: {type(e).__name__}: {e}", file=sys.stderr,
                      flush=True)
                self._refresh_quietly()
            backoff.sleep()

    def _refresh_quietly(self):
        try:
            self.refresh()
        except (OSError, ConnectionError):
            pass  # every node is unreachable now; the next attempt asks again

    def close(self):
        for address in list(self.connections):
            self.forget(address)


class IdempotentProducer:
    """Writes one batch at a time per partition, idempotently (section 6.10), so a retry after
    a timeout or a lost connection, also to a new leader, never writes a batch twice: a batch
    that got through is answered with its original offsets. On `UnknownProducerId` (say, a
    leader that has not yet learnt of an id the controller just issued) it bumps its epoch, a
    new id if the node does not know this one, and starts every partition again at sequence 0;
    with one batch in flight, only the batch being sent is not yet acknowledged."""

    def __init__(self, cluster):
        self.cluster = cluster
        self.sequences = {}  # (topic, partition) -> next base_sequence
        self.producer_id, self.producer_epoch = self._init_producer_id(None)

    def _init_producer_id(self, current):
        """InitProducerId (section 6.10) with retries; `current` asks for its next epoch, and
        falls back to a new id if the node does not know it."""
        deadline = time.monotonic() + DELIVERY_TIMEOUT_S
        backoff = Backoff()
        while True:
            try:
                self.cluster.refresh()
                conn = self.cluster.connection(self.cluster.preferred)
                conn.sock.settimeout(METADATA_TIMEOUT_S + TIMEOUT_SLACK_S)
                return conn.init_producer_id(current)
            except VltavaError as e:
                if e.name == "UnknownProducerId" and current is not None:
                    current = None  # ask for a new id instead
                    continue
                if not e.retriable or time.monotonic() >= deadline:
                    raise
            except (OSError, ConnectionError):
                if self.cluster.preferred is not None:
                    self.cluster.forget(self.cluster.preferred)
                if time.monotonic() >= deadline:
                    raise
            backoff.sleep()

    def send(self, topic, partition, records):
        """Appends `records` as one batch; returns its base offset and the node that answered
        (the leader that acknowledged it). Raises after
        DELIVERY_TIMEOUT_S of retries, or at once on a final error."""
        deadline = time.monotonic() + DELIVERY_TIMEOUT_S
        backoff = Backoff()
        while True:
            sequence = self.sequences.get((topic, partition), 0)
            batch = build_batch(records, (self.producer_id, self.producer_epoch, sequence))

            def produce(conn, epoch):
                answer = conn.produce(topic, partition, [batch], leader_epoch=epoch, timeout_ms=PRODUCE_TIMEOUT_MS)
                return answer, conn.node_id

            try:
                result, node_id = self.cluster.call(topic, partition, produce,
                                                    PRODUCE_TIMEOUT_MS / 1000 + TIMEOUT_SLACK_S, deadline)
            except VltavaError as e:
                if e.name != "UnknownProducerId" or time.monotonic() >= deadline:
                    raise
                print(f"renewing the producer identity after {topic}-{partition}: {e}", file=sys.stderr, flush=True)
                self.producer_id, self.producer_epoch = self._init_producer_id(
                    (self.producer_id, self.producer_epoch))
                self.sequences = {}
                backoff.sleep()
                continue
            self.sequences[(topic, partition)] = (sequence + len(records)) % (1 << 31)
            return result["base_offset"], node_id


def fetch_from(cluster, topic, partition, position, deadline):
    """Records of one partition from `position` on its leader (long poll), retried through
    failover until `deadline`; the position is the caller's and only records move it."""

    def fetch(conn, epoch):
        parts = [{"partition": partition, "fetch_offset": position, "partition_max_bytes": 1 << 20,
                  "current_leader_epoch": epoch}]
        answer = conn.request(FETCH, {"max_wait_ms": FETCH_MAX_WAIT_MS, "min_bytes": 1, "max_bytes": 1 << 20,
                                      "topics": [{"name": topic, "partitions": parts}]})
        return check_entry(answer["topics"][0]["partitions"][0])

    result = cluster.call(topic, partition, fetch, FETCH_MAX_WAIT_MS / 1000 + TIMEOUT_SLACK_S, deadline)
    records = []
    for _, recs in parse_batches(result.get("records") or b""):
        records.extend(rec for rec in recs if rec.offset >= position)
    return records


def failover_run(bootstrap, topic, rounds):
    """Writes one event to every partition of `topic` per round and reads it back, through
    whatever happens to the cluster meanwhile. Prints `ACK partition offset node value` per
    acknowledged write (`node`: the leader that acknowledged it) and `READ partition offset
    value` per event read, for a test to check;
    returns 0 when every acknowledged write was read back at its offset, else 1."""
    cluster = Cluster(bootstrap.split(","), "python-failover")
    cluster.refresh()
    partitions = sorted(cluster.partitions[topic])
    producer = IdempotentProducer(cluster)
    positions = {p: 0 for p in partitions}
    acknowledged = {}  # (partition, offset) -> value
    read = {}
    for round_index in range(rounds):
        for p in partitions:
            value = f"py-{round_index}-{p}".encode()
            offset, node_id = producer.send(topic, p, [Record(None, value, int(time.time() * 1000))])
            acknowledged[(p, offset)] = value
            print(f"ACK {p} {offset} {node_id} {value.decode()}", flush=True)
        for p in partitions:
            deadline = time.monotonic() + DELIVERY_TIMEOUT_S
            last = max(o for (q, o) in acknowledged if q == p)
            while positions[p] <= last:
                for rec in fetch_from(cluster, topic, p, positions[p], deadline):
                    read[(p, rec.offset)] = rec.value
                    print(f"READ {p} {rec.offset} {rec.value.decode()}", flush=True)
                    positions[p] = rec.offset + 1
                if time.monotonic() >= deadline:
                    raise TimeoutError(f"partition {p}: offset {last} not read within {DELIVERY_TIMEOUT_S} s")
    cluster.close()
    missing = [k for k, v in acknowledged.items() if read.get(k) != v]
    if missing:
        print(f"vltava python failover run: FAILED ({len(missing)} acknowledged writes not read back, "
              f"e.g. {missing[:3]})")
        return 1
    print(f"vltava python failover run: OK ({len(acknowledged)} writes acknowledged and read back)")
    return 0


def assignment_of(answer):
    """A heartbeat answer's assignment as {topic: set of partitions}."""
    return {t["topic"]: set(t["partitions"]) for t in answer["assignment"]}


def group_demo(conn, topic, partition_count, problems):
    """Two members share `topic` (section 6.11): the second waits until the first gives up the
    partitions revoked from it, commits are fenced by epochs, and offsets can be read back."""
    group = f"{topic}-readers"
    coordinator = conn.find_coordinator(group)
    c = conn if coordinator["node_id"] == conn.node_id else Connection(f"{coordinator['host']}:{coordinator['port']}")
    a = c.heartbeat(group, "", 0, {}, subscribed=[topic])
    a_owned = assignment_of(a)
    if sum(len(ps) for ps in a_owned.values()) != partition_count:
        problems.append(f"the first member got {a_owned}, expected every partition")
    b = c.heartbeat(group, "", 0, {}, subscribed=[topic])
    # a's next answer leaves some partitions out: they are revoked. a may still commit them,
    # then reports them gone by not listing them; only then can b have them.
    a = c.heartbeat(group, a["member_id"], a["member_epoch"], a_owned)
    kept = assignment_of(a)
    revoked = {p for p in a_owned.get(topic, set()) if p not in kept.get(topic, set())}
    if not revoked:
        problems.append("no partition was revoked from the first member when a second joined")
    errors = c.commit(group, a["member_id"], a["member_epoch"], topic, {p: 1 for p in revoked})
    if any(errors.values()):
        problems.append(f"commit on revoke refused: {errors}")
    a = c.heartbeat(group, a["member_id"], a["member_epoch"], kept)
    b = c.heartbeat(group, b["member_id"], b["member_epoch"], {})
    if assignment_of(b).get(topic, set()) != revoked:
        problems.append(f"the second member got {assignment_of(b)}, expected {revoked}")
    try:  # an old epoch is fenced (section 6.13)
        c.heartbeat(group, a["member_id"], a["member_epoch"] - 1, assignment_of(a))
        problems.append("a heartbeat with an old member epoch was accepted")
    except VltavaError as e:
        if e.name != "FencedMemberEpoch":
            problems.append(f"expected FencedMemberEpoch, got {e}")
    committed = c.committed(group)
    if committed != {(topic, p): 1 for p in revoked}:
        problems.append(f"committed offsets read back as {committed}")
    for member in (a, b):  # leave (member epoch -1)
        c.heartbeat(group, member["member_id"], -1, {})
    print(f"group {group}: {len(revoked)} partitions moved between two members, commits read back")
    if c is not conn:
        c.close()


def wait_for_leaders(conn, topic, deadline_s=30.0):
    """Metadata (section 6.1) until every partition of `topic` has a leader."""
    deadline = time.monotonic() + deadline_s
    while True:
        meta = conn.metadata([topic])
        t = meta["topics"][0]
        if t.get("error") is None and t["partitions"] and all(p.get("leader") is not None for p in t["partitions"]):
            return meta
        if time.monotonic() > deadline:
            raise TimeoutError(f"partitions of {topic} have no leader: {t}")
        time.sleep(0.1)


def self_test():
    """Checks the CRC, the key hash and the batch builder against published vectors and the
    examples of PROTOCOL.md (section 11) and STORAGE.md; returns what does not match."""
    doc_batch = ("0000000000000000 0000003f 00000000 01 5028da91 0000 00000000 0000018bcfe56800"
                 " 0000018bcfe56800 ffffffffffffffff ffff ffffffff 00000001 1a000000046b310a68656c6c6f00")
    checks = {
        "crc32c('123456789')": crc32c(b"123456789") == 0xE3069283,
        "fnv1a_32 vectors": [fnv1a_32(s) for s in (b"", b"a", b"foobar")] == [0x811C9DC5, 0xE40C292C, 0xBF9CF968],
        "PROTOCOL.md batch": build_batch([Record(b"k1", b"hello", 1700000000000)]) == bytes.fromhex(
            doc_batch.replace(" ", "")),
        "STORAGE.md batch CRC": build_batch([Record(b"k", b"v", 1000, [("h", b"x")])])[17:21].hex() == "85d4936f",
    }
    return [f"self-test failed: {name}" for name, ok in checks.items() if not ok]


# --- The demo ------------------------------------------------------------------------------

def main(bootstrap):
    """The demo: returns 0 if everything read back equals what was written, else 1."""
    problems = self_test()
    conn = Connection(bootstrap)
    print(f"connected to node {conn.node_id} of cluster {conn.cluster_id}")

    # A request that fails as a whole (section 5): an invalid topic name.
    try:
        conn.metadata(["not a valid name!"])
        problems.append("an invalid topic name was accepted")
    except VltavaError as e:
        print(f"expected failure: {e}")
        if e.name != "InvalidTopicName" or e.code != 23:
            problems.append(f"expected InvalidTopicName (23), got {e.name} ({e.code})")

    topic = f"python-demo-{os.getpid()}-{int(time.time() * 1000)}"
    check_entry(conn.create_topics([{"name": topic, "partitions": 3}])["topics"][0])
    try:  # A failure of one entry (section 5): the topic exists now.
        check_entry(conn.create_topics([{"name": topic, "partitions": 3}])["topics"][0])
        problems.append("creating the topic twice succeeded")
    except VltavaError as e:
        if e.name != "TopicAlreadyExists":
            problems.append(f"expected TopicAlreadyExists, got {e}")
    meta = wait_for_leaders(conn, topic)
    partitions = meta["topics"][0]["partitions"]
    addresses = {n["node_id"]: f"{n['host']}:{n['port']}" for n in meta["nodes"]}
    if len(partitions) != 3:
        problems.append(f"expected 3 partitions, metadata shows {len(partitions)}")
    leaders = {}  # partition -> (connection to its leader, leader epoch)
    for p in partitions:
        leader = p["leader"]
        c = conn if leader == conn.node_id else Connection(addresses[leader])
        leaders[p["partition"]] = (c, p["leader_epoch"])

    # Twelve events over four keys; each key's events go to the key's partition.
    now = int(time.time() * 1000)
    written = {p: [] for p in leaders}
    for i in range(12):
        key = f"customer-{i % 4}".encode()
        value = f'{{"order": {i}, "amount": {10 * i + 5}}}'.encode()
        rec = Record(key, value, now + i, [("source", b"python"), ("seq", str(i).encode())])
        written[partition_for_key(key, len(leaders))].append(rec)

    # Produce with acks = -1: per partition, the first batch alone, then two batches in one
    # request (a `records` bin may hold several). Base offsets must follow on (section 6.7).
    for p, recs in written.items():
        if not recs:
            continue
        c, epoch = leaders[p]
        chunks = [recs[i:i + 2] for i in range(0, len(recs), 2)]
        sends = [chunks[:1], chunks[1:3], chunks[3:]]
        next_offset = 0
        for send in filter(None, sends):
            result = c.produce(topic, p, [build_batch(chunk) for chunk in send], leader_epoch=epoch)
            if result.get("base_offset") != next_offset:
                problems.append(f"partition {p}: base_offset {result.get('base_offset')}, expected {next_offset}")
            next_offset += sum(len(chunk) for chunk in send)
        for offset, rec in enumerate(recs):
            rec.offset = offset
        print(f"partition {p}: produced {len(recs)} records in {len(chunks)} batches")

    # ListOffsets (section 6.9): earliest 0, latest = the number of records written.
    for p, (c, _) in leaders.items():
        earliest = c.list_offsets(topic, [p], "earliest")[p]
        latest = c.list_offsets(topic, [p], "latest")[p]
        if (earliest, latest) != (0, len(written[p])):
            problems.append(f"partition {p}: offsets {earliest}..{latest}, expected 0..{len(written[p])}")

    # Fetch (section 6.8) from offset 0 with a long poll, until each partition's position
    # reaches what was written.
    read = {p: [] for p in leaders}
    batches = 0
    for p, (c, _) in leaders.items():
        position = 0
        deadline = time.monotonic() + 30
        while position < len(written[p]) and time.monotonic() < deadline:
            result = c.fetch(topic, {p: position}, max_wait_ms=5000, min_bytes=1)[p]
            for _, recs in parse_batches(result.get("records") or b""):
                batches += 1
                for rec in recs:
                    if rec.offset >= position:  # skip records below fetch_offset
                        read[p].append(rec)
                        position = rec.offset + 1
        mismatch = next(((w, r) for w, r in zip_longest(written[p], read[p]) if w != r), None)
        if mismatch:
            problems.append(f"partition {p}: wrote {mismatch[0]}, read back {mismatch[1]}")

    # A long poll with nothing new to read waits max_wait_ms, then answers with no records.
    c, _ = leaders[0]
    started = time.monotonic()
    result = c.fetch(topic, {0: len(written[0])}, max_wait_ms=300, min_bytes=1)[0]
    waited = time.monotonic() - started
    if result.get("records") or waited < 0.25:
        problems.append(f"an empty long poll answered after {waited:.3f} s with {len(result.get('records') or b'')} bytes")

    group_demo(conn, topic, len(leaders), problems)

    for c in {c for c, _ in leaders.values()} | {conn}:
        c.close()
    total = sum(len(r) for r in read.values())
    if problems:
        for problem in problems:
            print(f"PROBLEM: {problem}", file=sys.stderr)
        print(f"vltava python client demo: FAILED ({len(problems)} problems)")
        return 1
    print(f"vltava python client demo: OK ({total} records in {batches} batches over {len(leaders)} partitions "
          f"of {topic} read back as written)")
    return 0


if __name__ == "__main__":
    if len(sys.argv) == 5 and sys.argv[1] == "--failover":
        try:
            sys.exit(failover_run(sys.argv[2], sys.argv[3], int(sys.argv[4])))
        except (VltavaError, OSError, ValueError) as e:
            print(f"vltava python failover run: FAILED ({type(e).__name__}: {e})")
            sys.exit(1)
    if len(sys.argv) != 2:
        print("usage: vltava_client.py HOST:PORT | --failover HOST:PORT[,...] TOPIC ROUNDS", file=sys.stderr)
        sys.exit(2)
    try:
        sys.exit(main(sys.argv[1]))
    except (VltavaError, OSError, ValueError) as e:
        print(f"vltava python client demo: FAILED ({type(e).__name__}: {e})")
        sys.exit(1)
