//! Upgrades under load, dnsfast against a plain restart of unbound (the
//! anchor), in the same run: a client sends a fixed-rate mix (artifacts,
//! cached names, cache misses; TCP one query in fifty) and checks every
//! answer within 1 s, while the server is replaced `UPGRADES` times:
//!
//! - dnsfast: a new `dnsfast load` beside the running one (the
//!   DaemonSet's surge update), which takes over; then the old one is
//!   stopped;
//! - unbound: SIGTERM, then a new unbound at once (what a DaemonSet of it
//!   does, with no handover to do).
//!
//! Each server first carries the same mix with nothing replaced, so the
//! run shows that the rate itself loses nothing on this machine.

use std::time::Duration;

use anyhow::{bail, Context, Result};
use dnsfast_tests::{
    clients::{mix_args, summary, upstream_args, GOOD},
    netns::{wait_until, Lab},
};

use crate::{answers, unbound_conf};

const NODE: &str = "10.76.0.1";
const CLIENT: &str = "10.76.0.2";
const UPGRADES: usize = 5;

pub fn run(bin: &str, rate: u64) -> Result<()> {
    let attack = std::env::var("DNSFAST_ATTACK").context("DNSFAST_ATTACK")?;
    let testdns = std::env::var("DNSFAST_TESTDNS").context("DNSFAST_TESTDNS")?;
    println!(
        "\n== Upgrades under load: a {rate} qps mix (1/3 artifacts, 1/3 cached, 1/3 misses; TCP 1 in 50), \
         {UPGRADES} replacements of the server, every answer checked within 1 s"
    );
    println!(
        "{:<44} {:>9} {:>7} {:>7} {:>7} {:>11}",
        "server and how it is replaced", "sent", "lost", "wrong", "late", "TCP failed"
    );
    let runs = [
        ("dnsfast load: nothing happens", 0),
        ("dnsfast load: surge handover", UPGRADES),
        ("unbound: nothing happens", 0),
        ("unbound: stop, start again", UPGRADES),
    ];
    for (who, replacements) in runs {
        let dnsfast = who.starts_with("dnsfast");
        let r = measure(dnsfast, bin, &attack, &testdns, rate, replacements)
            .with_context(|| who.to_string())?;
        let g = |k: &str| r[k].as_u64().unwrap_or(0);
        println!(
            "{:<44} {:>9} {:>7} {:>7} {:>7} {:>11}",
            who,
            g("sent"),
            g("lost"),
            g("wrong"),
            g("late"),
            g("tcp_failed")
        );
    }
    Ok(())
}

fn measure(
    dnsfast: bool,
    bin: &str,
    attack: &str,
    testdns: &str,
    rate: u64,
    replacements: usize,
) -> Result<serde_json::Value> {
    let mut lab = Lab::new();
    let (cli, node, iface) = lab.client_and_node(("bgc", "bgs"), CLIENT, NODE, None)?;
    let tmp = std::env::temp_dir();
    let log = |what: &str| tmp.join(format!("{node}-{what}.log")).display().to_string();
    let up = upstream_args("127.0.0.1:5300");
    let up: Vec<&str> = up.iter().map(String::as_str).collect();
    lab.spawn(&node, testdns, &up, &log("upstream"))?;
    let conf = tmp.join(format!("{node}-unbound.conf"));
    std::fs::write(
        &conf,
        unbound_conf(
            NODE,
            2,
            "  do-not-query-localhost: no\n  local-zone: \"test.\" nodefault\n  qname-minimisation: no\n  so-reuseport: yes\n\
             forward-zone:\n  name: \".\"\n  forward-addr: 127.0.0.1@5300\n",
        ),
    )?;
    let pins = format!("/sys/fs/bpf/dnsfast-bench-{node}");
    let args: Vec<String> = if dnsfast {
        [
            "load",
            "--iface",
            &iface,
            "--pin-dir",
            &pins,
            "--listen",
            NODE,
            "--server",
            "127.0.0.1#5300",
            "--no-resolv",
            "--address=/blocked.test/",
            "--client-qps=0",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    } else {
        vec!["-d".into(), "-c".into(), conf.display().to_string()]
    };
    let cmd = if dnsfast { bin } else { "unbound" };
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut server = lab.spawn(&node, cmd, &refs, &log("server-0"))?;
    if !wait_until(Duration::from_secs(30), || {
        answers(&lab, &cli, NODE, "up.good.test", GOOD)
    }) {
        bail!("the server did not come up");
    }
    let seconds = 6 + 4 * UPGRADES as u64;
    let out = log("mix");
    let args = mix_args(&format!("{NODE}:53"), rate, seconds);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mix = lab.spawn(&cli, attack, &args, &out)?;
    std::thread::sleep(Duration::from_secs(3));
    for i in 1..=replacements {
        if dnsfast {
            let new = lab.spawn(&node, cmd, &refs, &log(&format!("server-{i}")))?;
            let prev = log(&format!("server-{}", i - 1));
            let stood_down = wait_until(Duration::from_secs(30), || {
                std::fs::read_to_string(&prev).is_ok_and(|l| l.contains("handed over; idle"))
            });
            if !stood_down {
                bail!(
                    "no handover: {}",
                    std::fs::read_to_string(log(&format!("server-{i}"))).unwrap_or_default()
                );
            }
            let _ = lab.stop(server);
            server = new;
        } else {
            let _ = lab.stop(server);
            server = lab.spawn(&node, cmd, &refs, &log(&format!("server-{i}")))?;
        }
        std::thread::sleep(Duration::from_secs(4));
    }
    let done = wait_until(Duration::from_secs(seconds + 30), || {
        std::fs::read_to_string(&out).is_ok_and(|t| t.contains("\"sent\""))
    });
    let _ = lab.kill(mix);
    let _ = lab.stop(server);
    if !done {
        bail!("the load did not finish");
    }
    Ok(summary(&std::fs::read_to_string(&out)?))
}
