//! One upstream server: exchanges over UDP (TCP when the answer is
//! truncated), spoofing checks, and health.

use std::{
    net::{Ipv4Addr, Ipv6Addr, SocketAddr},
    sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering},
    time::Duration,
};

use log::{info, warn};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpStream, UdpSocket},
    time::timeout,
};

use super::wire::{reply_matches, truncated, upstream_query, ClientQuery};

/// Consecutive failures (timeouts, refused connections) that mark an
/// upstream down. A prober brings it back on its first answer.
pub(crate) const DOWN_AFTER: u32 = 3;
/// Receive buffer for one upstream reply over UDP.
const RECV_BUF: usize = 4096;

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
    pub(crate) queries: AtomicU64,
    pub(crate) failures: AtomicU64,
    pub(crate) tcp_retries: AtomicU64,
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
            queries: AtomicU64::new(0),
            failures: AtomicU64::new(0),
            tcp_retries: AtomicU64::new(0),
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
            info!("upstream {} answers again: restored", self.addr);
        }
    }

    pub(crate) fn mark_failure(&self) {
        self.failures.fetch_add(1, Ordering::Relaxed);
        let n = self.consecutive_failures.fetch_add(1, Ordering::Relaxed) + 1;
        if n >= DOWN_AFTER && !self.down.swap(true, Ordering::Relaxed) {
            warn!(
                "upstream {} failed {n} times in a row: marked down until a probe answers",
                self.addr
            );
        }
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
                    buf.truncate(n);
                    return Ok::<_, std::io::Error>(buf);
                }
                self.mismatched.fetch_add(1, Ordering::Relaxed);
            }
        };
        match timeout(self.timeout, wait).await {
            Ok(r) => Ok(r?),
            Err(_) => Err(ExchangeError::Timeout),
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
