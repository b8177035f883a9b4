//! Hostile clients against `dnsfast load`: each attack in its own test,
//! each checking that the agent stays up and a well-behaved client keeps
//! its answers. They run the release binary (`dnsfast_release_bin`): the
//! service a victim gets under a flood is a matter of throughput, and a
//! debug build's is not the product's.

use std::{
    path::PathBuf,
    process::{Command, Output},
    time::Duration,
};

use dnsfast_tests::{
    clients::{
        summary, upstream_args, victim_args, GOOD, LARGE_ANSWERS, SLOWLORIS, SLOW_NAMES, TCP_CHURN,
        TCP_NEVER_READ, UDP_FLOOD,
    },
    dnsfast_release_bin,
    netns::{wait_until, Lab},
    require_root,
};

const SERVER: &str = "10.89.0.1";
const CLIENT: &str = "10.89.0.2";
const METRICS: &str = "127.0.0.1:19300";

/// A client namespace and the node's, joined by a veth, and the agent's
/// pin directory and log.
struct Node {
    lab: Lab,
    cli: String,
    srv: String,
    srv_if: String,
    tmp: PathBuf,
    pins: PathBuf,
    log: PathBuf,
}

impl Node {
    fn new() -> Node {
        let mut lab = Lab::new();
        let (cli, srv, srv_if) = lab
            .client_and_node(("hcl", "hsv"), CLIENT, SERVER, None)
            .unwrap();
        let tmp = std::env::temp_dir().join(format!("dnsfast-{srv}"));
        std::fs::create_dir_all(&tmp).unwrap();
        let pins = PathBuf::from(format!("/sys/fs/bpf/dnsfast-test-{srv}"));
        let log = tmp.join("agent.log");
        Node {
            lab,
            cli,
            srv,
            srv_if,
            tmp,
            pins,
            log,
        }
    }

    /// A node with an upstream on 127.0.0.1:5300 (dnsmasq answering every
    /// name with 192.0.2.99).
    fn with_upstream() -> Node {
        let mut n = Node::new();
        let dlog = n.tmp.join("dnsmasq.log");
        n.lab
            .dnsmasq_answering_all(&n.srv, 5300, "192.0.2.99", dlog.to_str().unwrap())
            .unwrap();
        n
    }

    /// `dnsfast load` on the node's veth, answering on SERVER and
    /// forwarding to `upstream`; its pid once it is ready.
    fn load(&mut self, upstream: &str, extra: &[&str]) -> u32 {
        let (pins, srv_if) = (self.pins.display().to_string(), self.srv_if.clone());
        let mut args = vec![
            "load",
            "--iface",
            &srv_if,
            "--pin-dir",
            &pins,
            "--listen",
            SERVER,
            "--server",
            upstream,
            "--no-resolv",
        ];
        args.extend_from_slice(extra);
        let pid = self
            .lab
            .spawn(
                &self.srv,
                dnsfast_release_bin().to_str().unwrap(),
                &args,
                self.log.to_str().unwrap(),
            )
            .unwrap();
        assert!(
            wait_until(Duration::from_secs(30), || self.ready()),
            "agent not up:\n{}",
            self.agent_log()
        );
        pid
    }

    fn ready(&self) -> bool {
        Command::new(dnsfast_release_bin())
            .args(["status", "--json", "--pin-dir"])
            .arg(&self.pins)
            .output()
            .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("\"ready\":true"))
    }

    fn agent_log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// `dig` from `ns` to `server:port`, with extra arguments.
    fn dig(&self, ns: &str, server: &str, port: &str, args: &[&str]) -> Output {
        let at = format!("@{server}");
        let mut all = vec!["+tries=1", "+time=3", &at, "-p", port];
        all.extend_from_slice(args);
        self.lab.exec(ns, "dig", &all).unwrap()
    }

    /// The RCODE a well-behaved client gets for `name`.
    fn status(&self, name: &str) -> String {
        self.lab.dig_rcode(&self.cli, SERVER, name, &[])
    }
}

