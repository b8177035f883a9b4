//! One upstream server: exchanges over UDP (TCP when the answer is
//! truncated), spoofing checks, and health.
//!
//! Health is judged on what the server does, not on what one name does:
//! a timeout while the server answered other queries is that name's
//! problem (its authority never answers) and does not count; after
//! `DOWN_AFTER` timeouts in a row with nothing answered, the server is
//! asked for the root NS, and marked down only if that goes unanswered too.

use std::{
    net::{Ipv4Addr, Ipv6Addr, SocketAddr},
    sync::{
        atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering},
        Arc, OnceLock,
    },
    time::{Duration, Instant},
};

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpStream, UdpSocket},
    time::timeout,
};

use super::wire::{parse_query, reply_matches, truncated, upstream_query, ClientQuery, Incoming};

/// Consecutive failures (timeouts, refused connections) that mark an
/// upstream down. A prober brings it back on its first answer.
pub(crate) const DOWN_AFTER: u32 = 3;
/// Receive buffer for one upstream reply over UDP.
const RECV_BUF: usize = 4096;
/// An unanswered UDP query is sent again after this long, then after
/// twice as long, and so on until the upstream's timeout: a datagram lost
/// on the way (a full receive queue, a busy link) then costs this long
/// instead of the whole timeout and a SERVFAIL. The copy goes out on the
/// same socket with the same ID, so whichever is answered first counts.
const RETRANSMIT_AFTER: Duration = Duration::from_millis(400);

#[derive(Debug)]
pub(crate) enum ExchangeError {
    Timeout,
    Io(std::io::Error),
}

impl std::fmt::Display for ExchangeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ExchangeError::Timeout => f.write_str("timed out"),
            ExchangeError::Io(e) => write!(f, "{e}"),
        }
    }
}

impl From<std::io::Error> for ExchangeError {
    fn from(e: std::io::Error) -> Self {
        ExchangeError::Io(e)
    }
}

#[derive(Debug)]
pub(crate) struct Upstream {
    pub(crate) addr: SocketAddr,
    pub(crate) timeout: Duration,
    consecutive_failures: AtomicU32,
    down: AtomicBool,
    /// When it last answered anything, in µs since `epoch()`.
    last_answer_us: AtomicU64,
    /// A probe is out to confirm it down.
    checking: AtomicBool,
    /// Timeouts not held against it: it answered other queries meanwhile.
    pub(crate) slow_names: AtomicU64,
    pub(crate) queries: AtomicU64,
    pub(crate) failures: AtomicU64,
    pub(crate) tcp_retries: AtomicU64,
    /// UDP queries sent again because no answer came (`RETRANSMIT_AFTER`).
    pub(crate) retransmits: AtomicU64,
    /// Replies that did not match what we sent (wrong ID or question).
    pub(crate) mismatched: AtomicU64,
    /// Answer latencies (UDP, plus the TCP retry when truncated).
    pub(crate) latency: super::metrics::Histogram,
}

impl Upstream {
    pub(crate) fn new(addr: SocketAddr, timeout: Duration) -> Self {
        Self {
            addr,
            timeout,
            consecutive_failures: AtomicU32::new(0),
            down: AtomicBool::new(false),
            last_answer_us: AtomicU64::new(0),
            checking: AtomicBool::new(false),
            slow_names: AtomicU64::new(0),
            queries: AtomicU64::new(0),
            failures: AtomicU64::new(0),
            tcp_retries: AtomicU64::new(0),
            retransmits: AtomicU64::new(0),
            mismatched: AtomicU64::new(0),
            latency: Default::default(),
        }
    }

    pub(crate) fn is_up(&self) -> bool {
        !self.down.load(Ordering::Relaxed)
    }

    pub(crate) fn mark_success(&self) {
        self.consecutive_failures.store(0, Ordering::Relaxed);
        if self.down.swap(false, Ordering::Relaxed) {
            tracing::info!(
                event = "upstream_up",
                upstream = %self.addr,
                "upstream {} answers again: restored",
                self.addr
            );
        }
    }

