//! DNS messages on the forwarder's path.
//!
//! hickory-proto parses and builds every message. What this module adds is
//! the fast path for answers: an upstream answer is normalised once (ID 0,
//! TTLs clamped, no OPT), and the byte offsets of its TTLs are indexed, so
//! that serving it to a client, from the cache or fresh, is a copy plus a
//! few patches (ID, RD, question case, TTLs, OPT) instead of a parse and a
//! re-encode.

use dnsfast_common::suffix::name_key;
use hickory_proto::{
    op::{Edns, Message, MessageType, OpCode, Query, ResponseCode},
    rr::{RData, RecordType},
};

use crate::config::forward::CacheSettings;

/// The UDP payload size dnsfast advertises, upstream and to clients: the
/// DNS flag day 2020 value, which avoids IP fragmentation.
pub(crate) const OUR_UDP_PAYLOAD: u16 = 1232;
/// Without EDNS a UDP answer holds at most 512 bytes.
pub(crate) const PLAIN_UDP_LIMIT: usize = 512;
const OPT_RR_LEN: usize = 11;
const TYPE_OPT: u16 = 41;

/// A client's query, parsed and checked.
#[derive(Clone, Debug)]
pub struct ClientQuery {
    pub(crate) id: u16,
    pub(crate) rd: bool,
    pub(crate) cd: bool,
    /// The question name in wire form, in the client's letter case.
    pub(crate) qname: Vec<u8>,
    /// The shared label-reversed, lower-cased key of the name.
    pub(crate) key: Vec<u8>,
    pub(crate) qtype: u16,
    pub(crate) qclass: u16,
    /// The client's EDNS: its UDP payload size and DO bit.
    pub(crate) edns: Option<(u16, bool)>,
    pub query: Query,
}

impl ClientQuery {
    pub(crate) fn dnssec_ok(&self) -> bool {
        self.edns.is_some_and(|(_, d)| d)
    }

    /// How many bytes an answer over UDP may take.
    pub(crate) fn udp_limit(&self) -> usize {
        match self.edns {
            Some((size, _)) => (size as usize).max(PLAIN_UDP_LIMIT),
            None => PLAIN_UDP_LIMIT,
        }
    }

    pub(crate) fn name_text(&self) -> String {
        self.query.name().to_ascii()
    }

    pub(crate) fn type_text(&self) -> String {
        RecordType::from(self.qtype).to_string()
    }
}

/// What to do with a datagram from a client.
pub enum Incoming {
    Query(Box<ClientQuery>),
    /// Answer at once with this (FORMERR, NOTIMP).
    Reply(Vec<u8>),
    /// Not a query at all (too short, or a response): ignore it, so two
    /// resolvers can never bounce answers at each other.
    Ignore,
}

pub fn parse_query(buf: &[u8]) -> Incoming {
    if buf.len() < 12 || buf[2] & 0x80 != 0 {
        return Incoming::Ignore;
    }
    let id = u16::from_be_bytes([buf[0], buf[1]]);
    let header_error = |rcode: ResponseCode| {
        let mut m = Message::error_msg(id, OpCode::from_u8((buf[2] >> 3) & 0xf), rcode);
        m.metadata.recursion_desired = buf[2] & 1 != 0;
        Incoming::Reply(m.to_vec().unwrap_or_default())
    };
    let msg = match Message::from_vec(buf) {
        Ok(m) => m,
        Err(_) => return header_error(ResponseCode::FormErr),
    };
    if msg.metadata.op_code != OpCode::Query {
        return header_error(ResponseCode::NotImp);
    }
    if msg.queries.len() != 1 || !msg.answers.is_empty() || !msg.authorities.is_empty() {
        return header_error(ResponseCode::FormErr);
    }
    // The question is the first thing after the header; a compressed
    // question name (no stub sends one) is refused by the encoder.
    let Ok((key, wire_len)) = name_key(&buf[12..]) else {
        return header_error(ResponseCode::FormErr);
    };
    let at = 12 + wire_len;
    let Some(tc) = buf.get(at..at + 4) else {
        return header_error(ResponseCode::FormErr);
    };
    let mut msg = msg;
    Incoming::Query(Box::new(ClientQuery {
        id,
        rd: msg.metadata.recursion_desired,
        cd: msg.metadata.checking_disabled,
        qname: buf[12..at].to_vec(),
        key,
        qtype: u16::from_be_bytes([tc[0], tc[1]]),
        qclass: u16::from_be_bytes([tc[2], tc[3]]),
        edns: msg
            .edns
            .as_ref()
            .map(|e| (e.max_payload(), e.flags().dnssec_ok)),
        query: msg.queries.pop().expect("one query"),
    }))
}

