//! Durability off the append path: flush jobs, a bounded pool of flusher threads, and the
//! offset-ordered queue of answers that wait for a flush.
//!
//! A log hands out at most one [`FlushJob`] at a time; the job fsyncs (on a flusher thread)
//! everything appended when it was made. Appends made while it runs wait for the next job,
//! which then covers all of them with one fsync: group commit. Many logs share one
//! [`Flusher`] pool, so one thread count bounds the fsyncs in flight across partitions.

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::mpsc::{Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use vltava_messages::Offset;

use crate::error::{Result, StorageError};
use crate::fs::{Storage, StorageFile};

/// One round of fsyncs for one log. Running it blocks.
#[derive(Debug)]
pub struct FlushJob {
    pub(crate) storage: Arc<dyn Storage>,
    pub(crate) dir: PathBuf,
    pub(crate) sync_dir: bool,
    /// Also fsync the directory's parent: the directory was created empty by the log's open
    /// (a new partition), and its entry there must be durable before anything in it is
    /// acknowledged.
    pub(crate) sync_parent: bool,
    pub(crate) active: (PathBuf, Arc<dyn StorageFile>),
    /// Fdatasync the active segment: false for a job made only to write the high-watermark
    /// checkpoint, when everything appended is already durable.
    pub(crate) sync_active: bool,
    pub(crate) target: Offset,
    pub(crate) generation: u64,
    /// The log's flush generation. Truncation bumps it under this lock, and a job writes its
    /// checkpoints under it only if the generation is still its own, so a job that raced with
    /// a truncation never writes a recovery point or a high watermark the log no longer has.
    pub(crate) generation_cell: Arc<Mutex<u64>>,
    /// Set after a roll and, while appending, every `RECOVERY_POINT_CHECKPOINT_INTERVAL_MS` or
    /// `RECOVERY_POINT_CHECKPOINT_BYTES`: once
    /// the syncs succeed, the job also rewrites the recovery-point checkpoint with the active
    /// segment's position, so recovery after a crash skips the sealed segments and walks the
    /// synced part of the active one by headers.
    pub(crate) write_recovery_point: bool,
    /// The active segment's base offset and size when the job was made: where the batches
    /// below its target end, written with the recovery point.
    pub(crate) recovery_position: Option<(Offset, u64)>,
    /// Set when the high watermark changed: once the syncs succeed, the job rewrites the
    /// high-watermark checkpoint with this value (at most the job's target, so never past
    /// what the job made durable).
    pub(crate) high_watermark: Option<Offset>,
    /// Once the active segment is synced, drop its cached pages in this byte range
    /// (`Log::set_drop_cache_when_flushed`).
    pub(crate) drop_cached: Option<(u64, u64)>,
}

impl FlushJob {
    /// The offset below which everything is durable once the job succeeds.
    #[must_use]
    pub fn target(&self) -> Offset {
        self.target
    }

    /// Fsyncs the active segment and, after a roll, the directory; then writes the checkpoints
    /// that are due (recovery point after a roll, high watermark after it changed). Blocks.
    pub fn run(&self) -> Result<()> {
        let (path, file) = &self.active;
        if self.sync_active {
            file.sync_data().map_err(|e| StorageError::io(path, e))?;
        }
        if self.sync_dir {
            // A new segment's directory entry must be durable before anything in it is
            // acknowledged, or a crash could lose the whole file.
            self.storage
                .sync_dir(&self.dir)
                .map_err(|e| StorageError::io(&self.dir, e))?;
        }
        if self.sync_parent
            && let Some(parent) = self.dir.parent()
        {
            // Likewise a new partition directory's entry in the data directory.
            self.storage
                .sync_dir(parent)
                .map_err(|e| StorageError::io(parent, e))?;
        }
        if self.write_recovery_point || self.high_watermark.is_some() {
            let generation = self
                .generation_cell
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if *generation == self.generation {
                if self.write_recovery_point {
                    crate::log::write_recovery_point(
                        &*self.storage,
                        &self.dir,
                        self.target,
                        self.recovery_position,
                    )?;
                }
                if let Some(high_watermark) = self.high_watermark {
                    // Everything below the target is durable now, and the value is at most the
                    // target. Crash before the rename lands: the old checkpoint stands, lower
                    // than this one, which only makes the next open more conservative.
                    crate::log::write_high_watermark(&*self.storage, &self.dir, high_watermark)?;
                }
            }
        }
        Ok(())
    }

    /// Runs the job and hands it to `done`; then, if the job succeeded, drops the pages it
    /// synced that its log asked to drop (`Log::set_drop_cache_when_flushed`), after `done`
    /// so that whoever waits for the flush does not wait for that too. Blocks.
    pub fn run_then(self, done: FlushDone) {
        let result = self.run();
        let pages = result.as_ref().ok().and_then(|()| self.synced_pages());
        done(self, result);
        if let Some(pages) = pages {
            pages.drop_cached();
        }
    }

    /// The active segment's pages this job syncs, if its log drops them once synced.
    #[must_use]
    pub fn synced_pages(&self) -> Option<SyncedPages> {
        let (from, to) = self.drop_cached.filter(|_| self.sync_active)?;
        Some(SyncedPages {
            path: self.active.0.clone(),
            file: Arc::clone(&self.active.1),
            from,
            to,
        })
    }
}

/// Synced bytes of a segment whose pages may leave the page cache.
#[derive(Debug)]
pub struct SyncedPages {
    path: PathBuf,
    file: Arc<dyn StorageFile>,
    from: u64,
    to: u64,
}

impl SyncedPages {
    /// Asks the kernel to drop the pages. Only a hint about memory: the bytes are durable
    /// either way, so a failure is logged and changes nothing else.
    pub fn drop_cached(self) {
        if let Err(e) = self.file.drop_cached(self.from, self.to) {
            tracing::debug!(path = %self.path.display(), error = %e, "dropping synced pages failed");
        }
    }
}

/// Called on the flusher thread when a job has run.
pub type FlushDone = Box<dyn FnOnce(FlushJob, Result<()>) + Send>;

/// Why a job could not be queued; the job and its completion come back to the caller.
pub enum SubmitError {
    /// The queue is full: retry later, or run the job some other way.
    Full(Box<(FlushJob, FlushDone)>),
    /// The pool has shut down.
    Stopped(Box<(FlushJob, FlushDone)>),
}

impl std::fmt::Debug for SubmitError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SubmitError::Full(task) => write!(f, "Full({})", task.0.dir.display()),
            SubmitError::Stopped(task) => write!(f, "Stopped({})", task.0.dir.display()),
        }
    }
}