/// Connections to the metrics port past the agent's open-file limit: its
/// accepts fail (EMFILE) for as long as they are held. That used to end
/// the agent, and the node's DNS with it; now it waits them out, and
/// answers again once they are gone.
#[test]
fn running_out_of_files_on_the_metrics_port_does_not_end_the_agent() {
    require_root!();
    let mut n = Node::with_upstream();
    let srv = n.srv.clone();
    let agent = n.load(
        "127.0.0.1#5300",
        &["--address=/blocked.test/", "--metrics", METRICS],
    );
    assert_eq!(n.status("x.blocked.test"), "NXDOMAIN");
    assert_eq!(n.status("ok.example"), "NOERROR");

    // A few descriptors more than it holds at rest (maps, sockets, epoll),
    // fewer than the endpoint's 8 connections per client, so the flood's
    // accepts fail; once the flood is gone `/health` needs 3 at once (its
    // connection, and both ends of a TCP query to the forwarder itself).
    let pid = agent.to_string();
    let at_rest = (0..5)
        .map(|_| {
            std::thread::sleep(Duration::from_millis(100));
            std::fs::read_dir(format!("/proc/{pid}/fd"))
                .unwrap()
                .count()
        })
        .min()
        .unwrap();
    let limit = format!("--nofile={0}:{0}", at_rest + 5);
    Command::new("prlimit")
        .args(["--pid", &pid, &limit])
        .status()
        .unwrap();
    // 200 idle connections held for 4 s, from the agent's own namespace.
    let flood = format!(
        "import socket, time\n\
         c = []\n\
         for _ in range(200):\n\
         \x20   try:\n\
         \x20       s = socket.create_connection(('127.0.0.1', {}), timeout=0.2); c.append(s)\n\
         \x20   except OSError:\n\
         \x20       pass\n\
         time.sleep(4)\n",
        METRICS.rsplit(':').next().unwrap()
    );
    let mut holder = Command::new("ip")
        .args(["netns", "exec", &srv, "python3", "-c", &flood])
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_secs(2));
    // The kernel still answers what it answers, whatever the agent's files.
    assert_eq!(n.status("y.blocked.test"), "NXDOMAIN", "during the flood");
    holder.wait().unwrap();

    let alive = Command::new("kill")
        .args(["-0", &pid])
        .status()
        .is_ok_and(|s| s.success());
    assert!(alive, "the agent exited:\n{}", n.agent_log());
    assert!(
        wait_until(Duration::from_secs(15), || n.ready()),
        "the control socket does not answer after the flood:\n{}",
        n.agent_log()
    );
    // The connections the flood left in the listen queue are accepted
    // and closed as the agent drains it, each holding a descriptor for a
    // moment; under this tight limit `/health` rightly reports EMFILE
    // until they are gone, so it is asked again until it says 200.
    let url = format!("http://{METRICS}/health");
    let mut health = (0, String::new());
    wait_until(Duration::from_secs(10), || {
        health = http_get(&n, &srv, &url);
        health.0 == 200
    });
    assert_eq!(health.0, 200, "/health after the flood: {}", health.1);
    assert_eq!(
        n.status("ok2.example"),
        "NOERROR",
        "the forwarder after the flood"
    );
    assert!(
        n.agent_log().contains("accepting on the metrics endpoint"),
        "the accept errors were not seen, so nothing was tested:\n{}",
        n.agent_log()
    );
}

