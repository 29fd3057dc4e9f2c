//! The retro role (`perisai retro`): retroactive takedown. A hash that arrives after an upload
//! was screened and allowed still finds it, and a withdrawn hash undoes the blocks that rested
//! on it.
//!
//! A replica reads the verdict topic in its own consumer group (`retro.group_id`), so the
//! history is sharded by verdict partition across replicas, and holds every bank like a worker
//! (the bank topic, read whole, then tailed). It remembers each upload of its partitions for
//! `retro.window` ([`history::History`]); when a bank change applies, it finds the uploads the
//! change can affect and re-decides each with the banks as they are now. A re-decision that
//! differs from the upload's latest verdict is written to the verdict topic, to the partition
//! of the upload's verdicts, as a new verdict with its own `event_id` and a `retro` object
//! naming the verdict it supersedes and the changes.
//!
//! Crash safety comes from recomputing, not from remembering what was sent. The committed
//! offset of each partition is the offset of its oldest remembered upload, so a replica that
//! (re)starts or takes a partition over reads the window back — the first verdicts and the
//! retroactive ones after them, which it recognises by their `retro` object — and then
//! re-decides every upload of the partition against the current banks. Whatever a crashed
//! replica did not write is written then; what it did write is already the latest verdict and
//! is not written again. A re-decision written twice (a crash between the write and the read
//! back) has the same `event_id`, so consumers drop the duplicate. At-least-once, never a loop:
//! retroactive verdicts are read back as updates, never as uploads.
//!
//! A verdict decided with banks this replica has not caught up with yet waits
//! ([`history::covers`]) until they are, so a replica a few records behind a worker never
//! writes a re-decision the worker's newer banks already answered.

pub mod history;

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance};
use rdkafka::error::KafkaError;
use rdkafka::message::{Header, Message, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{ClientContext, Offset, TopicPartitionList};

use crate::bank::{Applied, BankSet};
use crate::config::Settings;
use crate::event::Verdict;
use crate::kafka::{consumer_config, producer_config};
use crate::metrics::{Metrics, Readiness};
use history::{EntryKey, History, Redecision};

/// How often old uploads are forgotten and the partitions' floors committed.
const HOUSEKEEPING: Duration = Duration::from_secs(2);
const POLL: Duration = Duration::from_millis(50);
/// Records taken per loop turn before bank changes are looked at again.
const BATCH: usize = 5_000;

#[derive(Debug, thiserror::Error)]
pub enum RetroError {
    #[error("retro: creating the verdict consumer: {0}")]
    Consumer(KafkaError),
    #[error("retro: subscribing to {topic:?}: {source}")]
    Subscribe { topic: String, source: KafkaError },
    #[error("retro: creating the producer: {0}")]
    Producer(KafkaError),
}

/// Partition assignments and ends as the consumer's callbacks report them, for the loop to act on.
#[derive(Default)]
struct RetroContext {
    events: Mutex<Vec<Assignment>>,
    /// End-of-partition reports that librdkafka delivers through the error callback.
    eofs: Mutex<Vec<i32>>,
}

enum Assignment {
    Assigned(Vec<i32>),
    Revoked(Vec<i32>),
}

impl ClientContext for RetroContext {
    fn error(&self, error: KafkaError, reason: &str) {
        match error {
            KafkaError::PartitionEOF(p) => self.eofs.lock().unwrap_or_else(|e| e.into_inner()).push(p),
            // End of partition without its number: the loop learns it from the end offsets.
            KafkaError::Global(rdkafka::types::RDKafkaErrorCode::PartitionEOF) => tracing::trace!(reason, "verdict topic end of partition"),
            error => tracing::warn!(%error, reason, "retro: verdict consumer error"),
        }
    }
}

impl ConsumerContext for RetroContext {
    fn post_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        let partitions = |tpl: &TopicPartitionList| tpl.elements().iter().map(|e| e.partition()).collect::<Vec<_>>();
        let event = match rebalance {
            Rebalance::Assign(tpl) => Assignment::Assigned(partitions(tpl)),
            Rebalance::Revoke(tpl) => Assignment::Revoked(partitions(tpl)),
            Rebalance::Error(_) => return,
        };
        self.events.lock().unwrap_or_else(|e| e.into_inner()).push(event);
    }
}

