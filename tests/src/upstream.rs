//! A test DNS server for labs (UDP and TCP): answers a fixed table after a
//! delay, NXDOMAINs other names (with an SOA, so a cache could keep them),
//! drops queries under given suffixes as cloud resolvers sometimes do,
//! forces TCP for others, can send a forged reply first, and logs every
//! query it receives so tests can count what reached it.

use std::{
    collections::HashMap,
    io::{Read, Write},
    net::{Ipv4Addr, SocketAddr, TcpListener, UdpSocket},
    sync::{Arc, Mutex},
    time::Duration,
};

use anyhow::{Context, Result};
use hickory_proto::{
    op::{Message, ResponseCode},
    rr::{rdata::SOA, Name, RData, Record, RecordType},
};

pub struct Upstream {
    pub listen: SocketAddr,
    pub delay: Duration,
    /// Lower-case absolute names (with trailing dot) to IPv4 answers.
    pub answers: HashMap<String, Ipv4Addr>,
    /// TTL of the answers.
    pub ttl: u32,
    /// Queries for names under these suffixes get no answer at all.
    pub drop_suffixes: Vec<String>,
    /// Names under these suffixes get `tc_records` A records over TCP,
    /// and an empty answer with TC set over UDP.
    pub tc_suffixes: Vec<String>,
    pub tc_records: usize,
    /// With it, the TCP answer for `--tc` names is TXT records of about
    /// this many bytes in all, instead of A records.
    pub tc_txt_bytes: usize,
    /// Every name under one of these suffixes gets its address.
    pub answer_suffixes: Vec<(String, Ipv4Addr)>,
    /// Before each real reply, send one with a wrong ID and 203.0.113.66.
    pub spoof: bool,
    /// One line per query received: `udp|tcp NAME TYPE`.
    pub log: Option<Arc<Mutex<std::fs::File>>>,
}

/// Whether `name` is `s` or below it; `.` covers every name.
fn under(name: &str, suffixes: &[String]) -> bool {
    suffixes
        .iter()
        .any(|s| s == "." || name == s || name.ends_with(&format!(".{s}")))
}

impl Upstream {
    /// Answers nothing but NXDOMAIN until configured.
    pub fn new(listen: SocketAddr) -> Self {
        Self {
            listen,
            delay: Duration::ZERO,
            answers: HashMap::new(),
            ttl: 60,
            drop_suffixes: Vec::new(),
            tc_suffixes: Vec::new(),
            tc_records: 40,
            tc_txt_bytes: 0,
            answer_suffixes: Vec::new(),
            spoof: false,
            log: None,
        }
    }

    /// Serves UDP and TCP forever.
    pub fn serve(self) -> Result<()> {
        let sock = Arc::new(
            UdpSocket::bind(self.listen).with_context(|| format!("binding udp {}", self.listen))?,
        );
        let tcp = TcpListener::bind(self.listen)
            .with_context(|| format!("binding tcp {}", self.listen))?;
        let me = Arc::new(self);
        let m2 = me.clone();
        std::thread::spawn(move || {
            for s in tcp.incoming().flatten() {
                let m = m2.clone();
                std::thread::spawn(move || m.tcp_client(s));
            }
        });
        let mut buf = [0u8; 4096];
        loop {
            let (n, peer) = sock.recv_from(&mut buf)?;
            let Ok(q) = Message::from_vec(&buf[..n]) else {
                continue;
            };
            let Some(reply) = me.answer(&q, false) else {
                continue;
            };
            if me.delay.is_zero() && !me.spoof {
                // Inline: a thread per query would make this server, not
                // the one under test, what a load measures.
                let _ = sock.send_to(&reply, peer);
                continue;
            }
            let (sock, me) = (sock.clone(), me.clone());
            std::thread::spawn(move || {
                std::thread::sleep(me.delay);
                if me.spoof {
                    let mut forged = me.forged(&q);
                    forged[0] ^= 0x55;
                    let _ = sock.send_to(&forged, peer);
                }
                let _ = sock.send_to(&reply, peer);
            });
        }
    }

