use super::*;

/// The controller's part, without I/O: the image its records build and its cursor.
#[derive(Default)]
struct Controller {
    image: ProducerIdsImage,
    next: u64,
    log: Vec<MetadataRecord>,
}

impl Controller {
    fn init(
        &mut self,
        current: Option<(u64, u16)>,
    ) -> Result<(ProducerId, ProducerEpoch), ProducerIdError> {
        let current = current.map(|(id, epoch)| (ProducerId(id), ProducerEpoch(epoch)));
        let grant = decide_init(&self.image, self.next, current)?;
        for record in &grant.records {
            self.image.apply(record);
        }
        self.log.extend(grant.records);
        self.next = grant.next;
        Ok((grant.producer_id, grant.producer_epoch))
    }

    /// What a restarted node rebuilds from the log.
    fn restarted(&self) -> Controller {
        let mut image = ProducerIdsImage::default();
        for record in &self.log {
            image.apply(record);
        }
        Controller {
            next: image.reserved_end,
            image,
            log: self.log.clone(),
        }
    }

    fn standing(&self, id: u64, epoch: u16) -> Standing {
        self.image
            .standing(self.next, ProducerId(id), ProducerEpoch(epoch))
    }
}

fn granted(id: u64, epoch: u16) -> Result<(ProducerId, ProducerEpoch), ProducerIdError> {
    Ok((ProducerId(id), ProducerEpoch(epoch)))
}

#[test]
fn new_ids_come_in_order_and_one_record_reserves_a_block() {
    let mut c = Controller::default();
    for id in 0..PRODUCER_ID_BLOCK {
        assert_eq!(c.init(None), granted(id, 0));
    }
    assert_eq!(
        c.log,
        [MetadataRecord::ProducerIdsReserved {
            end: PRODUCER_ID_BLOCK
        }]
    );
    assert_eq!(c.init(None), granted(PRODUCER_ID_BLOCK, 0));
    assert_eq!(
        c.log.len(),
        2,
        "the next block is reserved when the first runs out"
    );
}

/// A restart skips what is left of the reserved block: which of its ids were handed out is
/// not written down, so every one of them counts as issued and none is handed out again.
#[test]
fn a_restart_never_hands_out_an_id_twice() {
    let mut c = Controller::default();
    c.init(None).unwrap();
    c.init(None).unwrap();
    let mut c = c.restarted();
    assert_eq!(c.init(None), granted(PRODUCER_ID_BLOCK, 0));
    assert_eq!(c.standing(PRODUCER_ID_BLOCK - 1, 0), Standing::Current);
}

#[test]
fn a_bump_names_the_current_epoch_and_fences_the_older_ones() {
    let mut c = Controller::default();
    let (id, _) = c.init(None).unwrap();
    assert_eq!(c.init(Some((id.0, 0))), granted(id.0, 1));
    assert_eq!(
        c.log.last(),
        Some(&MetadataRecord::ProducerEpochBumped {
            producer_id: id,
            epoch: ProducerEpoch(1)
        })
    );
    assert_eq!(
        c.standing(id.0, 0),
        Standing::Fenced(Fencing::NewerEpoch(ProducerEpoch(1)))
    );
    assert_eq!(c.standing(id.0, 1), Standing::Current);
    // A second bump from the fenced incarnation is refused, not granted epoch 2.
    assert_eq!(
        c.init(Some((id.0, 0))),
        Err(ProducerIdError::Fenced {
            producer_id: id,
            epoch: ProducerEpoch(0),
            fencing: Fencing::NewerEpoch(ProducerEpoch(1)),
        })
    );
    // An epoch the node never granted is unknown.
    assert_eq!(
        c.init(Some((id.0, 5))),
        Err(ProducerIdError::Unknown {
            producer_id: id,
            reason: UnknownProducer::EpochNotGranted {
                current: ProducerEpoch(1)
            },
        })
    );
    // The bump is in the log, so a restarted node fences the old epoch too.
    let c = c.restarted();
    assert_eq!(
        c.standing(id.0, 0),
        Standing::Fenced(Fencing::NewerEpoch(ProducerEpoch(1)))
    );
}

/// Issue 11: `InitProducerId` answered an id at epoch 32767 with epoch 32768, which the batch
/// header holds as -32768. The last epoch is 32767; the bump after it hands out a new id at
/// epoch 0 and retires the old id, whose every epoch is then fenced.
#[test]
fn epoch_exhaustion_moves_the_producer_to_a_new_id_and_retires_the_old() {
    let mut c = Controller::default();
    let (id, _) = c.init(None).unwrap();
    c.image.apply(&MetadataRecord::ProducerEpochBumped {
        producer_id: id,
        epoch: ProducerEpoch(PRODUCER_EPOCH_MAX - 1),
    });
    assert_eq!(
        c.init(Some((id.0, PRODUCER_EPOCH_MAX - 1))),
        granted(id.0, PRODUCER_EPOCH_MAX)
    );
    assert_eq!(c.init(Some((id.0, PRODUCER_EPOCH_MAX))), granted(1, 0));
    assert_eq!(
        c.log.last(),
        Some(&MetadataRecord::ProducerIdRetired { producer_id: id })
    );
    for epoch in [0, PRODUCER_EPOCH_MAX - 1, PRODUCER_EPOCH_MAX] {
        assert_eq!(c.standing(id.0, epoch), Standing::Fenced(Fencing::Retired));
    }
    assert_eq!(
        c.init(Some((id.0, PRODUCER_EPOCH_MAX))),
        Err(ProducerIdError::Fenced {
            producer_id: id,
            epoch: ProducerEpoch(PRODUCER_EPOCH_MAX),
            fencing: Fencing::Retired,
        })
    );
    assert_eq!(c.standing(1, 0), Standing::Current);
}

