//! Operating dnsfast live: the control CLI on the pinned maps, config
//! reloads through a ConfigMap-style symlink swap under a steady query
//! stream, interfaces that appear after `load`, `--keep-attached`
//! adoption, SIGKILL, and `/metrics` against `stats --json`.
//!
//! dnsmasq behind the forwarder answers every name with an address, so an
//! NXDOMAIN the client sees can only come from a dnsfast pattern.

use std::{
    path::{Path, PathBuf},
    process::{Command, Output},
    time::{Duration, Instant},
};

use dnsfast_tests::{
    dnsfast_bin,
    netns::{unique, wait_until, Lab},
    require_root,
};
use serde_json::Value;

const SERVER: &str = "10.78.0.1";
const CLIENT: &str = "10.78.0.2";
const BLOCK_SUFFIX: &str = "blk.test";

struct Setup {
    lab: Lab,
    cli: String,
    srv: String,
    srv_if: String,
    pins: PathBuf,
    tmp: PathBuf,
    log: PathBuf,
}

impl Setup {
    /// Client and server namespaces joined by a veth, dnsmasq on the
    /// server's loopback (port 5300) answering every name.
    fn new() -> Setup {
        let mut lab = Lab::new();
        let (cli, srv, srv_if) = lab
            .client_and_node(("dlc", "dls"), CLIENT, SERVER, None)
            .unwrap();
        let tmp = std::env::temp_dir().join(format!("dnsfast-{srv}"));
        std::fs::create_dir_all(&tmp).unwrap();
        let dlog = tmp.join("dnsmasq.log");
        lab.dnsmasq_answering_all(&srv, 5300, "192.0.2.99", dlog.to_str().unwrap())
            .unwrap();
        let pins = PathBuf::from(format!("/sys/fs/bpf/dnsfast-test-{srv}"));
        let log = tmp.join("agent.log");
        Setup {
            lab,
            cli,
            srv,
            srv_if,
            pins,
            tmp,
            log,
        }
    }

    /// Starts `dnsfast load` in the server namespace with `args` after the
    /// pin dir; returns its pid once it reports ready.
    fn load(&mut self, args: &[&str]) -> u32 {
        let bin = dnsfast_bin();
        let mut all = vec!["load", "--pin-dir", self.pins.to_str().unwrap()];
        all.extend_from_slice(args);
        let pid = self
            .lab
            .spawn(
                &self.srv,
                bin.to_str().unwrap(),
                &all,
                self.log.to_str().unwrap(),
            )
            .unwrap();
        let up = wait_until(Duration::from_secs(30), || {
            self.status()
                .is_some_and(|s| s["ready"] == Value::Bool(true))
        });
        assert!(up, "agent did not come up:\n{}", self.agent_log());
        pid
    }

    fn agent_log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// `dnsfast ARGS --pin-dir PINS`, from the root namespace.
    fn ctl(&self, args: &[&str]) -> Output {
        Command::new(dnsfast_bin())
            .args(args)
            .args(["--pin-dir", self.pins.to_str().unwrap()])
            .output()
            .unwrap()
    }

    fn ctl_ok(&self, args: &[&str]) -> String {
        let o = self.ctl(args);
        assert!(
            o.status.success(),
            "dnsfast {args:?} failed: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        String::from_utf8_lossy(&o.stdout).into_owned()
    }

    fn status(&self) -> Option<Value> {
        let o = self.ctl(&["status", "--json"]);
        let v: Value = serde_json::from_slice(&o.stdout).ok()?;
        (v["agent"] != Value::Bool(false)).then_some(v)
    }

    fn dig(&self, name: &str, extra: &[&str]) -> String {
        self.lab.dig_rcode(&self.cli, SERVER, name, extra)
    }

    /// The first A record's address, or "" without one.
    fn dig_addr(&self, name: &str) -> String {
        let server = format!("@{SERVER}");
        let out = self
            .lab
            .exec(
                &self.cli,
                "dig",
                &["+tries=1", "+time=3", "+short", &server, name],
            )
            .unwrap();
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .next()
            .unwrap_or("")
            .to_string()
    }

    fn attached_prog(&self, ns: &str, dev: &str) -> Option<u32> {
        let s = self
            .lab
            .exec_ok(ns, "ip", &["-d", "link", "show", "dev", dev])
            .ok()?;
        let at = s.find("prog/xdp id ")?;
        s[at + 12..].split_whitespace().next()?.parse().ok()
    }
}

fn blocked(i: usize) -> String {
    format!("n{i}.{BLOCK_SUFFIX}")
}

fn config(range: std::ops::Range<usize>) -> String {
    let list: Vec<String> = range.map(|i| format!("\"{}\"", blocked(i))).collect();
    format!("[patterns]\nblock = [{}]\n", list.join(", "))
}

/// A ConfigMap volume: `config.toml -> ..data/config.toml`, with `..data`
/// a symlink swapped atomically by rename, as kubelet does.
struct ConfigMapDir {
    dir: PathBuf,
    version: usize,
}

impl ConfigMapDir {
    fn new(dir: &Path, text: &str) -> Self {
        let mut c = Self {
            dir: dir.to_path_buf(),
            version: 0,
        };
        std::fs::create_dir_all(dir).unwrap();
        c.swap(text);
        std::os::unix::fs::symlink("..data/config.toml", dir.join("config.toml")).unwrap();
        c
    }

