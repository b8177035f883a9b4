//! What the agent knows of the cluster from the Kubernetes API, and what
//! of it is installed: shared by the watch (`cluster_watch`, which writes
//! it), the reloads (`state`, which write the installed entries with the
//! config's) and the reports (`stats`).

use std::{sync::Mutex, time::SystemTime};

use crate::{config::kubernetes::KubernetesSettings, rules::RuleSet};

/// The watch's state, for `status`, `stats`, `/metrics` and `/ready`.
#[derive(Default)]
pub(crate) struct Status {
    /// The entries are in place: both lists were read, and the watch has
    /// not been broken for longer than the limit since.
    pub(crate) synced: bool,
    /// It was, at least once since the start.
    pub(crate) ever_synced: bool,
    /// How many of each the API lists now (the names themselves stay
    /// with the watch: copying 100k of them per event would cost more
    /// than the event).
    pub(crate) namespaces: usize,
    pub(crate) services: usize,
    pub(crate) entries: usize,
    pub(crate) events: u64,
    pub(crate) errors: u64,
    pub(crate) last_event: Option<SystemTime>,
    pub(crate) last_error: Option<String>,
    pub(crate) broken_since: Option<SystemTime>,
    /// Entries that could not be written (a full table): the names around
    /// them pass instead; the message says which.
    pub(crate) degraded: Option<String>,
}

pub(crate) struct ClusterWatch {
    pub(crate) cluster_domain: String,
    pub(crate) settings: KubernetesSettings,
    pub(crate) status: Mutex<Status>,
    /// The cluster entries in the kernel table and the forwarder now.
    pub(crate) installed: Mutex<RuleSet>,
}

impl ClusterWatch {
    pub(crate) fn new(cluster_domain: &str, settings: &KubernetesSettings) -> Self {
        Self {
            cluster_domain: cluster_domain.to_string(),
            settings: settings.clone(),
            status: Mutex::new(Status::default()),
            installed: Mutex::new(RuleSet::new()),
        }
    }

    /// The cluster entries in force (for a reload, which writes them
    /// together with the config's).
    pub(crate) fn installed(&self) -> RuleSet {
        self.installed.lock().map(|i| i.clone()).unwrap_or_default()
    }
}
