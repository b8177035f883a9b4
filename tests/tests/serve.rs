//! `dnsfast serve`, the forwarder without XDP, as an ordinary user on
//! loopback high ports: blocked names, the in-flight bound, and its flags.

use std::{
    net::UdpSocket,
    process::{Child, Command, Stdio},
    time::Duration,
};

use dnsfast_tests::{dnsfast_bin, netns::wait_until};
use hickory_proto::{
    op::{Message, Query, ResponseCode},
    rr::{Name, RecordType},
};

fn free_port() -> u16 {
    UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Kills (by PID) what it started.
struct Procs(Vec<Child>);

impl Drop for Procs {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// A test upstream on a free loopback port, and `dnsfast serve` in front
/// of it on another: `(processes, serve's port, serve's log)`.
fn start(upstream: &[&str], serve: &[&str]) -> (Procs, u16, std::path::PathBuf) {
    let (up_port, port) = (free_port(), free_port());
    let log = std::env::temp_dir().join(format!("dnsfast-serve-{port}.log"));
    let mut procs = Procs(Vec::new());
    let listen = format!("127.0.0.1:{up_port}");
    procs.0.push(
        Command::new(env!("CARGO_BIN_EXE_dnsfast-testdns"))
            .args(["--listen", &listen])
            .args(upstream)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    procs.0.push(
        Command::new(dnsfast_bin())
            .arg("serve")
            .args(serve)
            .args([
                "--listen",
                &format!("127.0.0.1:{port}"),
                "--no-resolv",
                &format!("--server=127.0.0.1#{up_port}"),
            ])
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap(),
    );
    (procs, port, log)
}

fn query(name: &str, id: u16) -> Vec<u8> {
    let mut m = Message::query();
    m.metadata.id = id;
    m.metadata.recursion_desired = true;
    m.add_query(Query::query(Name::from_ascii(name).unwrap(), RecordType::A));
    m.to_vec().unwrap()
}

fn ask(sock: &UdpSocket, port: u16, name: &str) -> Option<Message> {
    sock.send_to(&query(name, 7), ("127.0.0.1", port)).unwrap();
    let mut buf = [0u8; 4096];
    let n = sock.recv(&mut buf).ok()?;
    Message::from_vec(&buf[..n]).ok()
}

#[test]
fn serve_blocks_forwards_and_bounds_inflight() {
    let cfg = std::env::temp_dir().join(format!("dnsfast-serve-{}.toml", free_port()));
    std::fs::write(&cfg, "[forward]\nmax-inflight = 2\n").unwrap();
    let (procs, port, log) = start(
        &["--delay-ms", "400", "--answer", "www.example.com=192.0.2.7"],
        &[
            "--config",
            cfg.to_str().unwrap(),
            "--address=/com.svc.cluster.local/",
        ],
    );
    let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    let up = wait_until(Duration::from_secs(10), || {
        ask(&sock, port, "www.example.com.")
            .is_some_and(|m| m.metadata.response_code == ResponseCode::NoError)
    });
    assert!(up, "{}", std::fs::read_to_string(&log).unwrap_or_default());

    // Blocked names are answered by the forwarder itself when there is no XDP.
    let m = ask(&sock, port, "API.github.com.svc.cluster.local.").unwrap();
    assert_eq!(m.metadata.response_code, ResponseCode::NXDomain);
    assert_eq!(
        m.queries[0].name().to_ascii(),
        "API.github.com.svc.cluster.local."
    );

    // Eight distinct misses at once, two upstream slots: two are forwarded,
    // six are refused at once (a stub then tries its next nameserver).
    for i in 0..8u16 {
        sock.send_to(
            &query(&format!("n{i}.example.org."), i),
            ("127.0.0.1", port),
        )
        .unwrap();
    }
    let mut refused = 0;
    let mut forwarded = 0;
    let mut buf = [0u8; 4096];
    for _ in 0..8 {
        let n = sock.recv(&mut buf).expect("every query gets an answer");
        match Message::from_vec(&buf[..n]).unwrap().metadata.response_code {
            ResponseCode::Refused => refused += 1,
            ResponseCode::NXDomain => forwarded += 1,
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!((forwarded, refused), (2, 6));
    drop(procs);
    let _ = std::fs::remove_file(&cfg);
    let _ = std::fs::remove_file(&log);
}

#[test]
fn check_config_explains_the_forwarder() {
    let tmp = std::env::temp_dir().join(format!("dnsfast-cc-{}.toml", std::process::id()));
    std::fs::write(
        &tmp,
        "[cache]\nsize = 500\nneg-cache = true\n\n[[zone]]\nname = \"cluster.local\"\nupstreams = [\"10.0.0.10\", { addr = \"10.0.0.11#5353\", timeout-ms = 500 }]\npolicy = \"random\"\n",
    )
    .unwrap();
    let out = Command::new(dnsfast_bin())
        .args([
            "check-config",
            tmp.to_str().unwrap(),
            "--server=/in-addr.arpa/10.0.0.10",
            "--server=10.0.0.2",
            "--no-resolv",
            "--no-negcache",
        ])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains(
            "cache: size 500 entries, 33554432 bytes at most (16384 per answer), ttl clamp 0..86400 s, negative answers not cached"
        ),
        "{text}"
    );
    assert!(
        text.contains("forward: max-inflight-per-client 128; tcp: 256 connections (16 per client), pipeline 16"),
        "{text}"
    );
    assert!(
        text.contains("give the container a limit of at least"),
        "{text}"
    );
    assert!(
        text.contains(
            "zone cluster.local [Random] -> 10.0.0.10:53 (2000 ms), 10.0.0.11:5353 (500 ms)"
        ),
        "{text}"
    );
    assert!(text.contains("zone in-addr.arpa [Sequential] -> 10.0.0.10:53 (2000 ms)   from flag --server=/in-addr.arpa/10.0.0.10"), "{text}");
    assert!(
        text.contains("zone . [Sequential] -> 10.0.0.2:53"),
        "{text}"
    );

    std::fs::write(
        &tmp,
        "[[zone]]\nname = \"x.test\"\nupstreams = [\"10.0.0.1\"]\npolicy = \"fastest\"\n",
    )
    .unwrap();
    let out = Command::new(dnsfast_bin())
        .args(["check-config", tmp.to_str().unwrap()])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert_eq!(
        err.trim(),
        format!(
            "dnsfast: error: {}:4: zone 'x.test': policy 'fastest' is not one of sequential, random",
            tmp.display()
        )
    );
    let _ = std::fs::remove_file(&tmp);
}

#[test]
fn tcp_clients_may_pipeline() {
    use std::io::{Read, Write};
    let (procs, port, _log) = start(
        &[
            "--delay-ms",
            "200",
            "--answer",
            "a.example.com=192.0.2.1",
            "--answer",
            "b.example.com=192.0.2.2",
        ],
        &["--address=/blocked.example/"],
    );
    let mut conn = None;
    assert!(wait_until(Duration::from_secs(10), || {
        conn = std::net::TcpStream::connect(("127.0.0.1", port)).ok();
        conn.is_some()
    }));
    let mut conn = conn.unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    // Three queries in one write: two need the (slow) upstream, one is
    // blocked and can be answered at once, ahead of the others.
    let mut out = Vec::new();
    for (id, name) in [
        (1u16, "a.example.com."),
        (2, "b.example.com."),
        (3, "x.blocked.example."),
    ] {
        let q = query(name, id);
        out.extend_from_slice(&(q.len() as u16).to_be_bytes());
        out.extend_from_slice(&q);
    }
    let t = std::time::Instant::now();
    conn.write_all(&out).unwrap();
    let mut answers = Vec::new();
    for _ in 0..3 {
        let mut len = [0u8; 2];
        conn.read_exact(&mut len).unwrap();
        let mut buf = vec![0u8; u16::from_be_bytes(len) as usize];
        conn.read_exact(&mut buf).unwrap();
        let m = Message::from_vec(&buf).unwrap();
        answers.push((m.metadata.id, m.metadata.response_code, m.answers.len()));
    }
    // The two forwarded ones ran concurrently: one upstream delay, not two.
    assert!(
        t.elapsed() < Duration::from_millis(390),
        "{:?}",
        t.elapsed()
    );
    assert_eq!(answers[0], (3, ResponseCode::NXDomain, 0), "{answers:?}");
    answers.sort_by_key(|a| a.0);
    assert_eq!(
        answers,
        vec![
            (1, ResponseCode::NoError, 1),
            (2, ResponseCode::NoError, 1),
            (3, ResponseCode::NXDomain, 0)
        ]
    );
    drop(procs);
}