/// However large an EDNS size a client offers, a UDP answer never passes
/// `forward.max-udp-size` (1232 by default, DNS Flag Day 2020: fragments
/// are easy to spoof and often dropped); a larger one goes out with TC and
/// the client asks again over TCP. The limit is a setting.
#[test]
fn udp_answers_stay_within_max_udp_size() {
    require_root!();
    let mut n = Node::new();
    let srv = n.srv.clone();
    // 100 A records: about 1.6 KB, over TCP only (TC over UDP).
    let testdns_log = n.tmp.join("testdns.log");
    n.lab
        .spawn(
            &srv,
            env!("CARGO_BIN_EXE_dnsfast-testdns"),
            &[
                "--listen",
                "127.0.0.1:5301",
                "--tc",
                "big.test",
                "--tc-records",
                "100",
            ],
            testdns_log.to_str().unwrap(),
        )
        .unwrap();
    // `dnsfast serve` configured larger: there the same answer fits in
    // one datagram.
    let cfg = n.tmp.join("big.toml");
    std::fs::write(&cfg, "[forward]\nmax-udp-size = 4096\n").unwrap();
    let serve_log = n.tmp.join("serve.log");
    n.lab
        .spawn(
            &srv,
            dnsfast_release_bin().to_str().unwrap(),
            &[
                "serve",
                "--config",
                cfg.to_str().unwrap(),
                "--listen",
                "127.0.0.1:5399",
                "--server",
                "127.0.0.1#5301",
                "--no-resolv",
            ],
            serve_log.to_str().unwrap(),
        )
        .unwrap();
    n.load("127.0.0.1#5301", &[]);
    let big = |ns: &str, server: &str, port: &str| {
        let out = n.dig(ns, server, port, &["+bufsize=4096", "x.big.test"]);
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let answers = |text: &str| {
        text.lines()
            .filter(|l| l.starts_with("x.big.test.") && l.contains("\tA\t"))
            .count()
    };
    let d = big(&n.cli, SERVER, "53");
    assert!(d.contains("Truncated, retrying in TCP mode"), "{d}");
    assert_eq!(answers(&d), 100, "{d}");

    let up = wait_until(Duration::from_secs(10), || {
        answers(&big(&srv, "127.0.0.1", "5399")) == 100
    });
    assert!(up, "serve on 5399 never answered");
    let d = big(&srv, "127.0.0.1", "5399");
    assert!(!d.contains("Truncated"), "{d}");
    assert_eq!(answers(&d), 100, "{d}");
}

// ---------------------------------------------------------------------
// The attack suite: one agent per test, under the memory limit its
// config derives (`dnsfast check-config`), a victim client and an
// attacker client in namespaces of their own. Each test runs the victim
// alone first (its normal service), then again while the attack runs,
// and checks that every answer it got was right, that it lost almost
// none, and that the agent neither exited nor was OOM-killed.
// ---------------------------------------------------------------------

const ATTACKER: &str = "10.89.1.2";
const ATTACKER_GW: &str = "10.89.1.1";
const AGENT_METRICS: &str = "127.0.0.1:19301";

/// One attack at a time: they share two CPUs with the victim.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// What the victim client saw (`dnsfast-attack victim`).
#[derive(Debug)]
struct Service {
    sent: u64,
    ok: u64,
    wrong: u64,
    lost: u64,
    p99_us: u64,
    text: String,
}

struct Arena {
    n: Node,
    atk: String,
    cg: dnsfast_tests::cgroup::MemCgroup,
    limit: u64,
    agent: u32,
    cfg: PathBuf,
    _turn: std::sync::MutexGuard<'static, ()>,
}

fn attack_bin() -> &'static str {
    env!("CARGO_BIN_EXE_dnsfast-attack")
}

