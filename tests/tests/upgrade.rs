//! Upgrades, restarts and crashes under a steady load: a client sends a
//! fixed-rate mix (artifacts the kernel answers, cached names, cache
//! misses to the upstream; UDP, and TCP one query in fifty) and checks
//! every answer (right RCODE and address, within 1 s), while the agent is
//! replaced, killed or restarted.

use std::{
    path::PathBuf,
    process::Command,
    time::{Duration, Instant},
};

use dnsfast_tests::{
    clients::{mix_args, summary, upstream_args},
    dnsfast_release_bin,
    netns::{wait_until, Lab},
    require_root,
};

const NODE: &str = "10.91.0.1";
const CLIENT: &str = "10.91.0.2";
/// The load: what this machine (2 CPUs, the agent, the client and the
/// upstream on the same CPUs) sustains with nothing lost when nothing
/// happens. The agent is the release binary that ships
/// (`dnsfast_release_bin`): whether a stall overflows a socket's queue is
/// a matter of throughput, and a debug build's is not the product's.
const RATE: u64 = 2000;

/// One at a time: each test's load and agents share two CPUs.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

struct Node {
    lab: Lab,
    cli: String,
    srv: String,
    srv_if: String,
    pins: PathBuf,
    tmp: PathBuf,
    runs: usize,
    /// Last: released after the lab is cleaned up.
    _turn: std::sync::MutexGuard<'static, ()>,
}

/// What the client saw (`dnsfast-attack mix`).
#[derive(Debug)]
struct Seen {
    sent: u64,
    ok: u64,
    wrong: u64,
    late: u64,
    lost: u64,
    tcp_failed: u64,
    text: String,
}

impl Node {
    fn new(tag: &str) -> Node {
        let turn = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
        let mut lab = Lab::new();
        let (cli, srv, srv_if) = lab
            .client_and_node(
                (&format!("u{tag}c"), &format!("u{tag}s")),
                CLIENT,
                NODE,
                None,
            )
            .unwrap();
        let tmp = std::env::temp_dir().join(format!("dnsfast-{srv}"));
        std::fs::create_dir_all(&tmp).unwrap();
        let log = tmp.join("upstream.log");
        let up = upstream_args("127.0.0.1:5300");
        let up: Vec<&str> = up.iter().map(String::as_str).collect();
        lab.spawn(
            &srv,
            env!("CARGO_BIN_EXE_dnsfast-testdns"),
            &up,
            log.to_str().unwrap(),
        )
        .unwrap();
        let pins = PathBuf::from(format!("/sys/fs/bpf/dnsfast-test-{srv}"));
        Node {
            lab,
            cli,
            srv,
            srv_if,
            pins,
            tmp,
            runs: 0,
            _turn: turn,
        }
    }

    /// Starts `dnsfast load` (the same command line every time, as a
    /// DaemonSet's pods have); its pid and log.
    fn start(&mut self, extra: &[&str]) -> (u32, PathBuf) {
        self.runs += 1;
        let log = self.tmp.join(format!("agent-{}.log", self.runs));
        let pins = self.pins.display().to_string();
        let mut args = vec![
            "load",
            "--iface",
            &self.srv_if,
            "--pin-dir",
            &pins,
            "--listen",
            NODE,
            "--server",
            "127.0.0.1#5300",
            "--no-resolv",
            "--address=/blocked.test/",
        ];
        args.extend_from_slice(extra);
        let pid = self
            .lab
            .spawn(
                &self.srv,
                dnsfast_release_bin().to_str().unwrap(),
                &args,
                log.to_str().unwrap(),
            )
            .unwrap();
        (pid, log)
    }

    /// The pid `dnsfast status` reports, when an agent is ready.
    fn serving_pid(&self) -> Option<u64> {
        let out = Command::new(dnsfast_release_bin())
            .args(["status", "--json", "--pin-dir"])
            .arg(&self.pins)
            .output()
            .ok()?;
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
        (v["ready"] == true).then(|| v["pid"].as_u64()).flatten()
    }

    fn wait_serving(&self, pid: u32, log: &PathBuf) {
        let up = wait_until(Duration::from_secs(30), || {
            self.serving_pid() == Some(pid as u64)
        });
        assert!(
            up,
            "agent {pid} not serving:\n{}",
            std::fs::read_to_string(log).unwrap_or_default()
        );
    }