    fn tcp_client(&self, mut s: std::net::TcpStream) {
        loop {
            let mut len = [0u8; 2];
            if s.read_exact(&mut len).is_err() {
                return;
            }
            let mut buf = vec![0u8; u16::from_be_bytes(len) as usize];
            if s.read_exact(&mut buf).is_err() {
                return;
            }
            let Ok(q) = Message::from_vec(&buf) else {
                return;
            };
            let Some(reply) = self.answer(&q, true) else {
                continue;
            };
            std::thread::sleep(self.delay);
            let mut out = (reply.len() as u16).to_be_bytes().to_vec();
            out.extend_from_slice(&reply);
            if s.write_all(&out).is_err() {
                return;
            }
        }
    }

    fn forged(&self, q: &Message) -> Vec<u8> {
        let mut r = Message::response(q.metadata.id, q.metadata.op_code);
        if let Some(query) = q.queries.first() {
            r.add_query(query.clone());
            r.answers.push(Record::from_rdata(
                query.name().clone(),
                self.ttl,
                RData::A(Ipv4Addr::new(203, 0, 113, 66).into()),
            ));
        }
        r.to_vec().unwrap_or_default()
    }

    /// The reply bytes, or `None` to drop the query.
    pub fn answer(&self, q: &Message, tcp: bool) -> Option<Vec<u8>> {
        let query = q.queries.first()?;
        let name = query.name().to_ascii().to_ascii_lowercase();
        let name = if name.ends_with('.') {
            name
        } else {
            format!("{name}.")
        };
        if let Some(log) = &self.log {
            let proto = if tcp { "tcp" } else { "udp" };
            let mut f = log.lock().unwrap();
            let _ = writeln!(f, "{proto} {name} {}", query.query_type());
        }
        if under(&name, &self.drop_suffixes) {
            return None;
        }
        let mut r = Message::response(q.metadata.id, q.metadata.op_code);
        r.metadata.recursion_desired = q.metadata.recursion_desired;
        r.metadata.recursion_available = true;
        r.add_query(query.clone());
        if q.edns.is_some() {
            r.set_edns(hickory_proto::op::Edns::new());
        }
        let a =
            |ip: Ipv4Addr| Record::from_rdata(query.name().clone(), self.ttl, RData::A(ip.into()));
        if under(&name, &self.tc_suffixes) {
            if tcp && self.tc_txt_bytes > 0 {
                let chunk = vec![b'x'; 250];
                let mut bytes = 0;
                while bytes < self.tc_txt_bytes {
                    let txt = hickory_proto::rr::rdata::TXT::from_bytes(vec![&chunk[..]; 4]);
                    r.answers.push(Record::from_rdata(
                        query.name().clone(),
                        self.ttl,
                        RData::TXT(txt),
                    ));
                    bytes += 1000;
                }
            } else if tcp {
                for i in 0..self.tc_records {
                    let [x, y] = (i as u16).to_be_bytes();
                    r.answers.push(a(Ipv4Addr::new(198, 51, 100 + x, y)));
                }
            } else {
                r.metadata.truncation = true;
            }
            return r.to_vec().ok();
        }
        let by_suffix = self
            .answer_suffixes
            .iter()
            .find(|(s, _)| under(&name, std::slice::from_ref(s)))
            .map(|(_, ip)| ip);
        match self.answers.get(&name).or(by_suffix) {
            Some(ip) => {
                if query.query_type() == RecordType::A {
                    r.answers.push(a(*ip));
                }
            }
            None => {
                r.metadata.response_code = ResponseCode::NXDomain;
                let zone = Name::root();
                let soa = SOA::new(zone.clone(), zone.clone(), 1, 60, 60, 60, 60);
                r.authorities
                    .push(Record::from_rdata(zone, 60, RData::SOA(soa)));
            }
        }
        r.to_vec().ok()
    }
}
