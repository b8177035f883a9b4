//! Hostile and well-behaved DNS clients for the hostile-client tests and
//! the bench. Every mode is bounded by `--seconds`; a mode's connections
//! and sockets are closed when it ends.
//!
//! dnsfast-attack victim     --server IP:PORT --suffix S --expect IPV4[,IPV4…] [--rate N] [--tcp-every K]
//! dnsfast-attack mix        --server IP:PORT --suffix S --expect IPV4 [--rate N] [--blocked B]
//! dnsfast-attack tcp-noread --server IP:PORT --suffix S [--conns N] [--queries Q]
//! dnsfast-attack slowloris  --server IP:PORT [--conns N]
//! dnsfast-attack churn      --server IP:PORT
//! dnsfast-attack udp-flood  --server IP:PORT --suffix S
//! dnsfast-attack tcp-large  --server IP:PORT --suffix S [--conns N]
//! dnsfast-attack idle       --server IP:PORT [--conns N]
//!
//! `victim` prints one JSON line: queries sent, answered correctly, wrong
//! (another address, or an error RCODE: never acceptable), unanswered
//! (within 1 s, after one retry), and latency percentiles in µs.

use std::{
    io::{Read, Write},
    net::{Ipv4Addr, SocketAddr, TcpStream, UdpSocket},
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use clap::{Parser, ValueEnum};

#[derive(Clone, Copy, ValueEnum, PartialEq, Eq, Debug)]
enum Mode {
    Victim,
    Mix,
    TcpNoread,
    Slowloris,
    Churn,
    UdpFlood,
    TcpLarge,
    Idle,
}

#[derive(Parser)]
struct Args {
    mode: Mode,
    #[arg(long)]
    server: SocketAddr,
    /// Names are made up below this suffix.
    #[arg(long, default_value = "example")]
    suffix: String,
    /// The addresses a victim answer may carry (comma-separated).
    #[arg(long, value_delimiter = ',')]
    expect: Vec<Ipv4Addr>,
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Connections the attack holds.
    #[arg(long, default_value_t = 200)]
    conns: usize,
    /// Pipelined queries per connection (`tcp-noread`).
    #[arg(long, default_value_t = 2000)]
    queries: usize,
    /// Victim queries per second.
    #[arg(long, default_value_t = 50)]
    rate: u64,
    /// `mix`: a name under this suffix must be NXDOMAIN (a search-path
    /// artifact the kernel answers).
    #[arg(long, default_value = "blocked.test")]
    blocked: String,
    /// Every K-th victim query goes over TCP (0: none).
    #[arg(long, default_value_t = 5)]
    tcp_every: u64,
}

fn main() -> Result<()> {
    let a = Args::parse();
    let until = Instant::now() + Duration::from_secs(a.seconds);
    match a.mode {
        Mode::Victim => victim(&a, until),
        Mode::Mix => mix(&a, until),
        Mode::TcpNoread => tcp_noread(&a, until),
        Mode::Slowloris => slowloris(&a, until),
        Mode::Churn => churn(&a, until),
        Mode::UdpFlood => udp_flood(&a, until),
        Mode::TcpLarge => tcp_large(&a, until),
        Mode::Idle => idle(&a, until),
    }
}

/// A query for `name`, type A, class IN, RD set.
fn query(id: u16, name: &str) -> Vec<u8> {
    let mut q = id.to_be_bytes().to_vec();
    q.extend_from_slice(&[1, 0, 0, 1, 0, 0, 0, 0, 0, 0]);
    for l in name.trim_end_matches('.').split('.') {
        q.push(l.len() as u8);
        q.extend_from_slice(l.as_bytes());
    }
    q.extend_from_slice(&[0, 0, 1, 0, 1]);
    q
}

fn framed(q: &[u8]) -> Vec<u8> {
    let mut f = (q.len() as u16).to_be_bytes().to_vec();
    f.extend_from_slice(q);
    f
}

fn random_name(suffix: &str) -> String {
    format!("r{:016x}.{suffix}", rand::random::<u64>())
}

/// What an answer says: its RCODE and, for NOERROR, its first A record.
fn verdict(reply: &[u8], id: u16) -> Option<(u8, Option<Ipv4Addr>)> {
    if reply.len() < 12 || reply[..2] != id.to_be_bytes() || reply[2] & 0x80 == 0 {
        return None;
    }
    let rcode = reply[3] & 0x0f;
    let ancount = u16::from_be_bytes([reply[6], reply[7]]);
    // Skip the question: its name, then type and class.
    let mut i = 12;
    while i < reply.len() && reply[i] != 0 {
        i += 1 + reply[i] as usize;
    }
    i += 5;
    let mut addr = None;
    for _ in 0..ancount {
        // A compressed owner name (2 bytes), or a full one.
        if i < reply.len() && reply[i] & 0xc0 == 0xc0 {
            i += 2;
        } else {
            while i < reply.len() && reply[i] != 0 {
                i += 1 + reply[i] as usize;
            }
            i += 1;
        }
        if i + 10 > reply.len() {
            break;
        }
        let rtype = u16::from_be_bytes([reply[i], reply[i + 1]]);
        let len = u16::from_be_bytes([reply[i + 8], reply[i + 9]]) as usize;
        i += 10;
        if rtype == 1 && len == 4 && i + 4 <= reply.len() {
            addr = Some(Ipv4Addr::new(
                reply[i],
                reply[i + 1],
                reply[i + 2],
                reply[i + 3],
            ));
            break;
        }
        i += len;
    }
    Some((rcode, addr))
}

/// One victim query over UDP (one retry) or TCP, within 1 s each.
fn ask(server: SocketAddr, name: &str, tcp: bool) -> Result<(u8, Option<Ipv4Addr>)> {
    let id: u16 = rand::random();
    let q = query(id, name);
    let wait = Duration::from_secs(1);
    if tcp {
        let mut s = TcpStream::connect_timeout(&server, wait)?;
        s.set_read_timeout(Some(wait))?;
        s.set_write_timeout(Some(wait))?;
        s.write_all(&framed(&q))?;
        let mut len = [0u8; 2];
        s.read_exact(&mut len)?;
        let mut buf = vec![0u8; u16::from_be_bytes(len) as usize];
        s.read_exact(&mut buf)?;
        return verdict(&buf, id).context("not our answer");
    }
    let s = UdpSocket::bind("0.0.0.0:0")?;
    s.connect(server)?;
    s.set_read_timeout(Some(wait))?;
    let mut buf = [0u8; 1500];
    for _ in 0..2 {
        s.send(&q)?;
        let deadline = Instant::now() + wait;
        while Instant::now() < deadline {
            match s.recv(&mut buf) {
                Ok(n) => {
                    if let Some(v) = verdict(&buf[..n], id) {
                        return Ok(v);
                    }
                }
                Err(_) => break,
            }
        }
    }
    bail!("no answer")
}

fn victim(a: &Args, until: Instant) -> Result<()> {
    if a.expect.is_empty() {
        bail!("victim needs --expect");
    }
    let gap = Duration::from_micros(1_000_000 / a.rate.max(1));
    let (mut sent, mut ok, mut wrong, mut lost) = (0u64, 0u64, 0u64, 0u64);
    let mut lat = Vec::new();
    let mut wrong_seen = Vec::new();
    let mut next = Instant::now();
    while Instant::now() < until {
        sent += 1;
        let tcp = a.tcp_every > 0 && sent.is_multiple_of(a.tcp_every);
        // Names never asked before: each one is a cache miss, the hard case.
        let name = random_name(&a.suffix);
        let start = Instant::now();
        match ask(a.server, &name, tcp) {
            Ok((0, Some(ip))) if a.expect.contains(&ip) => {
                ok += 1;
                lat.push(start.elapsed().as_micros() as u64);
            }
            Ok(v) => {
                wrong += 1;
                if wrong_seen.len() < 5 {
                    wrong_seen.push(format!("{name} tcp={tcp}: {v:?}"));
                }
            }
            Err(_) => lost += 1,
        }
        next += gap;
        if let Some(d) = next.checked_duration_since(Instant::now()) {
            std::thread::sleep(d);
        }
    }
    lat.sort_unstable();
    let pct = |p: f64| {
        lat.get(((lat.len() as f64 * p) as usize).min(lat.len().saturating_sub(1)))
            .copied()
            .unwrap_or(0)
    };
    println!(
        "{}",
        serde_json::json!({
            "sent": sent, "ok": ok, "wrong": wrong, "lost": lost,
            "p50_us": pct(0.50), "p99_us": pct(0.99), "max_us": lat.last().copied().unwrap_or(0),
            "wrong_examples": wrong_seen,
        })
    );
    Ok(())
}

/// Connections that pipeline `queries` queries each and never read a
/// byte: their receive windows fill and stay full (zero window).
fn tcp_noread(a: &Args, until: Instant) -> Result<()> {
    let mut held = Vec::new();
    while Instant::now() < until {
        held.retain(|s: &TcpStream| s.peer_addr().is_ok());
        while held.len() < a.conns && Instant::now() < until {
            let Ok(mut s) = TcpStream::connect_timeout(&a.server, Duration::from_millis(200))
            else {
                std::thread::sleep(Duration::from_millis(20));
                break;
            };
            s.set_nonblocking(true)?;
            for i in 0..a.queries {
                let q = framed(&query(i as u16, &random_name(&a.suffix)));
                if s.write(&q).is_err() {
                    break; // the window is shut: what we wanted
                }
            }
            held.push(s);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(())
}

/// Connections that send a query one byte a second.
fn slowloris(a: &Args, until: Instant) -> Result<()> {
    let q = framed(&query(1, &random_name(&a.suffix)));
    let mut conns: Vec<(TcpStream, usize)> = Vec::new();
    while Instant::now() < until {
        conns.retain_mut(|(s, at)| {
            let ok = s.write(&q[*at % q.len()..*at % q.len() + 1]).is_ok();
            *at += 1;
            ok
        });
        while conns.len() < a.conns {
            match TcpStream::connect_timeout(&a.server, Duration::from_millis(200)) {
                Ok(s) => conns.push((s, 0)),
                Err(_) => break,
            }
        }
        std::thread::sleep(Duration::from_secs(1));
    }
    Ok(())
}

/// Connections opened and closed as fast as one thread can.
fn churn(a: &Args, until: Instant) -> Result<()> {
    while Instant::now() < until {
        if let Ok(s) = TcpStream::connect_timeout(&a.server, Duration::from_millis(200)) {
            drop(s);
        }
    }
    Ok(())
}

/// Random names under `suffix`, as fast as one socket sends; replies are
/// left unread.
fn udp_flood(a: &Args, until: Instant) -> Result<()> {
    let s = UdpSocket::bind("0.0.0.0:0")?;
    s.connect(a.server)?;
    let mut i = 0u16;
    while Instant::now() < until {
        for _ in 0..256 {
            i = i.wrapping_add(1);
            let _ = s.send(&query(i, &random_name(&a.suffix)));
        }
    }
    Ok(())
}

/// Names with large answers (tens of KB, TCP only), over `conns`
/// connections that read them: the agent fetches and holds them.
fn tcp_large(a: &Args, until: Instant) -> Result<()> {
    let workers: Vec<_> = (0..a.conns.min(64))
        .map(|_| {
            let (server, suffix) = (a.server, a.suffix.clone());
            std::thread::spawn(move || {
                while Instant::now() < until {
                    let Ok(mut s) = TcpStream::connect_timeout(&server, Duration::from_secs(1))
                    else {
                        std::thread::sleep(Duration::from_millis(50));
                        continue;
                    };
                    let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
                    for i in 0..100u16 {
                        if Instant::now() >= until {
                            break;
                        }
                        if s.write_all(&framed(&query(i, &random_name(&suffix))))
                            .is_err()
                        {
                            break;
                        }
                        let mut len = [0u8; 2];
                        if s.read_exact(&mut len).is_err() {
                            break;
                        }
                        let mut buf = vec![0u8; u16::from_be_bytes(len) as usize];
                        if s.read_exact(&mut buf).is_err() {
                            break;
                        }
                    }
                }
            })
        })
        .collect();
    for w in workers {
        let _ = w.join();
    }
    Ok(())
}

/// Idle connections, reopened as they are closed.
fn idle(a: &Args, until: Instant) -> Result<()> {
    let mut held: Vec<TcpStream> = Vec::new();
    while Instant::now() < until {
        while held.len() < a.conns && Instant::now() < until {
            match TcpStream::connect_timeout(&a.server, Duration::from_millis(200)) {
                Ok(s) => held.push(s),
                Err(_) => break,
            }
        }
        std::thread::sleep(Duration::from_millis(200));
        held.retain(|s| {
            let _ = s.set_nonblocking(true);
            let mut b = [0u8; 1];
            !matches!((&*s).read(&mut b), Ok(0))
        });
    }
    Ok(())
}

/// What `mix` expects of query `i`: a third artifacts (NXDOMAIN), a third
/// the same 100 names over and over (cached), a third new names (cache
/// misses, to the upstream).
fn mix_name(i: usize, a: &Args) -> (String, bool) {
    match i % 3 {
        0 => (format!("q{i}.{}", a.blocked), false),
        1 => (format!("c{}.{}", i % 100, a.suffix), true),
        _ => (
            format!("m{i}-{:x}.{}", rand::random::<u32>(), a.suffix),
            true,
        ),
    }
}

/// An open-loop load at `rate` queries a second over UDP (8 sockets, so
/// that IDs stay unique), plus one TCP query in 50 on its own connection;
/// every answer is checked: right RCODE and address, within 1 s. Prints
/// one JSON line: sent, ok, wrong, late (right, after 1 s), lost.
fn mix(a: &Args, until: Instant) -> Result<()> {
    use std::sync::{
        atomic::{AtomicU64, AtomicU8, Ordering},
        Arc,
    };
    const SOCKS: usize = 8;
    let expect = *a.expect.first().context("mix needs --expect")?;
    let cap = (a.rate * a.seconds + 1000) as usize;
    if cap / SOCKS > 65_536 {
        bail!("rate x seconds over {} queries", 65_536 * SOCKS);
    }
    // Per query: sent at (µs since start), and its outcome.
    const PENDING: u8 = 0;
    const OK: u8 = 1;
    const WRONG: u8 = 2;
    const LATE: u8 = 3;
    let sent_at: Arc<Vec<AtomicU64>> = Arc::new((0..cap).map(|_| AtomicU64::new(0)).collect());
    let state: Arc<Vec<AtomicU8>> = Arc::new((0..cap).map(|_| AtomicU8::new(PENDING)).collect());
    let start = Instant::now();
    let socks: Vec<Arc<UdpSocket>> = (0..SOCKS)
        .map(|_| {
            let s = UdpSocket::bind("0.0.0.0:0")?;
            s.connect(a.server)?;
            s.set_read_timeout(Some(Duration::from_millis(200)))?;
            Ok(Arc::new(s))
        })
        .collect::<Result<_>>()?;
    let stop_at = until + Duration::from_secs(2);
    let readers: Vec<_> = socks
        .iter()
        .enumerate()
        .map(|(k, s)| {
            let (s, sent_at, state) = (s.clone(), sent_at.clone(), state.clone());
            let blocked_every = 3;
            std::thread::spawn(move || {
                let mut buf = [0u8; 1500];
                while Instant::now() < stop_at {
                    let Ok(n) = s.recv(&mut buf) else { continue };
                    if n < 12 {
                        continue;
                    }
                    let id = u16::from_be_bytes([buf[0], buf[1]]) as usize;
                    let i = id * SOCKS + k;
                    if i >= state.len() {
                        continue;
                    }
                    let took =
                        start.elapsed().as_micros() as u64 - sent_at[i].load(Ordering::Relaxed);
                    let want_block = i.is_multiple_of(blocked_every);
                    let right = match verdict(&buf[..n], id as u16) {
                        Some((3, _)) => want_block,
                        Some((0, Some(ip))) => !want_block && ip == expect,
                        _ => false,
                    };
                    if !right && i.is_multiple_of(97) {
                        eprintln!(
                            "wrong: query {i} (blocked={want_block}): {:?}",
                            verdict(&buf[..n], id as u16)
                        );
                    }
                    let v = if !right {
                        WRONG
                    } else if took > 1_000_000 {
                        LATE
                    } else {
                        OK
                    };
                    let _ =
                        state[i].compare_exchange(PENDING, v, Ordering::Relaxed, Ordering::Relaxed);
                }
            })
        })
        .collect();
    // TCP: one query in 50, each on a connection of its own.
    let tcp_stats = Arc::new([AtomicU64::new(0), AtomicU64::new(0), AtomicU64::new(0)]);
    let tcp = {
        let (server, suffix, rate, stats) = (a.server, a.suffix.clone(), a.rate, tcp_stats.clone());
        std::thread::spawn(move || {
            let gap = Duration::from_micros(50_000_000 / rate.max(1));
            while Instant::now() < until {
                let t = Instant::now();
                let name = format!("t{:x}.{suffix}", rand::random::<u32>());
                stats[0].fetch_add(1, Ordering::Relaxed);
                match ask(server, &name, true) {
                    Ok((0, Some(ip))) if ip == expect && t.elapsed() <= Duration::from_secs(1) => {
                        stats[1].fetch_add(1, Ordering::Relaxed);
                    }
                    Ok((0, Some(ip))) if ip == expect => {}
                    _ => {
                        stats[2].fetch_add(1, Ordering::Relaxed);
                    }
                }
                std::thread::sleep(gap.saturating_sub(t.elapsed()));
            }
        })
    };
    let gap_us = 1_000_000 / a.rate.max(1);
    let mut i = 0usize;
    while Instant::now() < until && i < cap {
        let due = i as u64 * gap_us;
        let now = start.elapsed().as_micros() as u64;
        if now < due {
            std::thread::sleep(Duration::from_micros((due - now).min(1000)));
            continue;
        }
        let (name, _) = mix_name(i, a);
        let k = i % SOCKS;
        let id = (i / SOCKS) as u16;
        sent_at[i].store(start.elapsed().as_micros() as u64, Ordering::Relaxed);
        let _ = socks[k].send(&query(id, &name));
        i += 1;
    }
    for r in readers {
        let _ = r.join();
    }
    let _ = tcp.join();
    let count = |v: u8| {
        state[..i]
            .iter()
            .filter(|s| s.load(Ordering::Relaxed) == v)
            .count()
    };
    let lost_at: Vec<u64> = state[..i]
        .iter()
        .enumerate()
        .filter(|(_, s)| s.load(Ordering::Relaxed) == PENDING)
        .map(|(j, _)| sent_at[j].load(Ordering::Relaxed) / 1000)
        .take(20)
        .collect();
    // Which path lost them: the kernel answers the blocked third and the
    // cached third (once cached), the forwarder the misses.
    let mut lost_by_kind = [0u64; 3];
    for (j, s) in state[..i].iter().enumerate() {
        if s.load(Ordering::Relaxed) == PENDING {
            lost_by_kind[j % 3] += 1;
        }
    }
    println!(
        "{}",
        serde_json::json!({
            "sent": i, "ok": count(OK), "wrong": count(WRONG), "late": count(LATE),
            "lost": count(PENDING), "lost_at_ms": lost_at,
            "lost_blocked": lost_by_kind[0], "lost_cached": lost_by_kind[1],
            "lost_misses": lost_by_kind[2],
            "tcp_sent": tcp_stats[0].load(Ordering::Relaxed),
            "tcp_ok": tcp_stats[1].load(Ordering::Relaxed),
            "tcp_failed": tcp_stats[2].load(Ordering::Relaxed),
        })
    );
    Ok(())
}
