//! `cargo xtask bench`: ns/packet of the XDP program through
//! BPF_PROG_TEST_RUN, blocked-name qps through a veth, and the forwarder's
//! cache-hit and miss qps, each against dnsmasq and unbound measured in the
//! same run. Not a test: nothing here asserts a time.

mod forward;
mod history;
mod hostile;
mod kube;
mod upgrade;

use std::{path::PathBuf, time::Duration};

use anyhow::{bail, Context, Result};
use clap::Parser;
use dnsfast::dataplane::{Dataplane, LoadOptions};
use dnsfast_common::pattern::{Action, Pattern};
use dnsfast_tests::{
    netns::{wait_until, Lab},
    pkt::{self, frame, Wrap, Q},
};
use hickory_proto::rr::RecordType;

#[derive(Parser)]
#[command(about = "dnsfast benchmarks")]
struct Args {
    /// BPF_PROG_TEST_RUN repeats per run.
    #[arg(long, default_value_t = 1_000_000)]
    repeat: u32,
    /// Interleaved rounds; each case reports its median.
    #[arg(long, default_value_t = 7)]
    runs: usize,
    /// Seconds of dnsperf load per server.
    #[arg(long, default_value_t = 5)]
    seconds: u32,
    /// Skip the dnsperf parts.
    #[arg(long)]
    no_qps: bool,
    /// Only the forwarder part.
    #[arg(long)]
    forward_only: bool,
    /// Only the XDP cases whose row (`case patterns name-bytes`, as
    /// printed) contains this text, and the empty program they are measured
    /// against: `--case "block hit"`, `--case "100k 25 "`. Handy under
    /// `perf record` to profile one path.
    #[arg(long, value_name = "TEXT")]
    case: Option<String>,
    /// Services created for the Kubernetes API -> kernel latency (0 skips
    /// it).
    #[arg(long, default_value_t = 200, value_name = "N")]
    k8s_creates: usize,
    /// Put this run's headline figures last in the history table of FILE
    /// (docs/benchmarks.md); the row is printed either way.
    #[arg(long, value_name = "FILE")]
    record: Option<PathBuf>,
    /// Rounds of the hostile-client part (each: every attack on dnsfast
    /// and on unbound); 0 skips it.
    #[arg(long, default_value_t = 2, value_name = "N")]
    hostile_rounds: usize,
    /// Only the hostile-client part.
    #[arg(long)]
    hostile_only: bool,
    /// Only the upgrades-under-load part.
    #[arg(long)]
    upgrade_only: bool,
    /// The mixed load's rate in the upgrades part (0 skips it).
    #[arg(long, default_value_t = 2000, value_name = "QPS")]
    upgrade_rate: u64,
    /// Seconds the victim is measured under each attack.
    #[arg(long, default_value_t = 8, value_name = "S")]
    hostile_seconds: u64,
    /// Internal: run the latency probe against this server (the forwarder
    /// part starts it inside the client namespace) and print its summary.
    #[arg(long, hide = true, value_name = "ADDR")]
    probe: Option<String>,
}

const SUFFIX: &str = "svc.cluster.local";
/// An allow pattern under a block pattern (`net.ns1.svc.cluster.local`).
const ALLOWED: &str = "b.net.ns1.svc.cluster.local";

/// One timed case: which dataplane (10 or 100k patterns), what, and the frame.
struct Case {
    dp: usize,
    floor: bool,
    what: &'static str,
    patterns: &'static str,
    name: String,
    frame: Vec<u8>,
}

