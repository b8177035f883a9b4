//! The kernel answer cache through BPF_PROG_TEST_RUN: entries made by the
//! forwarder's own code (`forward::kernel::kernel_entry`) from answers
//! built with hickory-proto, then queries answered in place by the cache
//! program (reached by tail call from the main program), parsed back with
//! hickory-proto and checked field by field.

use std::net::Ipv4Addr;

use dnsfast::{
    config::forward::CacheSettings,
    dataplane::{Dataplane, LoadOptions},
    forward::{
        kernel_cache::{kernel_entry, monotonic_ns, AnswerMap},
        wire::{parse_query, Answer, ClientQuery, Incoming},
    },
};
use dnsfast_common::pattern::{Action, Pattern};
use dnsfast_tests::{
    pkt::{self, frame, parse, Wrap, Q},
    require_root,
};
use hickory_proto::{
    op::{Message, OpCode, ResponseCode},
    rr::{RData, Record, RecordType},
};

const XDP_PASS: u32 = 2;
const XDP_TX: u32 = 3;
const SEC: u64 = 1_000_000_000;

fn setup() -> (Dataplane, AnswerMap) {
    let mut dp = Dataplane::load(&LoadOptions {
        answer_cache: 64,
        ..LoadOptions::default()
    })
    .expect("load");
    dp.insert_pattern(&Pattern::parse("blocked.example").unwrap(), Action::Block)
        .unwrap();
    // The forwarder listens on the test frames' server addresses, port 53.
    dp.add_listen_addr((pkt::SERVER_V4, 53).into()).unwrap();
    dp.add_listen_addr((pkt::SERVER_V6, 53).into()).unwrap();
    let map = dp.take_answer_map().unwrap();
    (dp, map)
}

fn client(q: &Q) -> ClientQuery {
    match parse_query(&q.bytes()) {
        Incoming::Query(c) => *c,
        _ => panic!("not a query"),
    }
}

/// An upstream's answer with `n` A records of TTL `ttl`.
fn answer(q: &ClientQuery, n: u8, ttl: u32) -> Answer {
    let mut m = Message::response(0x4242, OpCode::Query);
    m.metadata.recursion_available = true;
    m.metadata.authentic_data = true;
    m.add_query(q.query.clone());
    for i in 0..n {
        m.answers.push(Record::from_rdata(
            q.query.name().clone(),
            ttl,
            RData::A(Ipv4Addr::new(192, 0, 2, i).into()),
        ));
    }
    Answer::from_upstream(&m.to_vec().unwrap(), &CacheSettings::default()).unwrap()
}

/// Stores the answer to `q` as if cached `age` seconds ago (the guest
/// kernels of `test-kernels` have only been up for seconds: no earlier than
/// boot).
fn store(map: &mut AnswerMap, q: &Q, n: u8, ttl: u32, age: u64) {
    let c = client(q);
    let at = monotonic_ns().saturating_sub(age * SEC);
    let (k, v) = kernel_entry(&c, &answer(&c, n, ttl), at).unwrap();
    map.insert(k, *v, 0).unwrap();
}

/// Stores the answer to `q` with its deadline just past.
fn store_expired(map: &mut AnswerMap, q: &Q) {
    let c = client(q);
    let (k, mut v) = kernel_entry(&c, &answer(&c, 1, 60), 0).unwrap();
    v.expires_ns = monotonic_ns() - 1;
    map.insert(k, *v, 0).unwrap();
}

