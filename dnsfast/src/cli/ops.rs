//! `dnsfast stats|status|watch|unload`: asking the running agent over its
//! control socket, and printing its typed snapshots (`agent::stats`) for
//! people or as JSON; without an agent, what the pins still tell.

use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Result};
use clap::Args;
use serde_json::{json, Value};

use super::PinArgs;
use crate::{
    agent::{
        client,
        ifaces::kept_links,
        stats::{KernelCounters, KubeStats, Stats, Status},
    },
    dataplane::{
        pins::{remove_pins, Pins},
        require_root,
    },
    paths,
};

#[derive(Args, Debug)]
pub struct StatsArgs {
    /// One JSON object (one per line with --watch).
    #[arg(long)]
    pub(crate) json: bool,
    /// Print again every --interval seconds, with rates.
    #[arg(long)]
    pub(crate) watch: bool,
    /// Seconds between prints with --watch.
    #[arg(long, default_value_t = 1.0, value_name = "SECS")]
    pub(crate) interval: f64,
}

/// The agent's stats, or the pinned kernel counters when no agent runs.
fn stats_now(pins: &PinArgs) -> Result<Stats> {
    if let Some(s) = client::ask_as(&pins.pin_dir, "stats")? {
        return Ok(s);
    }
    let c = Pins::open(&pins.pin_dir)?.counters()?;
    Ok(Stats {
        kernel: KernelCounters::from(&c),
        agent: Some(false),
        ..Default::default()
    })
}

pub fn stats(a: StatsArgs, pins: &PinArgs) -> Result<()> {
    if !(a.interval.is_finite() && a.interval >= 0.1) {
        bail!("--interval {}: give 0.1 seconds or more", a.interval);
    }
    let mut prev: Option<(Instant, Stats)> = None;
    loop {
        let now = stats_now(pins)?;
        let t = Instant::now();
        if a.json {
            println!("{}", serde_json::to_string(&now)?);
        } else {
            let rates = prev
                .as_ref()
                .map(|(t0, s0)| (s0, t.duration_since(*t0).as_secs_f64()));
            print_stats(&now, rates);
        }
        if !a.watch {
            return Ok(());
        }
        prev = Some((t, now));
        std::thread::sleep(Duration::from_secs_f64(a.interval));
    }
}

/// The Kubernetes API watch, in a line or two.
fn print_kube(k: &KubeStats) {
    println!(
        "kubernetes: {} ({} namespaces, {} services, {} entries for {}); {} events, {} errors{}",
        if k.synced {
            "synced: the cluster domain is exact"
        } else {
            "NOT synced: everything under the cluster domain passes"
        },
        k.namespaces,
        k.services,
        k.entries,
        k.cluster_domain,
        k.events,
        k.errors,
        k.last_event_age_s
            .map(|s| format!("; last event {s}s ago"))
            .unwrap_or_default()
    );
    if let Some(s) = k.broken_for_s {
        println!(
            "  watch broken for {s}s: {}",
            k.last_error.as_deref().unwrap_or("?")
        );
    }
    if let Some(d) = &k.degraded {
        println!("  degraded (entries did not fit): {d}");
    }
}

fn print_stats(s: &Stats, prev: Option<(&Stats, f64)>) {
    // Per second since the previous print, when there was one.
    let rate = |before: Option<u64>, n: u64| -> String {
        match prev {
            Some((_, secs)) if secs > 0.0 => {
                let before = before.unwrap_or(n);
                format!("{:>12.1}/s", n.saturating_sub(before) as f64 / secs)
            }
            _ => String::new(),
        }
    };
    if let Some(k) = &s.kubernetes {
        print_kube(k);
    }
    println!("kernel (XDP, summed over CPUs)");
    match &s.kernel {
        KernelCounters::Read(k) => {
            for (name, &n) in k {
                let before = prev.and_then(|(p, _)| match &p.kernel {
                    KernelCounters::Read(pk) => pk.get(name).copied(),
                    KernelCounters::Unreadable { .. } => None,
                });
                println!("  {name:<22}{n:>14}{}", rate(before, n));
            }
        }
        KernelCounters::Unreadable { error } => println!("  unreadable: {error}"),
    }
    let Some(f) = &s.forwarder else {
        println!(
            "forwarder: {}",
            if s.agent == Some(false) {
                "no agent runs"
            } else {
                "off (--no-forward)"
            }
        );
        println!();
        return;
    };
    println!("forwarder");
    let before = prev.and_then(|(p, _)| p.forwarder.as_ref());
    for (i, (name, n, _)) in f.counters().into_iter().enumerate() {
        let b = before.map(|b| b.counters()[i].1);
        println!("  {name:<22}{n:>14}{}", rate(b, n));
    }
    let rc: Vec<String> = f.rcodes.iter().map(|(k, n)| format!("{k}={n}")).collect();
    println!("  rcodes                {}", rc.join(" "));
    let c = &f.cache;
    println!(
        "  cache                 hits={} misses={} evictions={} size={}",
        c.hits, c.misses, c.evictions, c.size
    );
    if let Some(k) = &f.kernel_cache {
        println!(
            "  kernel cache          stored={} skipped={} errors={}",
            k.stored, k.skipped, k.errors
        );
    }
    for (zone, n) in &f.zones {
        println!("  zone {zone:<17}{n:>14}");
    }
    for u in &f.upstreams {
        let mean = if u.queries > 0 {
            u.latency_sum_us as f64 / u.queries as f64 / 1000.0
        } else {
            0.0
        };
        println!(
            "  upstream {:<22} {} queries={} failures={} slow-names={} retransmits={} mean={mean:.2}ms",
            u.addr,
            if u.up { "up  " } else { "DOWN" },
            u.queries,
            u.failures,
            u.slow_names,
            u.retransmits,
        );
    }
    println!();
}

