//! A simulated disk for crash and fault tests: [`SimStorage`] implements [`Storage`] in memory
//! and keeps, for every file, the bytes written (`live`, what the running process sees) apart
//! from the bytes fsynced (`durable`, what survives a power loss). Directory entries are
//! handled the same way: creations, removals and renames are pending until the directory is
//! synced.
//!
//! [`SimStorage::crash_image`] builds the disk a machine would find after losing power: the
//! durable namespace plus a random prefix of the pending directory operations (a journaling
//! file system applies them in order), and for every file its durable bytes with each unsynced
//! 4 KiB page lost, kept or turned to zeros, at random from a seed.
//!
//! Faults: crash at the N-th sync (the image is frozen just before that sync takes effect and
//! every later operation fails), fail the N-th sync with EIO, and a capacity past which writes
//! fail with ENOSPC after writing what fits.
//!
//! Simplification: directories themselves are durable as soon as they are created.

use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use crate::fs::{Storage, StorageFile};

/// The granularity at which unsynced data is lost or kept: a page of the page cache.
const PAGE_BYTES: usize = 4096;

type InodeId = u64;

#[derive(Clone, Debug, Default)]
struct Inode {
    live: Vec<u8>,
    durable: Vec<u8>,
}

#[derive(Clone, Debug)]
enum MetaOp {
    Link { path: PathBuf, inode: InodeId },
    Unlink { path: PathBuf },
    Rename { from: PathBuf, to: PathBuf },
}

impl MetaOp {
    fn touches(&self, dir: &Path) -> bool {
        match self {
            MetaOp::Link { path, .. } | MetaOp::Unlink { path } => path.parent() == Some(dir),
            MetaOp::Rename { from, to } => from.parent() == Some(dir) || to.parent() == Some(dir),
        }
    }

    fn apply(&self, namespace: &mut BTreeMap<PathBuf, InodeId>) {
        match self {
            MetaOp::Link { path, inode } => {
                namespace.insert(path.clone(), *inode);
            }
            MetaOp::Unlink { path } => {
                namespace.remove(path);
            }
            MetaOp::Rename { from, to } => {
                if let Some(inode) = namespace.remove(from) {
                    namespace.insert(to.clone(), inode);
                }
            }
        }
    }
}

#[derive(Clone, Debug, Default)]
struct SimState {
    inodes: BTreeMap<InodeId, Inode>,
    next_inode: InodeId,
    live: BTreeMap<PathBuf, InodeId>,
    durable: BTreeMap<PathBuf, InodeId>,
    pending: Vec<MetaOp>,
    dirs: BTreeSet<PathBuf>,
    sync_count: u64,
    crash_at_sync: Option<u64>,
    fail_sync_at: Option<u64>,
    capacity_bytes: Option<u64>,
    /// The state frozen at the simulated crash; set once the process "died".
    frozen: Option<Box<SimState>>,
}

impl SimState {
    fn live_bytes(&self) -> u64 {
        self.live
            .values()
            .map(|id| self.inodes[id].live.len() as u64)
            .sum()
    }

    fn check_alive(&self) -> io::Result<()> {
        if self.frozen.is_some() {
            return Err(io::Error::other("simulated crash: the process is gone"));
        }
        Ok(())
    }

    /// Counts a sync and applies the crash and failure faults. `Ok(false)` means "fail it".
    fn count_sync(&mut self) -> io::Result<()> {
        self.check_alive()?;
        self.sync_count += 1;
        if self.crash_at_sync == Some(self.sync_count) {
            let mut image = self.clone();
            image.frozen = None;
            image.crash_at_sync = None;
            self.frozen = Some(Box::new(image));
            return Err(io::Error::other("simulated crash during sync"));
        }
        if self.fail_sync_at == Some(self.sync_count) {
            return Err(io::Error::from_raw_os_error(5));
        }
        Ok(())
    }
}

/// An in-memory, fault-injecting [`Storage`]. Clones share the same disk.
#[derive(Clone, Debug, Default)]
pub struct SimStorage {
    state: Arc<Mutex<SimState>>,
}

#[derive(Debug)]
struct SimFile {
    state: Arc<Mutex<SimState>>,
    inode: InodeId,
}

/// A small deterministic generator (SplitMix64), so that a failing seed replays exactly.
#[derive(Debug)]
pub struct SimRng(u64);

impl SimRng {
    #[must_use]
    pub fn new(seed: u64) -> Self {
        SimRng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A number in `0..bound` (`bound` > 0).
    pub fn below(&mut self, bound: u64) -> u64 {
        self.next_u64() % bound
    }
}

impl SimStorage {
    #[must_use]
    pub fn new() -> Self {
        SimStorage::default()
    }

    fn lock(&self) -> MutexGuard<'_, SimState> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// How many syncs (file or directory) have run so far.
    #[must_use]
    pub fn sync_count(&self) -> u64 {
        self.lock().sync_count
    }

