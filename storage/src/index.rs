//! Sparse indexes of one segment, kept in memory and written to disk whole when the segment
//! is sealed or the log closes. They are never fsynced: opening a log checks them and
//! rebuilds any that are missing, damaged or incomplete by scanning the segment.
//!
//! - The offset index maps an offset (relative to the segment's base offset, `u32`) to the
//!   byte position of the batch that starts there (`u32`): 8 bytes an entry, big-endian.
//! - The time index maps the largest timestamp seen so far in the segment (`i64`) to the
//!   relative offset and position of the batch that brought it: 16 bytes an entry.
//!
//! Both hold one entry per `index_interval_bytes` of log at most, with strictly increasing
//! keys, so a lookup is a binary search followed by a bounded scan of batch headers.

/// Bytes of one offset-index entry.
pub const OFFSET_ENTRY_BYTES: usize = 8;
/// Bytes of one time-index entry.
pub const TIME_ENTRY_BYTES: usize = 16;

/// One offset-index entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OffsetEntry {
    pub relative_offset: u32,
    pub position: u32,
}

/// The sparse offset index of one segment.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct OffsetIndex {
    entries: Vec<OffsetEntry>,
}

impl OffsetIndex {
    /// Adds an entry. Entries must grow in both offset and position.
    pub fn push(&mut self, relative_offset: u32, position: u32) {
        if let Some(last) = self.entries.last() {
            assert!(
                relative_offset > last.relative_offset && position > last.position,
                "offset index entries must increase"
            );
        }
        self.entries.push(OffsetEntry {
            relative_offset,
            position,
        });
    }

    /// The entry with the largest offset at or below `relative_offset`.
    #[must_use]
    pub fn lookup(&self, relative_offset: u32) -> Option<OffsetEntry> {
        let index = self
            .entries
            .partition_point(|e| e.relative_offset <= relative_offset);
        index.checked_sub(1).map(|i| self.entries[i])
    }

    /// The last entry.
    #[must_use]
    pub fn last(&self) -> Option<OffsetEntry> {
        self.entries.last().copied()
    }

    /// Drops the entries at or past `position`.
    pub fn truncate_to_position(&mut self, position: u32) {
        let keep = self.entries.partition_point(|e| e.position < position);
        self.entries.truncate(keep);
    }

    #[must_use]
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The on-disk form.
    #[must_use]
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.entries.len() * OFFSET_ENTRY_BYTES);
        for e in &self.entries {
            out.extend_from_slice(&e.relative_offset.to_be_bytes());
            out.extend_from_slice(&e.position.to_be_bytes());
        }
        out
    }

    /// Parses the on-disk form; `None` if it is not a well-formed index (a length that is not
    /// a whole number of entries, or entries that do not strictly increase).
    #[must_use]
    pub fn decode(bytes: &[u8]) -> Option<OffsetIndex> {
        if !bytes.len().is_multiple_of(OFFSET_ENTRY_BYTES) {
            return None;
        }
        let mut index = OffsetIndex::default();
        for chunk in bytes.chunks_exact(OFFSET_ENTRY_BYTES) {
            let relative_offset = u32::from_be_bytes(chunk[0..4].try_into().ok()?);
            let position = u32::from_be_bytes(chunk[4..8].try_into().ok()?);
            if let Some(last) = index.entries.last()
                && (relative_offset <= last.relative_offset || position <= last.position)
            {
                return None;
            }
            if position == 0 {
                // Position 0 is never indexed (the segment's start is implied), so a zero here
                // is a zeroed page, not an entry.
                return None;
            }
            index.entries.push(OffsetEntry {
                relative_offset,
                position,
            });
        }
        Some(index)
    }
}

/// One time-index entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TimeEntry {
    /// The largest timestamp of every batch before this one in the segment.
    pub timestamp: i64,
    pub relative_offset: u32,
    pub position: u32,
}

/// The sparse time index of one segment.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TimeIndex {
    entries: Vec<TimeEntry>,
}

impl TimeIndex {
    /// Adds an entry if `timestamp` is larger than the last entry's.
    pub fn maybe_push(&mut self, timestamp: i64, relative_offset: u32, position: u32) {
        if self
            .entries
            .last()
            .is_none_or(|last| timestamp > last.timestamp)
        {
            self.entries.push(TimeEntry {
                timestamp,
                relative_offset,
                position,
            });
        }
    }

    /// The last entry whose timestamp is below `timestamp`: every batch before it holds only
    /// older records, so a search for `timestamp` may start at its position.
    #[must_use]
    pub fn lookup_before(&self, timestamp: i64) -> Option<TimeEntry> {
        let index = self.entries.partition_point(|e| e.timestamp < timestamp);
        index.checked_sub(1).map(|i| self.entries[i])
    }

    /// Drops the entries at or past `position`.
    pub fn truncate_to_position(&mut self, position: u32) {
        let keep = self.entries.partition_point(|e| e.position < position);
        self.entries.truncate(keep);
    }

    #[must_use]
    pub fn last(&self) -> Option<TimeEntry> {
        self.entries.last().copied()
    }

    /// The on-disk form.
    #[must_use]
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.entries.len() * TIME_ENTRY_BYTES);
        for e in &self.entries {
            out.extend_from_slice(&e.timestamp.to_be_bytes());
            out.extend_from_slice(&e.relative_offset.to_be_bytes());
            out.extend_from_slice(&e.position.to_be_bytes());
        }
        out
    }

    /// Parses the on-disk form; `None` if it is not well formed.
    #[must_use]
    pub fn decode(bytes: &[u8]) -> Option<TimeIndex> {
        if !bytes.len().is_multiple_of(TIME_ENTRY_BYTES) {
            return None;
        }
        let mut index = TimeIndex::default();
        for chunk in bytes.chunks_exact(TIME_ENTRY_BYTES) {
            let timestamp = i64::from_be_bytes(chunk[0..8].try_into().ok()?);
            let relative_offset = u32::from_be_bytes(chunk[8..12].try_into().ok()?);
            let position = u32::from_be_bytes(chunk[12..16].try_into().ok()?);
            if let Some(last) = index.entries.last()
                && (timestamp <= last.timestamp
                    || relative_offset <= last.relative_offset
                    || position <= last.position)
            {
                return None;
            }
            index.entries.push(TimeEntry {
                timestamp,
                relative_offset,
                position,
            });
        }
        Some(index)
    }
}
