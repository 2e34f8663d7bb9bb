//! The bytes of the Raft files: log entries, the vote, the committed and purged log ids, and
//! snapshots. Fixed-width integers are big-endian, like the record file and the wire's frame
//! header. The metadata records inside an entry or a snapshot are a `MetadataBatch`, whose
//! bytes (MessagePack, with its own version in front) vltava-messages defines; everything
//! around them is written here by hand, so that MessagePack stays in vltava-messages.
//!
//! Every format carries a version: a decoder that meets a newer one answers
//! `UnsupportedVersion`, never `Corrupt`, and never guesses.
//!
//! ```text
//! log file   = magic "VLTVRAFT" (8 bytes) | frame*
//! frame      = body length (u32) | CRC-32C of the body (u32) | body
//! body       = version (u8) | log id | kind (u8) | payload
//! log id     = term (u64) | leader node id (u64) | index (u64)
//!   kind 0   = blank (no payload)
//!   kind 1   = normal: payload = MetadataBatch bytes
//!   kind 2   = membership: payload = membership
//! membership = config count (u8) | per config: id count (u16) | ids (u64 each)
//!              | node count (u16) | per node: id (u64) | address length (u16) | address (UTF-8)
//! vote       = version (u8) | term (u64) | node id (u64) | committed (u8: 0 or 1)
//! log id file = version (u8) | present (u8: 0 or 1) | log id        (committed, purged)
//! snapshot   = magic "VLTVSNAP" | version (u16) | id length (u16) | id (UTF-8)
//!              | last log id (present u8, log id) | membership log id (the same) | membership length (u32) | membership
//!              | batch length (u32) | MetadataBatch bytes | CRC-32C of all before (u32)
//! ```
//!
//! The vote and log-id files are written by `checkpoint::write_atomic`, which appends a CRC of
//! its own. A snapshot's CRC is part of its bytes, so the same bytes are the file, what a
//! leader sends, and what a follower checks before installing.

use std::collections::{BTreeMap, BTreeSet};

use openraft::{
    BasicNode, CommittedLeaderId, Entry, EntryPayload, LeaderId, LogId, Membership, SnapshotMeta,
    StoredMembership, Vote,
};
use vltava_messages::metadata_records::{MetadataBatch, MetadataBatchError};

use super::{RaftNodeId, TypeConfig};

/// The first bytes of a log file: a file without them is not a Raft log.
pub(crate) const LOG_MAGIC: [u8; 8] = *b"VLTVRAFT";
/// The first bytes of a snapshot.
pub(crate) const SNAPSHOT_MAGIC: [u8; 8] = *b"VLTVSNAP";

/// The entry encoding this build writes and the newest it reads.
pub const ENTRY_FORMAT_VERSION: u8 = 1;
/// The encoding of the vote, committed and purged files.
pub const STATE_FORMAT_VERSION: u8 = 1;
/// The snapshot encoding.
pub const SNAPSHOT_FORMAT_VERSION: u16 = 1;

/// Length and CRC in front of every entry body.
pub(crate) const FRAME_HEADER_BYTES: usize = 8;
/// version + log id + kind: the smallest body there is (a blank entry).
pub(crate) const ENTRY_FIXED_BYTES: usize = 1 + LOG_ID_BYTES + 1;
/// term + leader node id + index.
const LOG_ID_BYTES: usize = 8 + 8 + 8;

/// The largest entry body. Metadata batches are small (a topic of 4096 partitions with three
/// replicas is about 400 KiB of PartitionChange records); the bound keeps one entry inside one
/// peer frame and lets recovery reject a damaged length before allocating for it.
pub const ENTRY_BYTES_MAX: u32 = 1 << 20;

