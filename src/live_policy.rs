//! The policy in force, replaced whole while the worker runs: on SIGHUP, and when the config file
//! changes (a Kubernetes ConfigMap update arrives as a new file behind the same path).
//!
//! A reload reads the whole configuration again exactly as at start-up (defaults, the file, the
//! `PERISAI__` variables) and validates all of it; only the `[policy]` table is taken. Anything
//! wrong keeps the old policy (logged, counted in `perisai_policy_reload_total{result="error"}`).
//! Each verdict takes one snapshot of the policy, so no event is decided by a half-loaded one, and
//! it is stamped with that snapshot's `policy.version`. Kafka, bank, decode and classifier
//! settings need a restart: a reload that changes them says so and applies the policy alone.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use tokio::signal::unix::{signal, Signal, SignalKind};

use crate::config::{PolicySettings, Settings};
use crate::metrics::Metrics;

/// How often the config file's bytes are compared with the last ones read. Kubernetes updates a
/// mounted ConfigMap by swapping a symlink, which file-change notifications on the path miss;
/// reading a small file every few seconds sees every kind of change.
const POLL: Duration = Duration::from_secs(2);

/// The policy every new verdict is decided with.
pub struct LivePolicy {
    current: RwLock<Arc<PolicySettings>>,
}

/// What one reload did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reload {
    /// The new policy decides from now on.
    Applied { from: String, to: String },
    /// The policy is the one in force already.
    Unchanged,
    /// The old policy stays; why.
    Refused(String),
}

impl Reload {
    /// The `result` label of `perisai_policy_reload_total`.
    pub fn label(&self) -> &'static str {
        match self {
            Reload::Applied { .. } => "applied",
            Reload::Unchanged => "unchanged",
            Reload::Refused(_) => "error",
        }
    }
}

impl LivePolicy {
    pub fn new(policy: PolicySettings) -> Self {
        Self { current: RwLock::new(Arc::new(policy)) }
    }

    /// The policy in force now: one snapshot per decision.
    pub fn current(&self) -> Arc<PolicySettings> {
        self.current.read().expect("policy lock").clone()
    }

    /// Puts `next` (already validated) in force, unless it is the same policy, or a different one
    /// under the same version: verdicts name the policy that decided them by its version alone.
    pub fn replace(&self, next: PolicySettings) -> Reload {
        let mut current = self.current.write().expect("policy lock");
        if same(&current, &next) {
            return Reload::Unchanged;
        }
        if current.version == next.version {
            return Reload::Refused(format!(
                "policy.version is still {:?} but the policy changed: bump policy.version, so that verdicts say which policy decided them",
                next.version
            ));
        }
        let from = std::mem::replace(&mut *current, Arc::new(next));
        Reload::Applied { from: from.version.clone(), to: current.version.clone() }
    }

    /// Reads the configuration again from `file` (and the environment, as at start) and puts its
    /// policy in force; `started` is what the process started with, to name the settings that
    /// changed but need a restart.
    pub fn reload(&self, file: Option<&Path>, started: &Settings) -> Reload {
        let next = match Settings::load(file) {
            Ok(next) => next,
            Err(e) => return Reload::Refused(format!("configuration: {e}")),
        };
        let ignored = sections_changed(started, &next);
        if !ignored.is_empty() {
            tracing::warn!(sections = %ignored.join(", "), "configuration changed outside [policy]: those changes need a restart");
        }
        self.replace(next.policy)
    }
}

fn same(a: &PolicySettings, b: &PolicySettings) -> bool {
    serde_json::to_value(a).ok() == serde_json::to_value(b).ok()
}

/// Top-level sections other than `policy` whose values differ.
fn sections_changed(a: &Settings, b: &Settings) -> Vec<String> {
    let (Ok(serde_json::Value::Object(a)), Ok(serde_json::Value::Object(b))) = (serde_json::to_value(a), serde_json::to_value(b))
    else {
        return Vec::new();
    };
    a.iter().filter(|(k, v)| k.as_str() != "policy" && b.get(*k) != Some(*v)).map(|(k, _)| k.clone()).collect()
}