    /// The mixed load for `seconds`, from the client namespace, in the
    /// background; `seen` reads its result.
    fn load(&mut self, seconds: u64) -> (u32, PathBuf) {
        let out = self.tmp.join(format!("mix-{}.json", self.runs));
        let args = mix_args(&format!("{NODE}:53"), RATE, seconds);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let pid = self
            .lab
            .spawn(
                &self.cli,
                env!("CARGO_BIN_EXE_dnsfast-attack"),
                &args,
                out.to_str().unwrap(),
            )
            .unwrap();
        (pid, out)
    }

    fn seen(&self, out: &PathBuf, pid: u32) -> Seen {
        let done = wait_until(Duration::from_secs(120), || {
            !std::path::Path::new(&format!("/proc/{pid}")).exists()
                || std::fs::read_to_string(out).is_ok_and(|t| t.contains("\"sent\""))
        });
        assert!(done, "the load did not finish");
        let text = std::fs::read_to_string(out).unwrap_or_default();
        let v = summary(&text);
        let g = |k: &str| v[k].as_u64().unwrap_or(0);
        Seen {
            sent: g("sent"),
            ok: g("ok"),
            wrong: g("wrong"),
            late: g("late"),
            lost: g("lost"),
            tcp_failed: g("tcp_failed"),
            text: text.clone(),
        }
    }

    fn term(&mut self, pid: u32) {
        let _ = self.lab.stop(pid);
    }
}

/// Ten surge updates in a row (the new agent started beside the old one,
/// then the old one stopped, as a DaemonSet with maxSurge 1 does): not a
/// query lost, wrong or late.
#[test]
fn ten_upgrades_in_a_row_lose_nothing() {
    require_root!();
    let mut n = Node::new("a");
    let (mut old, log) = n.start(&[]);
    n.wait_serving(old, &log);
    let (load, out) = n.load(40);
    std::thread::sleep(Duration::from_secs(2));
    let mut took = Vec::new();
    for _ in 0..10 {
        let t = Instant::now();
        let (new, log) = n.start(&[]);
        n.wait_serving(new, &log);
        took.push(t.elapsed());
        let old_log = n.tmp.join(format!("agent-{}.log", n.runs - 1));
        let stood_down = wait_until(Duration::from_secs(10), || {
            std::fs::read_to_string(&old_log).is_ok_and(|l| l.contains("handed over; idle"))
        });
        assert!(
            stood_down,
            "{}",
            std::fs::read_to_string(&old_log).unwrap_or_default()
        );
        n.term(old);
        old = new;
        std::thread::sleep(Duration::from_millis(500));
    }
    let s = n.seen(&out, load);
    println!("10 upgrades: {s:?}; handovers took {took:?}");
    assert!(s.sent > RATE * 30, "{}", s.text);
    assert_eq!(s.wrong, 0, "{}", s.text);
    assert_eq!(s.lost, 0, "{}", s.text);
    assert_eq!(s.late, 0, "{}", s.text);
    assert_eq!(s.tcp_failed, 0, "{}", s.text);
    assert_eq!(s.ok, s.sent);
    n.term(old);
    assert!(!n.pins.exists(), "the last agent's stop removes its pins");
}

/// Ten SIGKILLs, each followed at once by a new agent (the kubelet's
/// restart): the links outlive the agent (pinned at attach), so the kernel
/// keeps answering the artifacts; what needs the forwarder is lost until
/// the new agent serves, and the kernel's cached answers stop with the
/// lease. Nothing is ever answered wrongly.
#[test]
fn sigkill_and_restart_never_answer_wrongly() {
    require_root!();
    let mut n = Node::new("k");
    let (mut agent, log) = n.start(&[]);
    n.wait_serving(agent, &log);
    let (load, out) = n.load(45);
    std::thread::sleep(Duration::from_secs(2));
    let mut back = Vec::new();
    for _ in 0..10 {
        let _ = n.lab.kill(agent);
        let t = Instant::now();
        let (new, log) = n.start(&[]);
        n.wait_serving(new, &log);
        back.push(t.elapsed());
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        assert!(text.contains("adopted the previous agent's link"), "{text}");
        agent = new;
        std::thread::sleep(Duration::from_millis(1500));
    }
    let s = n.seen(&out, load);
    println!(
        "10 SIGKILLs: {s:?}; {:.1} lost per kill; serving again after {back:?}",
        s.lost as f64 / 10.0
    );
    assert!(s.sent > RATE * 35, "{}", s.text);
    assert_eq!(s.wrong, 0, "{}", s.text);
    n.term(agent);
    assert!(!n.pins.exists(), "the last agent's stop removes its pins");
}

