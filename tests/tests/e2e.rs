//! End to end: a client namespace, a veth, `dnsfast load` on the server end
//! in front of a real dnsmasq, and real clients (dig, glibc getent).
//!
//! dnsmasq here answers every name it is asked with an address, so an
//! NXDOMAIN the client sees can only have come from the XDP program.

use std::{path::PathBuf, time::Duration};

use dnsfast_tests::{
    bpftool_counter, dnsfast_bin,
    netns::{wait_until, Lab},
    require_root,
};

const SERVER: &str = "10.77.0.1";
const SERVER6: &str = "fd77::1";
/// Under the `com.svc.cluster.local` block pattern.
const BLOCKED: &str = "api.github.com.svc.cluster.local";
const SEARCH: &str = "default.svc.cluster.local svc.cluster.local cluster.local us-west-2.compute.internal compute.internal";

struct Setup {
    lab: Lab,
    cli: String,
    srv: String,
    srv_if: String,
    cli_if: String,
    pin_dir: PathBuf,
    agent: u32,
    log: String,
}

fn setup(mode: &str) -> Setup {
    let mut lab = Lab::new();
    let resolv =
        format!("nameserver {SERVER}\nsearch {SEARCH}\noptions ndots:5 timeout:2 attempts:1\n");
    let cli = lab.add_ns("dfc", Some(&resolv)).unwrap();
    let srv = lab.add_ns("dfs", None).unwrap();
    let (cli_if, srv_if) = lab
        .veth(
            &cli,
            &["10.77.0.2/24", "fd77::2/64"],
            &srv,
            &[&format!("{SERVER}/24"), &format!("{SERVER6}/64")],
        )
        .unwrap();

    let tmp = std::env::temp_dir();
    let dlog = tmp.join(format!("{srv}-dnsmasq.log")).display().to_string();
    lab.spawn(
        &srv,
        "dnsmasq",
        &[
            "--keep-in-foreground",
            "--no-resolv",
            "--no-hosts",
            "--bind-interfaces",
            &format!("--listen-address={SERVER},{SERVER6}"),
            "--port=53",
            "--user=root",
            "--pid-file=",
            "--address=/real.example/192.0.2.10",
            // Everything else gets an address too: NXDOMAIN can only be XDP's.
            "--address=/#/192.0.2.99",
        ],
        &dlog,
    )
    .unwrap();

    // A native-mode XDP_TX on a veth only delivers if the peer runs XDP too:
    // give the client end a second dnsfast with no patterns.
    if mode == "native" {
        let peer_pins = tmp.join(format!("dnsfast-test-{cli}"));
        let plog = tmp.join(format!("{cli}-peer.log")).display().to_string();
        let bin = dnsfast_bin();
        lab.spawn(
            &cli,
            bin.to_str().unwrap(),
            &[
                "load",
                "--no-forward",
                "--iface",
                &cli_if,
                "--mode",
                "native",
                "--pin-dir",
                &format!(
                    "/sys/fs/bpf/{}",
                    peer_pins.file_name().unwrap().to_str().unwrap()
                ),
            ],
            &plog,
        )
        .unwrap();
        assert!(wait_until(Duration::from_secs(20), || xdp_attached(
            &lab, &cli, &cli_if
        )));
    }

    let pin_dir = PathBuf::from(format!("/sys/fs/bpf/dnsfast-test-{srv}"));
    let log = tmp.join(format!("{srv}-agent.log")).display().to_string();
    let bin = dnsfast_bin();
    let agent = lab
        .spawn(
            &srv,
            bin.to_str().unwrap(),
            &[
                "load",
                // dnsmasq behind answers what passes; forward.rs tests the
                // forwarder.
                "--no-forward",
                "--iface",
                &srv_if,
                "--mode",
                mode,
                "--pin-dir",
                pin_dir.to_str().unwrap(),
                "--address=/example.default.svc.cluster.local/example.svc.cluster.local/example.cluster.local/",
                "--address=/example.us-west-2.compute.internal/example.compute.internal/",
                "--address=/com.svc.cluster.local/",
            ],
            &log,
        )
        .unwrap();
    let up = wait_until(Duration::from_secs(30), || {
        pin_dir.join("counters").exists() && xdp_attached(&lab, &srv, &srv_if)
    });
    assert!(
        up,
        "agent did not come up: {}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    // dnsmasq must answer before the test asks.
    assert!(wait_until(Duration::from_secs(10), || {
        dig(&lab, &cli, SERVER, "real.example", "A").contains("192.0.2.10")
    }));
    Setup {
        lab,
        cli,
        srv,
        srv_if,
        cli_if,
        pin_dir,
        agent,
        log,
    }
}

fn xdp_attached(lab: &Lab, ns: &str, dev: &str) -> bool {
    lab.exec_ok(ns, "ip", &["-d", "link", "show", "dev", dev])
        .map(|s| s.contains("prog/xdp"))
        .unwrap_or(false)
}

fn dig(lab: &Lab, ns: &str, server: &str, name: &str, qtype: &str) -> String {
    let out = lab
        .exec(
            ns,
            "dig",
            &["+tries=1", "+time=3", &format!("@{server}"), name, qtype],
        )
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn bpftool_answered(pin_dir: &std::path::Path) -> u64 {
    bpftool_counter(pin_dir, "answered_nxdomain")
}

fn check_answers(s: &Setup) {
    let before = bpftool_answered(&s.pin_dir);
    let out = dig(&s.lab, &s.cli, SERVER, BLOCKED, "A");
    assert!(out.contains("status: NXDOMAIN"), "dig over IPv4:\n{out}");
    assert!(out.contains("flags: qr rd ra;"), "flags:\n{out}");
    let out = dig(
        &s.lab,
        &s.cli,
        SERVER6,
        "API.GitHub.com.svc.cluster.local",
        "AAAA",
    );
    assert!(
        out.contains("status: NXDOMAIN"),
        "dig over IPv6 (checksum must be right):\n{out}"
    );
    assert!(
        out.contains("\n;API.GitHub.com.svc.cluster.local."),
        "0x20 case kept:\n{out}"
    );
    let out = dig(&s.lab, &s.cli, SERVER, "xcom.svc.cluster.local", "A");
    assert!(
        out.contains("192.0.2.99"),
        "unmatched names reach dnsmasq:\n{out}"
    );
    assert_eq!(bpftool_answered(&s.pin_dir), before + 2);

    // glibc walks the search list: every artifact is NXDOMAIN'd in the
    // kernel, then the absolute name gets dnsmasq's real answer. Without
    // dnsfast the first search suffix would already "resolve" to .99.
    let before = bpftool_answered(&s.pin_dir);
    let out = s
        .lab
        .exec_ok(&s.cli, "getent", &["ahosts", "real.example"])
        .unwrap();
    assert!(out.contains("192.0.2.10"), "getent:\n{out}");
    assert!(
        !out.contains("192.0.2.99"),
        "getent took an artifact's answer:\n{out}"
    );
    let answered = bpftool_answered(&s.pin_dir) - before;
    assert!(
        answered >= 5,
        "expected the 5 search-list tries to be answered, got {answered}"
    );
}

fn check_shutdown(mut s: Setup) {
    let status = s.lab.stop(s.agent).unwrap();
    assert!(
        status.success(),
        "agent exit {status}: {}",
        std::fs::read_to_string(&s.log).unwrap_or_default()
    );
    assert!(
        !xdp_attached(&s.lab, &s.srv, &s.srv_if),
        "program still attached after SIGTERM"
    );
    assert!(!s.pin_dir.exists(), "pins left behind");
    // DNS falls back to the normal path.
    let out = dig(&s.lab, &s.cli, SERVER, BLOCKED, "A");
    assert!(
        out.contains("192.0.2.99"),
        "after unload dnsmasq answers:\n{out}"
    );
    let _ = &s.cli_if;
}

#[test]
fn skb_mode_answers_dig_and_getent() {
    require_root!();
    let s = setup("skb");
    check_answers(&s);
    check_shutdown(s);
}

#[test]
fn native_mode_with_peer_program() {
    require_root!();
    let s = setup("native");
    check_answers(&s);
    check_shutdown(s);
}
