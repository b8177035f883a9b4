//! The agent's memory, bounded by its config: what `check-config` prints
//! and `deploy/`'s memory limit is derived from. BPF maps are charged to
//! the agent's cgroup (memcg accounting, Linux 5.11+) and preallocated, so
//! they count against a pod's limit from the first packet.
//!
//! The kernel estimate follows the kernel's layouts (a hash map element
//! is its key, value and about 48 bytes of header; per-CPU maps hold a
//! copy per possible CPU); `kernel_map_usage` reads what the kernel
//! reports for the maps this process holds, and a test keeps the estimate
//! at or above it.

use std::mem::size_of;

use anyhow::{Context, Result};
use dnsfast_common::{
    abi::{
        AddrKey, Counters, Scratch, WatchState, XdpConfig, EVENTS_RING_BYTES, MAX_LISTEN_ADDRS,
        MAX_RATE_CLIENTS, MAX_SERVER_ADDRS,
    },
    answer::{AnswerKey, CachedAnswer, ListenKey},
    labels::{LabelBucket, NAMESPACE_BUCKETS, TLD_BUCKETS},
    table::{bucket_count, Bucket, Depths, LongKey},
};

use crate::config::Config;

/// A hash map element's header (`struct htab_elem`, rounded up) and its
/// bucket (`struct bucket`).
const HASH_ELEM: u64 = 64;
const HASH_BUCKET: u64 = 16;
const PAGE: u64 = 4096;
/// What the agent takes beyond its bounded parts: the runtime, its
/// threads' stacks, the loaded libraries, the Kubernetes client and the
/// allocator's slack (measured: 24 to 28 MB RSS under load with a full
/// cache, `cargo xtask bench`).
pub(crate) const BASE_BYTES: u64 = 32 << 20;
/// What one upstream query in flight may hold: its task, its socket's
/// receive buffer (4 KiB) and the answer on its way; plus one query
/// waiting for a slot (as many may wait as may be in flight: ~2 KiB).
const INFLIGHT_BYTES: u64 = 10 << 10;
/// What one open TCP connection holds besides its answers: two tasks,
/// the query being read (4 KiB at most) and the socket.
const TCP_CONNECTION_BYTES: u64 = 16 << 10;

/// The agent's memory, by part, in bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Budget {
    pub(crate) kernel_maps: u64,
    pub(crate) cache: u64,
    pub(crate) inflight: u64,
    pub(crate) tcp: u64,
    pub(crate) base: u64,
}

impl Budget {
    /// For `dnsfast load` with `cfg`, forwarder and kernel answer cache on.
    pub(crate) fn of(cfg: &Config) -> Budget {
        let f = &cfg.forward;
        let answers = if f.cache.size > 0 {
            f.cache.size as u64
        } else {
            0
        };
        let tcp = f.tcp.max_connections as u64 * TCP_CONNECTION_BYTES + f.tcp.buffer_bytes as u64;
        Budget {
            kernel_maps: kernel_maps(cfg.xdp.max_patterns as u64, answers, possible_cpus()),
            cache: f.cache.max_bytes,
            inflight: f.max_inflight as u64 * INFLIGHT_BYTES,
            tcp,
            base: BASE_BYTES,
        }
    }

    pub(crate) fn total(&self) -> u64 {
        self.kernel_maps + self.cache + self.inflight + self.tcp + self.base
    }

    /// The container memory limit to give it: the total in whole MiB.
    pub(crate) fn limit_mib(&self) -> u64 {
        self.total().div_ceil(1 << 20)
    }
}

impl std::fmt::Display for Budget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mib = |b: u64| b as f64 / (1 << 20) as f64;
        write!(
            f,
            "memory: kernel maps up to {:.1} MiB + cache {:.1} MiB + upstream queries {:.1} MiB \
             + TCP {:.1} MiB + base {:.1} MiB = {:.1} MiB: give the container a limit of at least {}Mi",
            mib(self.kernel_maps),
            mib(self.cache),
            mib(self.inflight),
            mib(self.tcp),
            mib(self.base),
            mib(self.total()),
            self.limit_mib()
        )
    }
}

