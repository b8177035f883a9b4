//! Hostile clients, dnsfast against unbound (the anchor), each attack on
//! each server in the same run, interleaved:
//!
//!   victim  10.77.0.2 ──veth──┐
//!                             node: server under test 10.77.0.1:53 ── upstream 127.0.0.1:5300
//!   attacker 10.77.1.2 ──veth─┘        (dnsfast-testdns: the victim's names, slow names
//!                                        never answered, 60 KB TXT answers over TCP)
//!
//! The victim asks 50 names a second it never asked before (cache misses,
//! one in five over TCP) and checks every answer; the table reports its
//! success rate and p99 latency under each attack, and the server's peak
//! resident memory (VmHWM; dnsfast's BPF maps come on top of it, and are
//! bounded by its config: docs/limits.md).

use std::{path::Path, time::Duration};

use anyhow::{bail, Context, Result};
use dnsfast_tests::{
    clients::{self, summary, upstream_args, victim_args, GOOD},
    netns::{wait_until, Lab},
};

use crate::{answers, unbound_conf};

const NODE: &str = "10.77.0.1";
const VICTIM: &str = "10.77.0.2";
const ATTACKER: &str = "10.77.1.2";
const ATTACKER_GW: &str = "10.77.1.1";

/// Each attack: its name and `dnsfast-attack` arguments (the server and
/// the duration are added); the hostile suite's own, so that the tests
/// and the bench measure the same thing.
const ATTACKS: [(&str, &[&str]); 7] = [
    ("none (baseline)", &[]),
    ("tcp: never read", clients::TCP_NEVER_READ),
    ("tcp: slowloris", clients::SLOWLORIS),
    ("tcp: churn", clients::TCP_CHURN),
    ("udp: random-name flood", clients::UDP_FLOOD),
    ("udp: names never answered", clients::SLOW_NAMES),
    ("tcp: 60 KB answers", clients::LARGE_ANSWERS),
];

#[derive(Clone, Copy, Default)]
struct Seen {
    ok: u64,
    sent: u64,
    wrong: u64,
    p99_ms: f64,
    rss_mb: f64,
}

pub fn run(bin: &str, rounds: usize, seconds: u64) -> Result<()> {
    let attack =
        std::env::var("DNSFAST_ATTACK").context("DNSFAST_ATTACK (cargo xtask bench sets it)")?;
    let testdns =
        std::env::var("DNSFAST_TESTDNS").context("DNSFAST_TESTDNS (cargo xtask bench sets it)")?;
    let tmp = std::env::temp_dir();
    let conf = tmp.join(format!(
        "dnsfast-bench-{}-unbound-hostile.conf",
        std::process::id()
    ));
    std::fs::write(
        &conf,
        unbound_conf(
            NODE,
            2,
            "  access-control: 10.77.1.0/24 allow\n  do-not-query-localhost: no\n  local-zone: \"test.\" nodefault\n  \
             qname-minimisation: no\n  so-reuseport: yes\n\
             forward-zone:\n  name: \".\"\n  forward-addr: 127.0.0.1@5300\n",
        ),
    )?;
    let servers: [(&str, Vec<String>); 2] = [
        (
            "dnsfast load",
            [
                "load",
                "--iface",
                "{iface}",
                "--iface",
                "{iface2}",
                "--pin-dir",
                "{pins}",
                "--listen",
                NODE,
                "--server",
                "127.0.0.1#5300",
                "--no-resolv",
            ]
            .iter()
            .map(|s| s.to_string())
            .collect(),
        ),
        (
            "unbound",
            vec!["-d".into(), "-c".into(), conf.display().to_string()],
        ),
    ];
    let mut seen = vec![vec![Vec::<Seen>::new(); servers.len()]; ATTACKS.len()];
    for round in 0..rounds {
        for (ai, (aname, aargs)) in ATTACKS.iter().enumerate() {
            // Alternate which server goes first from round to round.
            for k in 0..servers.len() {
                let si = (k + round) % servers.len();
                let (sname, sargs) = &servers[si];
                let cmd = if si == 0 { bin } else { "unbound" };
                let s = measure(cmd, sargs, aargs, &attack, &testdns, seconds)
                    .with_context(|| format!("{sname} under {aname}"))?;
                seen[ai][si].push(s);
            }
        }
    }
    println!(
        "\n== Hostile clients: a victim's cache misses (50/s, 1 in 5 over TCP) while one client attacks; \
         {rounds} round(s) of {seconds} s, median (best)"
    );
    println!(
        "{:<28} {:<14} {:>18} {:>18} {:>9} {:>11}",
        "attack", "server", "victim answered", "victim p99 ms", "wrong", "peak RSS MB"
    );
    for (ai, (aname, _)) in ATTACKS.iter().enumerate() {
        for (si, (sname, _)) in servers.iter().enumerate() {
            let v = &seen[ai][si];
            let rate = |s: &Seen| 100.0 * s.ok as f64 / s.sent.max(1) as f64;
            let rates: Vec<f64> = v.iter().map(rate).collect();
            let p99: Vec<f64> = v.iter().map(|s| s.p99_ms).collect();
            let rss = v.iter().map(|s| s.rss_mb).fold(0.0, f64::max);
            let wrong: u64 = v.iter().map(|s| s.wrong).sum();
            println!(
                "{:<28} {:<14} {:>9.1}% ({:>5.1}%) {:>9.1} ({:>6.1}) {:>9} {:>11.1}",
                aname,
                sname,
                median(&rates),
                rates.iter().cloned().fold(0.0, f64::max),
                median(&p99),
                p99.iter().cloned().fold(f64::MAX, f64::min),
                wrong,
                rss
            );
        }
    }
    let _ = std::fs::remove_file(&conf);
    Ok(())
}

