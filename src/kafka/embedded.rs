//! The embedded broker for `perisai demo`: librdkafka's mock cluster, which speaks the Kafka
//! protocol on a loopback port. Demo and fast tests only — it does not enforce transactions and
//! keeps only a few MiB per partition. Real deployments and the integration tests use Apache Kafka.

use rdkafka::bindings as rdsys;
use rdkafka::config::ClientConfig;
use rdkafka::producer::{BaseProducer, Producer};

use super::SetupError;

pub struct EmbeddedBroker {
    /// The mock cluster lives as long as the client that created it.
    owner: BaseProducer,
}

impl EmbeddedBroker {
    pub fn start() -> Result<Self, SetupError> {
        Self::start_cluster(1)
    }

    /// A mock cluster of `brokers` brokers (ids 1..=brokers): tests that slow one of them down.
    pub fn start_cluster(brokers: u32) -> Result<Self, SetupError> {
        let owner: BaseProducer = ClientConfig::new().set("test.mock.num.brokers", brokers.to_string()).create()?;
        let broker = Self { owner };
        let native = broker.owner.client().native_ptr();
        // SAFETY: the handle belongs to `owner`, which outlives this call; the mock API only
        // changes the mock's own settings. Without this the mock delays every group join ~3 s.
        unsafe {
            let cluster = rdsys::rd_kafka_handle_mock_cluster(native);
            if cluster.is_null() {
                return Err(SetupError::Embedded("librdkafka did not create a mock cluster".into()));
            }
            rdsys::rd_kafka_mock_group_initial_rebalance_delay_ms(cluster, 0);
        }
        Ok(broker)
    }

    pub fn bootstrap_servers(&self) -> String {
        self.owner.client().mock_cluster().map(|c| c.bootstrap_servers()).unwrap_or_default()
    }

    /// The mock itself, for tests that shape it: round-trip times, partition leaders, coordinators.
    pub fn mock(&self) -> Result<rdkafka::mocking::MockCluster<'_, rdkafka::producer::DefaultProducerContext>, SetupError> {
        self.owner.client().mock_cluster().ok_or_else(|| SetupError::Embedded("mock cluster gone".into()))
    }

    /// Delays every response of every broker by `rtt` (tests: slow acknowledgements).
    pub fn set_round_trip_time(&self, rtt: std::time::Duration) -> Result<(), SetupError> {
        self.mock()?.broker_round_trip_time(-1, rtt).map_err(SetupError::Client)
    }

    /// Topics are created through the mock itself: its admin API hangs.
    pub fn create_topic(&self, name: &str, partitions: i32) -> Result<(), SetupError> {
        self.mock()?.create_topic(name, partitions, 1).map_err(SetupError::Client)
    }
}

/// librdkafka options that make consumers snappy against the mock (it otherwise waits
/// fetch.wait.max.ms on every fetch).
pub const MOCK_CONSUMER_OPTIONS: &[(&str, &str)] = &[("fetch.wait.max.ms", "5")];
