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
//! name taken runs under `<name>-<pid>` (claimed too) as a dynamic member instead, and says so,
//! rather than fencing the first. "This host" is a network namespace: containers with networks of
//! their own are hosts of their own here, and are trusted to have names of their own.

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
            Self::unclaimed(&name, false)
        }
    }

    /// Claims the first free of `name`, `<name>-<pid>`, `<name>-<pid>-2`, ...: process ids repeat
    /// across containers that share a network namespace (each its own PID 1), so the fallback
    /// names are claimed too. Only `name` itself makes a static member.
    pub(crate) fn claim_name(name: &str, static_membership: bool) -> Replica {
        let own = format!("{name}-{}", std::process::id());
        let fallbacks = std::iter::once(own.clone()).chain((2..).map(|n| format!("{own}-{n}")));
        for candidate in std::iter::once(name.to_string()).chain(fallbacks) {
            let claim = match bind_abstract(&candidate) {
                Err(e) if e.kind() == io::ErrorKind::AddrInUse => continue,
                Ok(claim) => claim,
                Err(e) => {
                    // A sandbox without Unix sockets, say: the guard is lost, not the worker.
                    tracing::warn!(replica = %candidate, error = %e, "cannot claim the replica name on this host; \
                        trusting it to be this worker's alone");
                    None
                }
            };
            let own_name = candidate == name;
            if !own_name {
                tracing::warn!(replica = %name, instead = %candidate,
                    "another worker on this host runs under this replica name: this one runs under a name of its \
                     own, as a dynamic group member with its own transactional.id (give each worker its own POD_NAME \
                     or HOSTNAME)");
            }
            return Replica { name: candidate, static_member: static_membership && own_name, _claim: claim };
        }
        unreachable!("the fallback names never run out")
    }

    /// A worker on a broker of its own (the demo's embedded one, mock-cluster tests): no other
    /// worker can meet its name there, so it is not claimed on the host.
    pub fn unclaimed(name: &str, static_membership: bool) -> Replica {
        Replica { name: name.to_string(), static_member: static_membership, _claim: None }
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
    let hash = hex::encode(&Sha256::digest(name.as_bytes())[..16]);
    let address = std::os::unix::net::SocketAddr::from_abstract_name(format!("perisai-replica-{hash}"))?;
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
    #[cfg(target_os = "linux")]
    fn static_membership_off_still_claims_the_name_for_transactions() {
        let name = format!("replica-test-off-{}", std::process::id());
        let first = Replica::claim_name(&name, false);
        assert_eq!((first.name(), first.group_instance_id()), (name.as_str(), None));
        let second = Replica::claim_name(&name, false);
        assert_eq!(second.name(), format!("{name}-{}", std::process::id()), "a taken name is not shared, even dynamic");
    }

    /// Containers sharing a network namespace can share a pid too: the fallback names are claimed
    /// and stay distinct.
    #[test]
    #[cfg(target_os = "linux")]
    fn fallback_names_are_claimed_and_distinct() {
        let name = format!("replica-test-fallback-{}", std::process::id());
        let holders: Vec<Replica> = (0..4).map(|_| Replica::claim_name(&name, true)).collect();
        let names: std::collections::BTreeSet<&str> = holders.iter().map(|r| r.name()).collect();
        assert_eq!(names.len(), 4, "{names:?}");
        let pid = std::process::id();
        assert!(names.contains(format!("{name}-{pid}-2").as_str()) && names.contains(format!("{name}-{pid}-3").as_str()), "{names:?}");
        assert_eq!(holders.iter().filter(|r| r.group_instance_id().is_some()).count(), 1);
    }
}
