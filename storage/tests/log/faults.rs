//! Injected faults: a full disk, a failed fsync, corruption in a sealed segment, group commit
//! through the flusher pool.

use std::sync::Arc;
use std::sync::mpsc;

use vltava_messages::Offset;
use vltava_storage::{AckQueue, Flusher, Log, Storage, StorageError};

use super::*;

#[test]
fn a_full_disk_is_a_typed_error_and_the_log_stays_consistent() {
    let (sim, storage) = sim();
    let mut log = open(&storage, &sim_dir(), small_config());
    for i in 0..20 {
        log.append_as_leader(&mut batch("a", 2, 100, i), EPOCH, 0)
            .unwrap();
    }
    let end = log.log_end_offset();
    let used: u64 = log.size_bytes();
    // Room for the checkpoints and a little more, not for another batch.
    sim.set_capacity_bytes(Some(used + 500));
    let error = log
        .append_as_leader(&mut batch("b", 5, 300, 0), EPOCH, 0)
        .unwrap_err();
    assert!(matches!(error, StorageError::DiskFull { .. }), "{error}");
    assert_eq!(log.log_end_offset(), end);
    assert_eq!(
        read_all(&mut log).len(),
        40,
        "nothing half-written is visible"
    );
    // Space comes back: appends go on where they stopped.
    sim.set_capacity_bytes(None);
    log.append_as_leader(&mut batch("c", 1, 10, 0), EPOCH, 0)
        .unwrap();
    log.close().unwrap();
    let mut log = open(&storage, &sim_dir(), small_config());
    assert_eq!(read_all(&mut log).len(), 41);
}

#[test]
fn a_failed_fsync_poisons_the_log_until_it_reopens_at_the_recovery_point() {
    let (sim, storage) = sim();
    let mut log = open(&storage, &sim_dir(), small_config());
    log.append_as_leader(&mut batch("a", 3, 10, 0), EPOCH, 0)
        .unwrap();
    log.flush().unwrap();
    log.append_as_leader(&mut batch("b", 3, 10, 0), EPOCH, 0)
        .unwrap();
    sim.set_fail_sync_at(sim.sync_count() + 1);
    let job = log.begin_flush().unwrap();
    let result = job.run();
    assert!(result.is_err());
    assert!(log.complete_flush(job, result).is_err());
    assert!(log.is_poisoned());
    assert!(matches!(
        log.append_as_leader(&mut batch("c", 1, 1, 0), EPOCH, 0),
        Err(StorageError::Poisoned { .. })
    ));
    assert!(matches!(
        log.read(Offset(0), 100, None),
        Err(StorageError::Poisoned { .. })
    ));
    assert!(log.begin_flush().is_none());
    // Reopening drops what was never known durable: the page cache may hold bytes that the
    // disk never got.
    let mut log = log.reopen_after_failure(0).unwrap();
    assert_eq!(log.log_end_offset(), Offset(3));
    assert_eq!(read_all(&mut log).len(), 3);
    log.append_as_leader(&mut batch("d", 1, 1, 0), EPOCH, 0)
        .unwrap();
    log.flush().unwrap();
}

#[test]
fn a_corrupt_batch_in_a_sealed_segment_is_reported_never_served() {
    let dir = tempfile::tempdir().unwrap();
    let storage: Arc<dyn Storage> = Arc::new(vltava_storage::RealStorage);
    let mut log = open(&storage, dir.path(), small_config());
    for i in 0..300 {
        log.append_as_leader(&mut batch("s", 3, 100, i), EPOCH, 0)
            .unwrap();
    }
    log.close().unwrap();
    let first = dir.path().join(format!("{:020}.log", 0));
    let mut bytes = std::fs::read(&first).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x55;
    std::fs::write(&first, bytes).unwrap();
    // A clean shutdown means the sealed segment is trusted at open, so the damage is found
    // when a read reaches it.
    let mut log = open(&storage, dir.path(), small_config());
    let mut offset = Offset(0);
    let mut served = 0;
    let error = loop {
        match log.read(offset, 1, None) {
            Ok(read) => {
                served += read.batch_count;
                offset = read.next_offset;
            }
            Err(e) => break e,
        }
    };
    assert!(matches!(error, StorageError::Corrupt { .. }), "{error}");
    assert!(served > 0);
}

#[test]
fn group_commit_through_the_flusher_pool_completes_waiters_in_order() {
    let flusher = Flusher::new(2, 16);
    let mut logs: Vec<(tempfile::TempDir, Log)> = (0..4)
        .map(|_| {
            let dir = tempfile::tempdir().unwrap();
            let storage: Arc<dyn Storage> = Arc::new(vltava_storage::RealStorage);
            let log = open(&storage, dir.path(), small_config());
            (dir, log)
        })
        .collect();
    let (done_tx, done_rx) = mpsc::channel();
    let mut queues: Vec<AckQueue<u32>> = (0..4).map(|_| AckQueue::new(1000)).collect();
    let mut acked = vec![Vec::new(); 4];
    let mut in_flight = 0;
    for round in 0..50u32 {
        for (i, (_, log)) in logs.iter_mut().enumerate() {
            let info = log
                .append_as_leader(&mut batch("g", 2, 100, 0), EPOCH, 0)
                .unwrap();
            queues[i].push(info.last_offset.plus(1), round).unwrap();
            if let Some(job) = log.begin_flush() {
                let tx = done_tx.clone();
                flusher
                    .submit(
                        job,
                        Box::new(move |job, result| tx.send((i, job, result)).unwrap()),
                    )
                    .unwrap();
                in_flight += 1;
            }
        }
        while let Ok((i, job, result)) = done_rx.try_recv() {
            in_flight -= 1;
            let flushed = logs[i].1.complete_flush(job, result).unwrap();
            acked[i].extend(queues[i].complete(flushed));
        }
    }
    // Drain: keep flushing until every waiter is answered.
    while queues.iter().any(|q| !q.is_empty()) {
        for (i, (_, log)) in logs.iter_mut().enumerate() {
            if let Some(job) = log.begin_flush() {
                let tx = done_tx.clone();
                flusher
                    .submit(
                        job,
                        Box::new(move |job, result| tx.send((i, job, result)).unwrap()),
                    )
                    .unwrap();
                in_flight += 1;
            }
        }
        if in_flight > 0 {
            let (i, job, result) = done_rx.recv().unwrap();
            in_flight -= 1;
            let flushed = logs[i].1.complete_flush(job, result).unwrap();
            acked[i].extend(queues[i].complete(flushed));
        }
    }
    for waiters in &acked {
        assert_eq!(
            *waiters,
            (0..50).collect::<Vec<_>>(),
            "every waiter answered once, in order"
        );
    }
}
