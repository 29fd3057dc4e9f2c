//! This worker's name towards Kafka: its `group.instance.id` (static membership) and the suffix
//! of its `transactional.id` (exactly-once).
//!
//! Both must be stable across restarts of one replica, so that a restarted worker takes its
//! predecessor's place (its partitions back without a rebalance, its open transaction aborted),
//! and distinct between live replicas, or each fences the other. The name comes from the
//! orchestrator (`POD_NAME`, else `HOSTNAME`, else the host name), which makes it unique per pod
//! but not per process: two workers started on one host would share it. So a worker claims its
//! name on this host while it runs (an abstract Unix socket, released by the kernel the moment
//! the process dies, even by SIGKILL, so a restart finds it free). A second worker that finds the
//! name taken runs under `<name>-<pid>` as a dynamic member instead, and says so, rather than
//! fencing the first.

use std::io;

use crate::config::{Delivery, KafkaSettings};

/// A worker's claimed name; the claim holds while this value lives.
#[derive(Debug)]
pub struct Replica {
    name: String,
    static_member: bool,
    /// Never accepted on: only its bound name matters.
    _claim: Option<std::os::unix::net::UnixListener>,
}

impl Replica {
    /// This process's replica name ([`crate::config::replica_name`]), claimed on this host when
    /// Kafka is told it (static membership, or exactly-once); otherwise the name is not used.
    pub fn claim(settings: &KafkaSettings) -> Replica {
        let name = crate::config::replica_name();
        if settings.static_membership || settings.delivery == Delivery::ExactlyOnce {
            Self::claim_name(&name, settings.static_membership)
        } else {
            Replica { name, static_member: false, _claim: None }
        }
    }

    pub(crate) fn claim_name(name: &str, static_membership: bool) -> Replica {
        match bind_abstract(name) {
            Ok(claim) => Replica { name: name.to_string(), static_member: static_membership, _claim: claim },
            Err(e) if e.kind() != io::ErrorKind::AddrInUse => {
                // A sandbox without Unix sockets, say: the guard is lost, not the worker.
                tracing::warn!(replica = %name, error = %e, "cannot claim the replica name on this host; \
                    trusting it to be this worker's alone");
                Replica { name: name.to_string(), static_member: static_membership, _claim: None }
            }
            Err(e) => {
                let own = format!("{name}-{}", std::process::id());
                tracing::warn!(replica = %name, instead = %own, error = %e,
                    "another worker on this host runs under this replica name: this one runs under a name of its \
                     own, as a dynamic group member with its own transactional.id (give each worker its own POD_NAME \
                     or HOSTNAME)");
                Replica { name: own, static_member: false, _claim: None }
            }
        }
    }

    /// The name to build `transactional.id` from.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// `group.instance.id` when this worker is a static member of its group.
    pub fn group_instance_id(&self) -> Option<&str> {
        self.static_member.then_some(self.name.as_str())
    }
}

/// Binds `perisai-replica-<hash of name>` in the abstract namespace of this network namespace
/// (a host, or a pod: each pod has its own, and its own name). `AddrInUse` when a live process
/// holds it.
#[cfg(target_os = "linux")]
fn bind_abstract(name: &str) -> io::Result<Option<std::os::unix::net::UnixListener>> {
    use sha2::{Digest, Sha256};
    use std::os::linux::net::SocketAddrExt;
    let digest = Sha256::digest(name.as_bytes());
    let hex: String = digest[..16].iter().map(|b| format!("{b:02x}")).collect();
    let address = std::os::unix::net::SocketAddr::from_abstract_name(format!("perisai-replica-{hex}"))?;
    std::os::unix::net::UnixListener::bind_addr(&address).map(Some)
}

/// Elsewhere there is no abstract namespace: names are trusted to be distinct.
#[cfg(not(target_os = "linux"))]
fn bind_abstract(name: &str) -> io::Result<Option<std::os::unix::net::UnixListener>> {
    let _ = name;
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    #[cfg(target_os = "linux")]
    fn a_second_worker_under_a_taken_name_gets_its_own_dynamic_name_and_the_name_frees_with_its_holder() {
        let name = format!("replica-test-{}", std::process::id());
        let first = Replica::claim_name(&name, true);
        assert_eq!(first.name(), name);
        assert_eq!(first.group_instance_id(), Some(name.as_str()));

        let second = Replica::claim_name(&name, true);
        assert_eq!(second.name(), format!("{name}-{}", std::process::id()));
        assert_eq!(second.group_instance_id(), None, "a worker without its own name must not be a static member");

        drop(first);
        let restarted = Replica::claim_name(&name, true);
        assert_eq!(restarted.group_instance_id(), Some(name.as_str()), "the name is free once its holder is gone");
    }

    #[test]
    fn static_membership_off_claims_the_name_for_transactions_only() {
        let name = format!("replica-test-off-{}", std::process::id());
        let replica = Replica::claim_name(&name, false);
        assert_eq!(replica.name(), name);
        assert_eq!(replica.group_instance_id(), None);
    }
}
