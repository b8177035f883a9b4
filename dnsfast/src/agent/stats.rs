//! What the agent reports, as typed snapshots: [`Status`] (who runs,
//! where, what it holds) and [`Stats`] (the counters). They travel as JSON
//! over the control socket; `dnsfast status|stats` print them, and
//! `/metrics` renders the same [`Stats`] (`openmetrics`), so the three can
//! never disagree.

use std::{
    collections::BTreeMap,
    sync::atomic::Ordering,
    time::{SystemTime, UNIX_EPOCH},
};

use dnsfast_common::{pattern::Action, Counters};
use serde::{Deserialize, Serialize};

use super::{
    cluster::ClusterWatch,
    state::{Agent, Applied},
};
use crate::dataplane::budget;
use crate::forward::{
    metrics::{rcode_name, Metrics, LATENCY_BUCKETS_US},
    resolver::Resolver,
};

pub(crate) fn unix_secs(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// The counters: the kernel's (summed over CPUs) and the forwarder's.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub(crate) struct Stats {
    /// Unix seconds when taken; absent when read from the pins (no agent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) time: Option<u64>,
    pub(crate) kernel: KernelCounters,
    #[serde(default)]
    pub(crate) watch: Option<WatchStats>,
    /// `None` with `--no-forward`, or when no agent runs.
    pub(crate) forwarder: Option<ForwarderStats>,
    /// `Some(false)` when no agent runs and only the pins were read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) agent: Option<bool>,
    /// The Kubernetes API watch, when `[kubernetes]` is on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) kubernetes: Option<KubeStats>,
}

/// The Kubernetes API watch behind the exact cluster domain.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub(crate) struct KubeStats {
    pub(crate) cluster_domain: String,
    /// The cluster domain's kernel verdicts are in place: both lists were
    /// read, and the watch has not been broken for too long since.
    pub(crate) synced: bool,
    pub(crate) namespaces: usize,
    pub(crate) services: usize,
    /// Cluster entries in the kernel table.
    pub(crate) entries: usize,
    pub(crate) events: u64,
    pub(crate) errors: u64,
    /// Unix seconds of the last event, and how long ago.
    pub(crate) last_event: Option<u64>,
    pub(crate) last_event_age_s: Option<u64>,
    pub(crate) last_error: Option<String>,
    /// Seconds since the watch broke, while it is broken.
    pub(crate) broken_for_s: Option<u64>,
    /// Entries that did not fit: the whole cluster domain passes.
    pub(crate) degraded: Option<String>,
}

/// The XDP program's counters by field name, or why they could not be
/// read.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(untagged)]
pub(crate) enum KernelCounters {
    Read(BTreeMap<String, u64>),
    Unreadable { error: String },
}

impl Default for KernelCounters {
    fn default() -> Self {
        Self::Read(BTreeMap::new())
    }
}

