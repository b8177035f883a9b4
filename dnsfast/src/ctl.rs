//! The control CLI: `block`, `allow`, `stats`, `status`, `unload`. Pattern
//! changes go straight into the pinned kernel pattern table (so they work whether or
//! not an agent runs), then the agent is told to give its forwarder the
//! same table. Everything else asks the agent over its control socket.

use std::{
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use anyhow::{anyhow, bail, Context, Result};
use aya::maps::MapData;
use clap::{Args, Subcommand};
use dnsfast_common::{
    pattern::{key_name, rule_entry, Action, Pattern},
    Rule, PIN_DIR,
};
use serde_json::{json, Value};

use crate::{
    agent::{control, ifaces::kept_links, report},
    maps::{Patterns, Pins},
};

#[derive(Args, Debug, Clone)]
pub struct PinArgs {
    /// Where `dnsfast load` pinned its maps (and names its control socket,
    /// /run/dnsfast/<DIR below /sys/fs/bpf, / as -->.sock).
    #[arg(long, value_name = "DIR", default_value = PIN_DIR, global = true)]
    pub pin_dir: PathBuf,
}

#[derive(Subcommand, Debug)]
pub enum PatternCmd {
    /// Add patterns (each covers the name and every name below it).
    Add {
        #[arg(required = true, value_name = "PATTERN")]
        patterns: Vec<String>,
    },
    /// Remove patterns added before (as written, not names they cover).
    Del {
        #[arg(required = true, value_name = "PATTERN")]
        patterns: Vec<String>,
    },
    /// List the patterns in the kernel now.
    List {
        /// One JSON array of {"pattern", "action"} objects.
        #[arg(long)]
        json: bool,
    },
}

/// `dnsfast block|allow …`.
pub fn patterns(action: Action, cmd: PatternCmd, pins: &PinArgs) -> Result<()> {
    let p = Pins::open(&pins.pin_dir)?;
    // The agent writes the same table on a reload: one writer at a time.
    let lock = p.lock()?;
    let mut table = p.patterns()?;
    match cmd {
        PatternCmd::List { json } => {
            let rules = table.rules()?;
            let mut names: Vec<String> = rules
                .iter()
                .filter(|(_, r)| r.action == action.code())
                .map(|(k, _)| key_name(k))
                .collect();
            names.sort();
            if json {
                let v: Vec<Value> = names
                    .iter()
                    .map(|n| json!({ "pattern": n, "action": action.to_string() }))
                    .collect();
                println!("{}", Value::Array(v));
            } else {
                for n in names {
                    println!("{n}");
                }
            }
            return Ok(());
        }
        PatternCmd::Add { patterns } => {
            // All are checked before any is written: no half-applied change.
            let parsed = parse_all(&patterns)?;
            for pat in &parsed {
                if let Some(r) = exact(&table, pat)? {
                    if r.action != action.code() {
                        let other = Action::from_code(r.action)
                            .map(|a| a.to_string())
                            .unwrap_or_else(|| format!("action {}", r.action));
                        bail!("{pat} is already a {other} pattern; delete it there first");
                    }
                }
            }
            let mut added: Vec<Vec<u8>> = vec![];
            for pat in &parsed {
                let (key, rule) = rule_entry(pat, action);
                match table.insert(&key, rule) {
                    Ok(new) => {
                        if new {
                            added.push(key);
                        }
                    }
                    Err(e) => {
                        // Take back what this command added: all or nothing.
                        for k in &added {
                            table.remove(k).context("undoing a partial add")?;
                        }
                        return Err(e.context(format!("adding {pat}; nothing was added")));
                    }
                }
            }
            println!("{action}: added {} pattern(s)", parsed.len());
        }
        PatternCmd::Del { patterns } => {
            let parsed = parse_all(&patterns)?;
            for pat in &parsed {
                match exact(&table, pat)? {
                    Some(r) if r.action == action.code() => {}
                    Some(_) => bail!("{pat} is not a {action} pattern"),
                    None => bail!("{pat}: no such {action} pattern"),
                }
            }
            for pat in &parsed {
                let (key, _) = rule_entry(pat, action);
                table
                    .remove(&key)
                    .with_context(|| format!("removing {pat}"))?;
            }
            println!("{action}: removed {} pattern(s)", parsed.len());
        }
    }
    drop(lock);
    match control::ask(&pins.pin_dir, "resync")? {
        Some(_) => println!("the agent's forwarder follows"),
        None => println!("note: no agent runs; the kernel table changed, nothing else"),
    }
    println!(
        "note: a config reload puts the table back to the config; write lasting changes there"
    );
    Ok(())
}

/// The rule stored for exactly `pat`.
fn exact(table: &Patterns<MapData>, pat: &Pattern) -> Result<Option<Rule>> {
    let (key, _) = rule_entry(pat, Action::Block);
    table.get(&key)
}

fn parse_all(texts: &[String]) -> Result<Vec<Pattern>> {
    texts
        .iter()
        .map(|t| Pattern::parse(t).map_err(|e| anyhow!("pattern '{t}': {e}")))
        .collect()
}

#[derive(Args, Debug)]
pub struct StatsArgs {
    /// One JSON object (one per line with --watch).
    #[arg(long)]
    pub json: bool,
    /// Print again every --interval seconds, with rates.
    #[arg(long)]
    pub watch: bool,
    /// Seconds between prints with --watch.
    #[arg(long, default_value_t = 1.0, value_name = "SECS")]
    pub interval: f64,
}

/// The agent's stats, or the pinned kernel counters when no agent runs.
fn stats_now(pin_dir: &Path) -> Result<Value> {
    if let Some(v) = control::ask(pin_dir, "stats")? {
        return Ok(v);
    }
    let c = Pins::open(pin_dir)?.counters()?;
    Ok(json!({ "kernel": report::kernel_json(&c), "forwarder": null, "agent": false }))
}

pub fn stats(a: StatsArgs, pins: &PinArgs) -> Result<()> {
    if !(a.interval.is_finite() && a.interval >= 0.1) {
        bail!("--interval {}: give 0.1 seconds or more", a.interval);
    }
    let mut prev: Option<(Instant, Value)> = None;
    loop {
        let now = stats_now(&pins.pin_dir)?;
        let t = Instant::now();
        if a.json {
            println!("{now}");
        } else {
            let rates = prev
                .as_ref()
                .map(|(t0, v0)| (v0, t.duration_since(*t0).as_secs_f64()));
            print_stats(&now, rates);
        }
        if !a.watch {
            return Ok(());
        }
        prev = Some((t, now));
        std::thread::sleep(Duration::from_secs_f64(a.interval));
    }
}

fn print_stats(v: &Value, prev: Option<(&Value, f64)>) {
    let rate = |section: &str, key: &str, n: u64| -> String {
        match prev {
            Some((p, secs)) if secs > 0.0 => {
                let before = p[section][key].as_u64().unwrap_or(n);
                format!("{:>12.1}/s", n.saturating_sub(before) as f64 / secs)
            }
            _ => String::new(),
        }
    };
    println!("kernel (XDP, summed over CPUs)");
    if let Some(k) = v["kernel"].as_object() {
        for (name, n) in k {
            let n = n.as_u64().unwrap_or(0);
            println!("  {name:<22}{n:>14}{}", rate("kernel", name, n));
        }
    }
    let f = &v["forwarder"];
    if f.is_null() {
        println!(
            "forwarder: {}",
            if v["agent"] == json!(false) {
                "no agent runs"
            } else {
                "off (--no-forward)"
            }
        );
    } else {
        println!("forwarder");
        for name in [
            "udp_queries",
            "tcp_queries",
            "blocked",
            "overloaded",
            "upstreams_failed",
            "no_route",
            "truncated",
        ] {
            let n = f[name].as_u64().unwrap_or(0);
            println!("  {name:<22}{n:>14}{}", rate("forwarder", name, n));
        }
        if let Some(r) = f["rcodes"].as_object() {
            let s: Vec<String> = r.iter().map(|(k, n)| format!("{k}={n}")).collect();
            println!("  rcodes                {}", s.join(" "));
        }
        let c = &f["cache"];
        println!(
            "  cache                 hits={} misses={} evictions={} size={}",
            c["hits"], c["misses"], c["evictions"], c["size"]
        );
        if let Some(k) = f["kernel_cache"].as_object() {
            println!(
                "  kernel cache          stored={} skipped={} errors={}",
                k["stored"], k["skipped"], k["errors"]
            );
        }
        if let Some(z) = f["zones"].as_object() {
            for (zone, n) in z {
                println!("  zone {zone:<17}{n:>14}");
            }
        }
        if let Some(ups) = f["upstreams"].as_array() {
            for u in ups {
                let q = u["queries"].as_u64().unwrap_or(0);
                let mean = if q > 0 {
                    u["latency_sum_us"].as_u64().unwrap_or(0) as f64 / q as f64 / 1000.0
                } else {
                    0.0
                };
                println!(
                    "  upstream {:<22} {} queries={q} failures={} mean={mean:.2}ms",
                    u["addr"].as_str().unwrap_or("?"),
                    if u["up"] == json!(true) {
                        "up  "
                    } else {
                        "DOWN"
                    },
                    u["failures"],
                );
            }
        }
    }
    println!();
}

#[derive(Args, Debug)]
pub struct StatusArgs {
    /// The agent's status as one JSON object.
    #[arg(long)]
    pub json: bool,
}

pub fn status(a: StatusArgs, pins: &PinArgs) -> Result<()> {
    let dir = &pins.pin_dir;
    let Some(v) = control::ask(dir, "status")? else {
        let kept = kept_links(dir).unwrap_or_default();
        let pinned = dir.join("prog").exists();
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
                "no agent runs; the program stays attached to {} (--keep-attached): \
                 start `dnsfast load` to adopt it, or `dnsfast unload` to detach",
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
        println!("{v}");
        return Ok(());
    }
    println!(
        "agent pid {} up {}s, {}; program id {}; pins in {}{}",
        v["pid"],
        v["uptime_s"],
        if v["ready"] == json!(true) {
            "ready"
        } else {
            "NOT ready"
        },
        v["program_id"],
        v["pin_dir"].as_str().unwrap_or("?"),
        if v["keep_attached"] == json!(true) {
            " (--keep-attached)"
        } else {
            ""
        }
    );
    let specs = strings(&v["iface_specs"]);
    println!("interfaces (wanted: {})", specs.join(" "));
    for i in v["ifaces"].as_array().into_iter().flatten() {
        println!(
            "  {:<16} ifindex {:<5} mode {:<8} program {} attached {}s ago",
            i["name"].as_str().unwrap_or("?"),
            i["ifindex"],
            i["mode"].as_str().unwrap_or("?"),
            i["program_id"],
            i["attached_for_s"]
        );
    }
    let p = &v["patterns"];
    println!(
        "patterns: {} block, {} allow, {} search suffixes; {} TLD labels",
        p["block"], p["allow"], p["suffix"], v["tlds"]
    );
    let l = strings(&v["listeners"]);
    println!(
        "forwarder: {}",
        if l.is_empty() {
            "off".to_string()
        } else {
            format!("listening on {}", l.join(", "))
        }
    );
    for u in v["upstreams"].as_array().into_iter().flatten() {
        println!(
            "  upstream {} {}",
            u["addr"].as_str().unwrap_or("?"),
            if u["up"] == json!(true) { "up" } else { "DOWN" }
        );
    }
    let c = &v["config"];
    println!(
        "config: {} reload(s), {} refused{}",
        c["reloads"],
        c["refused"],
        c["last_error"]
            .as_str()
            .map(|e| format!("; last refusal: {e}"))
            .unwrap_or_default()
    );
    Ok(())
}

/// The strings of a JSON array (none if it is not one).
fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .map(|a| {
            a.iter()
                .filter_map(|s| s.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default()
}

#[derive(Args, Debug)]
pub struct UnloadArgs {
    /// Detach from this interface only; the agent keeps running.
    #[arg(long = "iface", value_name = "IFACE")]
    pub iface: Option<String>,
}

/// Detaches and removes pins: through the agent when one runs, directly
/// on the pins (a `--keep-attached` leftover) otherwise.
pub fn unload(a: UnloadArgs, pins: &PinArgs) -> Result<()> {
    let dir = &pins.pin_dir;
    let request = match &a.iface {
        Some(i) => format!("detach {i}"),
        None => "unload".to_string(),
    };
    if control::ask(dir, &request)?.is_some() {
        if let Some(i) = &a.iface {
            println!("{i}: detached (the agent keeps serving the others)");
            return Ok(());
        }
        // The agent detaches and removes its pins on its way out.
        let deadline = Instant::now() + Duration::from_secs(30);
        while control::socket_path(dir).exists() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        if control::socket_path(dir).exists() {
            bail!("the agent was asked to unload but is still running after 30 s");
        }
        println!("unloaded: the agent detached everything and exited");
        return Ok(());
    }
    crate::bpf::require_root("dnsfast unload")?;
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
            crate::load::remove_pins(dir);
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
    pub json: bool,
    /// Exit after N events.
    #[arg(long, value_name = "N")]
    pub count: Option<u64>,
}

/// Streams the kernel's query events from the running agent until
/// interrupted (or `--count` events).
pub fn watch(a: WatchArgs, pins: &PinArgs) -> Result<()> {
    use std::io::{BufRead, BufReader, Write};
    let path = control::socket_path(&pins.pin_dir);
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
