//! `/metrics`: a [`Stats`] snapshot in the OpenMetrics text format,
//! encoded by `prometheus-client` (names, escaping, `_total` suffixes,
//! histogram buckets and the closing `# EOF` are the crate's).
//!
//! The counters live in the forwarder's atomics and the kernel's per-CPU
//! map, and `dnsfast stats` shows the same snapshot; so instead of
//! registering live metric objects, each scrape encodes one snapshot
//! through a [`Collector`].

use prometheus_client::{
    collector::Collector,
    encoding::{text::encode, DescriptorEncoder, NoLabelSet},
    metrics::MetricType,
    registry::Registry,
};

use super::stats::{KernelCounters, Stats, UpstreamStats};

/// One per-upstream counter family: how it reads from the snapshot.
type UpstreamCounter = fn(&UpstreamStats) -> u64;

/// The content type of [`render`]'s output.
pub(crate) const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// `stats` as an OpenMetrics exposition.
pub(crate) fn render(stats: Stats) -> String {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(Snapshot(stats)));
    let mut out = String::new();
    // Writing to a String cannot fail.
    let _ = encode(&mut out, &registry);
    out
}

#[derive(Debug)]
struct Snapshot(Stats);

/// One label, as the encoder takes it.
fn label(k: &'static str, v: &str) -> [(&'static str, String); 1] {
    [(k, v.to_string())]
}