/// Configs in a membership: joint consensus holds the old and the new one, never more.
const MEMBERSHIP_CONFIGS_MAX: usize = 2;
/// Nodes a membership may name: every broker of a large cluster as a learner, with room.
/// Bounds what a damaged count can make the decoder allocate.
pub(crate) const MEMBERSHIP_NODES_MAX: usize = 4096;
/// A peer address is `host:port`: a DNS name is at most 253 bytes.
pub(crate) const NODE_ADDRESS_BYTES_MAX: usize = 512;
/// Snapshot ids are `term-index-uuid`, well under this.
const SNAPSHOT_ID_BYTES_MAX: usize = 128;

const _: () = assert!(ENTRY_FIXED_BYTES as u32 <= ENTRY_BYTES_MAX);

/// Why bytes did not decode. The caller knows the file and position and turns this into a
/// `RaftStoreError`.
#[derive(Debug)]
pub(crate) enum DecodeError {
    Corrupt(&'static str),
    UnsupportedVersion {
        format: &'static str,
        found: u16,
        supported: u16,
    },
    Batch(MetadataBatchError),
}

impl From<MetadataBatchError> for DecodeError {
    fn from(e: MetadataBatchError) -> DecodeError {
        match e {
            MetadataBatchError::UnsupportedVersion { found, supported } => {
                DecodeError::UnsupportedVersion {
                    format: "metadata batch",
                    found,
                    supported,
                }
            }
            other => DecodeError::Batch(other),
        }
    }
}

impl DecodeError {
    pub(crate) fn at(self, path: &std::path::Path, position: u64) -> super::RaftStoreError {
        use super::RaftStoreError;
        let path = path.to_path_buf();
        match self {
            DecodeError::Corrupt(reason) => RaftStoreError::Corrupt {
                path,
                position,
                reason,
            },
            DecodeError::UnsupportedVersion {
                format,
                found,
                supported,
            } => RaftStoreError::UnsupportedVersion {
                path,
                position,
                format,
                found,
                supported,
            },
            DecodeError::Batch(source) => RaftStoreError::CorruptBatch {
                path,
                position,
                source,
            },
        }
    }
}

/// Reads fixed-width fields off a slice; running past its end is damage.
struct Reader<'a> {
    bytes: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        if self.bytes.len() < n {
            return Err(DecodeError::Corrupt("a field runs past the end"));
        }
        let (head, rest) = self.bytes.split_at(n);
        self.bytes = rest;
        Ok(head)
    }

    fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(self.take(1)?[0])
    }

    fn u16(&mut self) -> Result<u16, DecodeError> {
        Ok(u16::from_be_bytes(
            self.take(2)?.try_into().expect("2 bytes"),
        ))
    }

    fn u32(&mut self) -> Result<u32, DecodeError> {
        Ok(u32::from_be_bytes(
            self.take(4)?.try_into().expect("4 bytes"),
        ))
    }

    fn u64(&mut self) -> Result<u64, DecodeError> {
        Ok(u64::from_be_bytes(
            self.take(8)?.try_into().expect("8 bytes"),
        ))
    }

    fn flag(&mut self) -> Result<bool, DecodeError> {
        match self.u8()? {
            0 => Ok(false),
            1 => Ok(true),
            _ => Err(DecodeError::Corrupt("a flag is neither 0 nor 1")),
        }
    }

    fn rest(&mut self) -> &'a [u8] {
        std::mem::take(&mut self.bytes)
    }

    fn finish(&self) -> Result<(), DecodeError> {
        if self.bytes.is_empty() {
            Ok(())
        } else {
            Err(DecodeError::Corrupt("trailing bytes"))
        }
    }
}

fn put_log_id(id: &LogId<RaftNodeId>, out: &mut Vec<u8>) {
    // Without openraft's `single-term-leader` feature a leader is (term, node id), and so is
    // the committed leader id in every log id.
    out.extend_from_slice(&id.leader_id.term.to_be_bytes());
    out.extend_from_slice(&id.leader_id.node_id.to_be_bytes());
    out.extend_from_slice(&id.index.to_be_bytes());
}

