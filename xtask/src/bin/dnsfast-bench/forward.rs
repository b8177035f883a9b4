//! The forwarder against dnsmasq and unbound, each configured for the same
//! upstream and cache, measured one after the other in the same run:
//!
//!   dnsperf (client ns) ──veth── server under test 10.78.0.1 ──veth── unbound 10.79.0.2
//!                                                                    (answers *.bench.example)
//!
//! dnsfast runs twice: as deployed (`load`: XDP on the veth, whose answer
//! cache the forwarder fills, plus the forwarder), and as the forwarder
//! alone (`serve`).
//!
//! - cache hits: 1000 names asked over and over after a warm-up, in
//!   interleaved rounds;
//! - p50/p99 latency of cache hits at 80 % of that server's peak, two ways:
//!   every query of a paced dnsperf run (-Q -v), and a probe that asks one
//!   cached name every millisecond, one query at a time, while dnsperf
//!   supplies the rest of the load (without -v: writing a line per query,
//!   ~90k lines/s on the same two cores, disturbs the very tail it reports);
//! - forwarded misses: every name new, against the fast local upstream;
//! - resident memory of the server after the miss run (a full cache).

use std::{path::Path, time::Duration};

use anyhow::{bail, Context, Result};
use dnsfast_tests::netns::{wait_until, Lab};

use crate::unbound_conf;

const SERVER: &str = "10.78.0.1";
const UPSTREAM: &str = "10.79.0.2";
const ZONE: &str = "bench.example";
const HIT_NAMES: usize = 1000;
const CACHE: &str = "10000";

struct Peer {
    name: &'static str,
    cmd: String,
    args: Vec<String>,
}

/// What one server did.
#[derive(Default)]
struct Row {
    hit_qps: f64,
    p99_ms: f64,
    p50_ms: f64,
    probe_p50_ms: f64,
    probe_p99_ms: f64,
    probe_lost: u64,
    lost_at_80: f64,
    miss_qps: f64,
    rss_mb: f64,
}