impl Collector for Snapshot {
    fn encode(&self, mut enc: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let s = &self.0;
        if let KernelCounters::Read(k) = &s.kernel {
            let mut m = enc.encode_descriptor(
                "dnsfast_xdp_packets",
                "Packets the XDP program saw, by outcome (summed over CPUs).",
                None,
                MetricType::Counter,
            )?;
            for (field, n) in k {
                m.encode_family(&label("counter", field))?
                    .encode_counter::<NoLabelSet, _, u64>(n, None)?;
            }
        }
        if let Some(w) = &s.watch {
            let mut m = enc.encode_descriptor(
                "dnsfast_watch_events",
                "Query events the kernel emitted for `dnsfast watch`, and those dropped (rate limit, full ring).",
                None,
                MetricType::Counter,
            )?;
            for (outcome, n) in [("sent", w.events), ("dropped", w.dropped)] {
                m.encode_family(&label("outcome", outcome))?
                    .encode_counter::<NoLabelSet, _, u64>(&n, None)?;
            }
            enc.encode_descriptor(
                "dnsfast_watchers",
                "Clients running `dnsfast watch`.",
                None,
                MetricType::Gauge,
            )?
            .encode_gauge(&w.watchers)?;
        }
        if let Some(k) = &s.kubernetes {
            for (name, help, v) in [
                (
                    "dnsfast_kubernetes_synced",
                    "1 while the cluster domain's kernel verdicts stand on a complete, fresh list of the API.",
                    u64::from(k.synced),
                ),
                (
                    "dnsfast_kubernetes_namespaces",
                    "Namespaces the API lists.",
                    k.namespaces as u64,
                ),
                (
                    "dnsfast_kubernetes_services",
                    "Services the API lists.",
                    k.services as u64,
                ),
                (
                    "dnsfast_kubernetes_entries",
                    "Cluster-domain entries in the kernel table.",
                    k.entries as u64,
                ),
                (
                    "dnsfast_kubernetes_last_event_age_seconds",
                    "Seconds since the last event of the API watch.",
                    k.last_event_age_s.unwrap_or(0),
                ),
            ] {
                enc.encode_descriptor(name, help, None, MetricType::Gauge)?
                    .encode_gauge(&v)?;
            }
            for (name, help, v) in [
                (
                    "dnsfast_kubernetes_events",
                    "Events of the API watch (list items included).",
                    k.events,
                ),
                (
                    "dnsfast_kubernetes_errors",
                    "Errors of the API watch (unreachable, denied, gone).",
                    k.errors,
                ),
            ] {
                enc.encode_descriptor(name, help, None, MetricType::Counter)?
                    .encode_counter::<NoLabelSet, _, u64>(&v, None)?;
            }
        }
        let Some(f) = &s.forwarder else {
            return Ok(());
        };
        for (k, n, help) in f.counters() {
            enc.encode_descriptor(
                &format!("dnsfast_forwarder_{k}"),
                help,
                None,
                MetricType::Counter,
            )?
            .encode_counter::<NoLabelSet, _, u64>(&n, None)?;
        }
        let mut m = enc.encode_descriptor(
            "dnsfast_forwarder_answers",
            "Answers by RCODE.",
            None,
            MetricType::Counter,
        )?;
        for (rc, n) in &f.rcodes {
            m.encode_family(&label("rcode", rc))?
                .encode_counter::<NoLabelSet, _, u64>(n, None)?;
        }
        let c = &f.cache;
        for (k, n, help) in [
            ("hits", c.hits, "Answer cache hits."),
            ("misses", c.misses, "Answer cache misses."),
            (
                "evictions",
                c.evictions,
                "Entries evicted from the answer cache.",
            ),
            (
                "too_large",
                c.too_large,
                "Answers served but not cached: over cache.max-entry-bytes.",
            ),
        ] {
            enc.encode_descriptor(
                &format!("dnsfast_cache_{k}"),
                help,
                None,
                MetricType::Counter,
            )?
            .encode_counter::<NoLabelSet, _, u64>(&n, None)?;
        }
        enc.encode_descriptor(
            "dnsfast_cache_size",
            "Entries in the answer cache.",
            None,
            MetricType::Gauge,
        )?
        .encode_gauge(&c.size)?;
        enc.encode_descriptor(
            "dnsfast_cache_bytes",
            "What the answer cache's entries weigh, against cache.max-bytes.",
            None,
            MetricType::Gauge,
        )?
        .encode_gauge(&c.bytes)?;
        let mut m = enc.encode_descriptor(
            "dnsfast_zone_queries",
            "Queries routed to each zone.",
            None,
            MetricType::Counter,
        )?;
        for (zone, n) in &f.zones {
            m.encode_family(&label("zone", zone))?
                .encode_counter::<NoLabelSet, _, u64>(n, None)?;
        }
        let mut m = enc.encode_descriptor(
            "dnsfast_upstream_up",
            "1 while the upstream is healthy.",
            None,
            MetricType::Gauge,
        )?;
        for u in &f.upstreams {
            m.encode_family(&label("upstream", &u.addr))?
                .encode_gauge(&u32::from(u.up))?;
        }
        let counters: [(&str, &str, UpstreamCounter); 4] = [
            ("queries", "Queries sent to the upstream.", |u| u.queries),
            ("failures", "Timeouts and network errors.", |u| u.failures),
            (
                "retransmits",
                "UDP queries sent again for want of an answer.",
                |u| u.retransmits,
            ),
            (
                "slow_names",
                "Timeouts not held against its health (it answered other names meanwhile).",
                |u| u.slow_names,
            ),
        ];
        for (k, help, get) in counters {
            let name = format!("dnsfast_upstream_{k}");
            let mut m = enc.encode_descriptor(&name, help, None, MetricType::Counter)?;
            for u in &f.upstreams {
                let n = get(u);
                m.encode_family(&label("upstream", &u.addr))?
                    .encode_counter::<NoLabelSet, _, u64>(&n, None)?;
            }
        }
        let mut m = enc.encode_descriptor(
            "dnsfast_upstream_latency_seconds",
            "Time to an upstream's answer.",
            None,
            MetricType::Histogram,
        )?;
        for u in &f.upstreams {
            // The encoder takes per-bucket counts and sums them itself.
            let mut prev = 0;
            let mut buckets: Vec<(f64, u64)> = u
                .latency_buckets_us
                .iter()
                .zip(&u.latency_cumulative)
                .map(|(le, cum)| {
                    let n = cum.saturating_sub(prev);
                    prev = *cum;
                    (*le as f64 / 1e6, n)
                })
                .collect();
            buckets.push((f64::INFINITY, u.latency_count().saturating_sub(prev)));
            m.encode_family(&label("upstream", &u.addr))?
                .encode_histogram::<NoLabelSet>(
                    u.latency_sum_us as f64 / 1e6,
                    u.latency_count(),
                    &buckets,
                    None,
                )?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agent::stats::{CacheStats, ForwarderStats, UpstreamStats};
    use dnsfast_common::Counters;

    #[test]
    fn openmetrics_text_carries_every_counter() {
        let c = Counters {
            packets: 7,
            answered_nxdomain: 3,
            ..Default::default()
        };
        let stats = Stats {
            kernel: KernelCounters::from(&c),
            forwarder: Some(ForwarderStats {
                udp_queries: 5,
                tcp_queries: 1,
                blocked: 2,
                rcodes: [("NOERROR".to_string(), 4)].into(),
                cache: CacheStats {
                    hits: 1,
                    misses: 3,
                    evictions: 0,
                    size: 3,
                    bytes: 900,
                    too_large: 0,
                },
                zones: [("cluster.local".to_string(), 2), (".".to_string(), 1)].into(),
                upstreams: vec![UpstreamStats {
                    addr: "10.0.0.2:53".into(),
                    up: true,
                    queries: 3,
                    retransmits: 2,
                    latency_buckets_us: crate::forward::metrics::LATENCY_BUCKETS_US.to_vec(),
                    latency_cumulative: vec![1, 2, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3],
                    latency_sum_us: 4000,
                    ..Default::default()
                }],
                ..Default::default()
            }),
            ..Default::default()
        };
        let t = render(stats);
        assert!(t.contains("dnsfast_xdp_packets_total{counter=\"packets\"} 7\n"));
        assert!(t.contains("dnsfast_xdp_packets_total{counter=\"answered_nxdomain\"} 3\n"));
        assert!(t.contains("dnsfast_forwarder_udp_queries_total 5\n"));
        assert!(t.contains("dnsfast_forwarder_answers_total{rcode=\"NOERROR\"} 4\n"));
        assert!(t.contains("dnsfast_zone_queries_total{zone=\"cluster.local\"} 2\n"));
        assert!(t.contains("dnsfast_cache_size 3\n"));
        assert!(t.contains("dnsfast_upstream_up{upstream=\"10.0.0.2:53\"} 1\n"));
        assert!(t.contains("dnsfast_upstream_retransmits_total{upstream=\"10.0.0.2:53\"} 2\n"));
        assert!(t.contains("dnsfast_upstream_slow_names_total{upstream=\"10.0.0.2:53\"} 0\n"));
        assert!(t.contains(
            "dnsfast_upstream_latency_seconds_bucket{le=\"0.0005\",upstream=\"10.0.0.2:53\"} 1\n"
        ));
        assert!(t.contains(
            "dnsfast_upstream_latency_seconds_bucket{le=\"+Inf\",upstream=\"10.0.0.2:53\"} 3\n"
        ));
        assert!(t.contains("dnsfast_upstream_latency_seconds_count{upstream=\"10.0.0.2:53\"} 3\n"));
        assert!(
            t.contains("dnsfast_upstream_latency_seconds_sum{upstream=\"10.0.0.2:53\"} 0.004\n"),
            "{t}"
        );
        assert!(t.ends_with("# EOF\n"));
        // Every sample line belongs to a family declared before it.
        let mut declared = vec![];
        for l in t.lines() {
            if let Some(rest) = l.strip_prefix("# TYPE ") {
                declared.push(rest.split(' ').next().unwrap().to_string());
            } else if !l.starts_with('#') {
                let name = l.split(['{', ' ']).next().unwrap();
                assert!(
                    declared.iter().any(|d| name.starts_with(d.as_str())),
                    "{name} undeclared"
                );
            }
        }
    }
}