#[derive(Args, Debug)]
pub struct StatusArgs {
    /// The agent's status as one JSON object.
    #[arg(long)]
    pub(crate) json: bool,
}

pub fn status(a: StatusArgs, pins: &PinArgs) -> Result<()> {
    let dir = &pins.pin_dir;
    let Some(v) = client::ask_as::<Status>(dir, "status")? else {
        let kept = kept_links(dir).unwrap_or_default();
        let pinned = paths::prog_pin(dir).exists();
        if a.json {
            let names: Vec<&String> = kept.iter().map(|(n, _)| n).collect();
            println!(
                "{}",
                json!({ "agent": false, "pinned": pinned, "kept_attached": names })
            );
            return Ok(());
        }
        if !kept.is_empty() {
            let names: Vec<&str> = kept.iter().map(|(n, _)| n.as_str()).collect();
            println!(
                "no agent runs; the program stays attached to {} (--keep-attached, or the \
                 agent died): it answers the patterns alone, cached answers and the \
                 Kubernetes API's verdicts stopped with the agent's lease. Start \
                 `dnsfast load` to adopt it, or `dnsfast unload` to detach",
                names.join(", ")
            );
        } else if pinned {
            println!(
                "no agent runs; stale pins in {} (nothing attached). `dnsfast unload` removes them",
                dir.display()
            );
        } else {
            println!("nothing loaded (no agent, no pins in {})", dir.display());
        }
        return Ok(());
    };
    if a.json {
        println!("{}", serde_json::to_string(&v)?);
        return Ok(());
    }
    println!(
        "agent pid {} up {}s, {}; program id {}; pins in {}{}",
        v.pid,
        v.uptime_s,
        if v.ready { "ready" } else { "NOT ready" },
        v.program_id,
        v.pin_dir,
        if v.keep_attached {
            " (--keep-attached)"
        } else {
            ""
        }
    );
    println!("interfaces (wanted: {})", v.iface_specs.join(" "));
    for i in &v.ifaces {
        println!(
            "  {:<16} ifindex {:<5} mode {:<8} program {} attached {}s ago",
            i.name, i.ifindex, i.mode, i.program_id, i.attached_for_s
        );
    }
    match &v.patterns {
        Some(p) => println!(
            "patterns: {} block, {} allow, {} search suffixes; {} TLD labels",
            p.block, p.allow, p.suffix, v.tlds
        ),
        None => println!("patterns: unreadable; {} TLD labels", v.tlds),
    }
    println!(
        "forwarder: {}",
        if v.listeners.is_empty() {
            "off".to_string()
        } else {
            format!("listening on {}", v.listeners.join(", "))
        }
    );
    for u in &v.upstreams {
        println!("  upstream {} {}", u.addr, if u.up { "up" } else { "DOWN" });
    }
    if let Some(k) = &v.kubernetes {
        print_kube(k);
    }
    let m = &v.memory;
    let mib = |b: u64| b as f64 / (1 << 20) as f64;
    println!(
        "memory: {:.1} MiB resident, {:.1} MiB in kernel maps (estimated {:.1}); budget {:.1} MiB",
        mib(m.rss_bytes),
        mib(m.kernel_map_bytes),
        mib(m.kernel_map_budget),
        mib(m.budget_bytes)
    );
    if let Some(c) = &v.config {
        println!(
            "config: {} reload(s), {} refused{}",
            c.reloads,
            c.refused,
            c.last_error
                .as_deref()
                .map(|e| format!("; last refusal: {e}"))
                .unwrap_or_default()
        );
    }
    Ok(())
}

#[derive(Args, Debug)]
pub struct UnloadArgs {
    /// Detach from this interface only; the agent keeps running.
    #[arg(long = "iface", value_name = "IFACE")]
    pub(crate) iface: Option<String>,
}