pub fn run(bin: &str, seconds: u32, rounds: usize) -> Result<()> {
    let tmp = std::env::temp_dir();
    let tag = std::process::id();
    let hits = tmp.join(format!("dnsfast-bench-{tag}-hits.txt"));
    let misses = tmp.join(format!("dnsfast-bench-{tag}-misses.txt"));
    let text: String = (0..HIT_NAMES).map(|i| format!("h{i}.{ZONE} A\n")).collect();
    std::fs::write(&hits, text)?;
    // More unique names than the fastest server answers in the run.
    let text: String = (0..300_000 * seconds as usize)
        .map(|i| format!("m{i}.{ZONE} A\n"))
        .collect();
    std::fs::write(&misses, text)?;
    let unbound_peer = tmp.join(format!("dnsfast-bench-{tag}-unbound-fwd.conf"));
    std::fs::write(
        &unbound_peer,
        unbound_conf(
            SERVER,
            2,
            &format!(
                "  qname-minimisation: no\n  so-reuseport: yes\n\
                 forward-zone:\n  name: \".\"\n  forward-addr: {UPSTREAM}\n"
            ),
        ),
    )?;
    let upstream_conf = tmp.join(format!("dnsfast-bench-{tag}-upstream.conf"));
    std::fs::write(
        &upstream_conf,
        unbound_conf(
            UPSTREAM,
            1,
            &format!(
                "  local-zone: \"{ZONE}.\" redirect\n  local-data: \"{ZONE}. 3600 IN A 192.0.2.1\"\n"
            ),
        ),
    )?;
    // The same dnsmasq-style flags for both ways dnsfast runs.
    let forwarder_flags: Vec<String> = vec![
        "--listen".into(),
        SERVER.into(),
        "--no-resolv".into(),
        format!("--server={UPSTREAM}"),
        format!("--cache-size={CACHE}"),
        "--no-negcache".into(),
    ];
    let peers = [
        Peer {
            name: "dnsfast load (XDP + fwd)",
            cmd: bin.into(),
            args: [
                "load",
                "--iface",
                "{iface}",
                "--mode",
                "skb",
                "--pin-dir",
                "{pins}",
                // One dnsperf is one client: its misses must all reach the
                // forwarder, as the peers' do.
                "--client-qps=0",
            ]
            .iter()
            .map(|a| a.to_string())
            .chain(forwarder_flags.clone())
            .collect(),
        },
        Peer {
            name: "dnsfast serve (fwd only)",
            cmd: bin.into(),
            args: std::iter::once("serve".to_string())
                .chain(forwarder_flags.clone())
                .collect(),
        },
        Peer {
            name: "dnsmasq",
            cmd: "dnsmasq".into(),
            args: [
                "--keep-in-foreground",
                "--no-resolv",
                "--no-hosts",
                "--bind-interfaces",
                &format!("--listen-address={SERVER}"),
                "--user=root",
                "--pid-file=",
                &format!("--server={UPSTREAM}"),
                &format!("--cache-size={CACHE}"),
                "--no-negcache",
            ]
            .map(String::from)
            .to_vec(),
        },
        Peer {
            name: "unbound (2 threads)",
            cmd: "unbound".into(),
            args: vec!["-d".into(), "-c".into(), unbound_peer.display().to_string()],
        },
    ];
    // Every server gets its lab up front; then the measurements interleave
    // the servers round by round, so that drift in the machine's load hits
    // them all alike, and each reports its median.
    let mut labs: Vec<Option<Running>> = peers
        .iter()
        .map(|p| match start(p, &upstream_conf, &hits) {
            Ok(r) => Some(r),
            Err(e) => {
                println!("{:<27} failed to start: {e:#}", p.name);
                None
            }
        })
        .collect();
    let secs = seconds.to_string();
    let mut hit = vec![Vec::new(); peers.len()];
    for _ in 0..rounds {
        for (i, l) in labs.iter_mut().enumerate() {
            if let Some(r) = l {
                match r.perf(&hits, &["-l", &secs]).and_then(|o| qps_of(&o)) {
                    Ok(q) => hit[i].push(q),
                    Err(e) => println!("{}: {e:#}", peers[i].name),
                }
            }
        }
    }
    let mut rows: Vec<Option<Row>> = Vec::new();
    for (i, l) in labs.iter_mut().enumerate() {
        let Some(r) = l else {
            rows.push(None);
            continue;
        };
        let Some(hit_qps) = median(&mut hit[i]) else {
            rows.push(None);
            continue;
        };
        let rate = format!("{:.0}", hit_qps * 0.8);
        let row = r
            .dnsperf_verbose(&LATENCY_LOAD, &hits, &["-l", &secs, "-Q", &rate])
            .and_then(|o| latency(&o))
            .and_then(|(p50_ms, p99_ms, lost_at_80)| {
                let (probe_p50_ms, probe_p99_ms, probe_lost) =
                    r.probed(&hits, hit_qps * 0.8, seconds)?;
                let miss_qps = qps_of(&r.perf(&misses, &["-l", &secs])?)?;
                Ok(Row {
                    hit_qps,
                    p50_ms,
                    p99_ms,
                    probe_p50_ms,
                    probe_p99_ms,
                    probe_lost,
                    lost_at_80,
                    miss_qps,
                    rss_mb: rss_kb(r.pid)? as f64 / 1024.0,
                })
            });
        match row {
            Ok(row) => rows.push(Some(row)),
            Err(e) => {
                println!("{}: {e:#}", peers[i].name);
                rows.push(None);
            }
        }
    }
    drop(labs);
    println!(
        "\n== Forwarder: dnsperf {} from a client namespace, upstream = unbound on a third namespace (same 2 cores)",
        PERF_LOAD.join(" ")
    );
    println!(
        "   hit qps: median of {rounds} interleaved {seconds} s rounds; p50/p99 of cache hits paced at 80 % of that \
         (dnsperf {} -Q); misses: every name new",
        LATENCY_LOAD.join(" ")
    );
    println!(
        "   probe: one cached name every ms, one at a time, while dnsperf (no -v) sends 80 % of \
         the peak minus the probe's 1,000 qps"
    );
    println!(
        "{:<27} {:>10} {:>10} {:>22} {:>11} {:>22} {:>8}",
        "server",
        "hit qps",
        "miss qps",
        "all p50/p99 @80% (ms)",
        "lost @80%",
        "probe p50/p99 (ms)",
        "RSS MB"
    );
    for (p, r) in peers.iter().zip(&rows) {
        match r {
            Some(r) => println!(
                "{:<27} {:>10.0} {:>10.0} {:>14.3} / {:<6.3} {:>10.2}% {:>12.3} / {:<6.3}{} {:>8.1}",
                p.name,
                r.hit_qps,
                r.miss_qps,
                r.p50_ms,
                r.p99_ms,
                r.lost_at_80,
                r.probe_p50_ms,
                r.probe_p99_ms,
                if r.probe_lost > 0 {
                    format!(" ({} lost)", r.probe_lost)
                } else {
                    String::new()
                },
                r.rss_mb
            ),
            None => println!("{:<27} failed", p.name),
        }
    }
    if let Some(Some(ours)) = rows.first() {
        let mut hits = vec![];
        for (p, r) in peers.iter().zip(&rows).skip(2) {
            if let Some(r) = r {
                println!(
                    "dnsfast / {:<18} cache hits {:.2}x   forwarded misses {:.2}x",
                    p.name,
                    ours.hit_qps / r.hit_qps,
                    ours.miss_qps / r.miss_qps
                );
                hits.push(format!("{:.2}×", ours.hit_qps / r.hit_qps));
            }
        }
        crate::history::note("cache_hits", hits.join(" / "));
        crate::history::note("rss", format!("{:.1} MB", ours.rss_mb));
    }
    for f in [&hits, &misses, &unbound_peer, &upstream_conf] {
        let _ = std::fs::remove_file(f);
    }
    Ok(())
}