    /// A query sent at `sent` failed. Counts against the server only if
    /// it answered nothing since; the `DOWN_AFTER`th such failure in a row
    /// sends a probe, and only an unanswered probe marks it down.
    pub(crate) fn mark_failure(self: &Arc<Self>, sent: Instant) {
        self.failures.fetch_add(1, Ordering::Relaxed);
        if self.answered_since(sent) {
            self.slow_names.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let n = self.consecutive_failures.fetch_add(1, Ordering::Relaxed) + 1;
        if n < DOWN_AFTER || !self.is_up() || self.checking.swap(true, Ordering::AcqRel) {
            return;
        }
        let me = self.clone();
        tokio::spawn(async move {
            let alive = me.exchange_udp(probe_query()).await.is_ok();
            if alive {
                me.mark_success();
            } else if !me.down.swap(true, Ordering::Relaxed) {
                tracing::warn!(
                    event = "upstream_down",
                    upstream = %me.addr,
                    "upstream {} failed {n} times in a row and does not answer a probe: marked down until one answers",
                    me.addr
                );
            }
            me.checking.store(false, Ordering::Release);
        });
    }

    fn answered_since(&self, t: Instant) -> bool {
        let at = t.saturating_duration_since(epoch()).as_micros() as u64;
        self.last_answer_us.load(Ordering::Relaxed) > at
    }

    fn answered(&self) {
        let now = epoch().elapsed().as_micros() as u64;
        self.last_answer_us.fetch_max(now.max(1), Ordering::Relaxed);
    }

    /// Sends `q` and returns the matching reply. A truncated UDP reply is
    /// retried over TCP. Health is updated by the caller.
    pub(crate) async fn exchange(&self, q: &ClientQuery) -> Result<Vec<u8>, ExchangeError> {
        self.queries.fetch_add(1, Ordering::Relaxed);
        let start = std::time::Instant::now();
        let reply = self.exchange_udp(q).await?;
        let reply = if truncated(&reply) {
            self.tcp_retries.fetch_add(1, Ordering::Relaxed);
            self.exchange_tcp(q).await?
        } else {
            reply
        };
        self.latency.observe(start.elapsed().as_micros() as u64);
        Ok(reply)
    }

    /// A fresh socket per query: the kernel picks a random source port, and
    /// `connect` makes it drop datagrams from any other address.
    pub(crate) async fn exchange_udp(&self, q: &ClientQuery) -> Result<Vec<u8>, ExchangeError> {
        let id: u16 = rand::random();
        let msg = upstream_query(q, id);
        let local: SocketAddr = if self.addr.is_ipv4() {
            (Ipv4Addr::UNSPECIFIED, 0).into()
        } else {
            (Ipv6Addr::UNSPECIFIED, 0).into()
        };
        let sock = UdpSocket::bind(local).await?;
        sock.connect(self.addr).await?;
        sock.send(&msg).await?;
        // We advertise 1232 bytes upstream; a server that sends more gets
        // its reply cut here, fails the question check or parses as
        // truncated, and the query moves on (TCP carries big answers).
        let mut buf = vec![0u8; RECV_BUF];
        let wait = async {
            loop {
                let n = sock.recv(&mut buf).await?;
                if reply_matches(&buf[..n], id, q) {
                    self.answered();
                    buf.truncate(n);
                    return Ok::<_, std::io::Error>(buf);
                }
                self.mismatched.fetch_add(1, Ordering::Relaxed);
            }
        };
        tokio::pin!(wait);
        let deadline = tokio::time::Instant::now() + self.timeout;
        let mut gap = RETRANSMIT_AFTER;
        loop {
            let next = (tokio::time::Instant::now() + gap).min(deadline);
            if let Ok(r) = tokio::time::timeout_at(next, &mut wait).await {
                return Ok(r?);
            }
            if next >= deadline {
                return Err(ExchangeError::Timeout);
            }
            self.retransmits.fetch_add(1, Ordering::Relaxed);
            sock.send(&msg).await?;
            gap *= 2;
        }
    }

    pub(crate) async fn exchange_tcp(&self, q: &ClientQuery) -> Result<Vec<u8>, ExchangeError> {
        let id: u16 = rand::random();
        let msg = upstream_query(q, id);
        let work = async {
            let mut s = TcpStream::connect(self.addr).await?;
            s.set_nodelay(true)?;
            let mut framed = Vec::with_capacity(msg.len() + 2);
            framed.extend_from_slice(&(msg.len() as u16).to_be_bytes());
            framed.extend_from_slice(&msg);
            s.write_all(&framed).await?;
            loop {
                let len = s.read_u16().await? as usize;
                let mut buf = vec![0u8; len];
                s.read_exact(&mut buf).await?;
                if reply_matches(&buf, id, q) {
                    self.answered();
                    return Ok::<_, std::io::Error>(buf);
                }
                self.mismatched.fetch_add(1, Ordering::Relaxed);
            }
        };
        match timeout(self.timeout, work).await {
            Ok(r) => Ok(r?),
            Err(_) => Err(ExchangeError::Timeout),
        }
    }
}

/// The clock `last_answer_us` counts from.
fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

/// `. NS`: what a probe asks. Any answer, whatever its RCODE, shows the
/// server alive.
pub(crate) fn probe_query() -> &'static ClientQuery {
    static PROBE: OnceLock<ClientQuery> = OnceLock::new();
    PROBE.get_or_init(|| {
        // The header of a query, then the root name, type NS, class IN.
        let wire = [0, 0, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 2, 0, 1];
        match parse_query(&wire) {
            Incoming::Query(q) => *q,
            _ => unreachable!("the probe query is well formed"),
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A server that answers every name but `slow.`, like a resolver
    /// whose authority for one name never answers; `lossy`, it also
    /// ignores the first copy of every query, like a path that lost the
    /// datagram.
    async fn server(lossy: bool) -> SocketAddr {
        let sock = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let addr = sock.local_addr().unwrap();
        tokio::spawn(async move {
            let mut seen = std::collections::HashSet::new();
            let mut buf = [0u8; 512];
            loop {
                let (n, peer) = sock.recv_from(&mut buf).await.unwrap();
                if buf[..n].windows(6).any(|w| w == b"\x04slow\x00") {
                    continue;
                }
                if lossy && seen.insert((peer, buf[0], buf[1])) {
                    continue;
                }
                buf[2] |= 0x80; // QR: a reply, with the query's question
                let _ = sock.send_to(&buf[..n], peer).await;
            }
        });
        addr
    }

    fn query(name: &str) -> ClientQuery {
        let mut wire = vec![0, 0, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0];
        for l in name.split('.') {
            wire.push(l.len() as u8);
            wire.extend_from_slice(l.as_bytes());
        }
        wire.extend_from_slice(&[0, 0, 1, 0, 1]);
        match parse_query(&wire) {
            Incoming::Query(q) => *q,
            _ => panic!("{name}"),
        }
    }

    #[tokio::test]
    async fn a_lost_datagram_is_sent_again_well_before_the_timeout() {
        let up = Upstream::new(server(true).await, Duration::from_secs(5));
        let t = Instant::now();
        up.exchange(&query("lost.example")).await.unwrap();
        let took = t.elapsed();
        assert!(took >= RETRANSMIT_AFTER, "{took:?}");
        assert!(took < 2 * RETRANSMIT_AFTER, "{took:?}");
        assert_eq!(up.retransmits.load(Ordering::Relaxed), 1);
    }

    #[tokio::test]
    async fn retransmits_stop_at_the_timeout() {
        // 400 ms, then 800 ms more: two copies after the first within 1.5 s.
        let up = Upstream::new(server(false).await, Duration::from_millis(1500));
        let t = Instant::now();
        assert!(matches!(
            up.exchange(&query("slow")).await,
            Err(ExchangeError::Timeout)
        ));
        assert!(t.elapsed() >= Duration::from_millis(1500));
        assert!(
            t.elapsed() < Duration::from_millis(1900),
            "{:?}",
            t.elapsed()
        );
        assert_eq!(up.retransmits.load(Ordering::Relaxed), 2);
    }

    #[tokio::test]
    async fn a_slow_name_does_not_mark_a_server_down() {
        let up = Arc::new(Upstream::new(
            server(false).await,
            Duration::from_millis(200),
        ));
        // Twenty slow names at once, while other names are answered.
        let slow: Vec<_> = (0..20)
            .map(|_| {
                let up = up.clone();
                tokio::spawn(async move {
                    let sent = Instant::now();
                    if up.exchange(&query("slow")).await.is_err() {
                        up.mark_failure(sent);
                    }
                })
            })
            .collect();
        tokio::time::sleep(Duration::from_millis(50)).await;
        up.exchange(&query("fast.example")).await.unwrap();
        for t in slow {
            t.await.unwrap();
        }
        assert!(up.is_up());
        assert_eq!(up.slow_names.load(Ordering::Relaxed), 20);
    }

    #[tokio::test]
    async fn timeouts_with_nothing_answered_are_checked_by_a_probe() {
        let up = Arc::new(Upstream::new(
            server(false).await,
            Duration::from_millis(100),
        ));
        for _ in 0..DOWN_AFTER {
            let sent = Instant::now();
            assert!(up.exchange(&query("slow")).await.is_err());
            up.mark_failure(sent);
        }
        // The server answers the probe: it stays up, its count reset.
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(up.is_up());
        assert_eq!(up.consecutive_failures.load(Ordering::Relaxed), 0);
    }
}