    fn file(&self) -> PathBuf {
        self.dir.join("config.toml")
    }

    /// Rewrites the current version's file, as an editor would; the
    /// directory watch does not see it.
    fn rewrite_in_place(&self, text: &str) {
        let v = format!("..v{}", self.version);
        std::fs::write(self.dir.join(v).join("config.toml"), text).unwrap();
    }

    fn swap(&mut self, text: &str) {
        self.version += 1;
        let v = format!("..v{}", self.version);
        std::fs::create_dir_all(self.dir.join(&v)).unwrap();
        std::fs::write(self.dir.join(&v).join("config.toml"), text).unwrap();
        let tmp = self.dir.join("..data_tmp");
        let _ = std::fs::remove_file(&tmp);
        std::os::unix::fs::symlink(&v, &tmp).unwrap();
        std::fs::rename(&tmp, self.dir.join("..data")).unwrap();
    }
}

/// Runs `dig -f` in `ns` over `names` (one process, one query after the
/// other) and returns (name, status) per answer, plus the timeouts.
fn dig_stream(ns: &str, names: &[String], file: &Path) -> (Vec<(String, String)>, usize) {
    std::fs::write(file, names.join("\n") + "\n").unwrap();
    let out = Command::new("ip")
        .args(["netns", "exec", ns, "dig", "+tries=1", "+time=2"])
        .args(["+noall", "+comments", "+question"])
        .arg(format!("@{SERVER}"))
        .arg("-f")
        .arg(file)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let mut got = vec![];
    let mut status = None;
    let mut lost = 0;
    for line in text.lines() {
        if let Some(rest) = line.split("status: ").nth(1) {
            status = rest.split(',').next().map(String::from);
        } else if line.contains("timed out") || line.contains("no servers could be reached") {
            lost += 1;
        } else if let Some(q) = line.strip_prefix(';').filter(|q| q.contains("\tIN\t")) {
            if let (Some(name), Some(s)) = (q.split_whitespace().next(), status.take()) {
                got.push((name.trim_end_matches('.').to_string(), s));
            }
        }
    }
    (got, lost)
}

/// The agent every test below starts the same way: the ConfigMap-style
/// config (`patterns`), the veth, dnsmasq on :5300, `/metrics` on
/// `metrics` when given.
fn running(patterns: std::ops::Range<usize>, metrics: Option<&str>) -> (Setup, ConfigMapDir, u32) {
    let mut s = Setup::new();
    let cm = ConfigMapDir::new(&s.tmp.join("configmap"), &config(patterns));
    let srv_if = s.srv_if.clone();
    let cfg_file = cm.file();
    let mut args = vec![
        "--iface",
        &srv_if,
        "--config",
        cfg_file.to_str().unwrap(),
        "--listen",
        SERVER,
        "--server",
        "127.0.0.1#5300",
        "--no-resolv",
    ];
    if let Some(m) = metrics {
        args.extend(["--metrics", m]);
    }
    let agent = s.load(&args);
    (s, cm, agent)
}

/// A zone the swapped-in config routes to a second upstream.
const ROUTED: &str = "\n[[zone]]\nname = \"routed.test\"\nupstreams = [\"127.0.0.1#5301\"]\n";

/// Reload by symlink swap with 10k patterns under a steady query stream:
/// no query lost, none answered as neither config would, and the kernel,
/// the forwarder and the routes all follow.
#[test]
fn a_reload_by_symlink_swap_changes_nothing_else_under_traffic() {
    require_root!();
    let (mut s, mut cm, _) = running(0..10_000, None);
    // A second upstream, for a zone the new config routes to it.
    let srv = s.srv.clone();
    let dlog = s.tmp.join("dnsmasq2.log");
    s.lab
        .dnsmasq_answering_all(&srv, 5301, "192.0.2.77", dlog.to_str().unwrap())
        .unwrap();
    assert_eq!(s.dig(&blocked(1), &[]), "NXDOMAIN");
    assert_eq!(s.dig("free.example", &[]), "NOERROR");
    assert_eq!(s.status().unwrap()["patterns"]["block"], 10_000);
    assert_eq!(s.dig_addr("a.routed.test"), "192.0.2.99");

    // A steady stream of names whose status the reload does not change:
    // blocked in both configs, or in neither. It runs in passes from before
    // the swap until after the reload is seen, however long that takes on
    // a busy machine, so every moment of the reload is under traffic.
    let names: Vec<String> = (0..3000)
        .flat_map(|i| [blocked(5000 + i % 5000), format!("free{i}.example")])
        .collect();
    let stream_file = s.tmp.join("names.txt");
    let cli = s.cli.clone();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let stream = {
        let (names, stop) = (names.clone(), stop.clone());
        std::thread::spawn(move || {
            let (mut got, mut lost, mut passes) = (vec![], 0, 0);
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let (g, l) = dig_stream(&cli, &names, &stream_file);
                got.extend(g);
                lost += l;
                passes += 1;
            }
            (got, lost, passes)
        })
    };
    std::thread::sleep(Duration::from_millis(300));
    let t = Instant::now();
    cm.swap(&(config(5000..15_000) + ROUTED));
    let reloaded = wait_until(Duration::from_secs(30), || {
        s.status().is_some_and(|v| v["config"]["reloads"] == 1)
    });
    assert!(reloaded, "no reload:\n{}", s.agent_log());
    let seen_after = t.elapsed();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (got, lost, passes) = stream.join().unwrap();
    let line = s
        .agent_log()
        .lines()
        .find(|l| l.contains("config reloaded"))
        .unwrap_or_default()
        .to_string();
    eprintln!(
        "reload of 10k patterns (+5000 -5000) under traffic: {line:?}; seen by status after {} ms; \
         {passes} passes of {} queries",
        seen_after.as_millis(),
        names.len()
    );
    assert!(
        line.contains("+5000 added, 0 changed, -5000 removed"),
        "{line}"
    );
    assert_eq!(lost, 0, "queries lost during the reload");
    assert_eq!(got.len(), passes * names.len(), "answers missing");
    for (name, status) in &got {
        let want = if name.ends_with(BLOCK_SUFFIX) {
            "NXDOMAIN"
        } else {
            "NOERROR"
        };
        assert_eq!(status, want, "{name} answered {status} during the reload");
    }
    assert_eq!(s.dig(&blocked(1), &[]), "NOERROR", "a removed pattern");
    assert_eq!(s.dig(&blocked(12_000), &[]), "NXDOMAIN", "an added pattern");
    assert_eq!(
        s.dig(&blocked(12_000), &["+tcp"]),
        "NXDOMAIN",
        "the forwarder follows the reload"
    );
    assert_eq!(
        s.dig_addr("a.routed.test"),
        "192.0.2.77",
        "the new zone's route"
    );
}

