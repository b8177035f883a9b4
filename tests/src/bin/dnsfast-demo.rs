//! `cargo xtask demo`: a pod, a node and a slow cloud upstream in network
//! namespaces. A pod looks names up through its Kubernetes search list, first
//! without dnsfast, then with `dnsfast load` on the node's pod-facing veth.
//!
//!   pod (resolv.conf: ndots:5, 5 search domains)
//!    └─veth─ node 10.79.0.1: first dnsmasq (no cache), then `dnsfast load`
//!              (XDP on this veth + its own forwarder, replacing dnsmasq)
//!              └─veth─ upstream 10.80.0.2: answers after 30 ms, drops *.compute.internal

use std::{
    collections::HashMap,
    net::SocketAddr,
    path::PathBuf,
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use dnsfast_tests::{
    bpftool_counters,
    netns::{cleanup_all, wait_until, Lab},
    upstream::Upstream,
};

const NODE_DNS: &str = "10.79.0.1";
const UPSTREAM: &str = "10.80.0.2";
const SEARCH: &str =
    "default.svc.cluster.local svc.cluster.local cluster.local us-west-2.compute.internal compute.internal";
/// The hand-written list this demo uses; deriving it is future work.
const PATTERNS: &str = "--address=/com.default.svc.cluster.local/com.svc.cluster.local/com.cluster.local/com.us-west-2.compute.internal/com.compute.internal/";
const LOOKUPS: [&str; 3] = [
    "api.github.com",
    "www.example.com",
    "web.default.svc.cluster.local",
];

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("upstream") {
        // Hidden: the fake upstream, started by the demo inside its namespace.
        if let Err(e) = upstream() {
            eprintln!("upstream: {e:#}");
            std::process::exit(1);
        }
        return;
    }
    // Ctrl-C or SIGTERM: remove the lab, then leave.
    let _ = ctrlc::set_handler(|| {
        eprintln!("\ninterrupted: cleaning up the lab");
        cleanup_all();
        std::process::exit(130);
    });
    if let Err(e) = demo() {
        eprintln!("demo: error: {e:#}");
        cleanup_all();
        std::process::exit(1);
    }
}

fn upstream() -> Result<()> {
    let answers = HashMap::from([
        ("api.github.com.".to_string(), "140.82.112.6".parse()?),
        ("www.example.com.".to_string(), "93.184.215.14".parse()?),
        (
            "web.default.svc.cluster.local.".to_string(),
            "10.96.0.10".parse()?,
        ),
    ]);
    Upstream {
        delay: Duration::from_millis(30),
        answers,
        drop_suffixes: vec!["compute.internal.".into()],
        ..Upstream::new(SocketAddr::new(UPSTREAM.parse()?, 53))
    }
    .serve()
}

