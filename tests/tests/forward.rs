//! The forwarder end to end: a client namespace with a Kubernetes
//! resolv.conf, a node running `dnsfast load` (XDP on its veth plus the
//! forwarder), and an upstream namespace with several test DNS servers
//! that log every query they receive, so each check can count what reached
//! them.
//!
//!   client 10.82.0.2 ──veth── node 10.82.0.1:53 (dnsfast)
//!                              node 10.83.0.1 ──veth── upstreams 10.83.0.2-.6

use std::{
    path::PathBuf,
    time::{Duration, Instant},
};

use dnsfast_tests::{
    bpftool_counter, dnsfast_bin,
    netns::{wait_until, Lab},
    require_root,
};

const NODE: &str = "10.82.0.1";
const CLUSTER_UP: &str = "10.83.0.2";
const DEFAULT_UP: &str = "10.83.0.3";
/// Two servers that never answer.
const BLACKHOLE_1: &str = "10.83.0.4";
const BLACKHOLE_2: &str = "10.83.0.5";
/// Sends a forged reply (wrong ID, 203.0.113.66) before each real one.
const SPOOFER: &str = "10.83.0.6";
/// No server at first (port unreachable); one starts during a test.
const LATE: &str = "10.83.0.7";
/// The node's and an upstream's IPv6 addresses.
const NODE6: &str = "fd82::1";
const UP6: &str = "fd83::2";

const CONFIG: &str = r#"
[forward]
timeout-ms = 2000

[[zone]]
name = "failover.test"
upstreams = [{ addr = "10.83.0.4", timeout-ms = 300 }, "10.83.0.3"]

[[zone]]
name = "dead.test"
upstreams = [{ addr = "10.83.0.4", timeout-ms = 200 }, { addr = "10.83.0.5", timeout-ms = 200 }]

[[zone]]
name = "spoof.test"
upstreams = ["10.83.0.6"]

[[zone]]
name = "late.test"
upstreams = ["10.83.0.7"]

[[zone]]
name = "v6up.test"
upstreams = ["[fd83::2]:53"]
"#;

struct Setup {
    lab: Lab,
    cli: String,
    node: String,
    ups: String,
    pin_dir: PathBuf,
    tmp: PathBuf,
    agent: u32,
    agent_log: PathBuf,
}

impl Setup {
    /// Lines in an upstream's query log that ask for `name`.
    fn queries_at(&self, upstream: &str, name: &str) -> usize {
        let name = format!(" {}. ", name.to_ascii_lowercase());
        std::fs::read_to_string(self.upstream_log(upstream))
            .unwrap_or_default()
            .lines()
            .filter(|l| format!("{l} ").contains(&name))
            .count()
    }

    fn upstream_log(&self, upstream: &str) -> PathBuf {
        self.tmp.join(format!("{}-{upstream}.log", self.node))
    }

    fn dig(&self, args: &[&str]) -> Dig {
        self.dig_at(NODE, args)
    }

    fn dig_at(&self, server: &str, args: &[&str]) -> Dig {
        let server = format!("@{server}");
        let mut all = vec!["+tries=1", "+time=4", &server];
        all.extend_from_slice(args);
        let t = Instant::now();
        let out = self.lab.exec(&self.cli, "dig", &all).unwrap();
        Dig {
            text: String::from_utf8_lossy(&out.stdout).into_owned(),
            took: t.elapsed(),
        }
    }

    fn agent_log(&self) -> String {
        std::fs::read_to_string(&self.agent_log).unwrap_or_default()
    }
}

struct Dig {
    text: String,
    took: Duration,
}

impl Dig {
    fn status(&self) -> &str {
        dnsfast_tests::rcode(&self.text)
    }

    /// (TTL, data) of the answer records.
    fn answers(&self) -> Vec<(u32, String)> {
        self.text
            .split(";; ANSWER SECTION:\n")
            .nth(1)
            .map(|sec| {
                sec.lines()
                    .take_while(|l| !l.is_empty())
                    .filter_map(|l| {
                        let f: Vec<&str> = l.split_whitespace().collect();
                        Some((f.get(1)?.parse().ok()?, f.get(4)?.to_string()))
                    })
                    .collect()
            })
            .unwrap_or_default()
    }
}