fn check_answer(
    dp: &mut Dataplane,
    q: &Q,
    w: &Wrap,
    n: usize,
    ttls: std::ops::RangeInclusive<u32>,
) {
    let query = frame(w, &q.bytes());
    let (verdict, reply) = dp.test_run(&query).unwrap();
    let ctx = format!(
        "{} {:?} {:?} vlans={:?} edns={:?}",
        q.name, q.qtype, w.ip, w.vlans, q.edns
    );
    assert_eq!(verdict, XDP_TX, "{ctx}");
    pkt::assert_turned_around(&query, &reply, &ctx);
    let rp = parse(&reply);
    let m = Message::from_vec(rp.dns).unwrap_or_else(|e| panic!("{ctx}: {e}"));
    assert_eq!(m.metadata.id, q.id, "{ctx}");
    assert!(
        m.metadata.recursion_available && m.metadata.authentic_data,
        "{ctx}"
    );
    assert_eq!(m.metadata.recursion_desired, q.rd, "{ctx}");
    assert_eq!(m.metadata.checking_disabled, q.cd, "{ctx}");
    assert!(!m.metadata.truncation && !m.metadata.authoritative, "{ctx}");
    assert_eq!(m.metadata.response_code, ResponseCode::NoError, "{ctx}");
    // The question exactly as the client wrote it (0x20).
    assert_eq!(
        m.queries[0].name().to_ascii(),
        format!("{}.", q.name),
        "{ctx}"
    );
    assert_eq!(m.answers.len(), n, "{ctx}");
    for r in &m.answers {
        assert!(
            ttls.contains(&r.ttl),
            "{ctx}: TTL {} not in {ttls:?}",
            r.ttl
        );
        assert_eq!(
            r.name.to_ascii(),
            format!("{}.", q.name),
            "{ctx}: owner via pointer"
        );
    }
    match (&q.edns, &m.edns) {
        (None, None) => {}
        (Some((_, dok, _)), Some(e)) => {
            assert_eq!(e.max_payload(), 1232, "{ctx}");
            assert_eq!(e.flags().dnssec_ok, *dok, "{ctx}");
            assert!(e.options().as_ref().is_empty(), "{ctx}");
        }
        (a, b) => panic!("{ctx}: OPT {a:?} -> {b:?}"),
    }
}

fn assert_passes(dp: &mut Dataplane, q: &Q, w: &Wrap, why: &str) {
    let query = frame(w, &q.bytes());
    let (verdict, out) = dp.test_run(&query).unwrap();
    assert_eq!(verdict, XDP_PASS, "{why}");
    assert_eq!(out, query, "{why}: a pass leaves the packet untouched");
}

#[test]
fn cached_answers_are_served_in_place() {
    require_root!();
    let (mut dp, mut map) = setup();
    let before = dp.counters().unwrap();
    store(
        &mut map,
        &Q::new("www.example.com", RecordType::A),
        2,
        300,
        3,
    );
    let dnssec = Q::new("www.example.com", RecordType::A).edns(1232, true, vec![]);
    store(&mut map, &dnssec, 1, 60, 0);
    let mut runs = 0;
    for w in [
        Wrap::v4(),
        Wrap::v6(),
        Wrap::v4().vlans(&[0x8100]),
        Wrap::v6().vlans(&[0x88a8, 0x8100]),
    ] {
        for edns in [None, Some(512u16), Some(4096)] {
            for name in ["www.example.com", "WwW.ExAmPle.CoM"] {
                let mut q = Q::new(name, RecordType::A);
                q.id = 0x7a7a;
                if let Some(size) = edns {
                    q = q.edns(size, false, vec![]);
                }
                // Stored 3 s ago with TTL 300: served as 297 (296 if a
                // second ticks over during the run).
                check_answer(&mut dp, &q, &w, 2, 296..=297);
                runs += 1;
            }
        }
        // RD clear is echoed; the DO bit picks the other entry.
        let mut q = Q::new("www.example.com", RecordType::A);
        q.rd = false;
        check_answer(&mut dp, &q, &w, 2, 296..=297);
        check_answer(&mut dp, &dnssec, &w, 1, 59..=60);
        runs += 2;
    }
    let after = dp.counters().unwrap();
    assert_eq!(after.answered_cache - before.answered_cache, runs);
}