fn median(v: &[f64]) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(|a, b| a.total_cmp(b));
    v.get(v.len() / 2).copied().unwrap_or(0.0)
}

fn measure(
    cmd: &str,
    args: &[String],
    attack_args: &[&str],
    attack: &str,
    testdns: &str,
    seconds: u64,
) -> Result<Seen> {
    let mut lab = Lab::new();
    let vic = lab.add_ns("bhv", None)?;
    let node = lab.add_ns("bhn", None)?;
    let atk = lab.add_ns("bha", None)?;
    let (_, iface) = lab.veth(
        &vic,
        &[&format!("{VICTIM}/24")],
        &node,
        &[&format!("{NODE}/24")],
    )?;
    let (_, iface2) = lab.veth(
        &atk,
        &[&format!("{ATTACKER}/24")],
        &node,
        &[&format!("{ATTACKER_GW}/24")],
    )?;
    lab.exec_ok(
        &atk,
        "ip",
        &["route", "add", "10.77.0.0/24", "via", ATTACKER_GW],
    )?;
    let tmp = std::env::temp_dir();
    let log = |what: &str| tmp.join(format!("{node}-{what}.log")).display().to_string();
    let up = upstream_args("127.0.0.1:5300");
    let up: Vec<&str> = up.iter().map(String::as_str).collect();
    lab.spawn(&node, testdns, &up, &log("upstream"))?;
    let pins = format!("/sys/fs/bpf/dnsfast-bench-{node}");
    let args: Vec<String> = args
        .iter()
        .map(|a| {
            a.replace("{iface}", &iface)
                .replace("{iface2}", &iface2)
                .replace("{pins}", &pins)
        })
        .collect();
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let server = lab.spawn(&node, cmd, &refs, &log("server"))?;
    // Up when it answers the victim.
    let up = wait_until(Duration::from_secs(20), || {
        answers(&lab, &vic, NODE, "up.good.test", GOOD)
    });
    if !up {
        bail!(
            "the server did not come up: {}",
            std::fs::read_to_string(log("server")).unwrap_or_default()
        );
    }
    let attacker = if attack_args.is_empty() {
        None
    } else {
        let mut all: Vec<String> = attack_args.iter().map(|s| s.to_string()).collect();
        all.extend([
            "--server".into(),
            format!("{NODE}:53"),
            "--seconds".into(),
            (seconds + 3).to_string(),
        ]);
        let refs: Vec<&str> = all.iter().map(String::as_str).collect();
        let pid = lab.spawn(&atk, attack, &refs, &log("attack"))?;
        std::thread::sleep(Duration::from_secs(2));
        Some(pid)
    };
    let args = victim_args(&format!("{NODE}:53"), &[GOOD], seconds);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = lab.exec_ok(&vic, attack, &args)?;
    let rss_mb = peak_rss_mb(server);
    if let Some(pid) = attacker {
        let _ = lab.kill(pid);
    }
    let _ = lab.stop(server);
    let _ = std::fs::remove_dir_all(Path::new(&pins));
    let v = summary(&out);
    if v.is_null() {
        bail!("no summary from the victim: {out}");
    }
    let g = |k: &str| v[k].as_u64().unwrap_or(0);
    Ok(Seen {
        ok: g("ok"),
        sent: g("sent"),
        wrong: g("wrong"),
        p99_ms: g("p99_us") as f64 / 1000.0,
        rss_mb,
    })
}

/// VmHWM of a process, in MB.
fn peak_rss_mb(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        })
        .map_or(0.0, |kb| kb / 1000.0)
}