/// A bad config is refused and the old one keeps serving; `status` counts
/// both kinds of reload.
#[test]
fn a_bad_config_is_refused_and_the_old_one_keeps_serving() {
    require_root!();
    let (s, mut cm, _) = running(0..10_000, None);
    cm.swap(&config(5000..15_000));
    let reloaded = wait_until(Duration::from_secs(30), || {
        s.status().is_some_and(|v| v["config"]["reloads"] == 1)
    });
    assert!(reloaded, "no reload:\n{}", s.agent_log());
    cm.swap("[patterns]\nblock = [\"bad..name\"]\n");
    let refused = wait_until(Duration::from_secs(10), || {
        s.status().is_some_and(|v| v["config"]["refused"] == 1)
    });
    assert!(refused, "bad config not refused:\n{}", s.agent_log());
    let v = s.status().unwrap();
    assert!(
        v["config"]["last_error"]
            .as_str()
            .unwrap()
            .contains("bad..name"),
        "{v}"
    );
    assert_eq!(s.dig(&blocked(12_000), &[]), "NXDOMAIN");
    assert!(s
        .agent_log()
        .contains("refused, the previous config keeps serving"));
    let status = s.ctl_ok(&["status"]);
    assert!(
        status.contains(&s.srv_if) && status.contains("1 reload(s), 1 refused"),
        "{status}"
    );
}