/// A fixed pool of threads that run flush jobs from a bounded queue.
#[derive(Debug)]
pub struct Flusher {
    sender: Option<SyncSender<(FlushJob, FlushDone)>>,
    threads: Vec<JoinHandle<()>>,
}

impl Flusher {
    /// Starts `threads` flusher threads sharing a queue of `queue_capacity` jobs. Since each
    /// log has at most one job in flight, a capacity of at least the number of logs never
    /// turns a job away.
    #[must_use]
    pub fn new(threads: usize, queue_capacity: usize) -> Flusher {
        assert!(threads > 0, "a flusher needs a thread");
        let (sender, receiver) = std::sync::mpsc::sync_channel(queue_capacity);
        let receiver = Arc::new(Mutex::new(receiver));
        let threads = (0..threads)
            .map(|i| {
                let receiver = Arc::clone(&receiver);
                std::thread::Builder::new()
                    .name(format!("vltava-flusher-{i}"))
                    .spawn(move || run_flusher(&receiver))
                    .expect("spawning a flusher thread")
            })
            .collect();
        Flusher {
            sender: Some(sender),
            threads,
        }
    }

    /// Queues a job without waiting; a full queue hands it back.
    pub fn try_submit(
        &self,
        job: FlushJob,
        done: FlushDone,
    ) -> std::result::Result<(), SubmitError> {
        let sender = self.sender.as_ref().expect("sender lives until drop");
        sender.try_send((job, done)).map_err(|e| match e {
            TrySendError::Full(task) => SubmitError::Full(Box::new(task)),
            TrySendError::Disconnected(task) => SubmitError::Stopped(Box::new(task)),
        })
    }

    /// Queues a job, waiting for room. Blocks.
    pub fn submit(&self, job: FlushJob, done: FlushDone) -> std::result::Result<(), SubmitError> {
        let sender = self.sender.as_ref().expect("sender lives until drop");
        sender
            .send((job, done))
            .map_err(|e| SubmitError::Stopped(Box::new(e.0)))
    }
}

fn run_flusher(receiver: &Mutex<Receiver<(FlushJob, FlushDone)>>) {
    loop {
        let next = receiver
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .recv();
        let Ok((job, done)) = next else {
            return;
        };
        job.run_then(done);
    }
}

impl Drop for Flusher {
    /// Closes the queue; the threads finish the jobs already queued and exit.
    fn drop(&mut self) {
        self.sender.take();
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
}

/// Answers waiting for their batch to become durable, in offset order. Bounded: a full queue
/// refuses the waiter, which the caller turns into a retriable "overloaded" answer.
#[derive(Debug)]
pub struct AckQueue<T> {
    waiters: VecDeque<(Offset, T)>,
    capacity: usize,
}

impl<T> AckQueue<T> {
    #[must_use]
    pub fn new(capacity: usize) -> Self {
        AckQueue {
            waiters: VecDeque::new(),
            capacity,
        }
    }

    /// Adds a waiter that completes once the flushed offset reaches `next_offset` (the offset
    /// after its batch). Waiters must arrive in offset order.
    pub fn push(&mut self, next_offset: Offset, waiter: T) -> std::result::Result<(), T> {
        if self.waiters.len() >= self.capacity {
            return Err(waiter);
        }
        if let Some((last, _)) = self.waiters.back() {
            assert!(next_offset >= *last, "ack waiters arrive in offset order");
        }
        self.waiters.push_back((next_offset, waiter));
        Ok(())
    }

    /// Removes and returns the waiters whose batches are below `flushed`.
    pub fn complete(&mut self, flushed: Offset) -> impl Iterator<Item = T> + '_ {
        let done = self
            .waiters
            .partition_point(|(offset, _)| *offset <= flushed);
        self.waiters.drain(..done).map(|(_, waiter)| waiter)
    }

    /// Removes every waiter (the log failed): each must be answered with the error.
    pub fn fail_all(&mut self) -> impl Iterator<Item = T> + '_ {
        self.waiters.drain(..).map(|(_, waiter)| waiter)
    }

    /// The offset the newest waiter waits for.
    #[must_use]
    pub fn tail(&self) -> Option<Offset> {
        self.waiters.back().map(|(offset, _)| *offset)
    }

    #[must_use]
    pub fn len(&self) -> usize {
        self.waiters.len()
    }

    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.waiters.is_empty()
    }
}