fn demo() -> Result<()> {
    let bin = std::env::var("DNSFAST_BIN").context("DNSFAST_BIN (cargo xtask demo sets it)")?;
    let me = std::env::current_exe()?;
    let mut lab = Lab::new();
    let resolv =
        format!("nameserver {NODE_DNS}\nsearch {SEARCH}\noptions ndots:5 timeout:2 attempts:1\n");
    let pod = lab.add_ns("dmp", Some(&resolv))?;
    let node = lab.add_ns("dmn", None)?;
    let up = lab.add_ns("dmu", None)?;
    let (_, node_if) = lab.veth(&pod, &["10.79.0.2/24"], &node, &[&format!("{NODE_DNS}/24")])?;
    lab.veth(&node, &["10.80.0.1/24"], &up, &[&format!("{UPSTREAM}/24")])?;

    let tmp = std::env::temp_dir();
    let log = |n: &str| tmp.join(format!("{n}.log")).display().to_string();
    lab.spawn(&up, me.to_str().unwrap(), &["upstream"], &log(&up))?;
    let dnsmasq = lab.spawn(
        &node,
        "dnsmasq",
        &[
            "--keep-in-foreground",
            "--no-resolv",
            "--no-hosts",
            "--bind-interfaces",
            &format!("--listen-address={NODE_DNS}"),
            "--user=root",
            "--pid-file=",
            "--cache-size=0",
            &format!("--server={UPSTREAM}"),
        ],
        &log(&format!("{node}-dnsmasq")),
    )?;
    let ready = wait_until(Duration::from_secs(10), || {
        lab.exec(
            &pod,
            "dig",
            &[
                "+tries=1",
                "+time=1",
                &format!("@{NODE_DNS}"),
                "api.github.com.",
            ],
        )
        .map(|o| String::from_utf8_lossy(&o.stdout).contains("140.82.112.6"))
        .unwrap_or(false)
    });
    if !ready {
        bail!("the lab's resolver never answered; see {}", log(&up));
    }

    println!("dnsfast demo: pod search list = {SEARCH}");
    println!("               ndots:5, timeout:2, attempts:1; upstream adds 30 ms and drops *.compute.internal\n");
    let without: Vec<(Duration, String)> = LOOKUPS
        .iter()
        .map(|n| lookup(&lab, &pod, n))
        .collect::<Result<_>>()?;

    // dnsfast takes dnsmasq's place: same address, same upstream flag.
    lab.stop(dnsmasq)?;
    let pins = PathBuf::from(format!("/sys/fs/bpf/dnsfast-demo-{node}"));
    let upstream_flag = format!("--server={UPSTREAM}");
    let agent_log = log(&format!("{node}-dnsfast"));
    let agent = lab.spawn(
        &node,
        &bin,
        &[
            "load",
            "--iface",
            &node_if,
            "--pin-dir",
            pins.to_str().unwrap(),
            "--listen",
            NODE_DNS,
            "--no-resolv",
            &upstream_flag,
            PATTERNS,
        ],
        &agent_log,
    )?;
    let serving = || {
        std::fs::read_to_string(&agent_log)
            .unwrap_or_default()
            .contains("serving:")
    };
    if !wait_until(Duration::from_secs(20), serving) {
        bail!(
            "dnsfast did not start: {}",
            std::fs::read_to_string(&agent_log)?
        );
    }
    let with: Vec<(Duration, String)> = LOOKUPS
        .iter()
        .map(|n| lookup(&lab, &pod, n))
        .collect::<Result<_>>()?;

    println!(
        "{:<32} {:>16} {:>14}   answer",
        "getent ahosts NAME (in the pod)", "without dnsfast", "with dnsfast"
    );
    for ((name, (t0, a0)), (t1, a1)) in LOOKUPS.iter().zip(&without).zip(&with) {
        let same = if a0 == a1 {
            a1.clone()
        } else {
            format!("{a0} -> {a1}")
        };
        println!("{name:<32} {:>14.0?} {:>14.0?}   {same}", t0, t1);
    }
    println!(
        "\n(web.default.svc.cluster.local still waits: its artifacts, e.g. \
         web.default.svc.cluster.local.us-west-2.compute.internal, are not under any \
         hand-listed com.* pattern.)"
    );
    println!(
        "\nkernel counters (bpftool map dump pinned {}/counters, summed over CPUs):",
        pins.display()
    );
    for (field, total) in bpftool_counters(&pins)? {
        println!("  {field:<20} {total}");
    }
    lab.stop(agent)?;
    let agent_text = std::fs::read_to_string(&agent_log)?;
    if let Some(line) = agent_text.lines().find(|l| l.contains("forwarder: udp=")) {
        let counters = line.split("forwarder: ").nth(1).unwrap_or(line);
        println!("\nforwarder counters (logged by the agent at exit):\n  {counters}");
    }
    println!("\ndnsfast stopped (program detached, pins removed); lab removed.");
    Ok(())
}

/// Times `getent ahosts NAME` in the pod; returns the time and the first
/// address (or "no answer").
fn lookup(lab: &Lab, pod: &str, name: &str) -> Result<(Duration, String)> {
    let t = Instant::now();
    let out = lab.exec(pod, "getent", &["ahosts", name])?;
    let took = t.elapsed();
    let addr = String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap_or("no answer")
        .to_string();
    Ok((took, addr))
}