/// The query dnsfast sends upstream for `q`: a fresh random ID, RD set, the
/// client's CD bit and question (letter case included), and EDNS with our
/// payload size and the client's DO bit, whatever the client sent.
pub(crate) fn upstream_query(q: &ClientQuery, id: u16) -> Vec<u8> {
    let mut m = Message::query();
    m.metadata.id = id;
    m.metadata.recursion_desired = true;
    m.metadata.checking_disabled = q.cd;
    m.add_query(q.query.clone());
    let mut e = Edns::new();
    e.set_max_payload(OUR_UDP_PAYLOAD);
    e.set_dnssec_ok(q.dnssec_ok());
    m.set_edns(e);
    m.to_vec().expect("a parsed query always encodes")
}

/// Whether `reply` answers the query we sent with `id` for `q`: same ID, a
/// response, and the same question (name compared without case).
pub(crate) fn reply_matches(reply: &[u8], id: u16, q: &ClientQuery) -> bool {
    let n = q.qname.len();
    reply.len() >= 12 + n + 4
        && u16::from_be_bytes([reply[0], reply[1]]) == id
        && reply[2] & 0x80 != 0
        && reply[4..6] == [0, 1]
        && reply[12..12 + n].eq_ignore_ascii_case(&q.qname)
        && reply[12 + n..12 + n + 2] == q.qtype.to_be_bytes()
        && reply[12 + n + 2..12 + n + 4] == q.qclass.to_be_bytes()
}

/// The TC bit of a raw message.
pub(crate) fn truncated(reply: &[u8]) -> bool {
    reply.len() > 2 && reply[2] & 0x02 != 0
}

/// How long an answer may be cached, in seconds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Cacheability {
    Positive(u32),
    Negative(u32),
    Never,
}

/// An answer in normal form, ready to be served to any client.
#[derive(Clone, Debug)]
pub struct Answer {
    /// ID 0, no OPT record, TTLs clamped.
    pub wire: Vec<u8>,
    /// Offset and clamped value of every TTL in `wire`.
    pub(crate) ttls: Vec<(usize, u32)>,
    pub(crate) rcode: ResponseCode,
    pub(crate) cacheability: Cacheability,
}

impl Answer {
    /// Normalises an upstream reply. `None` when it does not parse, or its
    /// extended RCODE cannot be carried without its OPT record.
    pub fn from_upstream(reply: &[u8], cache: &CacheSettings) -> Option<Answer> {
        let mut m = Message::from_vec(reply).ok()?;
        if u16::from(m.metadata.response_code) > 15 {
            return None;
        }
        m.metadata.id = 0;
        m.edns = None;
        m.signature = None;
        let clamp = |t: u32| t.clamp(cache.min_ttl, cache.max_ttl);
        for r in m
            .answers
            .iter_mut()
            .chain(m.authorities.iter_mut())
            .chain(m.additionals.iter_mut())
        {
            r.ttl = clamp(r.ttl);
        }
        let cacheability = cacheability(&m, cache);
        let wire = m.to_vec().ok()?;
        let ttls = ttl_offsets(&wire)?;
        Some(Answer {
            wire,
            ttls,
            rcode: m.metadata.response_code,
            cacheability,
        })
    }

    /// An answer made here (NXDOMAIN for a blocked name, SERVFAIL,
    /// REFUSED): header and question only, RA set.
    pub(crate) fn synthesized(q: &ClientQuery, rcode: ResponseCode) -> Answer {
        let mut m = Message::new(0, MessageType::Response, OpCode::Query);
        m.metadata.recursion_available = true;
        m.metadata.checking_disabled = q.cd;
        m.metadata.response_code = rcode;
        m.add_query(q.query.clone());
        Answer {
            wire: m.to_vec().expect("a parsed question always encodes"),
            ttls: Vec::new(),
            rcode,
            cacheability: Cacheability::Never,
        }
    }

