//! The DLQ operations of the broker facade: list, get, replay and purge (see [`crate::dlq`] for
//! the dead-letter record and its removal marks).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use mycelium_storage::{StorageBackend, StoredMessage};

use super::Broker;
use crate::dlq::{
    DlqEntry, DlqError, DlqFilter, DlqPage, Marks, PAGE_BYTES_MAX, PAGE_MAX, ReplayReport, dlq_topic,
    listed_bytes, original_headers,
};
use crate::store::MessageProps;
use crate::store::io::blocking;

impl Broker {
    fn dlq_backend(&self, dlq: &str) -> Result<std::sync::Arc<dyn StorageBackend>, DlqError> {
        let backend = self.storage().ok_or_else(|| DlqError::Unknown(dlq.to_owned()))?;
        if !backend.topics().iter().any(|t| t == dlq) {
            return Err(DlqError::Unknown(dlq.to_owned()));
        }
        Ok(backend)
    }

    fn marks_path(&self, dlq: &str) -> PathBuf {
        self.data_dir().dlq_marks(dlq)
    }

    fn marks(&self, dlq: &str) -> Marks {
        let mut cache = self.dlq_marks.lock();
        cache
            .entry(dlq.to_owned())
            .or_insert_with(|| {
                crate::store::io::read_state(&self.marks_path(dlq))
                    .ok()
                    .and_then(|b| serde_json::from_slice(&b).ok())
                    .unwrap_or_default()
            })
            .clone()
    }

    fn save_marks(&self, dlq: &str, marks: Marks) -> Result<(), DlqError> {
        let path = self.marks_path(dlq);
        let write = || -> std::io::Result<()> {
            let bytes = serde_json::to_vec(&marks).map_err(std::io::Error::other)?;
            crate::store::io::write_state(&path, &bytes)
        };
        write().map_err(|e| DlqError::Storage(format!("{}: {e}", path.display())))?;
        self.dlq_marks.lock().insert(dlq.to_owned(), marks);
        Ok(())
    }

    /// Every dead letter of `dlq` matching `filter`, in sequence order, calling `each` until it
    /// returns false.
    fn dlq_scan(
        &self,
        dlq: &str,
        after: u64,
        filter: &DlqFilter,
        mut each: impl FnMut(DlqEntry, &StoredMessage) -> bool,
    ) -> Result<(), DlqError> {
        let backend = self.dlq_backend(dlq)?;
        let marks = self.marks(dlq);
        let bounds = backend
            .bounds(dlq)
            .map_err(|e| DlqError::Storage(e.to_string()))?;
        let mut from = bounds.first.max(after + 1).max(marks.below);
        while from < bounds.next {
            let page = backend
                .read(dlq, from, PAGE_MAX, 16 << 20)
                .map_err(|e| DlqError::Storage(e.to_string()))?;
            let Some(last) = page.last() else { break };
            from = last.sequence + 1;
            for message in page.iter().filter(|m| !marks.is_removed(m.sequence)) {
                let entry = DlqEntry::from_stored(message);
                if filter.matches(&entry) && !each(entry, message) {
                    return Ok(());
                }
            }
        }
        Ok(())
    }

    /// Dead letters of `topic`'s DLQ matching `filter`, after DLQ sequence `after`, at most
    /// `limit` (capped at 1,000) and at most [`PAGE_BYTES_MAX`] as listed (at least one).
    ///
    /// # Errors
    /// [`DlqError`].
    pub fn dlq_list(
        &self,
        topic: &str,
        filter: &DlqFilter,
        after: u64,
        limit: usize,
    ) -> Result<DlqPage, DlqError> {
        let dlq = dlq_topic(topic);
        let (entries, more) = self.dlq_page(&dlq, after, u64::MAX, filter, limit, |entry, _| entry)?;
        let next_after = more.then(|| entries.last().map_or(after, |e| e.sequence));
        let depth = self.dlq_depth(&dlq)?;
        Ok(DlqPage {
            dlq,
            entries,
            next_after,
            depth,
        })
    }

    /// A page of `dlq`'s matching dead letters after `after` and below `end`: at most `limit`
    /// (capped at 1,000) and [`PAGE_BYTES_MAX`] as listed, at least one; and whether more match.
    fn dlq_page<T>(
        &self,
        dlq: &str,
        after: u64,
        end: u64,
        filter: &DlqFilter,
        limit: usize,
        mut keep: impl FnMut(DlqEntry, &StoredMessage) -> T,
    ) -> Result<(Vec<T>, bool), DlqError> {
        let limit = limit.clamp(1, PAGE_MAX);
        let (mut page, mut bytes, mut more) = (Vec::new(), 0, false);
        self.dlq_scan(dlq, after, filter, |entry, message| {
            if entry.sequence >= end {
                return false;
            }
            let weight = listed_bytes(message);
            if page.len() == limit || (!page.is_empty() && bytes + weight > PAGE_BYTES_MAX) {
                more = true;
                return false;
            }
            bytes += weight;
            page.push(keep(entry, message));
            true
        })?;
        Ok((page, more))
    }

    /// Dead letters in `topic`'s DLQ.
    ///
    /// # Errors
    /// [`DlqError`].
    pub fn dlq_depth(&self, topic: &str) -> Result<u64, DlqError> {
        let dlq = dlq_topic(topic);
        let backend = self.dlq_backend(&dlq)?;
        let marks = self.marks(&dlq);
        let bounds = backend
            .bounds(&dlq)
            .map_err(|e| DlqError::Storage(e.to_string()))?;
        let first = bounds.first.max(marks.below);
        let removed = marks.removed.range(first..bounds.next).count() as u64;
        Ok(bounds.next.saturating_sub(first).saturating_sub(removed))
    }