/// dnsperf's load shape, the same for every server: enough clients,
/// queries in flight and threads that the fastest server is not capped by
/// the load generator.
const PERF_LOAD: [&str; 6] = ["-c", "8", "-q", "500", "-T", "2"];
/// The latency run paces queries (-Q) and keeps fewer in flight, so that
/// what it measures is the server, not a queue inside dnsperf.
const LATENCY_LOAD: [&str; 6] = ["-c", "8", "-q", "100", "-T", "2"];

/// One server's lab, up and warmed.
struct Running {
    lab: Lab,
    cli: String,
    pid: u32,
}

impl Running {
    fn perf(&self, file: &Path, extra: &[&str]) -> Result<String> {
        self.dnsperf(&PERF_LOAD, file, extra)
    }

    fn dnsperf(&self, shape: &[&str], file: &Path, extra: &[&str]) -> Result<String> {
        let mut a = vec!["-s", SERVER, "-d", file.to_str().unwrap()];
        a.extend_from_slice(shape);
        a.extend_from_slice(extra);
        self.lab.exec_ok(&self.cli, "dnsperf", &a)
    }

    /// A paced run with `-v` (a line per query), written to a file rather
    /// than a pipe: reading half a million lines from a pipe while the run
    /// lasts would put the bench itself on the two cores it measures.
    fn dnsperf_verbose(&self, shape: &[&str], file: &Path, extra: &[&str]) -> Result<String> {
        let out = std::env::temp_dir().join(format!("{}-latency.txt", self.cli));
        let mut cmd = format!("dnsperf -s {SERVER} -d {}", file.display());
        for a in shape.iter().chain(extra) {
            cmd.push(' ');
            cmd.push_str(a);
        }
        cmd.push_str(&format!(" -v > {}", out.display()));
        self.lab.exec_ok(&self.cli, "sh", &["-c", &cmd])?;
        let text = std::fs::read_to_string(&out)?;
        let _ = std::fs::remove_file(&out);
        Ok(text)
    }