#[test]
fn misses_pass_untouched() {
    require_root!();
    let (mut dp, mut map) = setup();
    let w = Wrap::v4();
    let a = Q::new("www.example.com", RecordType::A);
    assert_passes(&mut dp, &a, &w, "empty cache");

    store_expired(&mut map, &a);
    assert_passes(&mut dp, &a, &w, "expired entry");
    // Another type, and the CD bit, are other keys.
    store(&mut map, &a, 1, 60, 0);
    assert_passes(
        &mut dp,
        &Q::new("www.example.com", RecordType::AAAA),
        &w,
        "other type",
    );
    let mut cd = a.clone();
    cd.cd = true;
    assert_passes(&mut dp, &cd, &w, "CD set");
    // Too big for a client without EDNS (512 bytes): the forwarder sends
    // it with TC instead; with EDNS 1232 it fits.
    let big = Q::new("big.example.com", RecordType::TXT);
    let c = client(&big);
    let mut m = Message::response(1, OpCode::Query);
    m.add_query(c.query.clone());
    for i in 0..3 {
        let text = format!("{i}{}", "x".repeat(149));
        m.answers.push(Record::from_rdata(
            c.query.name().clone(),
            60,
            RData::TXT(hickory_proto::rr::rdata::TXT::new(vec![text])),
        ));
    }
    let txt = Answer::from_upstream(&m.to_vec().unwrap(), &CacheSettings::default()).unwrap();
    assert!(txt.wire.len() > 512);
    let (k, v) = kernel_entry(&c, &txt, monotonic_ns()).unwrap();
    map.insert(k, *v, 0).unwrap();
    assert_passes(&mut dp, &big, &w, "over 512 bytes without EDNS");
    let with_edns = big.clone().edns(1232, false, vec![]);
    let (verdict, reply) = dp.test_run(&frame(&w, &with_edns.bytes())).unwrap();
    assert_eq!(verdict, XDP_TX, "fits 1232");
    let m = Message::from_vec(parse(&reply).dns).unwrap();
    assert_eq!(m.answers.len(), 3);
    assert_eq!(m.answers[2].data, a_txt(&txt, 2));

    // A colliding key never answers with another name's data.
    let c = client(&Q::new("www.example.com", RecordType::A));
    let other = client(&Q::new("www.example.org", RecordType::A));
    let (k, _) = kernel_entry(&c, &answer(&c, 1, 60), monotonic_ns()).unwrap();
    let (_, v) = kernel_entry(&other, &answer(&other, 1, 60), monotonic_ns()).unwrap();
    map.insert(k, *v, 0).unwrap();
    assert_passes(&mut dp, &a, &w, "name check on a hash collision");

    // Only queries to the forwarder's own addresses: port 5353 is a DNS
    // port for the program here, but the forwarder does not listen on it.
    let mut cfg = dnsfast_common::XdpConfig::default();
    cfg.ports[1] = 5353;
    dp.set_config(&cfg).unwrap();
    store(&mut map, &a, 1, 60, 0);
    let other_port = Wrap {
        dport: 5353,
        ..Wrap::v4()
    };
    assert_passes(&mut dp, &a, &other_port, "not a forwarder address");
    dp.add_listen_addr("0.0.0.0:5353".parse().unwrap()).unwrap();
    check_answer(&mut dp, &a, &other_port, 1, 59..=60);

    // A block pattern wins over a cached answer.
    let blocked = Q::new("x.blocked.example", RecordType::A);
    store(&mut map, &blocked, 1, 60, 0);
    let (verdict, reply) = dp.test_run(&frame(&w, &blocked.bytes())).unwrap();
    assert_eq!(verdict, XDP_TX);
    let m = Message::from_vec(parse(&reply).dns).unwrap();
    assert_eq!(m.metadata.response_code, ResponseCode::NXDomain);
}

#[test]
fn answers_the_kernel_cannot_hold_are_refused_by_the_agent() {
    // Pure user-space checks of the entry format; no root needed.
    let c = client(&Q::new("www.example.com", RecordType::A));
    assert!(
        kernel_entry(&c, &answer(&c, 17, 60), 0).is_none(),
        "more than 16 TTLs"
    );
    let settings = CacheSettings::default();
    let mut m = Message::response(1, OpCode::Query);
    m.metadata.response_code = ResponseCode::NXDomain;
    m.add_query(c.query.clone());
    let nx = Answer::from_upstream(&m.to_vec().unwrap(), &settings).unwrap();
    assert!(kernel_entry(&c, &nx, 0).is_none(), "not cacheable");
    let mut chaos = Q::new("version.bind", RecordType::TXT).message();
    chaos.queries[0].query_class = hickory_proto::rr::DNSClass::CH;
    let ch = match parse_query(&chaos.to_vec().unwrap()) {
        Incoming::Query(c) => *c,
        _ => panic!("not a query"),
    };
    let mut m = Message::response(1, OpCode::Query);
    m.add_query(ch.query.clone());
    m.answers.push(Record::from_rdata(
        ch.query.name().clone(),
        60,
        RData::TXT(hickory_proto::rr::rdata::TXT::new(vec!["x".into()])),
    ));
    let a = Answer::from_upstream(&m.to_vec().unwrap(), &settings).unwrap();
    assert!(
        kernel_entry(&ch, &a, 0).is_none(),
        "class CH: the kernel key has no class"
    );
    let (k, v) = kernel_entry(&c, &answer(&c, 2, 60), 5 * SEC).unwrap();
    assert_eq!(k.qtype, 1);
    assert_eq!((v.stored_ns, v.expires_ns), (5 * SEC, 65 * SEC));
    assert_eq!(v.nttl, 2);
    assert_eq!(v.counts, [0, 2, 0, 0, 0, 0]);
}