impl From<&Counters> for KernelCounters {
    fn from(c: &Counters) -> Self {
        Self::Read(
            c.fields()
                .iter()
                .map(|(k, v)| (k.to_string(), *v))
                .collect(),
        )
    }
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub(crate) struct WatchStats {
    /// Clients running `dnsfast watch`.
    pub(crate) watchers: usize,
    /// Events the kernel emitted, and those it dropped.
    pub(crate) events: u64,
    pub(crate) dropped: u64,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub(crate) struct ForwarderStats {
    pub(crate) udp_queries: u64,
    pub(crate) tcp_queries: u64,
    pub(crate) blocked: u64,
    pub(crate) overloaded: u64,
    pub(crate) upstreams_failed: u64,
    pub(crate) no_route: u64,
    pub(crate) truncated: u64,
    pub(crate) client_limited: u64,
    pub(crate) tcp_rejected: u64,
    pub(crate) tcp_dropped: u64,
    /// Answers by RCODE name (only those seen).
    pub(crate) rcodes: BTreeMap<String, u64>,
    pub(crate) cache: CacheStats,
    pub(crate) kernel_cache: Option<KernelCacheStats>,
    /// Queries routed to each zone.
    pub(crate) zones: BTreeMap<String, u64>,
    pub(crate) upstreams: Vec<UpstreamStats>,
}

impl ForwarderStats {
    /// The scalar counters, by name, in the order they are shown.
    pub(crate) fn counters(&self) -> [(&'static str, u64, &'static str); 10] {
        [
            (
                "udp_queries",
                self.udp_queries,
                "Queries received over UDP.",
            ),
            (
                "tcp_queries",
                self.tcp_queries,
                "Queries received over TCP.",
            ),
            (
                "blocked",
                self.blocked,
                "Queries answered NXDOMAIN from the block patterns.",
            ),
            (
                "overloaded",
                self.overloaded,
                "Queries refused because max-inflight was reached.",
            ),
            (
                "upstreams_failed",
                self.upstreams_failed,
                "Queries no upstream of their zone answered.",
            ),
            ("no_route", self.no_route, "Queries no zone covers."),
            ("truncated", self.truncated, "Answers sent with TC set."),
            (
                "client_limited",
                self.client_limited,
                "Queries refused because their client had max-inflight-per-client out.",
            ),
            (
                "tcp_rejected",
                self.tcp_rejected,
                "TCP connections closed at once: past tcp-max-connections or tcp-max-per-client.",
            ),
            (
                "tcp_dropped",
                self.tcp_dropped,
                "TCP connections closed because the client was too slow to read or to send.",
            ),
        ]
    }

    /// One log line with the counters, for the end of a run.
    pub(crate) fn summary(&self) -> String {
        let c = &self.cache;
        let kernel = match &self.kernel_cache {
            Some(k) => format!(
                " kernel-cache stored={} skipped={} errors={}",
                k.stored, k.skipped, k.errors
            ),
            None => String::new(),
        };
        let rcodes: Vec<String> = self
            .rcodes
            .iter()
            .map(|(r, n)| format!("{r}={n}"))
            .collect();
        format!(
            "forwarder: udp={} tcp={} blocked={} cache hits={} misses={} evictions={} size={}{kernel} \
             upstream-failed={} overloaded={} client-limited={} no-route={} truncated={} \
             tcp-rejected={} tcp-dropped={} rcodes: {}",
            self.udp_queries,
            self.tcp_queries,
            self.blocked,
            c.hits,
            c.misses,
            c.evictions,
            c.size,
            self.upstreams_failed,
            self.overloaded,
            self.client_limited,
            self.no_route,
            self.truncated,
            self.tcp_rejected,
            self.tcp_dropped,
            rcodes.join(" ")
        )
    }
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub(crate) struct CacheStats {
    pub(crate) hits: u64,
    pub(crate) misses: u64,
    pub(crate) evictions: u64,
    pub(crate) size: usize,
    /// What the entries weigh, against `cache.max-bytes`.
    pub(crate) bytes: u64,
    /// Answers served but not kept: over `cache.max-entry-bytes`.
    pub(crate) too_large: u64,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub(crate) struct KernelCacheStats {
    pub(crate) stored: u64,
    pub(crate) skipped: u64,
    pub(crate) errors: u64,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub(crate) struct UpstreamStats {
    pub(crate) addr: String,
    pub(crate) up: bool,
    pub(crate) queries: u64,
    pub(crate) failures: u64,
    pub(crate) tcp_retries: u64,
    /// UDP queries sent again for want of an answer.
    #[serde(default)]
    pub(crate) retransmits: u64,
    /// Timeouts not held against its health: it answered other names
    /// meanwhile.
    #[serde(default)]
    pub(crate) slow_names: u64,
    pub(crate) mismatched: u64,
    /// Upper bounds of the latency buckets, in microseconds.
    pub(crate) latency_buckets_us: Vec<u64>,
    /// Cumulative counts per bucket; one more than the bounds, the last
    /// being +Inf (the total).
    pub(crate) latency_cumulative: Vec<u64>,
    pub(crate) latency_sum_us: u64,
}

impl UpstreamStats {
    /// Answers timed (the +Inf bucket).
    pub(crate) fn latency_count(&self) -> u64 {
        self.latency_cumulative.last().copied().unwrap_or(0)
    }
}

/// Who runs, where the program is, what it holds.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub(crate) struct Status {
    pub(crate) pid: u32,
    pub(crate) started: u64,
    pub(crate) uptime_s: u64,
    pub(crate) ready: bool,
    pub(crate) pin_dir: String,
    pub(crate) program_id: u32,
    pub(crate) keep_attached: bool,
    pub(crate) iface_specs: Vec<String>,
    pub(crate) ifaces: Vec<IfaceStatus>,
    pub(crate) patterns: Option<PatternCounts>,
    pub(crate) tlds: usize,
    pub(crate) listeners: Vec<String>,
    pub(crate) upstreams: Vec<UpstreamHealth>,
    pub(crate) config: Option<ReloadStatus>,
    #[serde(default)]
    pub(crate) kubernetes: Option<KubeStats>,
    #[serde(default)]
    pub(crate) memory: MemoryStatus,
}

/// Memory now, next to what the config bounds it to.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub(crate) struct MemoryStatus {
    /// What the kernel reports for the agent's BPF maps (`memlock`).
    pub(crate) kernel_map_bytes: u64,
    /// The config's estimate of the same, from `check-config`.
    pub(crate) kernel_map_budget: u64,
    /// The agent's resident memory.
    pub(crate) rss_bytes: u64,
    /// The whole budget: the container limit `check-config` recommends.
    pub(crate) budget_bytes: u64,
}

/// VmRSS of this process.
fn rss_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        })
        .map_or(0, |kb| kb * 1024)
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub(crate) struct IfaceStatus {
    pub(crate) name: String,
    pub(crate) ifindex: u32,
    /// `driver`, `skb`, or `adopted` (a link taken over from a previous
    /// agent, in whatever mode that one chose).
    pub(crate) mode: String,
    pub(crate) program_id: u32,
    pub(crate) attached_at: u64,
    pub(crate) attached_for_s: u64,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub(crate) struct PatternCounts {
    pub(crate) block: usize,
    pub(crate) allow: usize,
    pub(crate) suffix: usize,
    pub(crate) total: usize,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub(crate) struct UpstreamHealth {
    pub(crate) addr: String,
    pub(crate) up: bool,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub(crate) struct ReloadStatus {
    pub(crate) reloads: u64,
    pub(crate) refused: u64,
    pub(crate) last_error: Option<String>,
    pub(crate) last_reload: Option<u64>,
}

pub(crate) fn kube_stats(w: &ClusterWatch) -> KubeStats {
    let s = w.status.lock().unwrap_or_else(|e| e.into_inner());
    let now = SystemTime::now();
    let age =
        |t: Option<SystemTime>| t.map(|t| now.duration_since(t).map(|d| d.as_secs()).unwrap_or(0));
    KubeStats {
        cluster_domain: w.cluster_domain.clone(),
        synced: s.synced,
        namespaces: s.namespaces,
        services: s.services,
        entries: s.entries,
        events: s.events,
        errors: s.errors,
        last_event: s.last_event.map(unix_secs),
        last_event_age_s: age(s.last_event),
        last_error: s.last_error.clone(),
        broken_for_s: age(s.broken_since),
        degraded: s.degraded.clone(),
    }
}

fn reload_status(a: &Applied) -> ReloadStatus {
    ReloadStatus {
        reloads: a.reloads,
        refused: a.refused,
        last_error: a.last_error.clone(),
        last_reload: a.last_reload.map(unix_secs),
    }
}

pub(crate) fn forwarder_stats(r: &Resolver) -> ForwarderStats {
    let m = &r.metrics;
    let g = Metrics::get;
    let rcodes = m
        .rcodes
        .iter()
        .enumerate()
        .filter(|(_, c)| g(c) > 0)
        .map(|(i, c)| {
            (
                rcode_name(hickory_proto::op::ResponseCode::from(0, i as u8)),
                g(c),
            )
        })
        .collect();
    let live = r.live.load();
    let zones = live
        .router
        .zones
        .iter()
        .map(|z| (z.name.clone(), z.queries.load(Ordering::Relaxed)))
        .collect();
    let upstreams = live
        .router
        .upstreams
        .iter()
        .map(|u| {
            let (latency_cumulative, latency_sum_us) = u.latency.snapshot();
            UpstreamStats {
                addr: u.addr.to_string(),
                up: u.is_up(),
                queries: g(&u.queries),
                failures: g(&u.failures),
                tcp_retries: g(&u.tcp_retries),
                retransmits: g(&u.retransmits),
                slow_names: g(&u.slow_names),
                mismatched: g(&u.mismatched),
                latency_buckets_us: LATENCY_BUCKETS_US.to_vec(),
                latency_cumulative,
                latency_sum_us,
            }
        })
        .collect();
    ForwarderStats {
        udp_queries: g(&m.udp_queries),
        tcp_queries: g(&m.tcp_queries),
        blocked: g(&m.blocked),
        overloaded: g(&m.overloaded),
        upstreams_failed: g(&m.upstreams_failed),
        no_route: g(&m.no_route),
        truncated: g(&m.truncated),
        client_limited: g(&m.client_limited),
        tcp_rejected: g(&m.tcp_rejected),
        tcp_dropped: g(&m.tcp_dropped),
        rcodes,
        cache: CacheStats {
            hits: g(&r.cache.hits),
            misses: g(&r.cache.misses),
            evictions: r.cache.evictions(),
            size: r.cache.len(),
            bytes: r.cache.bytes(),
            too_large: g(&r.cache.too_large),
        },
        kernel_cache: r.kernel_cache.get().map(|k| KernelCacheStats {
            stored: g(&k.stored),
            skipped: g(&k.skipped),
            errors: g(&k.errors),
        }),
        zones,
        upstreams,
    }
}

/// Counters: the kernel's (summed over CPUs) and the forwarder's.
pub(crate) fn stats(a: &Agent) -> Stats {
    let kernel = match a.dp.lock() {
        Ok(dp) => match dp.counters() {
            Ok(c) => KernelCounters::from(&c),
            Err(e) => KernelCounters::Unreadable {
                error: format!("{e:#}"),
            },
        },
        Err(_) => KernelCounters::Unreadable {
            error: "the dataplane lock is poisoned".into(),
        },
    };
    let watch = match a.dp.lock().map(|dp| dp.watch_tally()) {
        Ok(Ok((events, dropped))) => Some(WatchStats {
            watchers: a.events.as_ref().map(|w| w.watchers()).unwrap_or(0),
            events,
            dropped,
        }),
        _ => None,
    };
    Stats {
        time: Some(unix_secs(SystemTime::now())),
        kernel,
        watch,
        forwarder: a.forwarder.as_deref().map(forwarder_stats),
        agent: None,
        kubernetes: a.cluster.as_deref().map(kube_stats),
    }
}

/// Who runs, where the program is, what it holds.
pub(crate) fn status(a: &Agent) -> Status {
    let now = SystemTime::now();
    let since = |t: SystemTime| now.duration_since(t).map(|d| d.as_secs()).unwrap_or(0);
    let mut s = Status {
        pid: a.pid,
        started: unix_secs(a.started),
        uptime_s: since(a.started),
        ready: a.ready.load(Ordering::Relaxed),
        pin_dir: a.pin_dir.display().to_string(),
        program_id: a.program_id,
        keep_attached: a.keep_attached,
        listeners: a.listeners.iter().map(|l| l.to_string()).collect(),
        config: a.applied.lock().map(|r| reload_status(&r)).ok(),
        kubernetes: a.cluster.as_deref().map(kube_stats),
        ..Default::default()
    };
    if let Ok(applied) = a.applied.lock() {
        let b = budget::Budget::of(&applied.cfg);
        s.memory = MemoryStatus {
            kernel_map_bytes: budget::kernel_map_usage().unwrap_or(0),
            kernel_map_budget: b.kernel_maps,
            rss_bytes: rss_bytes(),
            budget_bytes: b.total(),
        };
    }
    if let (Ok(mut dp), Ok(ifs)) = (a.dp.lock(), a.ifaces.lock()) {
        s.iface_specs = ifs.specs.iter().map(|s| s.0.clone()).collect();
        s.ifaces = ifs
            .attached
            .iter()
            .map(|(name, at)| IfaceStatus {
                name: name.clone(),
                ifindex: at.ifindex,
                mode: at
                    .mode
                    .map(|m| format!("{m:?}").to_lowercase())
                    .unwrap_or_else(|| "adopted".into()),
                program_id: a.program_id,
                attached_at: unix_secs(at.since),
                attached_for_s: since(at.since),
            })
            .collect();
        let mut counts = [0usize; 4];
        let rules = dp.rules().unwrap_or_default();
        for r in rules.values() {
            counts[(r.action as usize).min(3)] += 1;
        }
        s.patterns = Some(PatternCounts {
            block: counts[Action::Block.code() as usize],
            allow: counts[Action::Allow.code() as usize],
            suffix: counts[Action::Suffix.code() as usize],
            total: rules.len(),
        });
        s.tlds = dp.tld_count().unwrap_or(0);
    }
    if let Some(r) = a.forwarder.as_deref() {
        s.upstreams = r
            .live
            .load()
            .router
            .upstreams
            .iter()
            .map(|u| UpstreamHealth {
                addr: u.addr.to_string(),
                up: u.is_up(),
            })
            .collect();
    }
    s
}