fn setup(extra_agent_args: &[&str]) -> Setup {
    let mut lab = Lab::new();
    let resolv = format!(
        "nameserver {NODE}\nsearch default.svc.cluster.local svc.cluster.local cluster.local\noptions ndots:5 timeout:3 attempts:1\n"
    );
    let cli = lab.add_ns("ffc", Some(&resolv)).unwrap();
    let node = lab.add_ns("ffn", None).unwrap();
    let ups = lab.add_ns("ffu", None).unwrap();
    let (_, node_if) = lab
        .veth(
            &cli,
            &["10.82.0.2/24", "fd82::2/64"],
            &node,
            &[&format!("{NODE}/24"), &format!("{NODE6}/64")],
        )
        .unwrap();
    let up_addrs: Vec<String> = [
        CLUSTER_UP,
        DEFAULT_UP,
        BLACKHOLE_1,
        BLACKHOLE_2,
        SPOOFER,
        LATE,
    ]
    .iter()
    .map(|a| format!("{a}/24"))
    .chain([format!("{UP6}/64")])
    .collect();
    let up_refs: Vec<&str> = up_addrs.iter().map(String::as_str).collect();
    lab.veth(&node, &["10.83.0.1/24", "fd83::1/64"], &ups, &up_refs)
        .unwrap();

    let tmp = std::env::temp_dir();
    let testdns = env!("CARGO_BIN_EXE_dnsfast-testdns");
    let servers: [(&str, Vec<&str>); 5] = [
        (
            CLUSTER_UP,
            vec!["--answer", "web.default.svc.cluster.local=10.96.0.20"],
        ),
        (
            DEFAULT_UP,
            vec![
                "--answer",
                "www.example.com=93.184.215.14",
                "--answer",
                "short.example.com=192.0.2.30",
                "--answer",
                "www.failover.test=192.0.2.40",
                "--tc",
                "big.example.com",
                "--ttl",
                "60",
            ],
        ),
        (BLACKHOLE_1, vec!["--drop", "."]),
        (BLACKHOLE_2, vec!["--drop", "."]),
        (
            SPOOFER,
            vec!["--spoof", "--answer", "www.spoof.test=192.0.2.50"],
        ),
    ];
    for (addr, args) in servers {
        let log = tmp.join(format!("{node}-{addr}.log"));
        let listen = format!("{addr}:53");
        let mut all = vec!["--listen", &listen, "--log", log.to_str().unwrap()];
        all.extend(args);
        let out = tmp.join(format!("{node}-{addr}.out"));
        lab.spawn(&ups, testdns, &all, out.to_str().unwrap())
            .unwrap();
    }

    let log6 = tmp.join(format!("{node}-{UP6}.log"));
    let listen6 = format!("[{UP6}]:53");
    let out6 = tmp.join(format!("{node}-{UP6}.out"));
    lab.spawn(
        &ups,
        testdns,
        &[
            "--listen",
            &listen6,
            "--log",
            log6.to_str().unwrap(),
            "--answer",
            "www.v6up.test=192.0.2.70",
        ],
        out6.to_str().unwrap(),
    )
    .unwrap();

    let cfg = tmp.join(format!("{node}.toml"));
    std::fs::write(&cfg, CONFIG).unwrap();
    let pin_dir = format!("/sys/fs/bpf/dnsfast-test-{node}");
    let agent_log = tmp.join(format!("{node}-agent.log"));
    let bin = dnsfast_bin();
    let mut args = vec![
        "load",
        "--iface",
        &node_if,
        "--mode",
        "skb",
        "--pin-dir",
        &pin_dir,
        "--config",
        cfg.to_str().unwrap(),
        "--listen",
        NODE,
        "--listen",
        "[fd82::1]:53",
        "--no-resolv",
        "--server=/cluster.local/10.83.0.2",
        "--server=10.83.0.3",
        "--cache-size=10000",
        "--no-negcache",
        "--log-queries",
        "--address=/com.svc.cluster.local/",
    ];
    args.extend_from_slice(extra_agent_args);
    let agent = lab
        .spawn(
            &node,
            bin.to_str().unwrap(),
            &args,
            agent_log.to_str().unwrap(),
        )
        .unwrap();
    let s = Setup {
        lab,
        cli,
        node,
        ups,
        pin_dir: PathBuf::from(&pin_dir),
        tmp,
        agent,
        agent_log,
    };
    let up = wait_until(Duration::from_secs(30), || {
        s.agent_log().contains("serving:")
            && s.dig(&["www.example.com"]).text.contains("93.184.215.14")
    });
    assert!(up, "agent did not come up:\n{}", s.agent_log());
    s
}

