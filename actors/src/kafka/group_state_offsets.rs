//! Committed offsets of a group: OffsetCommit, OffsetFetch, restore at start and DeleteGroups.

use super::{
    CommitOutcome, CommittedOffset, ErrorCode, FetchedOffset, GroupPhase, GroupState, OffsetCommitEntry,
    OffsetCommitResult, OffsetRecord, Output, PersistedOffsets,
};

impl GroupState {
    /// Handles an OffsetCommit request; the accepted offsets come back as an [`Output::Persist`].
    pub fn commit(
        &mut self,
        member_id: &str,
        generation_id: i32,
        offsets: Vec<OffsetCommitEntry>,
        now_ms: i64,
    ) -> CommitOutcome {
        let mut outputs = Vec::new();
        self.advance(now_ms, &mut outputs);
        let results = match self.validate_commit(member_id, generation_id, now_ms) {
            Err(error) => offsets
                .into_iter()
                .map(|entry| OffsetCommitResult { topic: entry.topic, partition: entry.partition, error })
                .collect(),
            Ok(()) => {
                let mut records = Vec::new();
                let results = offsets
                    .into_iter()
                    .map(|entry| {
                        let metadata = entry.metadata.unwrap_or_default();
                        let error = if metadata.len() > self.config.max_metadata_bytes {
                            ErrorCode::OffsetMetadataTooLarge
                        } else {
                            let value = CommittedOffset {
                                offset: entry.offset,
                                leader_epoch: entry.leader_epoch,
                                metadata,
                                commit_timestamp_ms: now_ms,
                            };
                            self.offsets.insert((entry.topic.clone(), entry.partition), value.clone());
                            records.push(OffsetRecord {
                                topic: entry.topic.clone(),
                                partition: entry.partition,
                                value: Some(value),
                            });
                            ErrorCode::NoError
                        };
                        OffsetCommitResult { topic: entry.topic, partition: entry.partition, error }
                    })
                    .collect();
                if !records.is_empty() {
                    outputs.push(Output::Persist(PersistedOffsets { group_id: self.group_id.clone(), records }));
                }
                results
            }
        };
        CommitOutcome { results, outputs }
    }

    /// Answers an OffsetFetch: the given partitions (-1 where nothing is committed), or all committed.
    pub fn fetch_offsets(&self, partitions: Option<Vec<(String, i32)>>) -> Vec<FetchedOffset> {
        let fetched = |topic: String, partition: i32, value: Option<&CommittedOffset>| FetchedOffset {
            topic,
            partition,
            offset: value.map_or(-1, |v| v.offset),
            leader_epoch: value.map_or(-1, |v| v.leader_epoch),
            metadata: value.map(|v| v.metadata.clone()).unwrap_or_default(),
        };
        match partitions {
            Some(partitions) => partitions
                .into_iter()
                .map(|(topic, partition)| {
                    let value = self.offsets.get(&(topic.clone(), partition));
                    fetched(topic, partition, value)
                })
                .collect(),
            None => self
                .offsets
                .iter()
                .map(|((topic, partition), value)| fetched(topic.clone(), *partition, Some(value)))
                .collect(),
        }
    }

    /// Loads stored offset changes (in the order they were persisted) when the coordinator starts.
    pub fn restore_offsets(&mut self, records: impl IntoIterator<Item = OffsetRecord>) {
        for record in records {
            let key = (record.topic, record.partition);
            match record.value {
                Some(value) => self.offsets.insert(key, value),
                None => self.offsets.remove(&key),
            };
        }
    }

    /// Every committed offset, as the records that store them again (a refresh: the offsets
    /// log keeps what was written within its retention, so a group in use rewrites its
    /// offsets before they would expire).
    pub fn committed_offsets(&self) -> PersistedOffsets {
        let records = self
            .offsets
            .iter()
            .map(|((topic, partition), value)| OffsetRecord {
                topic: topic.clone(),
                partition: *partition,
                value: Some(value.clone()),
            })
            .collect();
        PersistedOffsets { group_id: self.group_id.clone(), records }
    }

    /// Handles DeleteGroups for this group: only an Empty group may be deleted; its offsets are tombstoned.
    pub fn delete(&mut self) -> (ErrorCode, Vec<Output>) {
        match self.phase {
            GroupPhase::Dead => (ErrorCode::GroupIdNotFound, Vec::new()),
            GroupPhase::PreparingRebalance | GroupPhase::CompletingRebalance | GroupPhase::Stable => {
                (ErrorCode::NonEmptyGroup, Vec::new())
            }
            GroupPhase::Empty => {
                self.phase = GroupPhase::Dead;
                self.pending_members.clear();
                let records: Vec<OffsetRecord> = std::mem::take(&mut self.offsets)
                    .into_keys()
                    .map(|(topic, partition)| OffsetRecord { topic, partition, value: None })
                    .collect();
                let mut out = Vec::new();
                if !records.is_empty() {
                    out.push(Output::Persist(PersistedOffsets { group_id: self.group_id.clone(), records }));
                }
                (ErrorCode::NoError, out)
            }
        }
    }

    fn validate_commit(&mut self, member_id: &str, generation_id: i32, now_ms: i64) -> Result<(), ErrorCode> {
        if self.phase == GroupPhase::Dead {
            return Err(ErrorCode::CoordinatorNotAvailable);
        }
        if generation_id < 0 && member_id.is_empty() {
            // A simple consumer (no group management) may only commit while nobody else is in the group.
            return if self.phase == GroupPhase::Empty { Ok(()) } else { Err(ErrorCode::UnknownMemberId) };
        }
        let Some(member) = self.members.get_mut(member_id) else { return Err(ErrorCode::UnknownMemberId) };
        if generation_id != self.generation_id {
            return Err(ErrorCode::IllegalGeneration);
        }
        match self.phase {
            GroupPhase::Stable | GroupPhase::PreparingRebalance => {
                member.session_deadline_ms = now_ms + i64::from(member.session_timeout_ms);
                Ok(())
            }
            GroupPhase::CompletingRebalance => Err(ErrorCode::RebalanceInProgress),
            GroupPhase::Empty | GroupPhase::Dead => Err(ErrorCode::UnknownMemberId),
        }
    }
}