    /// Background load from dnsperf (paced, no -v) at `rate` qps minus the
    /// probe's, and the probe in the same client namespace: (p50 ms, p99
    /// ms, probes lost).
    fn probed(&self, file: &Path, rate: f64, seconds: u32) -> Result<(f64, f64, u64)> {
        let secs = seconds.to_string();
        let background = format!("{:.0}", (rate - PROBE_QPS as f64).max(1.0));
        let me = std::env::current_exe().context("the bench's own path")?;
        let me = me.to_str().context("the bench's path is not UTF-8")?;
        let (load, probe) = std::thread::scope(|sc| {
            let load =
                sc.spawn(|| self.dnsperf(&LATENCY_LOAD, file, &["-l", &secs, "-Q", &background]));
            let probe = self
                .lab
                .exec_ok(&self.cli, me, &["--probe", SERVER, "--seconds", &secs]);
            (load.join(), probe)
        });
        load.map_err(|_| anyhow::anyhow!("the dnsperf thread panicked"))??;
        let out = probe?;
        let field = |k: &str| -> Result<f64> {
            out.split_whitespace()
                .find_map(|w| w.strip_prefix(k))
                .and_then(|v| v.parse().ok())
                .with_context(|| format!("no {k} in the probe's output: {out}"))
        };
        Ok((field("p50_ms=")?, field("p99_ms=")?, field("lost=")? as u64))
    }
}

/// Queries per second of the latency probe.
const PROBE_QPS: u32 = 1000;

/// The latency probe (`dnsfast-bench --probe ADDR`, run inside the client
/// namespace): one query for a cached name every millisecond, one at a
/// time, for `seconds - 1` seconds after a half-second delay (so it runs
/// inside the load). A query without an answer in 1 s counts as lost (and
/// as slower than any answer).
pub fn probe(server: &str, seconds: u32) -> Result<()> {
    use hickory_proto::op::{Message, Query};
    use hickory_proto::rr::{Name, RecordType};
    use std::str::FromStr;
    use std::time::Instant;

    let mut m = Message::query();
    m.add_query(Query::query(
        Name::from_str(&format!("h0.{ZONE}."))?,
        RecordType::A,
    ));
    m.metadata.recursion_desired = true;
    let mut q = m.to_vec()?;
    let sock = std::net::UdpSocket::bind("0.0.0.0:0")?;
    sock.connect((server, 53))
        .with_context(|| format!("connecting to {server}"))?;
    sock.set_read_timeout(Some(Duration::from_secs(1)))?;
    std::thread::sleep(Duration::from_millis(500));
    let period = Duration::from_micros(1_000_000 / PROBE_QPS as u64);
    let end = Instant::now() + Duration::from_secs(seconds.saturating_sub(1).max(1) as u64);
    let mut next = Instant::now();
    let (mut rtts, mut lost) = (Vec::new(), 0u64);
    let mut buf = [0u8; 1500];
    let mut id: u16 = 0;
    while Instant::now() < end {
        id = id.wrapping_add(1);
        q[..2].copy_from_slice(&id.to_be_bytes());
        let t0 = Instant::now();
        sock.send(&q)?;
        loop {
            match sock.recv(&mut buf) {
                Ok(n) if n >= 2 && buf[..2] == id.to_be_bytes() => {
                    rtts.push(t0.elapsed().as_secs_f64() * 1000.0);
                    break;
                }
                Ok(_) => continue, // a late answer to an earlier probe
                Err(_) => {
                    lost += 1;
                    break;
                }
            }
        }
        next += period;
        let now = Instant::now();
        if next > now {
            std::thread::sleep(next - now);
        } else {
            next = now;
        }
    }
    if rtts.is_empty() {
        bail!("no probe was answered");
    }
    let n = rtts.len();
    let (p50, p99) = p50_p99(rtts, lost as usize);
    println!("answered={n} lost={lost} p50_ms={p50:.3} p99_ms={p99:.3}");
    Ok(())
}