fn up8(n: usize) -> u64 {
    (n as u64).div_ceil(8) * 8
}

fn hash(entries: u64, key: usize, value: usize) -> u64 {
    entries * (HASH_ELEM + up8(key) + up8(value)) + entries.next_power_of_two() * HASH_BUCKET
}

fn array(entries: u64, value: usize) -> u64 {
    entries * up8(value)
}

/// The XDP object's maps, as `Dataplane::load` sizes them.
pub(crate) fn kernel_maps(max_patterns: u64, answers: u64, cpus: u64) -> u64 {
    let patterns = bucket_count(max_patterns.min(u32::MAX as u64) as u32) as u64;
    let labels = (TLD_BUCKETS + NAMESPACE_BUCKETS) as u64;
    // The tails are not preallocated: only a pattern whose key outgrows
    // its bucket slot takes one. Counted as if every pattern did (a
    // cluster's long Service names can), which the kernel's figure for a
    // fresh agent is far below.
    array(patterns, size_of::<Bucket>())
        + array(1, size_of::<Depths>())
        + hash(max_patterns, 8, size_of::<LongKey>())
        + array(labels, size_of::<LabelBucket>())
        + hash(
            answers.max(1),
            size_of::<AnswerKey>(),
            size_of::<CachedAnswer>(),
        )
        + hash(MAX_SERVER_ADDRS as u64, size_of::<AddrKey>(), 4)
        + hash(MAX_LISTEN_ADDRS as u64, size_of::<ListenKey>(), 4)
        + hash(MAX_RATE_CLIENTS as u64, size_of::<AddrKey>(), 8)
        + array(1, size_of::<XdpConfig>())
        + cpus
            * (array(1, size_of::<Counters>())
                + array(1, size_of::<Scratch>())
                + array(1, size_of::<WatchState>()))
        + EVENTS_RING_BYTES as u64
        + 8 * PAGE
}

/// CPUs the kernel allocates per-CPU map copies for.
fn possible_cpus() -> u64 {
    std::fs::read_to_string("/sys/devices/system/cpu/possible")
        .ok()
        .and_then(|s| parse_cpu_list(s.trim()))
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get() as u64))
}

/// `0-3,8-11` → 8.
fn parse_cpu_list(s: &str) -> Option<u64> {
    s.split(',')
        .map(|r| match r.split_once('-') {
            Some((a, b)) => Some(b.parse::<u64>().ok()? - a.parse::<u64>().ok()? + 1),
            None => r.parse::<u64>().ok().map(|_| 1),
        })
        .sum()
}

/// What the kernel reports (`memlock` in fdinfo, the figure `bpftool map`
/// shows) for the BPF maps this process holds, each counted once.
pub(crate) fn kernel_map_usage() -> Result<u64> {
    let mut seen = std::collections::HashSet::new();
    let mut total = 0;
    let dir = std::fs::read_dir("/proc/self/fdinfo").context("reading /proc/self/fdinfo")?;
    for e in dir.flatten() {
        let Ok(text) = std::fs::read_to_string(e.path()) else {
            continue;
        };
        let field = |k: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(k))
                .and_then(|v| v.trim().parse::<u64>().ok())
        };
        if let (Some(id), Some(bytes)) = (field("map_id:"), field("memlock:")) {
            if seen.insert(id) {
                total += bytes;
            }
        }
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_lists() {
        assert_eq!(parse_cpu_list("0"), Some(1));
        assert_eq!(parse_cpu_list("0-3"), Some(4));
        assert_eq!(parse_cpu_list("0-3,8-11"), Some(8));
        assert_eq!(parse_cpu_list("x"), None);
    }

    #[test]
    fn the_default_budget_adds_up() {
        let b = Budget::of(&Config::default());
        assert_eq!(
            b.total(),
            b.kernel_maps + b.cache + b.inflight + b.tcp + b.base
        );
        // The pattern table alone is 16.8 MB at the default 131,072.
        assert!(b.kernel_maps > 16_000_000, "{b}");
        assert!(b
            .to_string()
            .contains("give the container a limit of at least"));
    }
}