impl Arena {
    fn new() -> Arena {
        let turn = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
        let mut n = Node::new();
        let srv = n.srv.clone();
        let atk = n.lab.add_ns("hat", None).unwrap();
        let (_, atk_if) = n
            .lab
            .veth(
                &atk,
                &[&format!("{ATTACKER}/24")],
                &srv,
                &[&format!("{ATTACKER_GW}/24")],
            )
            .unwrap();
        n.lab
            .exec_ok(
                &atk,
                "ip",
                &["route", "add", "10.89.0.0/24", "via", ATTACKER_GW],
            )
            .unwrap();
        // The upstream: the victim's names, slow names that are never
        // answered, and 60 KB TXT answers (TCP only).
        let up_log = n.tmp.join("upstream.log");
        let up = upstream_args("127.0.0.1:5300");
        let up: Vec<&str> = up.iter().map(String::as_str).collect();
        n.lab
            .spawn(
                &srv,
                env!("CARGO_BIN_EXE_dnsfast-testdns"),
                &up,
                up_log.to_str().unwrap(),
            )
            .unwrap();
        let cfg = n.tmp.join("agent.toml");
        std::fs::write(&cfg, Arena::config("127.0.0.1:5300")).unwrap();
        // The limit the config derives, as check-config prints it.
        let out = Command::new(dnsfast_release_bin())
            .arg("check-config")
            .arg(&cfg)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        let mib: u64 = text
            .split("a limit of at least ")
            .nth(1)
            .and_then(|s| s.split("Mi").next())
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("no memory limit in check-config's output:\n{text}"));
        let limit = mib << 20;
        let cg = dnsfast_tests::cgroup::MemCgroup::new(&format!("dnsfast-{srv}"), limit).unwrap();
        let line = cg.enter_then(&format!(
            "{} load --iface {} --iface {atk_if} --pin-dir {} --config {} --metrics {AGENT_METRICS}",
            dnsfast_release_bin().display(),
            n.srv_if,
            n.pins.display(),
            cfg.display()
        ));
        let agent = n
            .lab
            .spawn(&srv, "sh", &["-c", &line], n.log.to_str().unwrap())
            .unwrap();
        assert!(
            wait_until(Duration::from_secs(30), || n.ready()),
            "agent not up:\n{}",
            n.agent_log()
        );
        Arena {
            n,
            atk,
            cg,
            limit,
            agent,
            cfg,
            _turn: turn,
        }
    }

    /// The agent's config, forwarding everything to `upstream`.
    fn config(upstream: &str) -> String {
        format!(
            "[forward]\nlisten = [\"{SERVER}:53\"]\nno-resolv = true\ntimeout-ms = 1000\n\n\
             [[zone]]\nname = \".\"\nupstreams = [\"{upstream}\"]\n"
        )
    }

    /// The victim for `seconds`, 50 queries a second, every fifth over TCP,
    /// each for a name never asked before; every answer must be `expect`.
    fn victim(&self, seconds: u64, expect: &str) -> Service {
        self.victim_any(seconds, &[expect])
    }

    /// `victim`, where any of `expect` is a right answer.
    fn victim_any(&self, seconds: u64, expect: &[&str]) -> Service {
        let args = victim_args(&format!("{SERVER}:53"), expect, seconds);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = self.n.lab.exec(&self.n.cli, attack_bin(), &args).unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let v = summary(&text);
        assert!(!v.is_null(), "victim output {text:?}");
        let g = |k: &str| v[k].as_u64().unwrap_or(0);
        Service {
            sent: g("sent"),
            ok: g("ok"),
            wrong: g("wrong"),
            lost: g("lost"),
            p99_us: g("p99_us"),
            text,
        }
    }

    /// Starts `dnsfast-attack MODE ARGS…` from the attacker's namespace.
    fn attack(&mut self, mode: &str, args: &[&str]) -> u32 {
        let log = self.n.tmp.join(format!("attack-{mode}.log"));
        let mut all = vec![mode];
        all.extend_from_slice(args);
        self.n
            .lab
            .spawn(&self.atk, attack_bin(), &all, log.to_str().unwrap())
            .unwrap()
    }

    /// `attack` (mode and arguments, the server and the duration added)
    /// started, given `warmup` to take hold, then `holds_up`.
    fn under(&mut self, what: &str, attack: &[&str], warmup: u64) {
        let (mode, args) = attack.split_first().expect("an attack names its mode");
        let mut all = vec!["--server", AT, "--seconds", "14"];
        all.extend_from_slice(args);
        let atk = self.attack(mode, &all);
        std::thread::sleep(Duration::from_secs(warmup));
        self.holds_up(what, atk);
    }

    /// The whole check: the victim alone, then under `attack` (already
    /// started), then the agent's state.
    fn holds_up(&mut self, what: &str, attacker: u32) {
        let under = self.victim(8, GOOD);
        // Under attack the agent is still alive to its kubelet.
        let url = format!("http://{AGENT_METRICS}/health");
        let (code, body) = http_get(&self.n, &self.n.srv, &url);
        let _ = self.n.lab.kill(attacker);
        assert_eq!(code, 200, "{what}: /health under attack: {body}");
        self.check(what, &under);
    }

    fn check(&self, what: &str, under: &Service) {
        let alive = Command::new("kill")
            .args(["-0", &self.agent.to_string()])
            .status()
            .is_ok_and(|s| s.success());
        let peak = self.cg.peak();
        println!(
            "{what}: victim {}/{} right, {} wrong, {} lost, p99 {:.1} ms; agent peak {:.1} MiB of {:.0} MiB",
            under.ok,
            under.sent,
            under.wrong,
            under.lost,
            under.p99_us as f64 / 1000.0,
            peak as f64 / 1048576.0,
            self.limit as f64 / 1048576.0
        );
        assert!(alive, "{what}: the agent exited:\n{}", self.n.agent_log());
        assert_eq!(self.cg.oom_kills(), 0, "{what}: OOM kill under its limit");
        // The budget's kernel part is an estimate: it must not be below
        // what the kernel reports for the maps.
        let out = Command::new(dnsfast_release_bin())
            .args(["status", "--json", "--pin-dir"])
            .arg(&self.n.pins)
            .output()
            .unwrap();
        let st: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let (used, est) = (
            st["memory"]["kernel_map_bytes"].as_u64().unwrap_or(0),
            st["memory"]["kernel_map_budget"].as_u64().unwrap_or(0),
        );
        println!("{what}: kernel maps {used} bytes, estimated {est}");
        assert!(
            used > 0 && used <= est,
            "{what}: kernel maps {used} bytes over the estimate {est}"
        );
        assert_eq!(under.wrong, 0, "{what}: wrong answers: {}", under.text);
        assert!(under.sent >= 100, "{what}: {}", under.text);
        // One lost in a hundred at most: the victim asks again, as stubs do.
        assert!(
            under.lost * 100 <= under.sent,
            "{what}: the victim lost its service: {}\n{}",
            under.text,
            self.n.agent_log()
        );
    }

    /// The forwarder's counters, from `dnsfast stats --json`.
    fn forwarder_stats(&self) -> serde_json::Value {
        let out = Command::new(dnsfast_release_bin())
            .args(["stats", "--json", "--pin-dir"])
            .arg(&self.n.pins)
            .output()
            .unwrap();
        let v: serde_json::Value =
            serde_json::from_slice(&out.stdout).unwrap_or(serde_json::Value::Null);
        v["forwarder"].clone()
    }
}