#[test]
fn routes_per_zone_caches_and_counts_ttl_down() {
    require_root!();
    let s = setup(&[]);

    // Per-zone routing: the cluster zone's server knows this name, the
    // default one doesn't.
    let d = s.dig(&["web.default.svc.cluster.local"]);
    assert_eq!(d.status(), "NOERROR", "{}", d.text);
    assert_eq!(d.answers()[0].1, "10.96.0.20");
    assert_eq!(s.queries_at(CLUSTER_UP, "web.default.svc.cluster.local"), 1);
    assert_eq!(s.queries_at(DEFAULT_UP, "web.default.svc.cluster.local"), 0);
    assert_eq!(s.queries_at(CLUSTER_UP, "www.example.com"), 0);

    // A cache hit never reaches the upstream, and its TTL counts down. The
    // forwarder copied the answer into the kernel's answer cache, so over
    // UDP the XDP program answers it in place.
    let first = s.dig(&["short.example.com"]);
    assert_eq!(first.answers(), vec![(60, "192.0.2.30".to_string())]);
    let kernel_hits = bpftool_counter(&s.pin_dir, "answered_cache");
    std::thread::sleep(Duration::from_millis(2100));
    let again = s.dig(&["SHORT.Example.COM"]);
    assert_eq!(
        bpftool_counter(&s.pin_dir, "answered_cache"),
        kernel_hits + 1,
        "the repeat was answered by the XDP program"
    );
    assert_eq!(again.status(), "NOERROR");
    let (ttl, ip) = again.answers()[0].clone();
    assert_eq!(ip, "192.0.2.30");
    assert!((55..=58).contains(&ttl), "TTL after 2 s: {ttl}");
    assert!(
        again.text.contains("\n;SHORT.Example.COM."),
        "question case: {}",
        again.text
    );
    assert_eq!(s.queries_at(DEFAULT_UP, "short.example.com"), 1);

    // IPv6 end to end: the client asks the node's IPv6 address, the zone's
    // upstream is IPv6; the repeat is answered by the XDP program over
    // IPv6 (its UDP checksum computed in the kernel, or dig would drop it).
    let d = s.dig_at(NODE6, &["www.v6up.test"]);
    assert_eq!(
        d.answers(),
        vec![(60, "192.0.2.70".to_string())],
        "{}",
        d.text
    );
    let kernel_hits = bpftool_counter(&s.pin_dir, "answered_cache");
    let d = s.dig_at(NODE6, &["www.V6up.test"]);
    assert_eq!(d.answers()[0].1, "192.0.2.70", "{}", d.text);
    assert_eq!(
        bpftool_counter(&s.pin_dir, "answered_cache"),
        kernel_hits + 1
    );
    assert_eq!(s.queries_at(UP6, "www.v6up.test"), 1);

    // NXDOMAIN is not cached by default: both queries reach the upstream.
    for _ in 0..2 {
        assert_eq!(s.dig(&["nothing.example.com"]).status(), "NXDOMAIN");
    }
    assert_eq!(s.queries_at(DEFAULT_UP, "nothing.example.com"), 2);

    // The query log has one structured line per query.
    let log = s.agent_log();
    assert!(
        log.contains(
            "name=short.example.com. type=A route=. upstream=10.83.0.3:53 rcode=NOERROR cache=miss"
        ),
        "{log}"
    );
    // Over TCP the forwarder's own cache answers (the kernel sees only UDP).
    let tcp = s.dig(&["+tcp", "Short.example.com"]);
    assert_eq!(tcp.answers()[0].1, "192.0.2.30");
    assert_eq!(s.queries_at(DEFAULT_UP, "short.example.com"), 1);
    let log = s.agent_log();
    assert!(
        log.contains(
            "proto=tcp name=Short.example.com. type=A route=- upstream=- rcode=NOERROR cache=hit"
        ),
        "{log}"
    );
    drop(s);
}

