//! Flood detection: a bank entry that suddenly matches far more uploads than it ever did — the
//! hash of a common meme or a blank frame slipped into a partner's list — is quarantined before
//! it blocks (or floods review with) thousands of innocent uploads.
//!
//! Each worker counts its matches per entry in 10-second buckets over the last 61 minutes, and
//! every 10 seconds tells the fleet its own counts (last minute, per-minute baseline over the hour
//! before; `kafka::flood_counts` carries them over `kafka.flood_topic`). An entry floods when,
//! summed over the fleet (this worker's live counts plus every other worker's report of the last
//! [`PEER_FRESH_BUCKETS`] buckets), its matches in the last minute exceed its bank's
//! `flood_max_matches_per_minute` and `flood_baseline_multiple` times its per-minute rate over the
//! hour before. The worker that sees it first asks (once) for the entry to be quarantined; the
//! pipeline publishes that to the bank topic, so every worker applies it like any bank update.
//! Without a flood topic each worker counts alone and the limit is per worker. A worker asks once
//! per entry in its lifetime: an entry a person released (status `released`) is never counted
//! again, and one whose status was cleared by a tombstone is counted again by workers started
//! after that.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Instant;

use super::{BankMatch, ParsedHash};
use crate::config::BankSettings;
use crate::event::Action;

pub const BUCKET_SECS: u64 = 10;
/// The last minute, then the hour before it, then the bucket being filled.
const BUCKETS: usize = 6 + 360;
/// An entry not matched for this long is forgotten (its counts are all zero by then).
const IDLE_BUCKETS: u64 = BUCKETS as u64;
/// How long another worker's report counts: it reports every bucket, so three buckets allow for
/// one report lost or late.
pub const PEER_FRESH_BUCKETS: u64 = 3;

/// A request to quarantine one entry fleet-wide: the fleet's counts of it when it flooded.
pub type QuarantineRequest = EntryCounts;

/// One entry's match counts: a worker's own as it reports them to the fleet, or the fleet's.
#[derive(Debug, Clone, PartialEq)]
pub struct EntryCounts {
    pub bank: String,
    pub hash: ParsedHash,
    pub matches_last_minute: u64,
    pub baseline_per_minute: f64,
}

#[derive(Debug, Clone, Copy)]
struct Limit {
    max_per_minute: u64,
    baseline_multiple: f64,
}

/// Another worker's last report for an entry, and the bucket it arrived in.
struct Peer {
    last_minute: u64,
    baseline: f64,
    bucket: u64,
}

struct Counts {
    ring: [u32; BUCKETS],
    /// The absolute bucket number last written.
    last: u64,
    requested: bool,
    /// Other workers' reports, by instance (a handful per entry).
    peers: Vec<(Box<str>, Peer)>,
}

impl Counts {
    fn new(now: u64) -> Self {
        Self { ring: [0; BUCKETS], last: now, requested: false, peers: Vec::new() }
    }

    /// Moves to bucket `now`, zeroing the buckets skipped since the last match.
    fn advance(&mut self, now: u64) {
        let skipped = now.saturating_sub(self.last).min(BUCKETS as u64);
        for b in 1..=skipped {
            self.ring[((self.last + b) % BUCKETS as u64) as usize] = 0;
        }
        self.last = self.last.max(now);
    }

    fn sum(&self, newest_back: u64, oldest_back: u64) -> u64 {
        (newest_back..=oldest_back).map(|back| u64::from(self.ring[((self.last + BUCKETS as u64 - back) % BUCKETS as u64) as usize])).sum()
    }

    /// This worker's matches in the last minute (this bucket and the five before) and its mean
    /// per minute over the hour before that.
    fn rates(&self) -> (u64, f64) {
        (self.sum(0, 5), self.sum(6, BUCKETS as u64 - 1) as f64 / 60.0)
    }

    /// The fleet's: this worker's plus the fresh reports of the others.
    fn fleet_rates(&self, now: u64) -> (u64, f64) {
        let (mut last_minute, mut baseline) = self.rates();
        for (_, peer) in self.peers.iter().filter(|(_, p)| now.saturating_sub(p.bucket) <= PEER_FRESH_BUCKETS) {
            last_minute += peer.last_minute;
            baseline += peer.baseline;
        }
        (last_minute, baseline)
    }

    /// A quarantine request when the fleet's counts are over the limit, once.
    fn check(&mut self, bank: &str, hash: ParsedHash, limit: Limit, now: u64) -> Option<QuarantineRequest> {
        let (last_minute, baseline) = self.fleet_rates(now);
        let flooding = last_minute > limit.max_per_minute && last_minute as f64 > limit.baseline_multiple * baseline;
        if self.requested || !flooding {
            return None;
        }
        self.requested = true;
        Some(EntryCounts { bank: bank.to_string(), hash, matches_last_minute: last_minute, baseline_per_minute: baseline })
    }
}