fn main() -> Result<()> {
    let args = Args::parse();
    if let Some(server) = &args.probe {
        return forward::probe(server, args.seconds);
    }
    history::stamp();
    if args.upgrade_only {
        let bin =
            std::env::var("DNSFAST_BIN").context("DNSFAST_BIN (cargo xtask bench sets it)")?;
        return upgrade::run(&bin, args.upgrade_rate.max(1));
    }
    if args.hostile_only {
        let bin =
            std::env::var("DNSFAST_BIN").context("DNSFAST_BIN (cargo xtask bench sets it)")?;
        return hostile::run(&bin, args.hostile_rounds.max(1), args.hostile_seconds);
    }
    if !args.forward_only {
        xdp(&args)?;
    }
    if !args.no_qps {
        let bin =
            std::env::var("DNSFAST_BIN").context("DNSFAST_BIN (cargo xtask bench sets it)")?;
        forward::run(&bin, args.seconds, args.runs.min(5))?;
        if args.hostile_rounds > 0 {
            hostile::run(&bin, args.hostile_rounds, args.hostile_seconds)?;
        }
        if args.upgrade_rate > 0 {
            upgrade::run(&bin, args.upgrade_rate)?;
        }
    }
    if args.k8s_creates > 0 && !args.forward_only {
        let bin =
            std::env::var("DNSFAST_BIN").context("DNSFAST_BIN (cargo xtask bench sets it)")?;
        kube::run(&bin, args.k8s_creates)?;
    }
    let row = history::row();
    println!("\n== History row (docs/benchmarks.md; `--record FILE` adds it there)");
    println!("{}\n{row}", history::header());
    if let Some(file) = &args.record {
        history::record(file, &row)?;
        println!("recorded in {}", file.display());
    }
    Ok(())
}