/// `--keep-attached`, SIGTERM, and the next agent only 5 s later (an
/// image pull): the program answers alone meanwhile, its cached answers
/// and the API's verdicts stop with the lease, and nothing is answered
/// wrongly.
#[test]
fn keep_attached_with_a_gap_never_answers_wrongly() {
    require_root!();
    let mut n = Node::new("g");
    let (agent, log) = n.start(&["--keep-attached"]);
    n.wait_serving(agent, &log);
    let (load, out) = n.load(14);
    std::thread::sleep(Duration::from_secs(2));
    n.term(agent);
    std::thread::sleep(Duration::from_secs(5));
    let (new, log) = n.start(&[]);
    n.wait_serving(new, &log);
    let s = n.seen(&out, load);
    println!("keep-attached, 5 s without an agent: {s:?}");
    assert_eq!(s.wrong, 0, "{}", s.text);
    // The artifacts, a third of the load, were answered all along.
    assert!(s.ok >= s.sent / 3, "{}", s.text);
    n.term(new);
}

/// A kept link whose interface was deleted and created again under the
/// same name (a re-created pod's veth): the new agent attaches afresh
/// instead of failing or adopting a dead link.
#[test]
fn a_kept_link_on_a_recreated_interface_is_replaced() {
    require_root!();
    let mut n = Node::new("r");
    let (agent, log) = n.start(&["--keep-attached"]);
    n.wait_serving(agent, &log);
    n.term(agent);
    // The same name again, on a new interface.
    let (cli, srv, name) = (n.cli.clone(), n.srv.clone(), n.srv_if.clone());
    n.lab.exec_ok(&srv, "ip", &["link", "del", &name]).unwrap();
    let peer = format!("{name}p");
    n.lab
        .veth_named(
            &cli,
            &peer,
            &[&format!("{CLIENT}/24")],
            &srv,
            &name,
            &[&format!("{NODE}/24")],
        )
        .unwrap();
    let (agent, log) = n.start(&[]);
    n.wait_serving(agent, &log);
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(text.contains("(re-created): attaching fresh"), "{text}");
    assert!(text.contains(&format!("attached to {name}")), "{text}");
    // The program is on the new interface: the kernel answers.
    let before = dnsfast_tests::bpftool_counter(&n.pins, "answered_nxdomain");
    assert_eq!(
        n.lab.dig_rcode(&cli, NODE, "x.blocked.test", &[]),
        "NXDOMAIN"
    );
    assert_eq!(
        dnsfast_tests::bpftool_counter(&n.pins, "answered_nxdomain"),
        before + 1
    );
    assert_eq!(n.lab.dig_rcode(&cli, NODE, "ok.good.test", &[]), "NOERROR");
    n.term(agent);
}

/// Maps pinned by another dnsfast version (here: a CONFIG whose layout
/// field says so) are refused by the CLI with one line, not misread.
#[test]
fn pins_of_another_layout_are_refused_not_misread() {
    require_root!();
    let dir = PathBuf::from(format!(
        "/sys/fs/bpf/dnsfast-test-layout-{}",
        std::process::id()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let mut dp = dnsfast::dataplane::Dataplane::load(&Default::default()).unwrap();
    dp.pin_maps(&dir).unwrap();
    let list = || {
        Command::new(dnsfast_release_bin())
            .args(["block", "list", "--pin-dir"])
            .arg(&dir)
            .output()
            .unwrap()
    };
    let ok = list();
    let old = dnsfast_common::XdpConfig {
        layout: dnsfast_common::MAP_LAYOUT - 1,
        ..Default::default()
    };
    dp.set_config(&old).unwrap();
    let refused = list();
    let _ = std::fs::remove_dir_all(&dir);
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    let err = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success());
    assert!(
        err.contains("have layout") && err.lines().count() == 1,
        "{err}"
    );
}