/// A partition being read back up to the end offset it had when it was assigned.
struct Rebuild {
    end: i64,
    started: Instant,
    /// The newest bank state any verdict read back names: its uploads wait for our banks to
    /// reach it before they are re-decided.
    version: BTreeMap<i32, i64>,
}

/// The role's state, owned by its one thread.
pub struct RetroRole {
    settings: Arc<Settings>,
    banks: Arc<BankSet>,
    metrics: Arc<Metrics>,
    readiness: Arc<Readiness>,
    history: History,
    rebuilding: BTreeMap<i32, Rebuild>,
    held: BTreeSet<i32>,
    /// Uploads decided with banks newer than ours: re-decided once ours cover theirs (and not
    /// before, whatever else asks for them).
    waiting: Vec<(u32, BTreeMap<i32, i64>)>,
    waiting_slots: HashSet<u32>,
    /// Partitions read back whose uploads wait, all together, for our banks to reach the newest
    /// bank state their verdicts name.
    settling: BTreeMap<i32, BTreeMap<i32, i64>>,
    /// Uploads to re-decide on this turn.
    due: BTreeSet<u32>,
    /// Entries withdrawn or replaced since the last turn: their dihedral matches go too.
    removed: BTreeSet<EntryKey>,
    /// After a failed write, writing waits until then.
    retry_at: Option<Instant>,
    /// Why each due upload is being re-decided (for the metric): added | withdrawn | released | verdict | rebuild.
    causes: HashMap<u32, &'static str>,
    /// Names this replica in the `perisai.worker` header.
    instance: String,
}

impl RetroRole {
    pub fn new(settings: Arc<Settings>, banks: Arc<BankSet>, metrics: Arc<Metrics>, readiness: Arc<Readiness>) -> Self {
        banks.record_changes();
        Self {
            settings,
            banks,
            metrics,
            readiness,
            history: History::new(),
            rebuilding: BTreeMap::new(),
            held: BTreeSet::new(),
            waiting: Vec::new(),
            waiting_slots: HashSet::new(),
            settling: BTreeMap::new(),
            due: BTreeSet::new(),
            removed: BTreeSet::new(),
            retry_at: None,
            causes: HashMap::new(),
            instance: crate::app::instance_name(),
        }
    }

    /// Runs until `stop` is set: reads verdicts, applies bank changes, writes re-decisions.
    pub fn run(mut self, stop: &AtomicBool) -> Result<(), RetroError> {
        let kafka = &self.settings.kafka;
        let mut config = consumer_config(kafka);
        // The group is the role's own; partitions move one at a time between replicas, so a
        // replica joining does not make every other one read its whole window back.
        config
            .set("group.id", &self.settings.retro.group_id)
            .set("partition.assignment.strategy", "cooperative-sticky")
            .set("enable.partition.eof", "true")
            // Only committed verdicts: an aborted transaction's verdicts were never answers.
            .set("isolation.level", "read_committed");
        let consumer: BaseConsumer<RetroContext> = config.create_with_context(RetroContext::default()).map_err(RetroError::Consumer)?;
        consumer
            .subscribe(&[&kafka.verdict_topic])
            .map_err(|source| RetroError::Subscribe { topic: kafka.verdict_topic.clone(), source })?;
        let mut producer_settings = kafka.clone();
        producer_settings.delivery = crate::config::Delivery::AtLeastOnce;
        let mut producer_config = producer_config(&producer_settings, None);
        // A write that cannot be delivered fails within 30 s and is retried: the loop must not
        // stand still for librdkafka's default 5 minutes (and leave the group meanwhile).
        producer_config.set("message.timeout.ms", "30000");
        let producer: FutureProducer = producer_config.create().map_err(RetroError::Producer)?;
        let mut last_housekeeping = Instant::now();
        tracing::info!(group = %self.settings.retro.group_id, topic = %kafka.verdict_topic, window = %self.settings.retro.window, "retro: reading verdicts");
        while !stop.load(Ordering::Acquire) {
            self.take_records(&consumer);
            self.take_bank_changes();
            self.release_waiting();
            self.write_due(&producer);
            if last_housekeeping.elapsed() >= HOUSEKEEPING {
                self.housekeeping(&consumer, CommitMode::Async);
                last_housekeeping = Instant::now();
            }
        }
        // The last floors are committed before the consumer goes, so a successor reads no more back than needed.
        self.housekeeping(&consumer, CommitMode::Sync);
        Ok(())
    }