/// SIGHUP, caught from now on. Take it first thing at start-up: until a process listens for it,
/// SIGHUP terminates it.
pub fn hangups() -> std::io::Result<Signal> {
    signal(SignalKind::hangup())
}

/// Reloads on each `hangup` and whenever `file`'s bytes change, for as long as the task runs (the
/// worker aborts it when it stops). Without a file (defaults and environment only) SIGHUP
/// re-reads the environment the process started with.
pub async fn watch(live: Arc<LivePolicy>, file: Option<PathBuf>, started: Arc<Settings>, metrics: Arc<Metrics>, mut hangup: Signal) {
    let mut last = file.as_deref().and_then(|f| std::fs::read(f).ok());
    let mut poll = tokio::time::interval(POLL);
    poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let why = tokio::select! {
            received = hangup.recv() => match received {
                Some(()) => "SIGHUP",
                None => return, // the signal stream is gone: nothing more will arrive
            },
            _ = poll.tick() => {
                let now = file.as_deref().and_then(|f| std::fs::read(f).ok());
                if now.is_none() || now == last {
                    continue;
                }
                last = now;
                "config file changed"
            }
        };
        let outcome = live.reload(file.as_deref(), &started);
        metrics.policy_reloads.with_label_values(&[outcome.label()]).inc();
        match &outcome {
            Reload::Applied { from, to } => tracing::info!(trigger = why, from = %from, to = %to, "policy reloaded"),
            Reload::Unchanged => tracing::info!(trigger = why, "policy reload: unchanged"),
            Reload::Refused(e) => tracing::error!(trigger = why, error = %e, "policy reload refused; the old policy stays"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Bands;

    fn settings_from(toml: &str) -> (tempfile::TempDir, PathBuf, Result<Settings, String>) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("perisai.toml");
        std::fs::write(&path, toml).unwrap();
        let loaded = Settings::load_with_env(Some(&path), Vec::<(String, String)>::new()).map_err(|e| e.to_string());
        (dir, path, loaded)
    }

    #[test]
    fn a_new_version_is_applied_the_same_one_is_not() {
        let (_d, _p, base) = settings_from("[policy]\nversion = \"v1\"\n");
        let base = base.unwrap();
        let live = LivePolicy::new(base.policy.clone());
        assert_eq!(live.replace(base.policy.clone()), Reload::Unchanged);
        let mut stricter = base.policy.clone();
        stricter.bands = Bands { review: 0.5, block: 0.9 };
        assert!(matches!(live.replace(stricter.clone()), Reload::Refused(e) if e.contains("bump policy.version")));
        assert_eq!(live.current().bands.review, base.policy.bands.review, "the old policy stays");
        stricter.version = "v2".into();
        assert_eq!(live.replace(stricter), Reload::Applied { from: "v1".into(), to: "v2".into() });
        assert_eq!((live.current().version.as_str(), live.current().bands.review), ("v2", 0.5));
    }

    /// A file with an error is refused whole and the old policy keeps deciding.
    #[test]
    fn a_bad_file_keeps_the_old_policy() {
        let (_d, path, started) = settings_from("[policy]\nversion = \"v1\"\n");
        let started = started.unwrap();
        let live = LivePolicy::new(started.policy.clone());
        for bad in [
            "[policy]\nversion = \"v2\"\n[policy.bands]\nreview = 0.9\nblock = 0.5\n",
            "[policy]\nversion = \"v2\"\nmedia_error_action = \"maybe\"\n",
            "[policy\nversion = \"v2\"\n",
        ] {
            std::fs::write(&path, bad).unwrap();
            match live.reload(Some(&path), &started) {
                Reload::Refused(e) => assert!(e.starts_with("configuration"), "{e}"),
                other => panic!("{bad:?} was not refused: {other:?}"),
            }
            assert_eq!(live.current().version, "v1");
        }
        std::fs::write(&path, "[policy]\nversion = \"v2\"\n[worker]\nmax_in_flight = 7\n").unwrap();
        assert_eq!(live.reload(Some(&path), &started), Reload::Applied { from: "v1".into(), to: "v2".into() });
        let next = Settings::load_with_env(Some(&path), Vec::<(String, String)>::new()).unwrap();
        assert_eq!(sections_changed(&started, &next), vec!["worker".to_string()]);
    }
}