    /// The bytes for client `q`, with `elapsed` seconds taken off every TTL.
    /// Over UDP (`limit` = the client's payload size) an answer that does
    /// not fit goes out with TC set and only the question; `true` then.
    pub(crate) fn render(
        &self,
        q: &ClientQuery,
        elapsed: u32,
        limit: usize,
        out: &mut Vec<u8>,
    ) -> bool {
        out.clear();
        let opt = if q.edns.is_some() { OPT_RR_LEN } else { 0 };
        let qend = 12 + q.qname.len() + 4;
        let fits = self.wire.len() + opt <= limit;
        if fits {
            out.extend_from_slice(&self.wire);
            for &(at, ttl) in &self.ttls {
                out[at..at + 4].copy_from_slice(&ttl.saturating_sub(elapsed).to_be_bytes());
            }
        } else {
            out.extend_from_slice(&self.wire[..qend.min(self.wire.len())]);
            out[2] |= 0x02; // TC
            out[6..12].fill(0);
        }
        out[0..2].copy_from_slice(&q.id.to_be_bytes());
        out[2] = (out[2] & !1) | u8::from(q.rd);
        // The question as the client wrote it (0x20 case, RFC 5452 §9).
        out[12..12 + q.qname.len()].copy_from_slice(&q.qname);
        if let Some((_, dnssec_ok)) = q.edns {
            let arcount = u16::from_be_bytes([out[10], out[11]]) + 1;
            out[10..12].copy_from_slice(&arcount.to_be_bytes());
            out.push(0); // root owner
            out.extend_from_slice(&TYPE_OPT.to_be_bytes());
            out.extend_from_slice(&OUR_UDP_PAYLOAD.to_be_bytes());
            out.extend_from_slice(&[0, 0, if dnssec_ok { 0x80 } else { 0 }, 0]);
            out.extend_from_slice(&[0, 0]);
        }
        !fits
    }
}

fn cacheability(m: &Message, cache: &CacheSettings) -> Cacheability {
    if m.metadata.truncation {
        return Cacheability::Never;
    }
    match m.metadata.response_code {
        ResponseCode::NoError if !m.answers.is_empty() => {
            let ttl = m
                .answers
                .iter()
                .chain(m.authorities.iter())
                .map(|r| r.ttl)
                .min()
                .unwrap_or(0);
            if ttl == 0 {
                Cacheability::Never
            } else {
                Cacheability::Positive(ttl)
            }
        }
        ResponseCode::NoError | ResponseCode::NXDomain if cache.neg_cache => {
            // RFC 2308 §5: the SOA's TTL and MINIMUM bound it; no SOA, no cache.
            let soa = m.authorities.iter().find_map(|r| match &r.data {
                RData::SOA(soa) => Some(r.ttl.min(soa.minimum)),
                _ => None,
            });
            match soa.map(|t| t.min(cache.neg_ttl)) {
                Some(t) if t > 0 => Cacheability::Negative(t),
                _ => Cacheability::Never,
            }
        }
        _ => Cacheability::Never,
    }
}

/// Offsets of the TTL fields of every record but OPT. The message was
/// produced by hickory-proto, so a walk that only skips fields is enough;
/// `None` if the bytes are not what that walk expects.
fn ttl_offsets(wire: &[u8]) -> Option<Vec<(usize, u32)>> {
    let count = |i: usize| u16::from_be_bytes([wire[i], wire[i + 1]]) as usize;
    if wire.len() < 12 {
        return None;
    }
    let (qd, rr) = (count(4), count(6) + count(8) + count(10));
    let mut at = 12;
    for _ in 0..qd {
        at = skip_name(wire, at)? + 4;
    }
    let mut out = Vec::with_capacity(rr);
    for _ in 0..rr {
        at = skip_name(wire, at)?;
        let fixed = wire.get(at..at + 10)?;
        let rtype = u16::from_be_bytes([fixed[0], fixed[1]]);
        let ttl = u32::from_be_bytes([fixed[4], fixed[5], fixed[6], fixed[7]]);
        let rdlen = u16::from_be_bytes([fixed[8], fixed[9]]) as usize;
        if rtype != TYPE_OPT {
            out.push((at + 4, ttl));
        }
        at += 10 + rdlen;
    }
    (at == wire.len()).then_some(out)
}