const AT: &str = "10.89.0.1:53";

#[test]
fn tcp_clients_that_never_read_lose_only_their_own_connections() {
    require_root!();
    let mut a = Arena::new();
    let base = a.victim(3, GOOD);
    a.check("baseline", &base);
    a.under("tcp never read", TCP_NEVER_READ, 2);
    let f = a.forwarder_stats();
    assert!(
        f["tcp_rejected"].as_u64().unwrap_or(0) > 0,
        "the per-client bound was never reached, so it was not tested: {f}"
    );
}

#[test]
fn slowloris_clients_are_cut_off() {
    require_root!();
    let mut a = Arena::new();
    a.under("slowloris", SLOWLORIS, 2);
}

#[test]
fn connection_churn_does_not_starve_tcp() {
    require_root!();
    let mut a = Arena::new();
    a.under("tcp churn", TCP_CHURN, 1);
}

#[test]
fn a_udp_flood_of_random_names_leaves_others_their_answers() {
    require_root!();
    let mut a = Arena::new();
    a.under("udp flood", UDP_FLOOD, 1);
}

#[test]
fn names_that_never_resolve_take_only_their_clients_share() {
    require_root!();
    let mut a = Arena::new();
    a.under("slow names", SLOW_NAMES, 2);
    let f = a.forwarder_stats();
    assert!(
        f["client_limited"].as_u64().unwrap_or(0) > 0,
        "the per-client bound was never reached: {f}"
    );
    let up = &f["upstreams"][0];
    assert!(
        up["up"].as_bool().unwrap_or(false),
        "slow names marked a healthy upstream down: {up}"
    );
    assert!(
        up["slow_names"].as_u64().unwrap_or(0) > 0,
        "the timeouts were not counted as slow names: {up}"
    );
}

#[test]
fn thousands_of_large_answers_stay_within_the_memory_limit() {
    require_root!();
    let mut a = Arena::new();
    a.under("large answers", LARGE_ANSWERS, 2);
    let f = a.forwarder_stats();
    assert!(
        f["cache"]["too_large"].as_u64().unwrap_or(0) > 1000,
        "fewer than a thousand large answers were fetched: {f}"
    );
}