fn get_log_id(r: &mut Reader<'_>) -> Result<LogId<RaftNodeId>, DecodeError> {
    let term = r.u64()?;
    let node_id = r.u64()?;
    let index = r.u64()?;
    Ok(LogId::new(CommittedLeaderId::new(term, node_id), index))
}

const KIND_BLANK: u8 = 0;
const KIND_NORMAL: u8 = 1;
const KIND_MEMBERSHIP: u8 = 2;

/// The body of one entry (no frame).
pub(crate) fn encode_entry(entry: &Entry<TypeConfig>) -> Vec<u8> {
    let mut body = Vec::with_capacity(ENTRY_FIXED_BYTES + 64);
    body.push(ENTRY_FORMAT_VERSION);
    put_log_id(&entry.log_id, &mut body);
    match &entry.payload {
        EntryPayload::Blank => body.push(KIND_BLANK),
        EntryPayload::Normal(batch) => {
            body.push(KIND_NORMAL);
            body.extend_from_slice(&batch.encode());
        }
        EntryPayload::Membership(membership) => {
            body.push(KIND_MEMBERSHIP);
            encode_membership(membership, &mut body);
        }
    }
    body
}

/// Appends `length | crc | body` to `out`.
pub(crate) fn frame(body: &[u8], out: &mut Vec<u8>) {
    let len = u32::try_from(body.len()).expect("entry bodies are checked against ENTRY_BYTES_MAX");
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(&crc32c::crc32c(body).to_be_bytes());
    out.extend_from_slice(body);
}

/// Decodes an entry body whose CRC already passed.
pub(crate) fn decode_entry(body: &[u8]) -> Result<Entry<TypeConfig>, DecodeError> {
    let mut r = Reader { bytes: body };
    let version = r.u8()?;
    if version > ENTRY_FORMAT_VERSION {
        return Err(DecodeError::UnsupportedVersion {
            format: "log entry",
            found: u16::from(version),
            supported: u16::from(ENTRY_FORMAT_VERSION),
        });
    }
    if version == 0 {
        return Err(DecodeError::Corrupt("entry version 0 was never written"));
    }
    let log_id = get_log_id(&mut r)?;
    let payload = match r.u8()? {
        KIND_BLANK => {
            r.finish()?;
            EntryPayload::Blank
        }
        KIND_NORMAL => EntryPayload::Normal(MetadataBatch::decode(r.rest())?),
        KIND_MEMBERSHIP => {
            let membership = decode_membership(&mut r)?;
            r.finish()?;
            EntryPayload::Membership(membership)
        }
        // A new kind comes with a new entry version, so under this one it is damage.
        _ => return Err(DecodeError::Corrupt("unknown entry kind")),
    };
    Ok(Entry { log_id, payload })
}

fn encode_membership(membership: &Membership<RaftNodeId, BasicNode>, out: &mut Vec<u8>) {
    let configs = membership.get_joint_config();
    assert!(
        configs.len() <= MEMBERSHIP_CONFIGS_MAX,
        "openraft's joint consensus holds at most two configs"
    );
    out.push(u8::try_from(configs.len()).expect("at most two configs"));
    for config in configs {
        assert!(config.len() <= MEMBERSHIP_NODES_MAX, "membership too large");
        out.extend_from_slice(&(config.len() as u16).to_be_bytes());
        for id in config {
            out.extend_from_slice(&id.to_be_bytes());
        }
    }
    let nodes: Vec<_> = membership.nodes().collect();
    assert!(nodes.len() <= MEMBERSHIP_NODES_MAX, "membership too large");
    out.extend_from_slice(&(nodes.len() as u16).to_be_bytes());
    for (id, node) in nodes {
        assert!(
            node.addr.len() <= NODE_ADDRESS_BYTES_MAX,
            "peer addresses are checked before they join a membership"
        );
        out.extend_from_slice(&id.to_be_bytes());
        out.extend_from_slice(&(node.addr.len() as u16).to_be_bytes());
        out.extend_from_slice(node.addr.as_bytes());
    }
}

