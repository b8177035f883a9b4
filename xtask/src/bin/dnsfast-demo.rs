//! `cargo xtask demo`: a pod, a node and a slow cloud upstream in network
//! namespaces. A pod looks names up through its Kubernetes search list with,
//! in turn, on the node: dnsmasq as kube-dns ran it without patterns;
//! dnsmasq with the classic hand-listed `--address` suffixes; `dnsfast load`
//! with no hand-written pattern at all (auto mode); and, as the lower bound,
//! the same names as absolute names (trailing dot) through dnsfast.
//!
//!   pod (resolv.conf: ndots:5, 5 search domains)
//!    └─veth─ node 10.79.0.1: dnsmasq, then `dnsfast load` (XDP on this veth
//!              + its forwarder, in dnsmasq's place)
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
/// The classic hand-tuned dnsmasq list (kube-dns style): every suffix for
/// every TLD anyone remembered to list.
const HAND_LIST: &str = "--address=/com.default.svc.cluster.local/com.svc.cluster.local/com.cluster.local/com.us-west-2.compute.internal/com.compute.internal/";
/// dnsfast's whole configuration: the cluster's shape, no pattern.
const AUTO: &str = "[auto]\ncluster-domain = \"cluster.local\"\nnamespaces = [\"default\", \"kube-system\"]\nsearch = [\"us-west-2.compute.internal\", \"compute.internal\"]\n";
const LOOKUPS: [&str; 4] = [
    "api.github.com",
    "www.example.com",
    "web.default.svc.cluster.local",
    "kubedns.kube-system.svc.cluster.local",
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
            "10.96.0.20".parse()?,
        ),
        (
            "kubedns.kube-system.svc.cluster.local.".to_string(),
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

    println!("dnsfast demo: pod search list = {SEARCH}");
    println!("               ndots:5, timeout:2, attempts:1; upstream adds 30 ms and drops *.compute.internal\n");

    // 1 and 2: dnsmasq as kube-dns ran it, without and with the hand list.
    let listen = format!("--listen-address={NODE_DNS}");
    let server = format!("--server={UPSTREAM}");
    let dnsmasq_args = |extra: Option<&'static str>| -> Vec<String> {
        let mut a: Vec<&str> = vec![
            "--keep-in-foreground",
            "--no-resolv",
            "--no-hosts",
            "--bind-interfaces",
            &listen,
            "--user=root",
            "--pid-file=",
            "--cache-size=0",
            &server,
        ];
        a.extend(extra);
        a.into_iter().map(String::from).collect()
    };
    let mut columns = Vec::new();
    for (title, extra) in [("dnsmasq", None), ("hand-tuned", Some(HAND_LIST))] {
        let args = dnsmasq_args(extra);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let pid = lab.spawn(&node, "dnsmasq", &args, &log(&format!("{node}-dnsmasq")))?;
        wait_for_answers(&lab, &pod, &log(&up))?;
        columns.push((title, lookups(&lab, &pod, "")?));
        lab.stop(pid)?;
    }

    // 3 and 4: dnsfast in dnsmasq's place, same address and upstream, no
    // pattern; its caches off so every lookup pays its way to the upstream.
    let cfg = tmp.join(format!("{node}-auto.toml"));
    std::fs::write(&cfg, AUTO)?;
    let pins = PathBuf::from(format!("/sys/fs/bpf/dnsfast-demo-{node}"));
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
            "--config",
            cfg.to_str().unwrap(),
            "--listen",
            NODE_DNS,
            "--no-resolv",
            &server,
            "--cache-size=0",
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
    columns.push(("dnsfast", lookups(&lab, &pod, "")?));
    columns.push(("FQDN", lookups(&lab, &pod, ".")?));

    println!(
        "{:<40} {:>10} {:>11} {:>10} {:>10}   answer",
        "getent ahosts NAME (in the pod)", "dnsmasq", "hand-tuned", "dnsfast", "NAME."
    );
    for (i, name) in LOOKUPS.iter().enumerate() {
        let cells: Vec<String> = columns
            .iter()
            .map(|(_, c)| format!("{:.0?}", c[i].0))
            .collect();
        let answers: Vec<&str> = columns.iter().map(|(_, c)| c[i].1.as_str()).collect();
        let answer = if answers.iter().all(|a| *a == answers[0]) {
            answers[0].to_string()
        } else {
            answers.join(" / ")
        };
        println!(
            "{name:<40} {:>10} {:>11} {:>10} {:>10}   {answer}",
            cells[0], cells[1], cells[2], cells[3]
        );
    }
    println!(
        "\ndnsmasq: no patterns; hand-tuned: {} suffixes listed by hand (com.* only);\n\
         dnsfast: none listed, derived from [auto] (see `dnsfast suggest`); NAME.: the absolute name.",
        HAND_LIST.matches('/').count() - 1
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

/// Waits until the node's resolver answers an absolute name.
fn wait_for_answers(lab: &Lab, pod: &str, upstream_log: &str) -> Result<()> {
    let ready = wait_until(Duration::from_secs(10), || {
        lab.exec(
            pod,
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
        bail!("the lab's resolver never answered; see {upstream_log}");
    }
    Ok(())
}

/// `lookup` of every name in LOOKUPS, with `suffix` appended.
fn lookups(lab: &Lab, pod: &str, suffix: &str) -> Result<Vec<(Duration, String)>> {
    LOOKUPS
        .iter()
        .map(|n| lookup(lab, pod, &format!("{n}{suffix}")))
        .collect()
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