fn xdp(args: &Args) -> Result<()> {
    let mut dps = vec![];
    for n in [10usize, 100_000] {
        let mut dp = Dataplane::load(&LoadOptions {
            bench_mode: true,
            max_patterns: 131_072,
            answer_cache: 0,
        })?;
        for p in search_patterns(n) {
            dp.insert_pattern(&p, Action::Block)?;
        }
        dp.insert_pattern(&Pattern::parse(ALLOWED)?, Action::Allow)?;
        dps.push(dp);
    }
    // Auto mode at the size the design is for: 1,000 namespaces, the
    // cluster domain, two cloud suffixes, the full TLD list.
    let mut auto_dp = Dataplane::load(&LoadOptions {
        bench_mode: true,
        max_patterns: 131_072,
        answer_cache: 0,
    })?;
    let derived = auto_rules(1000)?;
    let mut table = dnsfast::config::PatternTable::default();
    derived.add_to(&mut table)?;
    // As the agent writes them: the namespace suffixes folded into the
    // namespace set.
    let tables = auto_dp.reconcile(&dnsfast::rules::rules_of(&table), &derived.tlds)?;
    eprintln!("auto tables: {tables}");
    let memlock = auto_memlock(&auto_dp)?;
    dps.push(auto_dp);
    // The 10-pattern table with someone watching (`dnsfast watch`): what
    // the tail call to the event program costs, past the rate limit.
    let mut watched = Dataplane::load(&LoadOptions {
        bench_mode: true,
        max_patterns: 131_072,
        answer_cache: 0,
    })?;
    for p in search_patterns(10) {
        watched.insert_pattern(&p, Action::Block)?;
    }
    watched.set_watch(true)?;
    dps.push(watched);
    // The exact cluster domain at the size the design is for: 10,000
    // namespaces and 100,000 Services from the Kubernetes API, beside the
    // cloud suffixes and the TLD list.
    let mut k8s_dp = Dataplane::load(&LoadOptions {
        bench_mode: true,
        max_patterns: 131_072,
        answer_cache: 0,
    })?;
    let mut names = dnsfast::rules::ClusterNames::default();
    for n in 0..10_000 {
        let ns = format!("ns{n}");
        for s in 0..10 {
            names.services.insert((ns.clone(), format!("svc{s}")));
        }
        names.namespaces.insert(ns);
    }
    names
        .services
        .remove(&("ns500".to_string(), "svc9".to_string()));
    names.services.insert(("ns500".into(), "store".into()));
    let (mut k8s_rules, _) = dnsfast::rules::cluster_rules("cluster.local", &names, &[]);
    for (k, r) in dnsfast::rules::rules_of(&table) {
        // The cloud suffixes (auto mode keeps them beside the API).
        if dnsfast_common::pattern::key_name(&k).ends_with("internal") {
            k8s_rules.insert(k, r);
        }
    }
    let t = std::time::Instant::now();
    let k8s_tables = k8s_dp.reconcile(&k8s_rules, &derived.tlds)?;
    eprintln!(
        "kubernetes tables: {k8s_tables} ({} entries in {} ms)",
        k8s_rules.len(),
        t.elapsed().as_millis()
    );
    dps.push(k8s_dp);
    let mut arp = symmetric(&Wrap::v4(), &[0u8; 20]);
    arp[12..14].copy_from_slice(&0x0806u16.to_be_bytes());
    let udp = Wrap {
        dport: 8080,
        sport: 8080,
        ..Wrap::v4()
    };
    let nomatch = Q::new("www.example.org", RecordType::A).bytes();
    let case = |dp, floor, what, patterns, name: &str, frame| Case {
        dp,
        floor,
        what,
        patterns,
        name: name.to_string(),
        frame,
    };
    let mut cases = vec![
        case(
            0,
            true,
            "empty program (test-run floor)",
            "-",
            "-",
            arp.clone(),
        ),
        case(0, false, "ARP -> PASS", "10", "-", arp),
        case(
            0,
            false,
            "non-DNS UDP -> PASS",
            "10",
            "-",
            symmetric(&udp, &[0u8; 40]),
        ),
        case(
            0,
            false,
            "DNS, no match -> PASS",
            "10",
            "15",
            symmetric(&dns_wrap(), &nomatch),
        ),
    ];
    cases.push(case(
        3,
        false,
        "DNS, no match -> PASS, watched",
        "10",
        "15",
        symmetric(&dns_wrap(), &nomatch),
    ));
    let allowed = Q::new(&format!("a.{ALLOWED}"), RecordType::A).bytes();
    cases.push(case(
        0,
        false,
        "allow hit -> PASS",
        "10",
        "29",
        symmetric(&dns_wrap(), &allowed),
    ));
    for (dp, patterns) in [(0, "10"), (1, "100k")] {
        for len in [25usize, 250] {
            let q = Q::new(&blocked_name(len), RecordType::A).bytes();
            let f = symmetric(&dns_wrap(), &q);
            check_answers(&mut dps[dp], &f)?;
            cases.push(case(
                dp,
                false,
                "block hit -> NXDOMAIN + XDP_TX",
                patterns,
                &len.to_string(),
                f,
            ));
        }
    }

    let auto_label = format!("auto {}", derived.suffixes.len());
    let auto_label: &'static str = Box::leak(auto_label.into_boxed_str());
    for (what, name, answered) in [
        (
            "auto: artifact -> NXDOMAIN + TX",
            "api.github.com.ns500.svc.cluster.local",
            true,
        ),
        (
            "auto: cloud artifact -> NXDOMAIN + TX",
            "kubedns.kube-system.svc.cluster.local.us-west-2.compute.internal",
            true,
        ),
        (
            "auto: real name -> PASS",
            "web.ns500.svc.cluster.local",
            false,
        ),
    ] {
        let q = Q::new(name, RecordType::A).bytes();
        let f = symmetric(&dns_wrap(), &q);
        if answered {
            check_answers(&mut dps[2], &f)?;
        }
        cases.push(case(2, false, what, auto_label, &name.len().to_string(), f));
    }

    let k8s_label = "10k ns, 100k svc";
    for (what, name, answered) in [
        (
            "k8s: pod of a Service -> PASS",
            "store-0.store.ns500.svc.cluster.local",
            false,
        ),
        (
            "k8s: no such Service -> NXDOMAIN + TX",
            "wiki.ns500.svc.cluster.local",
            true,
        ),
        (
            "k8s: external name artifact -> NXDOMAIN + TX",
            "api.github.com.ns500.svc.cluster.local",
            true,
        ),
        (
            "k8s: no such namespace -> NXDOMAIN + TX",
            "web.nope.svc.cluster.local",
            true,
        ),
        (
            "k8s: short name artifact -> NXDOMAIN + TX",
            "wiki.cluster.local",
            true,
        ),
    ] {
        let q = Q::new(name, RecordType::A).bytes();
        let f = symmetric(&dns_wrap(), &q);
        if answered {
            check_answers(&mut dps[4], &f)?;
        }
        cases.push(case(4, false, what, k8s_label, &name.len().to_string(), f));
    }

    if let Some(only) = &args.case {
        cases.retain(|c| {
            c.floor || format!("{} {} {} ", c.what, c.patterns, c.name).contains(only.as_str())
        });
    }
    // Rounds interleave the cases, so drift in the machine's load hits
    // them all alike; each case reports its median over the rounds.
    let mut samples = vec![Vec::new(); cases.len()];
    for _ in 0..args.runs {
        for (c, v) in cases.iter().zip(samples.iter_mut()) {
            let d = dps[c.dp].time_run(&c.frame, args.repeat, c.floor)?;
            v.push(d.as_nanos() as f64);
        }
    }
    let medians: Vec<f64> = samples
        .iter_mut()
        .map(|v| {
            v.sort_by(f64::total_cmp);
            v[v.len() / 2]
        })
        .collect();
    // The fastest round: noise from other tenants of a shared machine only
    // ever adds time, so this is the steadier figure there.
    let mins: Vec<f64> = samples
        .iter()
        .map(|v| v.iter().copied().fold(f64::INFINITY, f64::min))
        .collect();
    let floor = medians[0];
    let min_floor = mins[0];
    println!(
        "== XDP program, BPF_PROG_TEST_RUN: median of {} interleaved rounds x {} repeats",
        args.runs, args.repeat
    );
    println!(
        "{:<34} {:>9} {:>10} {:>10} {:>16} {:>18}",
        "case", "patterns", "name bytes", "ns/packet", "minus floor (ns)", "fastest round (ns)"
    );
    let mut k8s_worst = 0.0f64;
    for ((c, m), low) in cases.iter().zip(&medians).zip(&mins) {
        let (net, low_net) = if c.floor {
            ("-".to_string(), "-".to_string())
        } else {
            (
                format!("{:.0}", m - floor),
                format!("{:.0}", low - min_floor),
            )
        };
        println!(
            "{:<34} {:>9} {:>10} {:>10.0} {:>16} {:>18}",
            c.what, c.patterns, c.name, m, net, low_net
        );
        // The history keeps the fastest round minus the empty program's.
        let key = match (c.what, c.patterns, c.name.as_str()) {
            ("DNS, no match -> PASS", "10", _) => Some("no_match"),
            (w, "100k", "25") if w.starts_with("block hit") => Some("block_100k"),
            (w, _, _) if w.starts_with("auto: artifact") => Some("artifact"),
            (w, _, _) if w.starts_with("auto: real name") => Some("real"),
            _ => None,
        };
        if let Some(k) = key {
            history::note(k, format!("{low_net} ns"));
        }
        if c.what.starts_with("k8s:") && !c.floor {
            k8s_worst = k8s_worst.max(low - min_floor);
        }
    }
    if k8s_worst > 0.0 {
        history::note("k8s", format!("{k8s_worst:.0} ns"));
    }
    println!(
        "auto rules for 1,000 namespaces: {} search suffixes, {} TLD labels; kernel map memory \
         (bpftool map show, bytes_memlock): {memlock}",
        derived.suffixes.len(),
        derived.tlds.len()
    );
    if !args.no_qps {
        qps(args)?;
    }
    Ok(())
}