/// Counts matches per entry; see the module docs.
pub struct FloodWatch {
    limits: HashMap<String, Limit>,
    counts: Mutex<HashMap<(String, ParsedHash), Counts>>,
    started: Instant,
    requests: tokio::sync::mpsc::UnboundedSender<QuarantineRequest>,
}

impl FloodWatch {
    /// `None` when no bank sets a flood limit. The receiver gets each quarantine request once.
    pub fn new(banks: &[BankSettings]) -> Option<(Self, tokio::sync::mpsc::UnboundedReceiver<QuarantineRequest>)> {
        let limits: HashMap<String, Limit> = banks
            .iter()
            .filter(|b| b.flood_max_matches_per_minute > 0 && b.action != Action::Allow)
            .map(|b| {
                let limit = Limit { max_per_minute: u64::from(b.flood_max_matches_per_minute), baseline_multiple: b.flood_baseline_multiple };
                (b.name.clone(), limit)
            })
            .collect();
        if limits.is_empty() {
            return None;
        }
        let (requests, receiver) = tokio::sync::mpsc::unbounded_channel();
        Some((Self { limits, counts: Mutex::new(HashMap::new()), started: Instant::now(), requests }, receiver))
    }

    fn now(&self) -> u64 {
        self.started.elapsed().as_secs() / BUCKET_SECS
    }

    /// Counts one upload's matches. Entries already quarantined, or released by a person, are
    /// not counted.
    pub fn observe(&self, matches: &[BankMatch]) {
        self.observe_at(matches, self.now());
    }

    fn observe_at(&self, matches: &[BankMatch], now: u64) {
        let counted = matches.iter().filter(|m| m.status.is_none() && self.limits.contains_key(&m.bank));
        let mut counts = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        for m in counted {
            let entry = counts.entry((m.bank.clone(), m.hash)).or_insert_with(|| Counts::new(now));
            entry.advance(now);
            let slot = &mut entry.ring[(now % BUCKETS as u64) as usize];
            *slot = slot.saturating_add(1);
            if let Some(request) = entry.check(&m.bank, m.hash, self.limits[&m.bank], now) {
                let _ = self.requests.send(request);
            }
        }
        // Forget idle entries now and then, so the map holds only what matched this hour.
        if now % 6 == 0 && counts.len() > 1024 {
            counts.retain(|_, c| now.saturating_sub(c.last) < IDLE_BUCKETS);
        }
    }

    /// This worker's own counts for every entry it matched in the last hour: what it reports to
    /// the fleet.
    pub fn own_counts(&self) -> Vec<EntryCounts> {
        self.own_counts_at(self.now())
    }

    fn own_counts_at(&self, now: u64) -> Vec<EntryCounts> {
        let mut counts = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        counts
            .iter_mut()
            .filter_map(|((bank, hash), c)| {
                c.advance(now);
                let (last_minute, baseline) = c.rates();
                (last_minute > 0 || baseline > 0.0).then(|| EntryCounts {
                    bank: bank.clone(),
                    hash: *hash,
                    matches_last_minute: last_minute,
                    baseline_per_minute: baseline,
                })
            })
            .collect()
    }

    /// Another worker's report: kept for [`PEER_FRESH_BUCKETS`], and the fleet's counts checked.
    pub fn merge_peer(&self, instance: &str, report: &EntryCounts) {
        self.merge_peer_at(instance, report, self.now());
    }

