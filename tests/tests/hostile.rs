//! Hostile clients against `dnsfast load`: each attack in its own test,
//! each checking that the agent stays up and a well-behaved client keeps
//! its answers.

use std::{
    path::PathBuf,
    process::{Command, Output},
    time::Duration,
};

use dnsfast_tests::{
    dnsfast_bin,
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
                dnsfast_bin().to_str().unwrap(),
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
        Command::new(dnsfast_bin())
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
    let mut n = Node::new();
    let srv = n.srv.clone();
    let dlog = n.tmp.join("dnsmasq.log");
    n.lab
        .dnsmasq_answering_all(&srv, 5300, "192.0.2.99", dlog.to_str().unwrap())
        .unwrap();
    let agent = n.load(
        "127.0.0.1#5300",
        &["--address=/blocked.test/", "--metrics", METRICS],
    );
    assert_eq!(n.status("x.blocked.test"), "NXDOMAIN");
    assert_eq!(n.status("ok.example"), "NOERROR");

    // 64 descriptors, most of them already taken by maps, sockets, epoll.
    let pid = agent.to_string();
    Command::new("prlimit")
        .args(["--pid", &pid, "--nofile=64:64"])
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
    let health = n
        .lab
        .exec_ok(
            &srv,
            "python3",
            &[
                "-c",
                &format!(
                    "import urllib.request; print(urllib.request.urlopen('http://{METRICS}/health').status)"
                ),
            ],
        )
        .unwrap_or_default();
    assert_eq!(health.trim(), "200", "/health after the flood");
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
            dnsfast_bin().to_str().unwrap(),
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