/// What auto mode derives for `namespaces` namespaces `ns0`…, with a
/// cloud provider's two search suffixes.
fn auto_rules(namespaces: usize) -> Result<dnsfast::config::auto::Derived> {
    let settings = dnsfast::config::auto::AutoSettings {
        enabled: true,
        cluster_domain: "cluster.local".into(),
        namespaces: (0..namespaces)
            .map(|i| format!("ns{i}"))
            .chain(["kube-system".to_string()])
            .collect(),
        search: Some(vec![
            "us-west-2.compute.internal".into(),
            "compute.internal".into(),
        ]),
        resolv_conf: PathBuf::from("/dev/null"),
        tld_file: None,
        exact_cluster: false,
    };
    dnsfast::config::auto::derive(&settings, &dnsfast::config::PatternTable::default())
}

/// bytes_memlock of the pattern table and the label sets, as bpftool reports
/// them for pinned copies.
fn auto_memlock(dp: &Dataplane) -> Result<String> {
    let dir = PathBuf::from(format!("/sys/fs/bpf/dnsfast-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    dp.pin_maps(&dir)?;
    let mut parts = Vec::new();
    let mut total = 0u64;
    for name in ["patterns", "tlds", "namespaces"] {
        let out = dnsfast_tests::netns::run_ok(
            "bpftool",
            &[
                "-j",
                "map",
                "show",
                "pinned",
                dir.join(name).to_str().unwrap(),
            ],
        );
        let bytes = out
            .as_deref()
            .ok()
            .and_then(|o| o.split("\"bytes_memlock\":").nth(1))
            .and_then(|r| r.split([',', '}']).next())
            .and_then(|v| v.trim().parse::<u64>().ok());
        match bytes {
            Some(b) => {
                total += b;
                parts.push(format!("{name} {:.1} MB", b as f64 / 1e6));
            }
            None => parts.push(format!("{name} ?")),
        }
    }
    for entry in std::fs::read_dir(&dir)? {
        let _ = std::fs::remove_file(entry?.path());
    }
    let _ = std::fs::remove_dir(&dir);
    Ok(format!(
        "{} (total {:.1} MB)",
        parts.join(", "),
        total as f64 / 1e6
    ))
}

fn dns_wrap() -> Wrap {
    Wrap {
        sport: 53,
        dport: 53,
        ..Wrap::v4()
    }
}

/// Realistic patterns: `<tld>.<ns>.svc.cluster.local` for many namespaces.
fn search_patterns(n: usize) -> Vec<Pattern> {
    const TLDS: [&str; 10] = [
        "com", "net", "org", "io", "dev", "app", "co", "uk", "de", "cloud",
    ];
    (0..n)
        .map(|i| {
            let tld = TLDS[i % TLDS.len()];
            let tld = if i < TLDS.len() {
                tld.to_string()
            } else {
                format!("{tld}{}", i / TLDS.len())
            };
            Pattern::parse(&format!("{tld}.ns{}.{SUFFIX}", i % 1000)).unwrap()
        })
        .collect()
}

/// A name of exactly `len` characters under the first pattern.
fn blocked_name(len: usize) -> String {
    let suffix = format!("com.ns0.{SUFFIX}");
    let mut labels = vec![];
    let mut remaining = len - suffix.len();
    while remaining > 0 {
        let l = (remaining - 1).clamp(1, 63);
        labels.push("a".repeat(l));
        remaining -= l + 1;
    }
    labels.push(suffix);
    let name = labels.join(".");
    assert_eq!(name.len(), len);
    name
}

/// A frame whose answer is itself again (same MACs, IPs and ports), so each
/// BPF_PROG_TEST_RUN repeat, which reruns on the rewritten buffer, takes the
/// same path.
fn symmetric(w: &Wrap, payload: &[u8]) -> Vec<u8> {
    let mut f = frame(w, payload);
    f.copy_within(0..6, 6);
    f[26..30].copy_from_slice(&pkt::SERVER_V4);
    f[24] = 0;
    f[25] = 0;
    let c = pkt::ipv4_checksum(&f[14..34]);
    f[24..26].copy_from_slice(&c.to_be_bytes());
    f
}

fn check_answers(dp: &mut Dataplane, f: &[u8]) -> Result<()> {
    let (verdict, out) = dp.test_run(f)?;
    if verdict != 3 || out.len() != f.len() {
        bail!("bench packet not answered in place (verdict {verdict})");
    }
    Ok(())
}

/// An unbound config for a lab: in the foreground, no chroot or syslog,
/// open to its /24, plain iterator (no validator), then `extra`.
fn unbound_conf(interface: &str, threads: u32, extra: &str) -> String {
    let net = interface.rsplit_once('.').map_or(interface, |(n, _)| n);
    format!(
        "server:\n  interface: {interface}\n  port: 53\n  num-threads: {threads}\n  \
         do-daemonize: no\n  username: \"\"\n  chroot: \"\"\n  pidfile: \"\"\n  use-syslog: no\n  \
         logfile: \"\"\n  access-control: {net}.0/24 allow\n  module-config: \"iterator\"\n{extra}"
    )
}

/// Whether the server at `server` answers `name` with `want`, asked by
/// dig from namespace `ns` (the hostile and upgrade parts wait on it).
fn answers(
    lab: &dnsfast_tests::netns::Lab,
    ns: &str,
    server: &str,
    name: &str,
    want: &str,
) -> bool {
    let at = format!("@{server}");
    lab.exec_ok(ns, "dig", &["+short", "+time=1", "+tries=1", &at, name])
        .is_ok_and(|o| o.trim() == want)
}

/// A server under test in the server namespace.
struct Server {
    name: &'static str,
    cmd: String,
    args: Vec<String>,
}

fn qps(a: &Args) -> Result<()> {
    let bin = std::env::var("DNSFAST_BIN").context("DNSFAST_BIN (cargo xtask bench sets it)")?;
    let tmp = std::env::temp_dir();
    let names = tmp.join(format!("dnsfast-bench-{}.txt", std::process::id()));
    let mut q = String::new();
    for i in 0..2000 {
        q.push_str(&format!("host{i}.api.example.com.{SUFFIX} A\n"));
    }
    std::fs::write(&names, q)?;
    let unbound_file = tmp.join(format!("dnsfast-bench-{}-unbound.conf", std::process::id()));
    std::fs::write(
        &unbound_file,
        unbound_conf(
            "10.78.0.1",
            2,
            &format!("  local-zone: \"com.{SUFFIX}.\" always_nxdomain\n"),
        ),
    )?;

    let servers = [
        Server {
            name: "dnsfast XDP (skb mode)",
            cmd: bin.clone(),
            args: vec![],
        },
        Server {
            name: "dnsmasq --address=/com.svc.../",
            cmd: "dnsmasq".into(),
            args: [
                "--keep-in-foreground",
                "--no-resolv",
                "--no-hosts",
                "--bind-interfaces",
                "--listen-address=10.78.0.1",
                "--user=root",
                "--pid-file=",
                "--address=/com.svc.cluster.local/",
            ]
            .map(String::from)
            .to_vec(),
        },
        Server {
            name: "unbound always_nxdomain (2 thr)",
            cmd: "unbound".into(),
            args: vec!["-d".into(), "-c".into(), unbound_file.display().to_string()],
        },
    ];
    println!(
        "\n== Blocked names through a veth: dnsperf -l {} from a client namespace (same 2 cores)",
        a.seconds
    );
    println!(
        "{:<34} {:>12} {:>22}",
        "server", "qps", "dnsfast qps / this qps"
    );
    let mut first = None;
    let mut ratios = vec![];
    for s in &servers {
        let r = measure(s, &bin, &names, a.seconds);
        match r {
            Ok(qps) => {
                let base = *first.get_or_insert(qps);
                println!("{:<34} {:>12.0} {:>21.2}x", s.name, qps, base / qps);
                ratios.push(format!("{:.2}×", base / qps));
            }
            Err(e) => {
                println!("{:<34} failed: {e:#}", s.name);
                ratios.push("failed".into());
            }
        }
    }
    history::note("blocked_qps", ratios[1..].join(" / "));
    let _ = std::fs::remove_file(&names);
    let _ = std::fs::remove_file(&unbound_file);
    Ok(())
}

fn measure(s: &Server, bin: &str, names: &std::path::Path, seconds: u32) -> Result<f64> {
    let mut lab = Lab::new();
    let cli = lab.add_ns("dbc", None)?;
    let srv = lab.add_ns("dbs", None)?;
    let (_, srv_if) = lab.veth(&cli, &["10.78.0.2/24"], &srv, &["10.78.0.1/24"])?;
    let log = std::env::temp_dir().join(format!("{srv}.log"));
    let pins = PathBuf::from(format!("/sys/fs/bpf/dnsfast-bench-{srv}"));
    if s.name.starts_with("dnsfast") {
        let args = [
            "load",
            "--iface",
            &srv_if,
            "--mode",
            "skb",
            "--pin-dir",
            pins.to_str().unwrap(),
            "--no-forward",
            "--address=/com.svc.cluster.local/",
        ];
        lab.spawn(&srv, bin, &args, log.to_str().unwrap())?;
        if !wait_until(Duration::from_secs(20), || pins.join("counters").exists()) {
            bail!(
                "agent did not start: {}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
        }
    } else {
        let args: Vec<&str> = s.args.iter().map(String::as_str).collect();
        lab.spawn(&srv, &s.cmd, &args, log.to_str().unwrap())?;
    }
    // Wait until the server answers.
    let ready = wait_until(Duration::from_secs(10), || {
        lab.exec(
            &cli,
            "dig",
            &[
                "+tries=1",
                "+time=1",
                "@10.78.0.1",
                "x.com.svc.cluster.local",
            ],
        )
        .map(|o| String::from_utf8_lossy(&o.stdout).contains("NXDOMAIN"))
        .unwrap_or(false)
    });
    if !ready {
        bail!(
            "{} never answered NXDOMAIN: {}",
            s.name,
            std::fs::read_to_string(&log).unwrap_or_default()
        );
    }
    let out = lab.exec_ok(
        &cli,
        "dnsperf",
        &[
            "-s",
            "10.78.0.1",
            "-d",
            names.to_str().unwrap(),
            "-l",
            &seconds.to_string(),
            "-c",
            "4",
            "-q",
            "200",
        ],
    )?;
    let qps = out
        .lines()
        .find_map(|l| l.trim().strip_prefix("Queries per second:"))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .with_context(|| format!("no qps in dnsperf output:\n{out}"))?;
    Ok(qps)
}