/// Issue 11: the node bumped ids it never handed out, 2^64 - 1 included. An id at or above the
/// next one to hand out is unknown, however far above; so is one inside the reserved block.
#[test]
fn ids_the_node_never_issued_are_unknown() {
    let mut c = Controller::default();
    c.init(None).unwrap();
    for id in [1, PRODUCER_ID_BLOCK - 1, PRODUCER_ID_BLOCK, PRODUCER_ID_MAX] {
        assert_eq!(
            c.init(Some((id, 0))),
            Err(ProducerIdError::Unknown {
                producer_id: ProducerId(id),
                reason: UnknownProducer::NeverIssued,
            }),
            "id {id}"
        );
        assert_eq!(
            c.standing(id, 0),
            Standing::Unknown(UnknownProducer::NeverIssued)
        );
    }
    assert_eq!(c.log.len(), 1, "nothing was committed for them");
}

#[test]
fn the_last_block_ends_at_the_largest_id() {
    let mut c = Controller::default();
    c.image.apply(&MetadataRecord::ProducerIdsReserved {
        end: PRODUCER_ID_MAX - 1,
    });
    c.next = PRODUCER_ID_MAX - 1;
    assert_eq!(c.init(None), granted(PRODUCER_ID_MAX - 1, 0));
    assert_eq!(c.image.reserved_end, PRODUCER_ID_MAX + 1);
    assert_eq!(c.init(None), granted(PRODUCER_ID_MAX, 0));
    assert_eq!(c.init(None), Err(ProducerIdError::IdsExhausted));
}

#[test]
#[should_panic(expected = "epochs only grow")]
fn a_record_that_moves_an_epoch_back_is_a_bug() {
    let mut image = ProducerIdsImage::default();
    for epoch in [3, 2] {
        image.apply(&MetadataRecord::ProducerEpochBumped {
            producer_id: ProducerId(0),
            epoch: ProducerEpoch(epoch),
        });
    }
}

#[test]
fn the_registry_answers_what_was_last_published() {
    let registry = ProducerRegistry::default();
    assert_eq!(
        registry.standing(ProducerId(0), ProducerEpoch(0)),
        Standing::Unknown(UnknownProducer::NeverIssued)
    );
    let mut image = ProducerIdsImage::default();
    image.apply(&MetadataRecord::ProducerIdsReserved {
        end: PRODUCER_ID_BLOCK,
    });
    registry.publish(&image, 1, 1);
    assert_eq!(
        registry.standing(ProducerId(0), ProducerEpoch(0)),
        Standing::Current
    );
    registry.issue(2);
    assert_eq!(
        registry.standing(ProducerId(1), ProducerEpoch(0)),
        Standing::Current
    );
    image.apply(&MetadataRecord::ProducerEpochBumped {
        producer_id: ProducerId(1),
        epoch: ProducerEpoch(1),
    });
    registry.publish(&image, 2, 2);
    assert_eq!(
        registry.standing(ProducerId(1), ProducerEpoch(0)),
        Standing::Fenced(Fencing::NewerEpoch(ProducerEpoch(1)))
    );
}

/// In a cluster the controller and the node's image watch both publish; the one that comes
/// second may carry an older image, which must not undo a bump, nor move the cursor back.
#[test]
fn an_older_image_never_replaces_a_newer_one_nor_moves_the_cursor_back() {
    let registry = ProducerRegistry::default();
    let mut image = ProducerIdsImage::default();
    image.apply(&MetadataRecord::ProducerIdsReserved {
        end: PRODUCER_ID_BLOCK,
    });
    let older = image.clone();
    image.apply(&MetadataRecord::ProducerEpochBumped {
        producer_id: ProducerId(1),
        epoch: ProducerEpoch(1),
    });
    registry.publish(&image, 7, 2);
    registry.publish(&older, 6, 1);
    assert_eq!(
        registry.standing(ProducerId(1), ProducerEpoch(0)),
        Standing::Fenced(Fencing::NewerEpoch(ProducerEpoch(1)))
    );
    assert_eq!(
        registry.standing(ProducerId(1), ProducerEpoch(1)),
        Standing::Current,
        "id 1 is still issued"
    );
}