    /// Simulates the process and machine dying at the `n`-th sync (counting from 1): that
    /// sync never takes effect, and every later operation fails.
    pub fn set_crash_at_sync(&self, n: u64) {
        self.lock().crash_at_sync = Some(n);
    }

    /// Whether the simulated crash has happened.
    #[must_use]
    pub fn crashed(&self) -> bool {
        self.lock().frozen.is_some()
    }

    /// Makes the `n`-th sync (counting from 1) fail with EIO without taking effect.
    pub fn set_fail_sync_at(&self, n: u64) {
        self.lock().fail_sync_at = Some(n);
    }

    /// Limits the total live bytes of all files; writes past it fail with ENOSPC.
    pub fn set_capacity_bytes(&self, capacity: Option<u64>) {
        self.lock().capacity_bytes = capacity;
    }

    /// The bytes a file holds now, as the running process sees them.
    #[must_use]
    pub fn live_contents(&self, path: &Path) -> Option<Vec<u8>> {
        let state = self.lock();
        state.live.get(path).map(|id| state.inodes[id].live.clone())
    }

    /// Replaces a file's bytes, live and durable, as a disk fault or an operator would.
    pub fn overwrite(&self, path: &Path, bytes: Vec<u8>) {
        let mut state = self.lock();
        if let Some(id) = state.live.get(path).copied() {
            let inode = state.inodes.get_mut(&id).expect("linked inode exists");
            inode.live = bytes.clone();
            inode.durable = bytes;
        }
    }

    /// The disk after a power loss, at the crash point if one was set and reached, else now.
    /// Unsynced directory operations survive as a random prefix; each unsynced page of each
    /// file is lost, kept or zeroed, chosen by `seed`.
    #[must_use]
    pub fn crash_image(&self, seed: u64) -> SimStorage {
        let state = self.lock();
        let base: &SimState = state.frozen.as_deref().unwrap_or(&state);
        let mut rng = SimRng::new(seed);
        let mut namespace = base.durable.clone();
        let kept_ops = rng.below(base.pending.len() as u64 + 1) as usize;
        for op in &base.pending[..kept_ops] {
            op.apply(&mut namespace);
        }
        let mut inodes = BTreeMap::new();
        for id in namespace.values() {
            let inode = &base.inodes[id];
            let bytes = crash_contents(inode, &mut rng);
            inodes.insert(
                *id,
                Inode {
                    live: bytes.clone(),
                    durable: bytes,
                },
            );
        }
        let image = SimState {
            inodes,
            next_inode: base.next_inode,
            live: namespace.clone(),
            durable: namespace,
            pending: Vec::new(),
            dirs: base.dirs.clone(),
            ..SimState::default()
        };
        SimStorage {
            state: Arc::new(Mutex::new(image)),
        }
    }
}

/// What a file holds after a power loss. Its length is the durable one, the live one, or (for
/// a file that grew) anything between; each page that differs between the live and durable
/// bytes holds either version, where the durable version reads as zeros past the durable
/// length. So unsynced appends are lost (short file), kept, or turn to zeros (long file with
/// the durable version of its pages), and fsynced bytes are never lost.
fn crash_contents(inode: &Inode, rng: &mut SimRng) -> Vec<u8> {
    let (live, durable) = (&inode.live, &inode.durable);
    if live == durable {
        return durable.clone();
    }
    let len = if live.len() > durable.len() {
        match rng.below(3) {
            0 => durable.len(),
            1 => live.len(),
            _ => {
                let span = (live.len() - durable.len()) as u64;
                durable.len() + rng.below(span + 1) as usize
            }
        }
    } else if rng.below(2) == 0 {
        durable.len()
    } else {
        live.len()
    };
    let byte_at = |bytes: &Vec<u8>, i: usize| bytes.get(i).copied().unwrap_or(0);
    let mut out = vec![0u8; len];
    for page_start in (0..len).step_by(PAGE_BYTES) {
        let page_end = (page_start + PAGE_BYTES).min(len);
        let same = (page_start..page_end).all(|i| byte_at(live, i) == byte_at(durable, i));
        let live_page = !same && rng.below(2) == 1;
        for (i, slot) in out[page_start..page_end].iter_mut().enumerate() {
            let at = page_start + i;
            *slot = if live_page {
                byte_at(live, at)
            } else {
                byte_at(durable, at)
            };
        }
    }
    out
}

fn not_found(path: &Path) -> io::Error {
    io::Error::new(
        io::ErrorKind::NotFound,
        format!("{} not found", path.display()),
    )
}

impl Storage for SimStorage {
    fn create_dir_all(&self, path: &Path) -> io::Result<()> {
        let mut state = self.lock();
        state.check_alive()?;
        for ancestor in path.ancestors() {
            state.dirs.insert(ancestor.to_path_buf());
        }
        Ok(())
    }