#[test]
fn fails_over_and_servfails_fast() {
    require_root!();
    let s = setup(&[]);

    // The first upstream never answers: after its 300 ms timeout the
    // second one does.
    let d = s.dig(&["www.failover.test"]);
    assert_eq!(d.status(), "NOERROR", "{}", d.text);
    assert!(d.took >= Duration::from_millis(250), "{:?}", d.took);
    assert_eq!(s.queries_at(BLACKHOLE_1, "www.failover.test"), 1);
    // Two more failures, with nothing answered meanwhile, send a probe;
    // it goes unanswered too, which marks the server down; from then on
    // it is skipped.
    for name in ["a.failover.test", "b.failover.test"] {
        s.dig(&[name]);
    }
    let marked = wait_until(Duration::from_secs(3), || {
        s.agent_log()
            .contains("upstream 10.83.0.4:53 failed 3 times in a row")
    });
    assert!(marked, "{}", s.agent_log());
    let d = s.dig(&["c.failover.test"]);
    assert_eq!(d.status(), "NXDOMAIN", "{}", d.text);
    assert!(d.took < Duration::from_millis(250), "{:?}", d.took);
    assert_eq!(s.queries_at(BLACKHOLE_1, "c.failover.test"), 0);

    // Every upstream of the zone fails: SERVFAIL, never silence, and
    // quickly once they are known to be down.
    let d = s.dig(&["x.dead.test"]);
    assert_eq!(d.status(), "SERVFAIL", "{}", d.text);
    assert!(d.took < Duration::from_secs(1), "{:?}", d.took);
    // (10.83.0.4 is down already; 10.83.0.5 fails for the third time here.)
    s.dig(&["y.dead.test"]);
    s.dig(&["z.dead.test"]);
    let marked = wait_until(Duration::from_secs(3), || {
        s.agent_log()
            .contains("upstream 10.83.0.5:53 failed 3 times in a row")
    });
    assert!(marked, "{}", s.agent_log());
    let d = s.dig(&["w.dead.test"]);
    assert_eq!(d.status(), "SERVFAIL");
    assert!(d.took < Duration::from_millis(100), "{:?}", d.took);
    assert_eq!(s.queries_at(BLACKHOLE_2, "w.dead.test"), 0);

    // An upstream with no server refuses at once (ICMP): down after three
    // failures, then a server starts and the prober restores it.
    let mut s = s;
    for name in ["a.late.test", "b.late.test", "c.late.test"] {
        assert_eq!(s.dig(&[name]).status(), "SERVFAIL");
    }
    let marked = wait_until(Duration::from_secs(3), || {
        s.agent_log()
            .contains("upstream 10.83.0.7:53 failed 3 times in a row")
    });
    assert!(marked, "{}", s.agent_log());
    let log = s.tmp.join(format!("{}-{LATE}.log", s.node));
    let out = s.tmp.join(format!("{}-{LATE}.out", s.node));
    let listen = format!("{LATE}:53");
    let ups = s.ups.clone();
    s.lab
        .spawn(
            &ups,
            env!("CARGO_BIN_EXE_dnsfast-testdns"),
            &[
                "--listen",
                &listen,
                "--log",
                log.to_str().unwrap(),
                "--answer",
                "www.late.test=192.0.2.60",
            ],
            out.to_str().unwrap(),
        )
        .unwrap();
    assert!(
        wait_until(Duration::from_secs(5), || s
            .agent_log()
            .contains("upstream 10.83.0.7:53 answers again: restored")),
        "{}",
        s.agent_log()
    );
    let d = s.dig(&["www.late.test"]);
    assert_eq!(
        d.answers(),
        vec![(60, "192.0.2.60".to_string())],
        "{}",
        d.text
    );

    // A forged reply with a wrong ID is ignored; the real one is taken.
    let d = s.dig(&["www.spoof.test"]);
    assert_eq!(
        d.answers(),
        vec![(60, "192.0.2.50".to_string())],
        "{}",
        d.text
    );
    drop(s);
}