/// Detaches and removes pins: through the agent when one runs, directly
/// on the pins (a `--keep-attached` leftover) otherwise.
pub fn unload(a: UnloadArgs, pins: &PinArgs) -> Result<()> {
    let dir = &pins.pin_dir;
    let request = match &a.iface {
        Some(i) => format!("detach {i}"),
        None => "unload".to_string(),
    };
    if client::ask(dir, &request)?.is_some() {
        if let Some(i) = &a.iface {
            println!("{i}: detached (the agent keeps serving the others)");
            return Ok(());
        }
        // The agent detaches and removes its pins on its way out.
        let deadline = Instant::now() + Duration::from_secs(30);
        while paths::control_socket(dir).exists() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        if paths::control_socket(dir).exists() {
            bail!("the agent was asked to unload but is still running after 30 s");
        }
        println!("unloaded: the agent detached everything and exited");
        return Ok(());
    }
    require_root("dnsfast unload")?;
    let kept = kept_links(dir)?;
    match &a.iface {
        Some(i) => {
            let Some((_, path)) = kept.iter().find(|(n, _)| n == i) else {
                bail!(
                    "{i}: no agent runs and no link is kept for it in {}",
                    dir.display()
                );
            };
            std::fs::remove_file(path).map_err(|e| anyhow!("removing {}: {e}", path.display()))?;
            println!("{i}: detached (its pinned link removed)");
        }
        None => {
            if !dir.exists() {
                println!("nothing loaded in {}", dir.display());
                return Ok(());
            }
            remove_pins(dir);
            println!(
                "no agent ran; removed the pins in {}{}",
                dir.display(),
                if kept.is_empty() {
                    String::new()
                } else {
                    format!(" and detached {} kept link(s)", kept.len())
                }
            );
        }
    }
    Ok(())
}

#[derive(Args, Debug)]
pub struct WatchArgs {
    /// One JSON object per event.
    #[arg(long)]
    pub(crate) json: bool,
    /// Exit after N events.
    #[arg(long, value_name = "N")]
    pub(crate) count: Option<u64>,
}

/// Streams the kernel's query events from the running agent until
/// interrupted (or `--count` events).
pub fn watch(a: WatchArgs, pins: &PinArgs) -> Result<()> {
    use std::io::{BufRead, BufReader, Write};
    let path = paths::control_socket(&pins.pin_dir);
    let mut stream = std::os::unix::net::UnixStream::connect(&path).map_err(|e| {
        anyhow!(
            "no agent answers on {} ({e}): `dnsfast watch` needs a running `dnsfast load`",
            path.display()
        )
    })?;
    stream.write_all(b"watch\n")?;
    let mut lines = BufReader::new(stream).lines();
    let first = lines
        .next()
        .ok_or_else(|| anyhow!("the agent closed the connection"))??;
    let v: Value = serde_json::from_str(&first)?;
    if v["ok"] != json!(true) {
        bail!("the agent refused: {}", v["error"].as_str().unwrap_or("?"));
    }
    let mut left = a.count;
    if !a.json {
        eprintln!(
            "watching (one line per decided query, at most {} per second and CPU)",
            dnsfast_common::WATCH_EVENTS_PER_SEC
        );
    }
    for line in lines {
        let line = line?;
        if a.json {
            println!("{line}");
        } else {
            let e: Value = serde_json::from_str(&line)?;
            if let Some(n) = e["skipped"].as_u64() {
                println!("… {n} events skipped (this terminal is slower than the traffic)");
                continue;
            }
            println!("{}", event_line(&e));
        }
        if let Some(n) = left.as_mut() {
            *n -= 1;
            if *n == 0 {
                return Ok(());
            }
        }
    }
    bail!("the agent went away")
}

fn event_line(e: &Value) -> String {
    let ts = e["ts"].as_f64().unwrap_or(0.0);
    let secs = ts as u64 % 86_400;
    let ms = ((ts.fract()) * 1000.0) as u64;
    let verdict = match e["verdict"].as_str().unwrap_or("") {
        "nxdomain" => "NXDOMAIN in the kernel",
        "cache" => "answered from the kernel cache",
        "pass" => "passed up",
        "allowed" => "passed up (allowed)",
        other => other,
    };
    let rule = match (e["action"].as_str(), e["pattern"].as_str()) {
        (Some(a), Some(p)) => format!("  [{a} {p}]"),
        _ => String::new(),
    };
    format!(
        "{:02}:{:02}:{:02}.{ms:03}Z {:<15} {:<5} {} -> {verdict}{rule}",
        secs / 3600,
        secs / 60 % 60,
        secs % 60,
        e["client"].as_str().unwrap_or("?"),
        e["type"].as_str().unwrap_or("?"),
        e["name"].as_str().unwrap_or("?"),
    )
}
