//! Hostile clients against `dnsfast load`: each attack in its own test,
//! each checking that the agent stays up and a well-behaved client keeps
//! its answers.

use std::{path::PathBuf, process::Command, time::Duration};

use dnsfast_tests::{
    dnsfast_bin,
    netns::{wait_until, Lab},
    require_root,
};

const SERVER: &str = "10.89.0.1";
const CLIENT: &str = "10.89.0.2";
const METRICS: &str = "127.0.0.1:19300";

/// Connections to the metrics port past the agent's open-file limit: its
/// accepts fail (EMFILE) for as long as they are held. That used to end
/// the agent, and the node's DNS with it; now it waits them out, and
/// answers again once they are gone.
#[test]
fn running_out_of_files_on_the_metrics_port_does_not_end_the_agent() {
    require_root!();
    let mut lab = Lab::new();
    let cli = lab.add_ns("hcl", None).unwrap();
    let srv = lab.add_ns("hsv", None).unwrap();
    let (_, srv_if) = lab
        .veth(
            &cli,
            &[&format!("{CLIENT}/24")],
            &srv,
            &[&format!("{SERVER}/24")],
        )
        .unwrap();
    let tmp = std::env::temp_dir().join(format!("dnsfast-{srv}"));
    std::fs::create_dir_all(&tmp).unwrap();
    lab.dnsmasq_answering_all(
        &srv,
        5300,
        "192.0.2.99",
        tmp.join("dnsmasq.log").to_str().unwrap(),
    )
    .unwrap();
    let pins = PathBuf::from(format!("/sys/fs/bpf/dnsfast-test-{srv}"));
    let log = tmp.join("agent.log");
    let agent = lab
        .spawn(
            &srv,
            dnsfast_bin().to_str().unwrap(),
            &[
                "load",
                "--iface",
                &srv_if,
                "--pin-dir",
                pins.to_str().unwrap(),
                "--listen",
                SERVER,
                "--server",
                "127.0.0.1#5300",
                "--no-resolv",
                "--address=/blocked.test/",
                "--metrics",
                METRICS,
            ],
            log.to_str().unwrap(),
        )
        .unwrap();
    let agent_log = || std::fs::read_to_string(&log).unwrap_or_default();
    let status_ok = || {
        Command::new(dnsfast_bin())
            .args(["status", "--json", "--pin-dir"])
            .arg(&pins)
            .output()
            .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("\"ready\":true"))
    };
    assert!(
        wait_until(Duration::from_secs(30), status_ok),
        "agent not up:\n{}",
        agent_log()
    );
    let dig = |name: &str| {
        let out = lab
            .exec(
                &cli,
                "dig",
                &["+tries=1", "+time=2", &format!("@{SERVER}"), name],
            )
            .unwrap();
        String::from_utf8_lossy(&out.stdout)
            .split("status: ")
            .nth(1)
            .and_then(|s| s.split(',').next())
            .unwrap_or("(no answer)")
            .to_string()
    };
    assert_eq!(dig("x.blocked.test"), "NXDOMAIN");
    assert_eq!(dig("ok.example"), "NOERROR");

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
    assert_eq!(dig("y.blocked.test"), "NXDOMAIN", "during the flood");
    holder.wait().unwrap();

    let alive = Command::new("kill")
        .args(["-0", &pid])
        .status()
        .is_ok_and(|s| s.success());
    assert!(alive, "the agent exited:\n{}", agent_log());
    assert!(
        wait_until(Duration::from_secs(15), status_ok),
        "the control socket does not answer after the flood:\n{}",
        agent_log()
    );
    let health = lab
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
        dig("ok2.example"),
        "NOERROR",
        "the forwarder after the flood"
    );
    assert!(
        agent_log().contains("accepting on the metrics endpoint"),
        "the accept errors were not seen, so nothing was tested:\n{}",
        agent_log()
    );
}

/// However large an EDNS size a client offers, a UDP answer never passes
/// `forward.max-udp-size` (1232 by default, DNS Flag Day 2020: fragments
/// are easy to spoof and often dropped); a larger one goes out with TC and
/// the client asks again over TCP. The limit is a setting.
#[test]
fn udp_answers_stay_within_max_udp_size() {
    require_root!();
    let mut lab = Lab::new();
    let cli = lab.add_ns("hcl", None).unwrap();
    let srv = lab.add_ns("hsv", None).unwrap();
    let (_, srv_if) = lab
        .veth(
            &cli,
            &[&format!("{CLIENT}/24")],
            &srv,
            &[&format!("{SERVER}/24")],
        )
        .unwrap();
    let tmp = std::env::temp_dir().join(format!("dnsfast-{srv}"));
    std::fs::create_dir_all(&tmp).unwrap();
    // 100 A records: about 1.6 KB, over TCP only (TC over UDP).
    lab.spawn(
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
        tmp.join("testdns.log").to_str().unwrap(),
    )
    .unwrap();
    let pins = PathBuf::from(format!("/sys/fs/bpf/dnsfast-test-{srv}"));
    let log = tmp.join("agent.log");
    lab.spawn(
        &srv,
        dnsfast_bin().to_str().unwrap(),
        &[
            "load",
            "--iface",
            &srv_if,
            "--pin-dir",
            pins.to_str().unwrap(),
            "--listen",
            SERVER,
            "--server",
            "127.0.0.1#5301",
            "--no-resolv",
        ],
        log.to_str().unwrap(),
    )
    .unwrap();
    // `dnsfast serve` configured larger: there the same answer fits in
    // one datagram.
    let cfg = tmp.join("big.toml");
    std::fs::write(&cfg, "[forward]\nmax-udp-size = 4096\n").unwrap();
    lab.spawn(
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
        tmp.join("serve.log").to_str().unwrap(),
    )
    .unwrap();
    let up = wait_until(Duration::from_secs(30), || {
        Command::new(dnsfast_bin())
            .args(["status", "--json", "--pin-dir"])
            .arg(&pins)
            .output()
            .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("\"ready\":true"))
    });
    assert!(up, "{}", std::fs::read_to_string(&log).unwrap_or_default());
    let dig = |ns: &str, server: &str, port: &str| {
        let out = lab
            .exec(
                ns,
                "dig",
                &[
                    "+tries=1",
                    "+time=3",
                    "+bufsize=4096",
                    &format!("@{server}"),
                    "-p",
                    port,
                    "x.big.test",
                ],
            )
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let answers = |text: &str| {
        text.lines()
            .filter(|l| l.starts_with("x.big.test.") && l.contains("\tA\t"))
            .count()
    };
    let d = dig(&cli, SERVER, "53");
    assert!(d.contains("Truncated, retrying in TCP mode"), "{d}");
    assert_eq!(answers(&d), 100, "{d}");

    let d = wait_until(Duration::from_secs(10), || {
        answers(&dig(&srv, "127.0.0.1", "5399")) == 100
    });
    assert!(d, "serve on 5399 never answered");
    let d = dig(&srv, "127.0.0.1", "5399");
    assert!(!d.contains("Truncated"), "{d}");
    assert_eq!(answers(&d), 100, "{d}");
}