    fn take_records(&mut self, consumer: &BaseConsumer<RetroContext>) {
        let mut wait = POLL;
        for _ in 0..BATCH {
            let polled = consumer.poll(wait);
            // Assignments first: the records that follow may be the new partitions' first ones.
            self.handle_assignments(consumer);
            let Some(result) = polled else { break };
            wait = Duration::ZERO;
            match result {
                Ok(message) => {
                    let (partition, offset) = (message.partition(), message.offset());
                    let time_ms = message.timestamp().to_millis().unwrap_or_else(|| chrono::Utc::now().timestamp_millis());
                    let verdict = message.payload().map(serde_json::from_slice::<Verdict>);
                    self.take_verdict(verdict, partition, offset, time_ms);
                    self.note_progress(partition, offset + 1);
                }
                Err(KafkaError::PartitionEOF(partition)) => self.note_progress(partition, i64::MAX),
                Err(error) => tracing::warn!(%error, "retro: reading verdicts"),
            }
        }
        let eofs = std::mem::take(&mut *consumer.context().eofs.lock().unwrap_or_else(|e| e.into_inner()));
        for partition in eofs {
            self.note_progress(partition, i64::MAX);
        }
    }

    fn take_verdict(&mut self, verdict: Option<Result<Verdict, serde_json::Error>>, partition: i32, offset: i64, time_ms: i64) {
        let verdict = match verdict {
            Some(Ok(v)) => v,
            // Another writer's record, or a future schema: not an upload this role can re-decide.
            Some(Err(error)) => {
                tracing::debug!(partition, offset, %error, "retro: skipping a record that is not a verdict");
                return;
            }
            None => return,
        };
        let version = verdict.banks_version.as_deref().map(history::parse_version).unwrap_or_default();
        let taken = self.history.take(verdict, partition, offset, time_ms);
        // While a partition is read back, its uploads are re-decided all at once at the end.
        if let Some(rebuild) = self.rebuilding.get_mut(&partition) {
            history::merge_version(&mut rebuild.version, &version);
        } else if let Ok(Some(slot)) = taken {
            self.wait_for_banks(slot, version);
        }
    }

    fn wait_for_banks(&mut self, slot: u32, version: BTreeMap<i32, i64>) {
        if self.waiting_slots.insert(slot) {
            self.waiting.push((slot, version));
        }
    }

    /// The partition has been read up to `next`: a rebuild that reached its end is finished, and
    /// every upload of the partition is re-decided against the banks as they are now.
    fn note_progress(&mut self, partition: i32, next: i64) {
        let Some(rebuild) = self.rebuilding.get(&partition) else { return };
        if next < rebuild.end {
            return;
        }
        let seconds = rebuild.started.elapsed().as_secs_f64();
        let Some(rebuild) = self.rebuilding.remove(&partition) else { return };
        self.metrics.retro_rebuild_seconds.observe(seconds);
        tracing::info!(partition, uploads = self.history.slots_of(partition).len(), seconds,
            "retro: verdict partition read back; re-deciding its uploads once the banks are as new as its verdicts'");
        self.settling.insert(partition, rebuild.version);
        self.publish_readiness();
    }