#[test]
fn tcp_clients_truncation_and_blocked_names() {
    require_root!();
    let s = setup(&[]);

    // The upstream truncates over UDP: dnsfast retries it over TCP.
    let d = s.dig(&["+bufsize=4096", "big.example.com"]);
    assert_eq!(d.status(), "NOERROR", "{}", d.text);
    assert_eq!(d.answers().len(), 40, "{}", d.text);
    let log = std::fs::read_to_string(s.upstream_log(DEFAULT_UP)).unwrap();
    assert!(log.contains("udp big.example.com. A"), "{log}");
    assert!(log.contains("tcp big.example.com. A"), "{log}");
    // A client without EDNS gets TC from the cache and retries over TCP
    // (dig does that by itself); the upstream sees nothing more.
    let d = s.dig(&["+noedns", "big.example.com"]);
    assert!(
        d.text.contains("Truncated, retrying in TCP mode"),
        "{}",
        d.text
    );
    assert_eq!(d.answers().len(), 40);
    assert_eq!(s.queries_at(DEFAULT_UP, "big.example.com"), 2);

    // A client over TCP.
    let d = s.dig(&["+tcp", "www.example.com"]);
    assert_eq!(d.answers()[0].1, "93.184.215.14", "{}", d.text);

    // A blocked name over TCP: the kernel only sees UDP, so this NXDOMAIN
    // is the forwarder's, from the same pattern table.
    let d = s.dig(&["+tcp", "api.github.com.svc.cluster.local"]);
    assert_eq!(d.status(), "NXDOMAIN", "{}", d.text);
    assert!(s.agent_log().contains("proto=tcp name=api.github.com.svc.cluster.local. type=A route=- upstream=- rcode=NXDOMAIN cache=blocked"));
    assert_eq!(
        s.queries_at(DEFAULT_UP, "api.github.com.svc.cluster.local"),
        0
    );

    // glibc through the search list: the artifact under the block pattern
    // never leaves the node, the others are NXDOMAIN'd upstream, and the
    // absolute name resolves.
    let out = s
        .lab
        .exec_ok(&s.cli, "getent", &["ahosts", "www.example.com"])
        .unwrap();
    assert!(out.contains("93.184.215.14"), "{out}");
    assert_eq!(
        s.queries_at(CLUSTER_UP, "www.example.com.default.svc.cluster.local"),
        2,
        "A and AAAA of the first artifact go to the cluster zone"
    );
    assert_eq!(
        s.queries_at(DEFAULT_UP, "www.example.com.svc.cluster.local"),
        0
    );
    assert_eq!(
        s.queries_at(CLUSTER_UP, "www.example.com.svc.cluster.local"),
        0
    );
    drop(s);
}

#[test]
fn sigterm_prints_counters_and_stops() {
    require_root!();
    let mut s = setup(&[]);
    s.dig(&["www.example.com"]);
    let status = s.lab.stop(s.agent).unwrap();
    assert!(status.success(), "{}", s.agent_log());
    let log = s.agent_log();
    assert!(log.contains("forwarder: udp="), "{log}");
    assert!(log.contains("cache hits="), "{log}");
    // The listener is gone with the agent.
    let d = s.dig(&["www.example.com"]);
    assert_eq!(d.status(), "(no answer)", "{}", d.text);
    drop(s);
}