fn decode_membership(r: &mut Reader<'_>) -> Result<Membership<RaftNodeId, BasicNode>, DecodeError> {
    let config_count = usize::from(r.u8()?);
    if config_count > MEMBERSHIP_CONFIGS_MAX {
        return Err(DecodeError::Corrupt("membership has too many configs"));
    }
    let mut configs = Vec::with_capacity(config_count);
    for _ in 0..config_count {
        let count = usize::from(r.u16()?);
        if count > MEMBERSHIP_NODES_MAX {
            return Err(DecodeError::Corrupt(
                "membership config names too many nodes",
            ));
        }
        let mut config = BTreeSet::new();
        for _ in 0..count {
            config.insert(r.u64()?);
        }
        configs.push(config);
    }
    let count = usize::from(r.u16()?);
    if count > MEMBERSHIP_NODES_MAX {
        return Err(DecodeError::Corrupt("membership names too many nodes"));
    }
    let mut nodes = BTreeMap::new();
    for _ in 0..count {
        let id = r.u64()?;
        let len = usize::from(r.u16()?);
        if len > NODE_ADDRESS_BYTES_MAX {
            return Err(DecodeError::Corrupt("peer address too long"));
        }
        let addr = std::str::from_utf8(r.take(len)?)
            .map_err(|_| DecodeError::Corrupt("peer address is not UTF-8"))?;
        nodes.insert(id, BasicNode::new(addr));
    }
    Ok(Membership::new(configs, nodes))
}

/// The vote file's body.
pub(crate) fn encode_vote(vote: &Vote<RaftNodeId>) -> Vec<u8> {
    let mut out = vec![STATE_FORMAT_VERSION];
    out.extend_from_slice(&vote.leader_id.term.to_be_bytes());
    out.extend_from_slice(&vote.leader_id.node_id.to_be_bytes());
    out.push(u8::from(vote.committed));
    out
}

pub(crate) fn decode_vote(bytes: &[u8]) -> Result<Vote<RaftNodeId>, DecodeError> {
    let mut r = Reader { bytes };
    state_version(&mut r, "vote file")?;
    let term = r.u64()?;
    let node_id = r.u64()?;
    let committed = r.flag()?;
    r.finish()?;
    Ok(Vote {
        leader_id: LeaderId::new(term, node_id),
        committed,
    })
}

fn state_version(r: &mut Reader<'_>, format: &'static str) -> Result<(), DecodeError> {
    let version = r.u8()?;
    if version > STATE_FORMAT_VERSION {
        return Err(DecodeError::UnsupportedVersion {
            format,
            found: u16::from(version),
            supported: u16::from(STATE_FORMAT_VERSION),
        });
    }
    if version == 0 {
        return Err(DecodeError::Corrupt(
            "state file version 0 was never written",
        ));
    }
    Ok(())
}

fn put_optional_log_id(id: Option<&LogId<RaftNodeId>>, out: &mut Vec<u8>) {
    out.push(u8::from(id.is_some()));
    put_log_id(id.unwrap_or(&LogId::default()), out);
}

fn get_optional_log_id(r: &mut Reader<'_>) -> Result<Option<LogId<RaftNodeId>>, DecodeError> {
    let present = r.flag()?;
    let id = get_log_id(r)?;
    Ok(present.then_some(id))
}

/// The body of the committed or purged file.
pub(crate) fn encode_log_id_file(id: Option<&LogId<RaftNodeId>>) -> Vec<u8> {
    let mut out = vec![STATE_FORMAT_VERSION];
    put_optional_log_id(id, &mut out);
    out
}

pub(crate) fn decode_log_id_file(
    bytes: &[u8],
    format: &'static str,
) -> Result<Option<LogId<RaftNodeId>>, DecodeError> {
    let mut r = Reader { bytes };
    state_version(&mut r, format)?;
    let id = get_optional_log_id(&mut r)?;
    r.finish()?;
    Ok(id)
}