    fn handle_assignments(&mut self, consumer: &BaseConsumer<RetroContext>) {
        let events = std::mem::take(&mut *consumer.context().events.lock().unwrap_or_else(|e| e.into_inner()));
        if events.is_empty() {
            return;
        }
        let topic = self.settings.kafka.verdict_topic.clone();
        for event in events {
            match event {
                Assignment::Assigned(partitions) => {
                    for p in partitions {
                        self.held.insert(p);
                        let end = match consumer.fetch_watermarks(&topic, p, Duration::from_secs(10)) {
                            Ok((_, high)) => high,
                            Err(error) => {
                                // Read to end-of-partition instead, which the consumer reports.
                                tracing::warn!(partition = p, %error, "retro: end offset unknown; rebuilding to end of partition");
                                i64::MAX
                            }
                        };
                        self.rebuilding.insert(p, Rebuild { end, started: Instant::now(), version: BTreeMap::new() });
                        // An empty partition is read back at once (else end-of-partition says so).
                        if end == 0 {
                            self.note_progress(p, 0);
                        }
                    }
                }
                Assignment::Revoked(partitions) => {
                    for p in partitions {
                        self.held.remove(&p);
                        self.rebuilding.remove(&p);
                        self.settling.remove(&p);
                        let dropped = self.history.drop_partition(p);
                        self.metrics.retro_evicted.with_label_values(&["revoked"]).inc_by(dropped as u64);
                    }
                }
            }
        }
        self.readiness.assigned.store(!self.held.is_empty(), Ordering::Release);
        self.publish_readiness();
    }

    fn take_bank_changes(&mut self) {
        let changes = self.banks.take_changes();
        if changes.is_empty() {
            return;
        }
        let settings = self.banks.settings();
        for change in changes {
            let Some(bank) = settings.iter().find(|b| b.name == change.bank) else { continue };
            let started = Instant::now();
            let slots = self.history.candidates(&change, bank);
            self.metrics.retro_lookup_seconds.observe(started.elapsed().as_secs_f64());
            let cause = match change.applied {
                Applied::Withdrawn => "withdrawn",
                Applied::Released => "released",
                _ => "added",
            };
            if let Some(old) = &change.old_entry {
                self.removed.insert((change.bank.clone(), change.hash.signal().as_str().to_string(), old.clone()));
            }
            // Uploads of a partition still being read back are re-decided when it ends, and
            // uploads waiting for our banks when those catch up.
            for slot in slots {
                let later = self.history.get(slot).is_some_and(|u| self.rebuilding.contains_key(&u.partition) || self.settling.contains_key(&u.partition));
                if !later && !self.waiting_slots.contains(&slot) {
                    self.due.insert(slot);
                    self.causes.insert(slot, cause);
                }
            }
        }
    }

    fn release_waiting(&mut self) {
        if self.waiting.is_empty() && self.settling.is_empty() {
            return;
        }
        let positions = self.banks.positions();
        let settled: Vec<i32> = self.settling.iter().filter(|(_, v)| history::covers(&positions, v)).map(|(&p, _)| p).collect();
        for partition in settled {
            self.settling.remove(&partition);
            for slot in self.history.slots_of(partition) {
                self.due.insert(slot);
                self.causes.entry(slot).or_insert("rebuild");
            }
        }
        let (ready, still): (Vec<_>, Vec<_>) =
            std::mem::take(&mut self.waiting).into_iter().partition(|(_, v)| history::covers(&positions, v));
        self.waiting = still;
        for (slot, _) in ready {
            self.waiting_slots.remove(&slot);
            self.due.insert(slot);
            self.causes.entry(slot).or_insert("verdict");
        }
    }