#[test]
fn thousands_of_idle_connections_to_metrics_and_control() {
    require_root!();
    let mut a = Arena::new();
    let srv = a.n.srv.clone();
    // From the node's own namespace: that is where the metrics port is.
    let log = a.n.tmp.join("idle.log");
    let idle =
        a.n.lab
            .spawn(
                &srv,
                attack_bin(),
                &[
                    "idle",
                    "--server",
                    AGENT_METRICS,
                    "--conns",
                    "2000",
                    "--seconds",
                    "12",
                ],
                log.to_str().unwrap(),
            )
            .unwrap();
    let sock = format!(
        "/run/dnsfast/{}.sock",
        a.n.pins
            .strip_prefix("/sys/fs/bpf")
            .unwrap()
            .display()
            .to_string()
            .trim_start_matches('/')
            .replace('/', "--")
    );
    let held = format!(
        "import socket, time\nc = []\nfor _ in range(2000):\n    try:\n        s = socket.socket(socket.AF_UNIX); s.connect('{sock}'); c.append(s)\n    except OSError:\n        pass\nprint(len(c), flush=True)\ntime.sleep(11)\n"
    );
    let ulog = a.n.tmp.join("idle-unix.log");
    let unix =
        a.n.lab
            .spawn(&srv, "python3", &["-c", &held], ulog.to_str().unwrap())
            .unwrap();
    std::thread::sleep(Duration::from_secs(2));
    let under = a.victim(8, GOOD);
    // The agent's own control socket and /health still answer.
    assert!(
        a.n.ready(),
        "the control socket does not answer:\n{}",
        a.n.agent_log()
    );
    let _ = a.n.lab.kill(idle);
    let _ = a.n.lab.kill(unix);
    a.check("idle metrics and control connections", &under);
    let made: u64 = std::fs::read_to_string(&ulog)
        .unwrap_or_default()
        .trim()
        .parse()
        .unwrap_or(0);
    assert!(made >= 1000, "only {made} control connections were made");
}

/// All of the above at once, while the config is reloaded to point the
/// victim's names at another upstream: answers change to the new
/// config's (its cache of the old ones is dropped), and none is lost.
#[test]
fn reload_under_every_attack_at_once() {
    require_root!();
    let mut a = Arena::new();
    let srv = a.n.srv.clone();
    let log = a.n.tmp.join("upstream2.log");
    a.n.lab
        .spawn(
            &srv,
            env!("CARGO_BIN_EXE_dnsfast-testdns"),
            &[
                "--listen",
                "127.0.0.1:5301",
                "--answer-suffix",
                "good.test=192.0.2.9",
            ],
            log.to_str().unwrap(),
        )
        .unwrap();
    // One fixed name, cached under the old config.
    let fixed = |a: &Arena| {
        a.n.lab
            .exec_ok(
                &a.n.cli,
                "dig",
                &[
                    "+short",
                    "+tries=2",
                    "+time=2",
                    "@10.89.0.1",
                    "fixed.good.test",
                ],
            )
            .unwrap_or_default()
    };
    assert_eq!(fixed(&a).trim(), GOOD);
    let mut attackers = Vec::new();
    for (mode, args) in [
        ("tcp-noread", vec!["--conns", "100", "--queries", "500"]),
        ("slowloris", vec!["--conns", "50"]),
        ("udp-flood", vec!["--suffix", "slow.test"]),
        ("tcp-large", vec!["--suffix", "big.test", "--conns", "8"]),
    ] {
        let mut all = vec!["--server", AT, "--seconds", "14"];
        all.extend(args);
        attackers.push(a.attack(mode, &all));
    }
    std::thread::sleep(Duration::from_secs(2));
    // Reload halfway through the victim's run.
    let cfg = a.cfg.clone();
    let agent = a.agent;
    let reloader = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_secs(3));
        std::fs::write(&cfg, Arena::config("127.0.0.1:5301")).unwrap();
        Command::new("kill")
            .args(["-HUP", &agent.to_string()])
            .status()
            .unwrap();
    });
    let under = a.victim_any(8, &[GOOD, "192.0.2.9"]);
    reloader.join().unwrap();
    for p in attackers {
        let _ = a.n.lab.kill(p);
    }
    a.check("reload under attack", &under);
    let reloaded = wait_until(Duration::from_secs(10), || {
        a.n.agent_log().contains("reloaded")
    });
    assert!(reloaded, "{}", a.n.agent_log());
    // The cached answer of the old route is gone: the new upstream's.
    assert_eq!(fixed(&a).trim(), "192.0.2.9");
    let after = a.victim(3, "192.0.2.9");
    a.check("after the reload", &after);
}

/// The HTTP status and body of `url`, fetched from inside `ns`.
fn http_get(n: &Node, ns: &str, url: &str) -> (u16, String) {
    let py = format!(
        "import urllib.request, urllib.error\n\
         try:\n    r = urllib.request.urlopen('{url}', timeout=5); print(r.status); print(r.read().decode())\n\
         except urllib.error.HTTPError as e:\n    print(e.code); print(e.read().decode())\n"
    );
    // Anything but an HTTP answer (refused, reset) reads as code 0 with
    // the error as the body.
    let out = n
        .lab
        .exec_ok(ns, "python3", &["-c", &py])
        .unwrap_or_else(|e| format!("0\n{e:#}"));
    let (code, body) = out.split_once('\n').unwrap_or((&out, ""));
    (code.trim().parse().unwrap_or(0), body.to_string())
}

