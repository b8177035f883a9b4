//! What the agent reports: `status` and `stats` as JSON (over the control
//! socket), and the same stats as Prometheus text (`/metrics`), so the two
//! can never disagree.

use std::{
    fmt::Write as _,
    sync::atomic::Ordering,
    time::{SystemTime, UNIX_EPOCH},
};

use dnsfast_common::{pattern::Action, Counters};
use serde_json::{json, Map, Value};

use super::Agent;
use crate::forward::{
    metrics::{rcode_name, Metrics, LATENCY_BUCKETS_US},
    resolver::Resolver,
};

pub fn unix_secs(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Kernel counters by field name.
pub fn kernel_json(c: &Counters) -> Value {
    Value::Object(
        c.fields()
            .iter()
            .map(|(k, v)| (k.to_string(), json!(v)))
            .collect(),
    )
}

fn forwarder_json(r: &Resolver) -> Value {
    let m = &r.metrics;
    let g = Metrics::get;
    let mut rcodes = Map::new();
    for (i, c) in m.rcodes.iter().enumerate() {
        let n = g(c);
        if n > 0 {
            rcodes.insert(
                rcode_name(hickory_proto::op::ResponseCode::from(0, i as u8)),
                json!(n),
            );
        }
    }
    let live = r.live.load();
    let zones: Map<String, Value> = live
        .router
        .zones
        .iter()
        .map(|z| (z.name.clone(), json!(z.queries.load(Ordering::Relaxed))))
        .collect();
    let upstreams: Vec<Value> = live
        .router
        .upstreams
        .iter()
        .map(|u| {
            let (buckets, sum_us) = u.latency.snapshot();
            json!({
                "addr": u.addr.to_string(),
                "up": u.is_up(),
                "queries": g(&u.queries),
                "failures": g(&u.failures),
                "tcp_retries": g(&u.tcp_retries),
                "mismatched": g(&u.mismatched),
                "latency_buckets_us": LATENCY_BUCKETS_US,
                "latency_cumulative": buckets,
                "latency_sum_us": sum_us,
            })
        })
        .collect();
    let kernel_cache = r.kernel_cache.get().map(|k| {
        json!({
            "stored": g(&k.stored),
            "skipped": g(&k.skipped),
            "errors": g(&k.errors),
        })
    });
    json!({
        "udp_queries": g(&m.udp_queries),
        "tcp_queries": g(&m.tcp_queries),
        "blocked": g(&m.blocked),
        "overloaded": g(&m.overloaded),
        "upstreams_failed": g(&m.upstreams_failed),
        "no_route": g(&m.no_route),
        "truncated": g(&m.truncated),
        "rcodes": rcodes,
        "cache": {
            "hits": g(&r.cache.hits),
            "misses": g(&r.cache.misses),
            "evictions": r.cache.evictions(),
            "size": r.cache.len(),
        },
        "kernel_cache": kernel_cache,
        "zones": zones,
        "upstreams": upstreams,
    })
}

/// Counters: the kernel's (summed over CPUs) and the forwarder's.
pub fn stats(a: &Agent) -> Value {
    let kernel = match a.dp.lock() {
        Ok(dp) => dp
            .counters()
            .map(|c| kernel_json(&c))
            .unwrap_or_else(|e| json!({ "error": format!("{e:#}") })),
        Err(_) => json!({ "error": "the dataplane lock is poisoned" }),
    };
    let watch = match a.dp.lock().map(|dp| dp.watch_tally()) {
        Ok(Ok((sent, dropped))) => json!({
            "watchers": a.watch.as_ref().map(|w| w.watchers()).unwrap_or(0),
            "events": sent,
            "dropped": dropped,
        }),
        _ => Value::Null,
    };
    json!({
        "time": unix_secs(SystemTime::now()),
        "kernel": kernel,
        "watch": watch,
        "forwarder": a.forwarder.as_deref().map(forwarder_json),
    })
}

/// Who runs, where the program is, what it holds.
pub fn status(a: &Agent) -> Value {
    let now = SystemTime::now();
    let (specs, ifaces, patterns, tlds) = match (a.dp.lock(), a.ifaces.lock()) {
        (Ok(mut dp), Ok(ifs)) => {
            let specs: Vec<String> = ifs.specs.iter().map(|s| s.0.clone()).collect();
            let ifaces: Vec<Value> = ifs
                .attached
                .iter()
                .map(|(name, at)| {
                    json!({
                        "name": name,
                        "ifindex": at.ifindex,
                        "mode": at.mode.map(|m| format!("{m:?}").to_lowercase()).unwrap_or_else(|| "adopted".into()),
                        "program_id": a.program_id,
                        "attached_at": unix_secs(at.since),
                        "attached_for_s": now.duration_since(at.since).map(|d| d.as_secs()).unwrap_or(0),
                    })
                })
                .collect();
            let mut counts = [0usize; 4];
            let rules = dp.rules().unwrap_or_default();
            for r in rules.values() {
                counts[(r.action as usize).min(3)] += 1;
            }
            let tlds = dp.tld_count().unwrap_or(0);
            (
                specs,
                ifaces,
                json!({
                    "block": counts[Action::Block.code() as usize],
                    "allow": counts[Action::Allow.code() as usize],
                    "suffix": counts[Action::Suffix.code() as usize],
                    "total": rules.len(),
                }),
                tlds,
            )
        }
        _ => (vec![], vec![], json!(null), 0),
    };
    let reload = a.applied.lock().map(|r| r.json()).unwrap_or(Value::Null);
    let upstreams: Vec<Value> = a
        .forwarder
        .as_deref()
        .map(|r| {
            r.live
                .load()
                .router
                .upstreams
                .iter()
                .map(|u| json!({ "addr": u.addr.to_string(), "up": u.is_up() }))
                .collect()
        })
        .unwrap_or_default();
    json!({
        "pid": a.pid,
        "started": unix_secs(a.started),
        "uptime_s": now.duration_since(a.started).map(|d| d.as_secs()).unwrap_or(0),
        "ready": a.ready.load(Ordering::Relaxed),
        "pin_dir": a.pin_dir.display().to_string(),
        "program_id": a.program_id,
        "keep_attached": a.keep_attached,
        "iface_specs": specs,
        "ifaces": ifaces,
        "patterns": patterns,
        "tlds": tlds,
        "listeners": a.listeners.iter().map(|l| l.to_string()).collect::<Vec<_>>(),
        "upstreams": upstreams,
        "config": reload,
    })
}

/// `stats` in the Prometheus text format (version 0.0.4).
pub fn prometheus(stats: &Value) -> String {
    let head = |out: &mut String, name: &str, kind: &str, help: &str| {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
    };
    let mut s = String::new();
    if let Some(k) = stats["kernel"].as_object() {
        head(
            &mut s,
            "dnsfast_xdp_packets_total",
            "counter",
            "Packets the XDP program saw, by outcome (summed over CPUs).",
        );
        for (field, v) in k {
            if let Some(n) = v.as_u64() {
                let _ = writeln!(s, "dnsfast_xdp_packets_total{{counter=\"{field}\"}} {n}");
            }
        }
    }
    if let Some(w) = stats["watch"].as_object() {
        head(
            &mut s,
            "dnsfast_watch_events_total",
            "counter",
            "Query events the kernel emitted for `dnsfast watch`, and those dropped (rate limit, full ring).",
        );
        for k in ["events", "dropped"] {
            let _ = writeln!(
                s,
                "dnsfast_watch_events_total{{outcome=\"{}\"}} {}",
                if k == "events" { "sent" } else { "dropped" },
                w[k].as_u64().unwrap_or(0)
            );
        }
        head(
            &mut s,
            "dnsfast_watchers",
            "gauge",
            "Clients running `dnsfast watch`.",
        );
        let _ = writeln!(
            s,
            "dnsfast_watchers {}",
            w["watchers"].as_u64().unwrap_or(0)
        );
    }
    if let Some(f) = stats["forwarder"].as_object() {
        let scalar = [
            ("udp_queries", "Queries received over UDP."),
            ("tcp_queries", "Queries received over TCP."),
            (
                "blocked",
                "Queries answered NXDOMAIN from the block patterns.",
            ),
            (
                "overloaded",
                "Queries refused because max-inflight was reached.",
            ),
            (
                "upstreams_failed",
                "Queries no upstream of their zone answered.",
            ),
            ("no_route", "Queries no zone covers."),
            ("truncated", "Answers sent with TC set."),
        ];
        for (k, help) in scalar {
            let name = format!("dnsfast_forwarder_{k}_total");
            head(&mut s, &name, "counter", help);
            let _ = writeln!(s, "{name} {}", f[k].as_u64().unwrap_or(0));
        }
        head(
            &mut s,
            "dnsfast_forwarder_answers_total",
            "counter",
            "Answers by RCODE.",
        );
        if let Some(r) = f["rcodes"].as_object() {
            for (rc, n) in r {
                let _ = writeln!(
                    s,
                    "dnsfast_forwarder_answers_total{{rcode=\"{rc}\"}} {}",
                    n.as_u64().unwrap_or(0)
                );
            }
        }
        let c = &f["cache"];
        for (k, kind, help) in [
            ("hits", "counter", "Answer cache hits."),
            ("misses", "counter", "Answer cache misses."),
            (
                "evictions",
                "counter",
                "Entries evicted from the answer cache.",
            ),
            ("size", "gauge", "Entries in the answer cache."),
        ] {
            let name = if kind == "counter" {
                format!("dnsfast_cache_{k}_total")
            } else {
                format!("dnsfast_cache_{k}")
            };
            head(&mut s, &name, kind, help);
            let _ = writeln!(s, "{name} {}", c[k].as_u64().unwrap_or(0));
        }
        if let Some(z) = f["zones"].as_object() {
            head(
                &mut s,
                "dnsfast_zone_queries_total",
                "counter",
                "Queries routed to each zone.",
            );
            for (zone, n) in z {
                let _ = writeln!(
                    s,
                    "dnsfast_zone_queries_total{{zone=\"{}\"}} {}",
                    escape(zone),
                    n.as_u64().unwrap_or(0)
                );
            }
        }
        if let Some(ups) = f["upstreams"].as_array() {
            head(
                &mut s,
                "dnsfast_upstream_up",
                "gauge",
                "1 while the upstream is healthy.",
            );
            for u in ups {
                let _ = writeln!(
                    s,
                    "dnsfast_upstream_up{{upstream=\"{}\"}} {}",
                    escape(u["addr"].as_str().unwrap_or("")),
                    u8::from(u["up"].as_bool().unwrap_or(false))
                );
            }
            for (k, help) in [
                ("queries", "Queries sent to the upstream."),
                ("failures", "Timeouts and network errors."),
            ] {
                let name = format!("dnsfast_upstream_{k}_total");
                head(&mut s, &name, "counter", help);
                for u in ups {
                    let _ = writeln!(
                        s,
                        "{name}{{upstream=\"{}\"}} {}",
                        escape(u["addr"].as_str().unwrap_or("")),
                        u[k].as_u64().unwrap_or(0)
                    );
                }
            }
            let name = "dnsfast_upstream_latency_seconds";
            head(&mut s, name, "histogram", "Time to an upstream's answer.");
            for u in ups {
                let addr = escape(u["addr"].as_str().unwrap_or(""));
                let cum: Vec<u64> = u["latency_cumulative"]
                    .as_array()
                    .map(|a| a.iter().filter_map(Value::as_u64).collect())
                    .unwrap_or_default();
                for (i, le) in LATENCY_BUCKETS_US.iter().enumerate() {
                    let _ = writeln!(
                        s,
                        "{name}_bucket{{upstream=\"{addr}\",le=\"{}\"}} {}",
                        *le as f64 / 1e6,
                        cum.get(i).copied().unwrap_or(0)
                    );
                }
                let count = cum.last().copied().unwrap_or(0);
                let _ = writeln!(
                    s,
                    "{name}_bucket{{upstream=\"{addr}\",le=\"+Inf\"}} {count}"
                );
                let _ = writeln!(
                    s,
                    "{name}_sum{{upstream=\"{addr}\"}} {}",
                    u["latency_sum_us"].as_u64().unwrap_or(0) as f64 / 1e6
                );
                let _ = writeln!(s, "{name}_count{{upstream=\"{addr}\"}} {count}");
            }
        }
    }
    s
}

/// A Prometheus label value: backslash, quote and newline escaped.
fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prometheus_text_carries_every_counter() {
        let c = Counters {
            packets: 7,
            answered_nxdomain: 3,
            ..Default::default()
        };
        let stats = json!({
            "kernel": kernel_json(&c),
            "forwarder": {
                "udp_queries": 5, "tcp_queries": 1, "blocked": 2, "overloaded": 0,
                "upstreams_failed": 0, "no_route": 0, "truncated": 0,
                "rcodes": { "NOERROR": 4 },
                "cache": { "hits": 1, "misses": 3, "evictions": 0, "size": 3 },
                "zones": { "cluster.local": 2, ".": 1 },
                "upstreams": [{
                    "addr": "10.0.0.2:53", "up": true, "queries": 3, "failures": 0,
                    "latency_cumulative": [1,2,3,3,3,3,3,3,3,3,3,3,3], "latency_sum_us": 4000,
                }],
            },
        });
        let t = prometheus(&stats);
        assert!(t.contains("dnsfast_xdp_packets_total{counter=\"packets\"} 7\n"));
        assert!(t.contains("dnsfast_xdp_packets_total{counter=\"answered_nxdomain\"} 3\n"));
        assert!(t.contains("dnsfast_forwarder_udp_queries_total 5\n"));
        assert!(t.contains("dnsfast_forwarder_answers_total{rcode=\"NOERROR\"} 4\n"));
        assert!(t.contains("dnsfast_zone_queries_total{zone=\"cluster.local\"} 2\n"));
        assert!(t.contains(
            "dnsfast_upstream_latency_seconds_bucket{upstream=\"10.0.0.2:53\",le=\"0.0005\"} 1\n"
        ));
        assert!(t.contains(
            "dnsfast_upstream_latency_seconds_bucket{upstream=\"10.0.0.2:53\",le=\"+Inf\"} 3\n"
        ));
        assert!(
            t.contains("dnsfast_upstream_latency_seconds_sum{upstream=\"10.0.0.2:53\"} 0.004\n")
        );
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
        assert_eq!(escape("a\"b\\c"), "a\\\"b\\\\c");
    }
}