    /// Re-decides the due uploads and writes every changed decision, waiting for the broker's
    /// acknowledgements; a write that fails is retried on a later turn.
    fn write_due(&mut self, producer: &FutureProducer) {
        if self.due.is_empty() || self.retry_at.is_some_and(|at| Instant::now() < at) {
            return;
        }
        self.retry_at = None;
        let policy = &self.settings.policy;
        let due = std::mem::take(&mut self.due);
        let removed = std::mem::take(&mut self.removed);
        let redecisions: Vec<Redecision> = due
            .iter()
            .filter_map(|&slot| self.history.redecide(slot, &self.banks, &removed, policy.media_error_action, &policy.version))
            .collect();
        let topic = &self.settings.kafka.verdict_topic;
        let mut sent = Vec::with_capacity(redecisions.len());
        for r in redecisions {
            let payload = serde_json::to_vec(&r.verdict).expect("verdicts serialize");
            // The headers a worker's verdict has, so consumers that route on them need no change.
            let headers = OwnedHeaders::new()
                .insert(Header { key: "perisai.schema", value: Some(crate::event::VERDICT_SCHEMA) })
                .insert(Header { key: "perisai.event_id", value: Some(r.verdict.event_id.as_str()) })
                .insert(Header { key: "perisai.worker", value: Some(self.instance.as_str()) })
                .insert(Header { key: "perisai.retro.supersedes", value: r.verdict.retro.as_ref().map(|x| x.supersedes.as_str()) });
            let record = FutureRecord::to(topic)
                .partition(r.partition)
                .key(r.verdict.media_id.as_bytes())
                .payload(&payload)
                .headers(headers);
            match producer.send_result(record) {
                Ok(delivery) => sent.push((r, delivery)),
                Err((error, _)) => {
                    tracing::warn!(%error, "retro: the producer refused a verdict; retrying");
                    self.due.insert(r.slot);
                }
            }
        }
        let outcomes = futures::executor::block_on(futures::future::join_all(sent.into_iter().map(|(r, delivery)| async move {
            let delivered = matches!(delivery.await, Ok(Ok(_)));
            (r, delivered)
        })));
        for (r, delivered) in outcomes {
            if delivered {
                let cause = self.causes.remove(&r.slot).unwrap_or("verdict");
                self.metrics.retro_verdicts.with_label_values(&[cause]).inc();
                tracing::info!(media_id = %r.verdict.media_id, action = r.verdict.action.as_str(), cause,
                    "retro: superseding verdict written");
                self.history.record(r.slot, &r.verdict);
            } else {
                self.metrics.produce_errors.inc();
                tracing::warn!(media_id = %r.verdict.media_id, "retro: writing a superseding verdict failed; retrying in a second");
                self.due.insert(r.slot);
                self.retry_at = Some(Instant::now() + Duration::from_secs(1));
            }
        }
        for slot in &due {
            if !self.due.contains(slot) {
                self.causes.remove(slot);
            }
        }
        // A retry must still know which entries went, or their dihedral matches would stay.
        if !self.due.is_empty() {
            self.removed.extend(removed);
        }
    }

    /// Forgets what left the window (or the memory bound) and commits each partition's floor.
    fn housekeeping(&mut self, consumer: &BaseConsumer<RetroContext>, mode: CommitMode) {
        let window_ms = i64::try_from(self.settings.retro.window_secs().saturating_mul(1000)).unwrap_or(i64::MAX);
        let cutoff = chrono::Utc::now().timestamp_millis().saturating_sub(window_ms);
        let (by_window, by_memory) = self.history.evict(cutoff, self.settings.retro.max_uploads);
        self.metrics.retro_evicted.with_label_values(&["window"]).inc_by(by_window as u64);
        self.metrics.retro_evicted.with_label_values(&["memory"]).inc_by(by_memory as u64);
        self.metrics.retro_uploads.set(self.history.len() as i64);
        let mut offsets = TopicPartitionList::new();
        let positions = consumer.position().unwrap_or_default();
        for &p in &self.held {
            // A partition still being read back keeps its committed floor; one with nothing
            // remembered needs nothing before its current position.
            if self.rebuilding.contains_key(&p) {
                continue;
            }
            let floor = match self.history.floor(p) {
                Some(offset) => Offset::Offset(offset),
                None => match positions.find_partition(&self.settings.kafka.verdict_topic, p).map(|e| e.offset()) {
                    Some(offset @ Offset::Offset(_)) => offset,
                    _ => continue,
                },
            };
            let _ = offsets.add_partition_offset(&self.settings.kafka.verdict_topic, p, floor);
        }
        if offsets.count() > 0 {
            if let Err(error) = consumer.commit(&offsets, mode) {
                tracing::debug!(%error, "retro: committing partition floors");
            }
        }
    }

    fn publish_readiness(&self) {
        self.readiness.retro_rebuilding.store(self.rebuilding.len() as u64, Ordering::Release);
    }
}