/// `/health` asks the forwarder itself: it fails while the forwarder does
/// not answer (here its address is gone from the node) and recovers with
/// it, so the kubelet restarts a wedged agent and only a wedged one.
#[test]
fn health_fails_while_the_forwarder_does_not_answer() {
    require_root!();
    let mut n = Node::with_upstream();
    let srv = n.srv.clone();
    n.load("127.0.0.1#5300", &["--metrics", "127.0.0.1:19302"]);
    let url = "http://127.0.0.1:19302/health";
    assert_eq!(http_get(&n, &srv, url).0, 200);
    let cidr = format!("{SERVER}/24");
    n.lab
        .exec_ok(&srv, "ip", &["addr", "del", &cidr, "dev", &n.srv_if])
        .unwrap();
    let (code, body) = http_get(&n, &srv, url);
    assert_eq!(code, 503, "{body}");
    assert!(body.contains("the forwarder does not answer"), "{body}");
    n.lab
        .exec_ok(&srv, "ip", &["addr", "add", &cidr, "dev", &n.srv_if])
        .unwrap();
    let back = wait_until(Duration::from_secs(10), || http_get(&n, &srv, url).0 == 200);
    assert!(back, "/health did not recover:\n{}", n.agent_log());
}

/// `dnsfast cache flush` drops answers from the forwarder's cache and the
/// kernel's: the next query for them reaches the upstream again; what it
/// does not cover stays cached.
#[test]
fn cache_flush_drops_a_name_or_a_zone_from_both_caches() {
    require_root!();
    let mut n = Node::new();
    let srv = n.srv.clone();
    let up_log = n.tmp.join("queries.log");
    let out = n.tmp.join("testdns.out");
    n.lab
        .spawn(
            &srv,
            env!("CARGO_BIN_EXE_dnsfast-testdns"),
            &[
                "--listen",
                "127.0.0.1:5303",
                "--answer-suffix",
                "good.test=192.0.2.7",
                "--log",
                up_log.to_str().unwrap(),
            ],
            out.to_str().unwrap(),
        )
        .unwrap();
    n.load("127.0.0.1#5303", &[]);
    let asked = |name: &str| {
        std::fs::read_to_string(&up_log)
            .unwrap_or_default()
            .lines()
            .filter(|l| l.starts_with(&format!("udp {name}. A")))
            .count()
    };
    let names = ["x.good.test", "a.z.good.test", "b.z.good.test"];
    for _ in 0..3 {
        for name in names {
            assert_eq!(n.status(name), "NOERROR");
        }
    }
    for name in names {
        assert_eq!(asked(name), 1, "{name}: cached after the first query");
    }
    let flush = |args: &[&str]| {
        let o = Command::new(dnsfast_release_bin())
            .args(["cache", "flush"])
            .args(args)
            .arg("--pin-dir")
            .arg(&n.pins)
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        String::from_utf8_lossy(&o.stdout).into_owned()
    };
    let said = flush(&["X.Good.Test"]);
    assert!(
        said.contains("1 cached answers dropped (1 in the kernel"),
        "{said}"
    );
    assert_eq!(n.status("x.good.test"), "NOERROR");
    assert_eq!(asked("x.good.test"), 2, "asked again after the flush");
    flush(&["--zone", "z.good.test"]);
    for name in names {
        assert_eq!(n.status(name), "NOERROR");
    }
    assert_eq!(asked("a.z.good.test"), 2);
    assert_eq!(asked("b.z.good.test"), 2);
    assert_eq!(asked("x.good.test"), 2, "outside the zone: still cached");
    let said = flush(&[]);
    assert!(said.contains("3 cached answers dropped"), "{said}");
}