fn skip_name(wire: &[u8], mut at: usize) -> Option<usize> {
    loop {
        let b = *wire.get(at)?;
        match b & 0xc0 {
            0 if b == 0 => return Some(at + 1),
            0 => at += 1 + b as usize,
            0xc0 => return Some(at + 2),
            _ => return None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hickory_proto::rr::{rdata::SOA, Name, Record};

    fn query(name: &str, rtype: RecordType, edns: Option<(u16, bool)>) -> Vec<u8> {
        let mut m = Message::query();
        m.metadata.id = 0x1234;
        m.metadata.recursion_desired = true;
        m.add_query(Query::query(Name::from_ascii(name).unwrap(), rtype));
        if let Some((size, dnssec_ok)) = edns {
            let mut e = Edns::new();
            e.set_max_payload(size);
            e.set_dnssec_ok(dnssec_ok);
            m.set_edns(e);
        }
        m.to_vec().unwrap()
    }

    fn client(buf: &[u8]) -> ClientQuery {
        match parse_query(buf) {
            Incoming::Query(q) => *q,
            _ => panic!("not a query"),
        }
    }

    fn upstream_reply(q: &ClientQuery, id: u16, ttls: &[u32]) -> Vec<u8> {
        let mut m = Message::response(id, OpCode::Query);
        m.metadata.recursion_available = true;
        m.add_query(q.query.clone());
        for (i, ttl) in ttls.iter().enumerate() {
            m.answers.push(Record::from_rdata(
                q.query.name().clone(),
                *ttl,
                RData::A(std::net::Ipv4Addr::new(192, 0, 2, i as u8).into()),
            ));
        }
        let mut e = Edns::new();
        e.set_max_payload(4096);
        m.set_edns(e);
        m.to_vec().unwrap()
    }

    #[test]
    fn parses_a_query_and_keeps_case() {
        let q = client(&query(
            "WWW.Example.com.",
            RecordType::AAAA,
            Some((1400, true)),
        ));
        assert_eq!(q.id, 0x1234);
        assert_eq!(q.qname, b"\x03WWW\x07Example\x03com\x00");
        assert_eq!(q.key, b"\x03com\x07example\x03www");
        assert_eq!(q.qtype, 28);
        assert_eq!(q.qclass, 1);
        assert_eq!(q.edns, Some((1400, true)));
        assert_eq!(q.udp_limit(), 1400);
    }

    #[test]
    fn refuses_what_is_not_a_plain_query() {
        assert!(matches!(parse_query(&[0; 5]), Incoming::Ignore));
        let mut resp = query("a.example.", RecordType::A, None);
        resp[2] |= 0x80;
        assert!(matches!(parse_query(&resp), Incoming::Ignore));
        let mut notify = query("a.example.", RecordType::A, None);
        notify[2] |= 4 << 3;
        let Incoming::Reply(r) = parse_query(&notify) else {
            panic!()
        };
        let m = Message::from_vec(&r).unwrap();
        assert_eq!(m.metadata.response_code, ResponseCode::NotImp);
        assert_eq!(m.metadata.id, 0x1234);
        let garbage = [0x12, 0x34, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0, 63, b'a'];
        let Incoming::Reply(r) = parse_query(&garbage) else {
            panic!()
        };
        assert_eq!(
            Message::from_vec(&r).unwrap().metadata.response_code,
            ResponseCode::FormErr
        );
    }

    #[test]
    fn upstream_query_and_reply_matching() {
        let q = client(&query("Mixed.Example.", RecordType::A, None));
        let up = Message::from_vec(&upstream_query(&q, 777)).unwrap();
        assert_eq!(up.metadata.id, 777);
        assert!(up.metadata.recursion_desired);
        assert_eq!(up.queries[0].name().to_ascii(), "Mixed.Example.");
        assert_eq!(up.edns.as_ref().unwrap().max_payload(), OUR_UDP_PAYLOAD);
        let r = upstream_reply(&q, 777, &[60]);
        assert!(reply_matches(&r, 777, &q));
        assert!(!reply_matches(&r, 778, &q), "wrong ID");
        let other = client(&query("other.example.", RecordType::A, None));
        assert!(!reply_matches(&upstream_reply(&other, 777, &[60]), 777, &q));
        let mut lower = r.clone();
        lower[13..18].make_ascii_lowercase();
        assert!(reply_matches(&lower, 777, &q), "case may differ");
        assert!(!reply_matches(&r[..20], 777, &q));
    }

    #[test]
    fn render_patches_id_case_ttls_and_opt() {
        let first = client(&query("www.example.com.", RecordType::A, None));
        let cache = CacheSettings {
            min_ttl: 10,
            max_ttl: 100,
            ..Default::default()
        };
        let a = Answer::from_upstream(&upstream_reply(&first, 9, &[5, 300, 50]), &cache).unwrap();
        assert_eq!(a.cacheability, Cacheability::Positive(10));
        assert_eq!(
            a.ttls.iter().map(|t| t.1).collect::<Vec<_>>(),
            [10, 100, 50]
        );

        let later = client(&query(
            "WwW.ExAmple.com.",
            RecordType::A,
            Some((1232, true)),
        ));
        let mut out = Vec::new();
        a.render(&later, 7, later.udp_limit(), &mut out);
        let m = Message::from_vec(&out).unwrap();
        assert_eq!(m.metadata.id, 0x1234);
        assert_eq!(m.queries[0].name().to_ascii(), "WwW.ExAmple.com.");
        assert_eq!(
            m.answers.iter().map(|r| r.ttl).collect::<Vec<_>>(),
            [3, 93, 43]
        );
        let e = m.edns.as_ref().unwrap();
        assert!(e.flags().dnssec_ok);
        assert_eq!(e.max_payload(), OUR_UDP_PAYLOAD);
        assert!(!m.metadata.truncation);

        // Past the TTL: zero, never wrapping.
        a.render(&later, 1000, 4096, &mut out);
        let m = Message::from_vec(&out).unwrap();
        assert!(m.answers.iter().all(|r| r.ttl == 0));
    }

    #[test]
    fn render_truncates_to_the_client_payload() {
        let q = client(&query("big.example.", RecordType::A, None));
        let a =
            Answer::from_upstream(&upstream_reply(&q, 1, &[60; 40]), &Default::default()).unwrap();
        assert!(a.wire.len() > PLAIN_UDP_LIMIT);
        let mut out = Vec::new();
        a.render(&q, 0, q.udp_limit(), &mut out);
        let m = Message::from_vec(&out).unwrap();
        assert!(m.metadata.truncation);
        assert!(m.answers.is_empty());
        assert_eq!(m.queries.len(), 1);
        // Over TCP the same answer goes out whole.
        a.render(&q, 0, 65535, &mut out);
        assert_eq!(Message::from_vec(&out).unwrap().answers.len(), 40);
    }

    #[test]
    fn negative_answers_need_opt_in_and_an_soa() {
        let q = client(&query("nx.example.", RecordType::A, None));
        let mut m = Message::response(1, OpCode::Query);
        m.metadata.response_code = ResponseCode::NXDomain;
        m.add_query(q.query.clone());
        let nx_no_soa = m.to_vec().unwrap();
        let soa = SOA::new(
            Name::from_ascii("example.").unwrap(),
            Name::from_ascii("h.example.").unwrap(),
            1,
            2,
            3,
            4,
            30,
        );
        m.authorities.push(Record::from_rdata(
            Name::from_ascii("example.").unwrap(),
            300,
            RData::SOA(soa),
        ));
        let nx = m.to_vec().unwrap();
        let off = CacheSettings::default();
        let on = CacheSettings {
            neg_cache: true,
            neg_ttl: 20,
            ..Default::default()
        };
        let c = |b: &[u8], s: &CacheSettings| Answer::from_upstream(b, s).unwrap().cacheability;
        assert_eq!(c(&nx, &off), Cacheability::Never);
        assert_eq!(c(&nx, &on), Cacheability::Negative(20));
        assert_eq!(c(&nx_no_soa, &on), Cacheability::Never);
        let mut sf = Message::response(1, OpCode::Query);
        sf.metadata.response_code = ResponseCode::ServFail;
        sf.add_query(q.query.clone());
        assert_eq!(c(&sf.to_vec().unwrap(), &on), Cacheability::Never);
    }

    #[test]
    fn synthesized_nxdomain_echoes_the_question() {
        let q = client(&query(
            "Api.GitHub.com.svc.cluster.local.",
            RecordType::TXT,
            Some((4096, false)),
        ));
        let mut out = Vec::new();
        Answer::synthesized(&q, ResponseCode::NXDomain).render(&q, 0, q.udp_limit(), &mut out);
        let m = Message::from_vec(&out).unwrap();
        assert_eq!(m.metadata.response_code, ResponseCode::NXDomain);
        assert!(m.metadata.recursion_available && m.metadata.recursion_desired);
        assert_eq!(
            m.queries[0].name().to_ascii(),
            "Api.GitHub.com.svc.cluster.local."
        );
        assert!(m.answers.is_empty() && m.edns.is_some());
    }
}
