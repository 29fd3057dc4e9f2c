//! Guards against a librdkafka client that stops talking to the cluster by itself.
//!
//! librdkafka 2.12.1 drops every broker handle when a Metadata response lists no broker but some
//! topics — a KRaft broker sends one while it shuts down: it is fenced before it stops serving —
//! and a race can cancel the re-bootstrap that should follow (librdkafka issue 5301, open at
//! this writing). The client then never connects again: a consumer sits in `query-coord`, a
//! producer retries forever. Its statistics show it: no broker `learned` from metadata and none
//! `configured`. [`BrokerWatch`] watches each statistics report and, after two such reports in
//! a row, adds the bootstrap servers again, which is all the client needs to reconnect.
//!
//! Whatever else keeps a consumer out of its group is caught by [`group_stalled`]: `/healthz`
//! fails, so the orchestrator restarts the worker (nothing is committed past an unanswered event).

use std::ffi::CString;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use prometheus::IntCounter;
use rdkafka::bindings as rdsys;
use rdkafka::client::Client;
use rdkafka::statistics::Statistics;
use rdkafka::ClientContext;

/// Reports without a usable broker before the repair: one can be a moment between handles.
const BROKERLESS_REPORTS: u32 = 2;
/// Re-adding brokers also grows librdkafka's list of extra bootstrap lists; once in a while is enough.
const REPAIR_INTERVAL: Duration = Duration::from_secs(30);
/// A consumer group not `up` for this long is stuck (a restart plus rejoin takes well under a minute).
pub const GROUP_STALL_LIMIT: Duration = Duration::from_secs(120);

/// The client's handle, for `rd_kafka_brokers_add`.
struct NativeClient(*mut rdsys::rd_kafka_t);
// SAFETY: the pointer is only passed to `rd_kafka_brokers_add`, which librdkafka documents as
// callable from any thread, and only from the client's own statistics callback, which runs while
// the client exists (it is served by polling that client).
unsafe impl Send for NativeClient {}
unsafe impl Sync for NativeClient {}

pub struct BrokerWatch {
    /// "consumer" or "producer", for logs.
    client: &'static str,
    bootstrap: CString,
    native: OnceLock<NativeClient>,
    brokerless_reports: AtomicU32,
    last_repair: Mutex<Option<Instant>>,
    repairs: IntCounter,
}

impl BrokerWatch {
    pub fn new(client: &'static str, bootstrap_servers: &str, repairs: IntCounter) -> Self {
        Self {
            client,
            // Validated settings hold no NUL; an empty list would only make the repair a no-op.
            bootstrap: CString::new(bootstrap_servers).unwrap_or_default(),
            native: OnceLock::new(),
            brokerless_reports: AtomicU32::new(0),
            last_repair: Mutex::new(None),
            repairs,
        }
    }

    /// Called once the client exists (its context, holding this watch, is created first).
    pub fn attach<C: ClientContext>(&self, client: &Client<C>) {
        let _ = self.native.set(NativeClient(client.native_ptr()));
    }

    /// Looks at one statistics report; repairs after enough reports without a usable broker.
    pub fn observe(&self, statistics: &Statistics) {
        if has_usable_broker(statistics.brokers.values().map(|b| b.source.as_str())) {
            self.brokerless_reports.store(0, Ordering::Relaxed);
            return;
        }
        if self.brokerless_reports.fetch_add(1, Ordering::Relaxed) + 1 >= BROKERLESS_REPORTS {
            self.repair();
        }
    }

    /// Adds the bootstrap servers to the client again, at most once per [`REPAIR_INTERVAL`].
    /// Returns whether it did.
    pub fn repair(&self) -> bool {
        let Some(native) = self.native.get() else { return false };
        {
            let mut last = self.last_repair.lock().expect("repair lock");
            if last.is_some_and(|t| t.elapsed() < REPAIR_INTERVAL) {
                return false;
            }
            *last = Some(Instant::now());
        }
        // SAFETY: see `NativeClient`; the string is NUL-terminated and outlives the call.
        let added = unsafe { rdsys::rd_kafka_brokers_add(native.0, self.bootstrap.as_ptr()) };
        self.repairs.inc();
        tracing::warn!(client = self.client, added, "kafka client had no broker left; bootstrap servers added again");
        true
    }
}

/// Whether a client still has a broker it can connect to: one learned from metadata or one from
/// `bootstrap.servers`. The others are librdkafka's internal and logical (coordinator) handles.
pub fn has_usable_broker<'a>(sources: impl IntoIterator<Item = &'a str>) -> bool {
    sources.into_iter().any(|s| s == "learned" || s == "configured")
}

/// Whether a consumer's group has been out of state `up` for longer than [`GROUP_STALL_LIMIT`].
pub fn group_stalled(statistics: &Statistics) -> bool {
    statistics.cgrp.as_ref().is_some_and(|g| {
        // `stateage` is in milliseconds.
        g.state != "up" && Duration::from_millis(g.stateage.max(0) as u64) > GROUP_STALL_LIMIT
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use rdkafka::consumer::Consumer;

    #[test]
    fn usable_brokers_are_learned_or_configured() {
        assert!(has_usable_broker(["logical", "internal", "learned"]));
        assert!(has_usable_broker(["configured"]));
        // The stuck state: only the coordinator's logical handle and the internal one are left.
        assert!(!has_usable_broker(["logical", "internal"]));
        assert!(!has_usable_broker([]));
    }

    #[test]
    fn repair_needs_an_attached_client_and_is_rate_limited() {
        let watch = BrokerWatch::new("consumer", "127.0.0.1:1", IntCounter::new("r", "r").unwrap());
        assert!(!watch.repair(), "nothing to repair before attach");
        let client: rdkafka::consumer::BaseConsumer =
            rdkafka::config::ClientConfig::new().set("bootstrap.servers", "127.0.0.1:1").create().unwrap();
        watch.attach(client.client());
        assert!(watch.repair());
        assert!(!watch.repair(), "a second repair within the interval is skipped");
        assert_eq!(watch.repairs.get(), 1);
    }
}