/// The data of answer record `i` of `a`, as hickory reads it.
fn a_txt(a: &Answer, i: usize) -> RData {
    Message::from_vec(&a.wire).unwrap().answers[i].data.clone()
}

/// `xdp.client-qps`: a client past its rate loses its misses to the
/// forwarder (XDP_DROP, counted); another client, a cached answer, a block
/// and a query to another server are not affected.
#[test]
fn a_client_past_its_rate_is_dropped_alone() {
    require_root!();
    const XDP_DROP: u32 = 1;
    let (mut dp, mut map) = setup();
    let mut cfg = dnsfast_common::XdpConfig::default();
    // 10 a second, bursts of 20: over a run of microseconds, about 20 pass.
    cfg.client_interval_ns = SEC / 10;
    cfg.client_burst_ns = 20 * cfg.client_interval_ns;
    cfg.ports[1] = 5353;
    dp.set_config(&cfg).unwrap();
    let from = |src: [u8; 4], dport: u16, q: &Q| {
        dnsfast_common::frame::Wrap {
            src: src.into(),
            dport,
            ..pkt::frame_wrap(&Wrap::v4())
        }
        .frame(&q.bytes())
    };
    let attacker = [10, 99, 0, 66];
    let miss = Q::new("miss.example.com", RecordType::A);
    let verdicts: Vec<u32> = (0..100)
        .map(|_| dp.test_run(&from(attacker, 53, &miss)).unwrap().0)
        .collect();
    let passed = verdicts.iter().filter(|&&v| v == XDP_PASS).count();
    let dropped = verdicts.iter().filter(|&&v| v == XDP_DROP).count();
    assert!((20..=23).contains(&passed), "{passed} passed");
    assert_eq!(passed + dropped, 100);
    assert_eq!(dp.counters().unwrap().dropped_rate_limited, dropped as u64);
    // The kernel's own answers cost the forwarder nothing: not bounded.
    store(
        &mut map,
        &Q::new("hit.example.com", RecordType::A),
        1,
        60,
        0,
    );
    let hit = Q::new("hit.example.com", RecordType::A);
    assert_eq!(dp.test_run(&from(attacker, 53, &hit)).unwrap().0, XDP_TX);
    let blocked = Q::new("x.blocked.example", RecordType::A);
    assert_eq!(
        dp.test_run(&from(attacker, 53, &blocked)).unwrap().0,
        XDP_TX
    );
    // Not for the forwarder (it does not listen on 5353): not its business.
    assert_eq!(
        dp.test_run(&from(attacker, 5353, &miss)).unwrap().0,
        XDP_PASS
    );
    // Another client keeps its own rate.
    assert_eq!(
        dp.test_run(&from(pkt::CLIENT_V4, 53, &miss)).unwrap().0,
        XDP_PASS
    );
    // Off (0), nothing is dropped.
    cfg.client_interval_ns = 0;
    dp.set_config(&cfg).unwrap();
    assert_eq!(dp.test_run(&from(attacker, 53, &miss)).unwrap().0, XDP_PASS);
}

/// The agent's lease: while it runs, the kernel answers from the cache
/// and gives the Kubernetes API's verdicts; once it runs out (no agent
/// renews it) both pass up, while block patterns are still answered.
#[test]
fn without_a_lease_only_the_config_is_answered() {
    require_root!();
    let (mut dp, mut map) = setup();
    dp.insert_pattern(&Pattern::parse("cluster.test").unwrap(), Action::Exists)
        .unwrap();
    let w = Wrap::v4();
    let cached = Q::new("www.example.com", RecordType::A);
    store(&mut map, &cached, 1, 60, 0);
    let absent = Q::new("nosuch.cluster.test", RecordType::A);
    let blocked = Q::new("x.blocked.example", RecordType::A);
    let verdict = |dp: &mut Dataplane, q: &Q| dp.test_run(&frame(&w, &q.bytes())).unwrap().0;
    dp.renew_lease(monotonic_ns() + 60 * SEC).unwrap();
    assert_eq!(verdict(&mut dp, &cached), XDP_TX);
    assert_eq!(verdict(&mut dp, &absent), XDP_TX);
    assert_eq!(verdict(&mut dp, &blocked), XDP_TX);
    dp.renew_lease(monotonic_ns() - 1).unwrap();
    assert_passes(&mut dp, &cached, &w, "cached, lease run out");
    assert_passes(&mut dp, &absent, &w, "the API's verdict, lease run out");
    assert_eq!(
        verdict(&mut dp, &blocked),
        XDP_TX,
        "a block pattern needs no lease"
    );
}