    /// One dead letter of `topic`'s DLQ by its DLQ sequence.
    ///
    /// # Errors
    /// [`DlqError::NotFound`] and the rest of [`DlqError`].
    pub fn dlq_get(&self, topic: &str, sequence: u64) -> Result<DlqEntry, DlqError> {
        let dlq = dlq_topic(topic);
        let filter = DlqFilter {
            sequences: vec![sequence],
            ..DlqFilter::default()
        };
        let mut found = None;
        self.dlq_scan(&dlq, sequence.saturating_sub(1), &filter, |entry, _| {
            found = Some(entry);
            false
        })?;
        found.ok_or(DlqError::NotFound { dlq, sequence })
    }

    /// Removes the matching dead letters; returns how many. An empty filter removes everything
    /// and truncates the DLQ's log.
    ///
    /// # Errors
    /// [`DlqError`].
    pub fn dlq_purge(&self, topic: &str, filter: &DlqFilter) -> Result<u64, DlqError> {
        let dlq = dlq_topic(topic);
        let backend = self.dlq_backend(&dlq)?;
        let mut marks = self.marks(&dlq);
        if *filter == DlqFilter::default() {
            let count = self.dlq_depth(&dlq)?;
            let next = backend
                .bounds(&dlq)
                .map_err(|e| DlqError::Storage(e.to_string()))?
                .next;
            marks.below = next;
            marks.removed.clear();
            self.save_marks(&dlq, marks)?;
            backend
                .truncate_before(&dlq, next)
                .map_err(|e| DlqError::Storage(e.to_string()))?;
            return Ok(count);
        }
        let mut doomed = Vec::new();
        self.dlq_scan(&dlq, 0, filter, |entry, _| {
            doomed.push(entry.sequence);
            true
        })?;
        marks.removed.extend(&doomed);
        self.save_marks(&dlq, marks)?;
        Ok(doomed.len() as u64)
    }

    /// Publishes the matching dead letters again, to `target` (or each one's original topic), at
    /// most `rate` per second, removing each from the DLQ once the target has it. The DLQ is read
    /// and its marks written off the async workers.
    ///
    /// # Errors
    /// [`DlqError`]; a dead letter the target refuses is reported in
    /// [`ReplayReport::failed`] and stays in the DLQ.
    pub async fn dlq_replay(
        self: &Arc<Self>,
        topic: &str,
        filter: &DlqFilter,
        target: Option<&str>,
        rate: Option<u32>,
    ) -> Result<ReplayReport, DlqError> {
        let dlq = dlq_topic(topic);
        // What is in the DLQ now; dead letters added while the replay runs wait for the next.
        let (me, bounded) = (Arc::clone(self), dlq.clone());
        let end = blocking(move || {
            me.dlq_backend(&bounded)?
                .bounds(&bounded)
                .map_err(|e| DlqError::Storage(e.to_string()))
        })
        .await?
        .next;
        let mut report = ReplayReport::default();
        let pause = rate
            .filter(|r| *r > 0)
            .map(|r| Duration::from_secs_f64(1.0 / f64::from(r)));
        let mut next_at = tokio::time::Instant::now();
        // A page at a time: the replay holds at most one page of dead letters.
        let mut after = 0;
        loop {
            let (me, scanned, selection) = (Arc::clone(self), dlq.clone(), filter.clone());
            let (page, more) = blocking(move || {
                me.dlq_page(&scanned, after, end, &selection, PAGE_MAX, |entry, message| {
                    (entry, original_headers(&message.headers))
                })
            })
            .await?;
            if let Some((last, _)) = page.last() {
                after = last.sequence;
            }
            self.replay_page(&dlq, page, target, pause, &mut next_at, &mut report)
                .await?;
            if !more {
                return Ok(report);
            }
        }
    }

    /// Publishes one page of a replay; see [`Broker::dlq_replay`].
    async fn replay_page(
        self: &Arc<Self>,
        dlq: &str,
        page: Vec<(DlqEntry, Bytes)>,
        target: Option<&str>,
        pause: Option<Duration>,
        next_at: &mut tokio::time::Instant,
        report: &mut ReplayReport,
    ) -> Result<(), DlqError> {
        for (entry, headers) in page {
            if let Some(pause) = pause {
                tokio::time::sleep_until(*next_at).await;
                *next_at += pause;
            }
            let to = target.map_or(entry.topic.as_str(), |t| t);
            if to.is_empty() {
                report.failed.push((
                    entry.sequence,
                    "the dead letter names no topic; give a target".into(),
                ));
                continue;
            }
            let props = MessageProps {
                idempotency_key: Some(Bytes::from(format!("mycelium-dlq-replay:{}", entry.id))),
                ..MessageProps::default()
            };
            let key_ok = self
                .topic(to)
                .is_some_and(|t| t.spec().storage == crate::routing::spec::StorageKind::Disk);
            let props = if key_ok { props } else { MessageProps::default() };
            match self
                .publish_local(to, headers, entry.payload.clone(), props)
                .await
            {
                Ok((_, stored)) => {
                    if stored.duplicate {
                        report.duplicates += 1;
                    } else {
                        report.replayed += 1;
                    }
                    let (me, marked) = (Arc::clone(self), dlq.to_owned());
                    blocking(move || {
                        let mut marks = me.marks(&marked);
                        marks.removed.insert(entry.sequence);
                        me.save_marks(&marked, marks)
                    })
                    .await?;
                }
                Err(error) => report.failed.push((entry.sequence, error.to_string())),
            }
        }
        Ok(())
    }
}
