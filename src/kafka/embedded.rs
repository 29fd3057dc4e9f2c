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
        let owner: BaseProducer = ClientConfig::new().set("test.mock.num.brokers", "1").create()?;
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

    /// Topics are created through the mock itself: its admin API hangs.
    pub fn create_topic(&self, name: &str, partitions: i32) -> Result<(), SetupError> {
        let cluster = self.owner.client().mock_cluster().ok_or_else(|| SetupError::Embedded("mock cluster gone".into()))?;
        cluster.create_topic(name, partitions, 1).map_err(SetupError::Client)
    }
}

/// librdkafka options that make consumers snappy against the mock (it otherwise waits
/// fetch.wait.max.ms on every fetch).
pub const MOCK_CONSUMER_OPTIONS: &[(&str, &str)] = &[("fetch.wait.max.ms", "5")];