    fn merge_peer_at(&self, instance: &str, report: &EntryCounts, now: u64) {
        let Some(&limit) = self.limits.get(&report.bank) else { return };
        let mut counts = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        let entry = counts.entry((report.bank.clone(), report.hash)).or_insert_with(|| Counts::new(now));
        entry.advance(now);
        let peer = Peer { last_minute: report.matches_last_minute, baseline: report.baseline_per_minute, bucket: now };
        match entry.peers.iter_mut().find(|(name, _)| &**name == instance) {
            Some((_, slot)) => *slot = peer,
            None => entry.peers.push((instance.into(), peer)),
        }
        entry.peers.retain(|(_, p)| now.saturating_sub(p.bucket) <= PEER_FRESH_BUCKETS);
        if let Some(request) = entry.check(&report.bank, report.hash, limit, now) {
            let _ = self.requests.send(request);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bank::{EntryStatus, Signal};

    fn settings(max: u32) -> BankSettings {
        BankSettings { flood_max_matches_per_minute: max, ..BankSettings::new("b", Action::Block) }
    }

    fn hit(n: u8, status: Option<EntryStatus>) -> BankMatch {
        BankMatch {
            bank: "b".into(),
            action: Action::Block,
            signal: Signal::Md5,
            entry: "e".into(),
            distance: None,
            quality: None,
            transform: None,
            hash: ParsedHash::Md5([n; 16]),
            status,
            unconfirmed: false,
            at: None,
            full_resolution: false,
            vpdq: None,
        }
    }

    #[test]
    fn a_burst_over_the_limit_is_requested_once() {
        let (watch, mut rx) = FloodWatch::new(&[settings(100)]).unwrap();
        for _ in 0..100 {
            watch.observe_at(&[hit(1, None)], 10);
        }
        assert!(rx.try_recv().is_err(), "100 in a minute is within the limit");
        watch.observe_at(&[hit(1, None)], 11);
        let request = rx.try_recv().expect("the 101st match in a minute floods");
        assert_eq!((request.matches_last_minute, request.baseline_per_minute), (101, 0.0));
        for _ in 0..500 {
            watch.observe_at(&[hit(1, None)], 12);
        }
        assert!(rx.try_recv().is_err(), "asked once");
        // Another entry is counted apart; a quarantined or released one not at all.
        for _ in 0..200 {
            watch.observe_at(&[hit(2, Some(EntryStatus::Released)), hit(3, Some(EntryStatus::Quarantined))], 12);
        }
        assert!(rx.try_recv().is_err());
    }

    #[test]
    fn the_window_slides_and_a_busy_entrys_own_baseline_counts() {
        let (watch, mut rx) = FloodWatch::new(&[settings(100)]).unwrap();
        // 90 a minute for an hour: a popular entry, never over the limit.
        for minute in 0..60u64 {
            for i in 0..90u64 {
                watch.observe_at(&[hit(1, None)], minute * 6 + i % 6);
            }
        }
        assert!(rx.try_recv().is_err());
        // Then 150 in a minute: over the limit, but not 10x its own baseline of 90.
        for i in 0..150u64 {
            watch.observe_at(&[hit(1, None)], 360 + i % 6);
        }
        assert!(rx.try_recv().is_err(), "a popular entry is not a flood at 1.7x its rate");
        // A quiet entry: 101 matches spread over two minutes never floods.
        for i in 0..101u64 {
            watch.observe_at(&[hit(4, None)], 400 + i * 12 / 101);
        }
        assert!(rx.try_recv().is_err(), "the minute slid past the early matches");
    }

    fn report(n: u8, last_minute: u64, baseline: f64) -> EntryCounts {
        EntryCounts { bank: "b".into(), hash: ParsedHash::Md5([n; 16]), matches_last_minute: last_minute, baseline_per_minute: baseline }
    }

    /// Three workers each see 40 matches of an entry in a minute, under the limit of 100 alone:
    /// with the others' reports the fleet's 120 floods; a stale report no longer counts, and a
    /// peer's baseline raises the bar as this worker's own would.
    #[test]
    fn the_limit_is_fleet_wide() {
        let (watch, mut rx) = FloodWatch::new(&[settings(100)]).unwrap();
        for _ in 0..40 {
            watch.observe_at(&[hit(1, None)], 10);
        }
        assert!(rx.try_recv().is_err());
        watch.merge_peer_at("w2", &report(1, 40, 0.0), 10);
        assert!(rx.try_recv().is_err(), "80 over the fleet");
        watch.merge_peer_at("w3", &report(1, 40, 0.0), 10);
        let request = rx.try_recv().expect("120 over the fleet floods");
        assert_eq!((request.matches_last_minute, request.baseline_per_minute), (120, 0.0));
        assert_eq!(watch.own_counts_at(10), vec![report(1, 40, 0.0)], "this worker reports its own 40 only");

        // Reports older than PEER_FRESH_BUCKETS are left out.
        let later = 20 + PEER_FRESH_BUCKETS + 1;
        watch.merge_peer_at("w2", &report(2, 50, 0.0), 20);
        for _ in 0..60 {
            watch.observe_at(&[hit(2, None)], later);
        }
        assert!(rx.try_recv().is_err(), "w2's 50 went stale; 60 alone is under the limit");
        watch.merge_peer_at("w3", &report(2, 50, 0.0), later);
        assert_eq!(rx.try_recv().expect("a fresh report counts").matches_last_minute, 110);

        // A peer's busy baseline: 130 over the fleet is not 10x the fleet's 20 a minute.
        watch.merge_peer_at("w2", &report(3, 70, 20.0), 30);
        for _ in 0..60 {
            watch.observe_at(&[hit(3, None)], 30);
        }
        assert!(rx.try_recv().is_err(), "a popular entry across the fleet");
    }

    #[test]
    fn off_without_a_limit_and_for_allow_banks() {
        assert!(FloodWatch::new(&[settings(0)]).is_none());
        let mut allow = settings(10);
        allow.action = Action::Allow;
        assert!(FloodWatch::new(&[allow]).is_none());
    }
}