    fn list_dir(&self, path: &Path) -> io::Result<Vec<String>> {
        let state = self.lock();
        state.check_alive()?;
        if !state.dirs.contains(path) {
            return Err(not_found(path));
        }
        Ok(state
            .live
            .keys()
            .filter(|p| p.parent() == Some(path))
            .filter_map(|p| p.file_name()?.to_str().map(str::to_owned))
            .collect())
    }

    fn open(&self, path: &Path, create: bool) -> io::Result<Arc<dyn StorageFile>> {
        let mut state = self.lock();
        state.check_alive()?;
        let inode = match state.live.get(path) {
            Some(id) => *id,
            None if create => {
                let parent = path.parent().ok_or_else(|| not_found(path))?;
                if !state.dirs.contains(parent) {
                    return Err(not_found(parent));
                }
                let id = state.next_inode;
                state.next_inode += 1;
                state.inodes.insert(id, Inode::default());
                state.live.insert(path.to_path_buf(), id);
                state.pending.push(MetaOp::Link {
                    path: path.to_path_buf(),
                    inode: id,
                });
                id
            }
            None => return Err(not_found(path)),
        };
        Ok(Arc::new(SimFile {
            state: Arc::clone(&self.state),
            inode,
        }))
    }

    fn remove_file(&self, path: &Path) -> io::Result<()> {
        let mut state = self.lock();
        state.check_alive()?;
        state.live.remove(path).ok_or_else(|| not_found(path))?;
        state.pending.push(MetaOp::Unlink {
            path: path.to_path_buf(),
        });
        Ok(())
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        let mut state = self.lock();
        state.check_alive()?;
        let inode = state.live.remove(from).ok_or_else(|| not_found(from))?;
        state.live.insert(to.to_path_buf(), inode);
        state.pending.push(MetaOp::Rename {
            from: from.to_path_buf(),
            to: to.to_path_buf(),
        });
        Ok(())
    }

    fn sync_dir(&self, path: &Path) -> io::Result<()> {
        let mut state = self.lock();
        state.count_sync()?;
        let pending = std::mem::take(&mut state.pending);
        let mut rest = Vec::new();
        for op in pending {
            if op.touches(path) {
                op.apply(&mut state.durable);
            } else {
                rest.push(op);
            }
        }
        state.pending = rest;
        Ok(())
    }

    fn exists(&self, path: &Path) -> bool {
        let state = self.lock();
        state.live.contains_key(path) || state.dirs.contains(path)
    }
}

impl SimFile {
    fn lock(&self) -> MutexGuard<'_, SimState> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl StorageFile for SimFile {
    fn byte_len(&self) -> io::Result<u64> {
        let state = self.lock();
        state.check_alive()?;
        Ok(state.inodes[&self.inode].live.len() as u64)
    }

    fn read_at(&self, buf: &mut [u8], position: u64) -> io::Result<usize> {
        let state = self.lock();
        state.check_alive()?;
        let live = &state.inodes[&self.inode].live;
        let start = (position as usize).min(live.len());
        let n = buf.len().min(live.len() - start);
        buf[..n].copy_from_slice(&live[start..start + n]);
        Ok(n)
    }

    fn write_at(&self, buf: &[u8], position: u64) -> io::Result<()> {
        let mut state = self.lock();
        state.check_alive()?;
        let position = position as usize;
        let current = state.inodes[&self.inode].live.len();
        let growth = (position + buf.len()).saturating_sub(current) as u64;
        let mut writable = buf.len();
        let mut full = false;
        if let Some(capacity) = state.capacity_bytes {
            let free = capacity.saturating_sub(state.live_bytes());
            if growth > free {
                // Write what fits, as a real write does before it meets ENOSPC.
                writable = (current + free as usize)
                    .saturating_sub(position)
                    .min(buf.len());
                full = true;
            }
        }
        let live = &mut state
            .inodes
            .get_mut(&self.inode)
            .expect("open inode exists")
            .live;
        if live.len() < position + writable {
            live.resize(position + writable, 0);
        }
        live[position..position + writable].copy_from_slice(&buf[..writable]);
        if full {
            return Err(io::Error::from_raw_os_error(28));
        }
        Ok(())
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        let mut state = self.lock();
        state.check_alive()?;
        let inode = state
            .inodes
            .get_mut(&self.inode)
            .expect("open inode exists");
        inode.live.resize(len as usize, 0);
        Ok(())
    }

    fn sync_data(&self) -> io::Result<()> {
        let mut state = self.lock();
        state.count_sync()?;
        let inode = state
            .inodes
            .get_mut(&self.inode)
            .expect("open inode exists");
        inode.durable = inode.live.clone();
        Ok(())
    }
}