/// The metrics endpoint (hyper) with a real HTTP client: its routes and
/// status codes, a malformed request line, a client that never finishes
/// its request head, and a pod that holds connections while the
/// kubelet's probe (another address) still gets in.
#[test]
fn the_metrics_endpoint_with_curl_and_bad_clients() {
    require_root!();
    let mut n = Node::with_upstream();
    let srv = n.srv.clone();
    // On the node's address, which pods reach.
    let at = format!("{SERVER}:19303");
    n.load("127.0.0.1#5300", &["--metrics", &at]);
    let curl = |ns: &str, args: &[&str]| {
        let mut all = vec![
            "-s",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "--max-time",
            "5",
        ];
        all.extend_from_slice(args);
        n.lab.exec_ok(ns, "curl", &all).unwrap_or_default()
    };
    let url = |path: &str| format!("http://{at}{path}");
    assert_eq!(curl(&srv, &[&url("/metrics")]), "200");
    assert_eq!(curl(&srv, &[&url("/health")]), "200");
    assert_eq!(curl(&srv, &[&url("/ready")]), "200");
    assert_eq!(curl(&srv, &["-I", &url("/health")]), "200");
    assert_eq!(curl(&srv, &["-X", "POST", &url("/health")]), "405");
    assert_eq!(curl(&srv, &[&url("/nope")]), "404");
    let body = n
        .lab
        .exec_ok(&srv, "curl", &["-s", "--max-time", "5", &url("/metrics")])
        .unwrap_or_default();
    assert!(body.contains("dnsfast_forwarder_udp_queries"), "{body}");
    // Raw clients, from a pod (the client namespace).
    let port = 19303;
    let py = format!(
        "import socket, time\n\
         s = socket.create_connection(('{SERVER}', {port})); s.sendall(b'GARBAGE\\r\\n\\r\\n')\n\
         print(s.recv(100).split(b'\\r\\n')[0].decode())\n\
         slow = socket.create_connection(('{SERVER}', {port})); slow.sendall(b'GET /health HTTP/1.1\\r\\nHost: x\\r\\n')\n\
         held = []\n\
         for _ in range(40):\n\
         \x20   try:\n\
         \x20       held.append(socket.create_connection(('{SERVER}', {port}), timeout=1))\n\
         \x20   except OSError:\n\
         \x20       pass\n\
         t = time.time(); slow.settimeout(10)\n\
         try:\n\
         \x20   got = slow.recv(100)\n\
         except OSError:\n\
         \x20   got = b''\n\
         print('slow closed after', int(time.time() - t), 'reply', got[:12])\n"
    );
    let (probe_tx, probe_rx) = std::sync::mpsc::channel();
    std::thread::scope(|sc| {
        sc.spawn(|| {
            // While the pod holds its connections: the kubelet's probe,
            // from the node itself.
            std::thread::sleep(Duration::from_secs(2));
            let _ = probe_tx.send(curl(&srv, &[&url("/health")]));
        });
        let out = n
            .lab
            .exec_ok(&n.cli, "python3", &["-c", &py])
            .unwrap_or_default();
        let mut lines = out.lines();
        assert_eq!(
            lines.next().unwrap_or(""),
            "HTTP/1.1 400 Bad Request",
            "{out}"
        );
        let slow = lines.next().unwrap_or("");
        let secs: u64 = slow
            .split_whitespace()
            .nth(3)
            .and_then(|s| s.parse().ok())
            .unwrap_or(99);
        assert!(
            secs <= 7,
            "a request head that never ends is cut off: {out}"
        );
    });
    assert_eq!(probe_rx.recv().unwrap(), "200", "the probe got in");
}

/// `--log-format json`: every line is a JSON object, and the structured
/// events carry their fields (attach, reload, the query log).
#[test]
fn json_logs_carry_the_events_fields() {
    require_root!();
    let mut n = Node::with_upstream();
    let agent = n.load("127.0.0.1#5300", &["--log-format", "json", "--log-queries"]);
    assert_eq!(n.status("ok.example"), "NOERROR");
    Command::new("kill")
        .args(["-HUP", &agent.to_string()])
        .status()
        .unwrap();
    let reloaded = wait_until(Duration::from_secs(10), || {
        n.agent_log().contains("\"event\":\"reload\"")
    });
    assert!(reloaded, "{}", n.agent_log());
    let events: Vec<serde_json::Value> = n
        .agent_log()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    let find = |k: &str, v: &str| events.iter().find(|e| e[k] == v).cloned();
    let attach = find("event", "attach").expect("an attach event");
    assert_eq!(attach["iface"], n.srv_if.as_str());
    let query = find("name", "ok.example.").expect("a query event");
    assert_eq!(query["rcode"], "NOERROR");
    assert_eq!(query["proto"], "udp");
    assert!(query["latency_us"].as_u64().is_some(), "{query}");
    assert!(find("event", "reload").unwrap()["why"].is_string());
}