/// `dnsfast block|allow`: 10k adds at once, timed; the kernel and the
/// forwarder follow; bad input changes nothing; `explain` agrees with dig.
#[test]
fn block_and_allow_change_the_kernel_and_the_forwarder_at_once() {
    require_root!();
    let (s, _cm, _) = running(5000..15_000, None);
    let many: Vec<String> = (0..10_000).map(|i| format!("m{i}.cli.test")).collect();
    let mut args = vec!["block", "add"];
    args.extend(many.iter().map(String::as_str));
    let t = Instant::now();
    s.ctl_ok(&args);
    eprintln!(
        "dnsfast block add with 10,000 patterns: {} ms (kernel table + forwarder resync)",
        t.elapsed().as_millis()
    );
    assert_eq!(s.dig("x.m9999.cli.test", &[]), "NXDOMAIN");
    assert_eq!(s.dig("x.m9999.cli.test", &["+tcp"]), "NXDOMAIN");
    s.ctl_ok(&["allow", "add", "ok.m1.cli.test"]);
    assert_eq!(s.dig("ok.m1.cli.test", &[]), "NOERROR");
    assert_eq!(s.dig("no.m1.cli.test", &[]), "NXDOMAIN");
    let list: Value = serde_json::from_str(&s.ctl_ok(&["allow", "list", "--json"])).unwrap();
    assert_eq!(
        list,
        serde_json::json!([{ "pattern": "ok.m1.cli.test", "action": "allow" }])
    );
    assert!(s
        .ctl_ok(&["block", "list"])
        .lines()
        .any(|l| l == "m42.cli.test"));
    s.ctl_ok(&["block", "del", "m9999.cli.test"]);
    assert_eq!(s.dig("x.m9999.cli.test", &[]), "NOERROR");
    assert_eq!(s.dig("x.m9999.cli.test", &["+tcp"]), "NOERROR");
    // Bad input changes nothing.
    let o = s.ctl(&["block", "add", "good.cli.test", "bad..cli.test"]);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("bad..cli.test"));
    assert_eq!(s.dig("good.cli.test", &[]), "NOERROR");
    let o = s.ctl(&["block", "del", "ok.m1.cli.test"]);
    assert!(String::from_utf8_lossy(&o.stderr).contains("not a block pattern"));

    // explain agrees with dig.
    for (name, want, says) in [
        (blocked(12_000), "NXDOMAIN", "answered in place"),
        ("free.example".to_string(), "NOERROR", "passed up"),
        ("ok.m1.cli.test".to_string(), "NOERROR", "passed up"),
    ] {
        assert_eq!(s.dig(&name, &[]), want);
        let out = s.ctl_ok(&["explain", &name]);
        assert!(out.contains(says), "explain {name}: {out}");
    }
}