/// A snapshot's bytes, CRC included: the file, and what a leader sends.
pub(crate) fn encode_snapshot(
    meta: &SnapshotMeta<RaftNodeId, BasicNode>,
    batch: &MetadataBatch,
) -> Vec<u8> {
    assert!(
        meta.snapshot_id.len() <= SNAPSHOT_ID_BYTES_MAX,
        "snapshot ids are built short"
    );
    let mut out = SNAPSHOT_MAGIC.to_vec();
    out.extend_from_slice(&SNAPSHOT_FORMAT_VERSION.to_be_bytes());
    out.extend_from_slice(&(meta.snapshot_id.len() as u16).to_be_bytes());
    out.extend_from_slice(meta.snapshot_id.as_bytes());
    put_optional_log_id(meta.last_log_id.as_ref(), &mut out);
    put_optional_log_id(meta.last_membership.log_id().as_ref(), &mut out);
    let mut membership = Vec::new();
    encode_membership(meta.last_membership.membership(), &mut membership);
    out.extend_from_slice(&(membership.len() as u32).to_be_bytes());
    out.extend_from_slice(&membership);
    let batch = batch.encode();
    out.extend_from_slice(
        &u32::try_from(batch.len())
            .expect("snapshots are checked against SNAPSHOT_BYTES_MAX")
            .to_be_bytes(),
    );
    out.extend_from_slice(&batch);
    let crc = crc32c::crc32c(&out);
    out.extend_from_slice(&crc.to_be_bytes());
    out
}

/// Decodes snapshot bytes: the CRC first (damage), then the version (a newer build), then
/// the fields.
pub(crate) fn decode_snapshot(
    bytes: &[u8],
) -> Result<(SnapshotMeta<RaftNodeId, BasicNode>, MetadataBatch), DecodeError> {
    let Some((body, crc)) = bytes.split_last_chunk::<4>() else {
        return Err(DecodeError::Corrupt("snapshot shorter than its checksum"));
    };
    if crc32c::crc32c(body).to_be_bytes() != *crc {
        return Err(DecodeError::Corrupt("snapshot checksum mismatch"));
    }
    let mut r = Reader { bytes: body };
    if r.take(SNAPSHOT_MAGIC.len())? != SNAPSHOT_MAGIC {
        return Err(DecodeError::Corrupt("not a snapshot"));
    }
    let version = r.u16()?;
    if version > SNAPSHOT_FORMAT_VERSION {
        return Err(DecodeError::UnsupportedVersion {
            format: "snapshot",
            found: version,
            supported: SNAPSHOT_FORMAT_VERSION,
        });
    }
    if version == 0 {
        return Err(DecodeError::Corrupt("snapshot version 0 was never written"));
    }
    let id_len = usize::from(r.u16()?);
    if id_len > SNAPSHOT_ID_BYTES_MAX {
        return Err(DecodeError::Corrupt("snapshot id too long"));
    }
    let snapshot_id = std::str::from_utf8(r.take(id_len)?)
        .map_err(|_| DecodeError::Corrupt("snapshot id is not UTF-8"))?
        .to_owned();
    let last_log_id = get_optional_log_id(&mut r)?;
    let membership_log_id = get_optional_log_id(&mut r)?;
    let membership_len = r.u32()? as usize;
    let mut membership_reader = Reader {
        bytes: r.take(membership_len)?,
    };
    let membership = decode_membership(&mut membership_reader)?;
    membership_reader.finish()?;
    let batch_len = r.u32()? as usize;
    let batch = MetadataBatch::decode(r.take(batch_len)?)?;
    r.finish()?;
    Ok((
        SnapshotMeta {
            last_log_id,
            last_membership: StoredMembership::new(membership_log_id, membership),
            snapshot_id,
        },
        batch,
    ))
}