/// p50 and p99 of `answered` times, with `lost` queries counted as slower
/// than any answer.
fn p50_p99(mut v: Vec<f64>, lost: usize) -> (f64, f64) {
    v.extend(std::iter::repeat_n(f64::INFINITY, lost));
    v.sort_by(f64::total_cmp);
    let pct = |p: f64| v[((v.len() as f64 * p) as usize).min(v.len() - 1)];
    (pct(0.50), pct(0.99))
}

fn start(p: &Peer, upstream_conf: &Path, hits: &Path) -> Result<Running> {
    let mut lab = Lab::new();
    let cli = lab.add_ns("dfc", None)?;
    let srv = lab.add_ns("dfs", None)?;
    let up = lab.add_ns("dfu", None)?;
    let (_, srv_if) = lab.veth(&cli, &["10.78.0.2/24"], &srv, &[&format!("{SERVER}/24")])?;
    lab.veth(&srv, &["10.79.0.1/24"], &up, &[&format!("{UPSTREAM}/24")])?;
    let tmp = std::env::temp_dir();
    let ulog = tmp.join(format!("{up}.log"));
    lab.spawn(
        &up,
        "unbound",
        &["-d", "-c", upstream_conf.to_str().unwrap()],
        ulog.to_str().unwrap(),
    )?;
    let log = tmp.join(format!("{srv}.log"));
    let pins = format!("/sys/fs/bpf/dnsfast-bench-{srv}");
    let args: Vec<String> = p
        .args
        .iter()
        .map(|a| a.replace("{iface}", &srv_if).replace("{pins}", &pins))
        .collect();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let pid = lab.spawn(&srv, &p.cmd, &args, log.to_str().unwrap())?;
    let ready = wait_until(Duration::from_secs(15), || {
        lab.exec(
            &cli,
            "dig",
            &[
                "+tries=1",
                "+time=1",
                &format!("@{SERVER}"),
                &format!("h0.{ZONE}"),
            ],
        )
        .map(|o| String::from_utf8_lossy(&o.stdout).contains("192.0.2.1"))
        .unwrap_or(false)
    });
    if !ready {
        bail!(
            "{} never answered: {} {}",
            p.name,
            std::fs::read_to_string(&log).unwrap_or_default(),
            std::fs::read_to_string(&ulog).unwrap_or_default()
        );
    }
    let r = Running { lab, cli, pid };
    // Warm-up: every hit name once, so the timed runs only hit.
    r.perf(hits, &["-n", "1"])?;
    Ok(r)
}

fn median(v: &mut [f64]) -> Option<f64> {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied()
}

fn qps_of(out: &str) -> Result<f64> {
    out.lines()
        .find_map(|l| l.trim().strip_prefix("Queries per second:"))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .with_context(|| format!("no qps in dnsperf output:\n{out}"))
}

/// p50 and p99 from dnsperf -v lines (`> NOERROR name A 0.000216`); a lost
/// query counts as slower than any answer. Also the share lost, in %.
fn latency(out: &str) -> Result<(f64, f64, f64)> {
    let v: Vec<f64> = out
        .lines()
        .filter_map(|l| l.strip_prefix("> "))
        .filter_map(|l| l.split_whitespace().last()?.parse::<f64>().ok())
        .collect();
    let lost: usize = out
        .lines()
        .find_map(|l| l.trim().strip_prefix("Queries lost:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0);
    if v.is_empty() {
        bail!("no latencies in dnsperf -v output");
    }
    let answered = v.len();
    let (p50, p99) = p50_p99(v, lost);
    Ok((
        p50 * 1000.0,
        p99 * 1000.0,
        100.0 * lost as f64 / (answered + lost) as f64,
    ))
}

fn rss_kb(pid: u32) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .context("no VmRSS")
}