/// `dnsfast watch`: events for the test's own queries, with the rule that
/// decided; the watch program leaves the jump table with the last watcher.
#[test]
fn watch_streams_the_kernels_decisions_while_someone_watches() {
    require_root!();
    let (s, _cm, _) = running(5000..15_000, None);
    s.ctl_ok(&["block", "add", "m1.cli.test"]);
    s.ctl_ok(&["allow", "add", "ok.m1.cli.test"]);
    let watcher = Command::new(dnsfast_bin())
        .args(["watch", "--json", "--count", "3", "--pin-dir"])
        .arg(&s.pins)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let watching = wait_until(Duration::from_secs(10), || {
        serde_json::from_str::<Value>(&s.ctl_ok(&["stats", "--json"]))
            .is_ok_and(|v| v["watch"]["watchers"] == 1)
    });
    assert!(watching, "the watcher did not register:\n{}", s.agent_log());
    assert_eq!(s.dig(&blocked(12_345), &["AAAA"]), "NXDOMAIN");
    assert_eq!(s.dig("Watched.Example", &[]), "NOERROR");
    assert_eq!(s.dig("ok.m1.cli.test", &[]), "NOERROR");
    let out = watcher.wait_with_output().unwrap();
    let events: Vec<Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(events.len(), 3, "{events:?}");
    let e = &events[0];
    assert_eq!(e["name"], format!("{}.", blocked(12_345)));
    assert_eq!(e["type"], "AAAA");
    assert_eq!(e["client"], CLIENT);
    assert_eq!(e["verdict"], "nxdomain");
    assert_eq!(e["action"], "block");
    assert_eq!(e["pattern"], blocked(12_345));
    assert_eq!(events[1]["name"], "Watched.Example.");
    assert_eq!(events[1]["verdict"], "pass");
    assert_eq!(events[2]["verdict"], "allowed");
    assert_eq!(events[2]["pattern"], "ok.m1.cli.test");
    let off = wait_until(Duration::from_secs(10), || {
        serde_json::from_str::<Value>(&s.ctl_ok(&["stats", "--json"]))
            .is_ok_and(|v| v["watch"]["watchers"] == 0)
    });
    assert!(off, "watch still on after the watcher left");
    assert!(s.agent_log().contains("watch off: nobody watches"));
}

/// `/metrics` parses as OpenMetrics text (with the Prometheus parser too)
/// and matches `stats --json`, after a few thousand queries.
#[test]
fn metrics_match_stats_after_traffic() {
    require_root!();
    let metrics = "127.0.0.1:19253";
    let (s, _cm, _) = running(0..10_000, Some(metrics));
    // Traffic for the counters, with room: what is under test here is that
    // /metrics and stats agree, not that no query was lost on a machine
    // busy with the other tests (the reload test checks that).
    let names: Vec<String> = (0..3500)
        .flat_map(|i| [blocked(i), format!("free{i}.example")])
        .collect();
    let (got, _) = dig_stream(&s.cli, &names, &s.tmp.join("names.txt"));
    assert!(
        got.len() >= 6200,
        "only {} of {} answered",
        got.len(),
        names.len()
    );
    let script = format!(
        r#"
import json, urllib.request
from prometheus_client.parser import text_string_to_metric_families
out = {{}}
for path in ("/health", "/ready"):
    out[path] = urllib.request.urlopen("http://{metrics}" + path).status
body = urllib.request.urlopen("http://{metrics}/metrics").read().decode()
for fam in text_string_to_metric_families(body):
    for smp in fam.samples:
        key = smp.name + "".join("|%s=%s" % kv for kv in sorted(smp.labels.items()))
        out[key] = smp.value
print(json.dumps(out))
"#
    );
    let scraped = s
        .lab
        .exec_ok(&s.srv, "/usr/bin/python3", &["-c", &script])
        .unwrap();
    let stats: Value = serde_json::from_str(&s.ctl_ok(&["stats", "--json"])).unwrap();
    let m: Value = serde_json::from_str(&scraped).unwrap();
    assert_eq!(m["/health"], 200);
    assert_eq!(m["/ready"], 200);
    for (k, v) in stats["kernel"].as_object().unwrap() {
        assert_eq!(
            m[format!("dnsfast_xdp_packets_total|counter={k}")].as_f64(),
            v.as_f64(),
            "kernel counter {k}"
        );
    }
    assert!(stats["kernel"]["answered_nxdomain"].as_u64().unwrap() > 3000);
    for k in ["udp_queries", "tcp_queries", "blocked"] {
        assert_eq!(
            m[format!("dnsfast_forwarder_{k}_total")].as_f64(),
            stats["forwarder"][k].as_f64(),
            "forwarder counter {k}"
        );
    }
    assert!(stats["forwarder"]["udp_queries"].as_u64().unwrap() >= 3000);
    let up = "127.0.0.1:5300";
    assert_eq!(m[format!("dnsfast_upstream_up|upstream={up}")], 1.0);
    let ups = stats["forwarder"]["upstreams"].as_array().unwrap();
    let u = ups.iter().find(|u| u["addr"] == up).unwrap();
    for k in ["queries", "failures", "retransmits", "slow_names"] {
        assert_eq!(
            m[format!("dnsfast_upstream_{k}_total|upstream={up}")].as_f64(),
            u[k].as_f64(),
            "upstream counter {k}"
        );
    }
    assert!(
        m[format!("dnsfast_upstream_latency_seconds_count|upstream={up}")]
            .as_f64()
            .unwrap()
            > 0.0
    );
    let human = s.ctl_ok(&["stats"]);
    assert!(human.contains("answered_nxdomain") && human.contains("upstream 127.0.0.1:5300"));
}

/// SIGHUP reloads, also when the file changed where the directory watch
/// does not see it. The config is the truth: run-time changes go.
#[test]
fn sighup_reloads_and_the_config_wins_over_run_time_changes() {
    require_root!();
    let (s, cm, agent) = running(0..10_000, None);
    s.ctl_ok(&["block", "add", "m42.cli.test"]);
    s.ctl_ok(&["allow", "add", "ok.m1.cli.test"]);
    assert_eq!(s.dig("x.m42.cli.test", &[]), "NXDOMAIN");
    cm.rewrite_in_place(&config(5000..15_000));
    Command::new("kill")
        .args(["-HUP", &agent.to_string()])
        .status()
        .unwrap();
    assert!(
        wait_until(Duration::from_secs(10), || s
            .status()
            .is_some_and(|v| v["config"]["reloads"] == 1)),
        "no reload on SIGHUP:\n{}",
        s.agent_log()
    );
    assert!(s.agent_log().contains("config reloaded (SIGHUP)"));
    assert_eq!(
        s.dig("x.m42.cli.test", &[]),
        "NOERROR",
        "run-time block undone"
    );
    assert_eq!(s.dig(&blocked(12_000), &[]), "NXDOMAIN", "config kept");
    assert_eq!(s.ctl_ok(&["allow", "list"]), "");
}

/// `dnsfast unload`: the agent detaches, removes its pins and exits.
#[test]
fn unload_detaches_removes_the_pins_and_exits() {
    require_root!();
    let (s, _cm, _) = running(0..10, None);
    assert_eq!(s.dig(&blocked(1), &[]), "NXDOMAIN");
    s.ctl_ok(&["unload"]);
    assert!(wait_until(Duration::from_secs(10), || !s.pins.exists()));
    assert_eq!(s.attached_prog(&s.srv, &s.srv_if), None);
    assert!(s.ctl_ok(&["status"]).contains("nothing loaded"));
}

/// `--iface 'tst*'`: a veth created after the agent started is attached
/// at once and answers; one that goes away is forgotten.
#[test]
fn interfaces_matching_a_glob_are_attached_as_they_appear() {
    require_root!();
    let mut s = Setup::new();
    let prefix = unique("tst");
    let glob = format!("{prefix}*");
    s.load(&[
        "--no-forward",
        "--iface",
        &glob,
        "--address=/com.svc.cluster.local/",
    ]);
    assert_eq!(s.status().unwrap()["ifaces"], serde_json::json!([]));
    let (cli_end, srv_end) = (format!("{prefix}c"), format!("{prefix}s"));
    let (cli, srv) = (s.cli.clone(), s.srv.clone());
    let t = Instant::now();
    s.lab
        .veth_named(
            &cli,
            &cli_end,
            &["10.79.0.2/24"],
            &srv,
            &srv_end,
            &["10.79.0.1/24"],
        )
        .unwrap();
    assert!(
        wait_until(Duration::from_secs(5), || s
            .attached_prog(&srv, &srv_end)
            .is_some()),
        "not attached:\n{}",
        s.agent_log()
    );
    let took = t.elapsed();
    eprintln!(
        "new veth attached {} ms after it was created",
        took.as_millis()
    );
    assert!(took < Duration::from_secs(1), "took {took:?}");
    let out = s
        .lab
        .exec_ok(
            &cli,
            "dig",
            &[
                "+tries=1",
                "+time=3",
                "@10.79.0.1",
                "api.github.com.svc.cluster.local",
            ],
        )
        .unwrap();
    assert!(out.contains("status: NXDOMAIN"), "{out}");
    assert_eq!(s.status().unwrap()["ifaces"][0]["name"], srv_end.as_str());
    s.lab
        .exec_ok(&srv, "ip", &["link", "del", &srv_end])
        .unwrap();
    assert!(
        wait_until(Duration::from_secs(5), || s
            .status()
            .is_some_and(|v| v["ifaces"] == serde_json::json!([]))),
        "not forgotten:\n{}",
        s.agent_log()
    );
    s.ctl_ok(&["unload"]);
    assert!(wait_until(Duration::from_secs(10), || !s.pins.exists()));
}

/// `--keep-attached`, then a new agent: the program stays attached in
/// between, the new one replaces it on the same link (one XDP program on
/// the interface, the old one freed). After a SIGKILL the program stays
/// too (pinned at attach) and the next agent adopts it.
#[test]
fn keep_attached_hands_over_and_sigkill_fails_open() {
    require_root!();
    let mut s = Setup::new();
    let srv_if = s.srv_if.clone();
    let srv = s.srv.clone();
    let args = [
        "--no-forward",
        "--keep-attached",
        "--iface",
        &srv_if,
        "--address=/com.svc.cluster.local/",
    ];
    let first = s.load(&args);
    let p1 = s.attached_prog(&srv, &srv_if).expect("attached");
    let artifact = "api.github.com.svc.cluster.local";
    assert_eq!(s.dig(artifact, &[]), "NXDOMAIN");
    s.lab.stop(first).unwrap();
    assert_eq!(s.attached_prog(&srv, &srv_if), Some(p1), "kept attached");
    assert_eq!(
        s.dig(artifact, &[]),
        "NXDOMAIN",
        "still answering, no agent"
    );
    assert!(s.ctl_ok(&["status"]).contains("stays attached"));

    let _second = s.load(&args);
    let p2 = s.attached_prog(&srv, &srv_if).expect("still attached");
    assert_ne!(p1, p2, "the new agent's program replaced the old one");
    let show = s
        .lab
        .exec_ok(&srv, "ip", &["-d", "link", "show", "dev", &srv_if])
        .unwrap();
    assert_eq!(show.matches("prog/xdp").count(), 1, "{show}");
    let gone = wait_until(Duration::from_secs(5), || {
        Command::new("bpftool")
            .args(["prog", "show", "id", &p1.to_string()])
            .output()
            .is_ok_and(|o| !o.status.success())
    });
    assert!(gone, "the old program {p1} is still loaded");
    assert!(s.agent_log().contains("adopted the previous agent's link"));
    assert_eq!(s.dig(artifact, &[]), "NXDOMAIN");
    s.ctl_ok(&["unload"]);
    assert!(wait_until(Duration::from_secs(10), || !s.pins.exists()));
    assert_eq!(s.attached_prog(&srv, &srv_if), None);

    // SIGKILL, even without --keep-attached: the links are pinned at
    // attach, so the program stays and keeps answering the patterns (a
    // function of the config alone); the next agent adopts it.
    let third = s.load(&[
        "--no-forward",
        "--iface",
        &srv_if,
        "--address=/com.svc.cluster.local/",
    ]);
    let p3 = s.attached_prog(&srv, &srv_if).expect("attached");
    s.lab.kill(third).unwrap();
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(
        s.attached_prog(&srv, &srv_if),
        Some(p3),
        "a killed agent's program stays"
    );
    assert_eq!(
        s.dig(artifact, &[]),
        "NXDOMAIN",
        "the patterns, with no agent"
    );
    assert!(s.ctl_ok(&["status"]).contains("or the agent died"));
    let _fourth = s.load(&[
        "--no-forward",
        "--iface",
        &srv_if,
        "--address=/com.svc.cluster.local/",
    ]);
    assert!(s.agent_log().contains("adopted the previous agent's link"));
    assert_ne!(s.attached_prog(&srv, &srv_if), Some(p3));
    assert_eq!(s.dig(artifact, &[]), "NXDOMAIN");
    s.ctl_ok(&["unload"]);
    assert!(wait_until(Duration::from_secs(10), || !s.pins.exists()));
    assert_eq!(s.attached_prog(&srv, &srv_if), None, "unload detaches");
}
