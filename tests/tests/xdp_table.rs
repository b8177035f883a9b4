//! The XDP program on crafted packets, through BPF_PROG_TEST_RUN.
//! Every answer is parsed with hickory-proto and checked field by field;
//! every pass must leave the packet byte-for-byte unchanged.

use dnsfast::dataplane::{Dataplane, LoadOptions};
use dnsfast_common::{
    pattern::{Action, Pattern},
    Counters,
};
use dnsfast_tests::{
    pkt::{self, frame, parse, raw_query, Wrap, Q},
    require_root,
};
use hickory_proto::{
    op::{Message, MessageType, OpCode, ResponseCode},
    rr::{rdata::opt::EdnsOption, DNSClass, RData, Record, RecordType},
};

const XDP_PASS: u32 = 2;
const XDP_TX: u32 = 3;

fn dataplane() -> Dataplane {
    let mut dp = Dataplane::load(&LoadOptions::default()).expect("load");
    for (p, a) in [
        ("com.svc.cluster.local", Action::Block),
        ("blocked.example", Action::Block),
        ("ok.blocked.example", Action::Allow),
        ("deep.ok.blocked.example", Action::Block),
    ] {
        dp.insert_pattern(&Pattern::parse(p).unwrap(), a).unwrap();
    }
    dp
}

/// Length of the question section of a well-formed single-question query.
fn question_len(dns: &[u8]) -> usize {
    let mut i = 12;
    while dns[i] != 0 {
        i += dns[i] as usize + 1;
    }
    i + 1 + 4 - 12
}

/// Runs `frame` and checks that it came back as a correct NXDOMAIN answer.
fn assert_answered(dp: &mut Dataplane, q: &Q, w: &Wrap) {
    let query = frame(w, &q.bytes());
    let (verdict, reply) = dp.test_run(&query).unwrap();
    let ctx = format!(
        "{} {:?} {:?} vlans={:?} edns={:?}",
        q.name, q.qtype, w.ip, w.vlans, q.edns
    );
    assert_eq!(verdict, XDP_TX, "{ctx}: expected XDP_TX");
    let (qp, rp) = (parse(&query), parse(&reply));
    pkt::assert_turned_around(&query, &reply, &ctx);

    // DNS.
    let qlen = question_len(qp.dns);
    let opt_len = if q.edns.is_some() { 11 } else { 0 };
    assert_eq!(rp.dns.len(), 12 + qlen + opt_len, "{ctx}: DNS length");
    assert_eq!(&rp.dns[4..10], &[0, 1, 0, 0, 0, 0], "{ctx}: counts");
    assert_eq!(
        rp.dns[10..12],
        [0, q.edns.is_some() as u8],
        "{ctx}: ARCOUNT"
    );
    assert_eq!(
        &rp.dns[12..12 + qlen],
        &qp.dns[12..12 + qlen],
        "{ctx}: question byte-exact"
    );
    let m =
        Message::from_vec(rp.dns).unwrap_or_else(|e| panic!("{ctx}: reply does not parse: {e}"));
    let h = &m.metadata;
    assert_eq!(h.id, q.id, "{ctx}");
    assert_eq!(h.message_type, MessageType::Response, "{ctx}");
    assert_eq!(h.op_code, OpCode::Query, "{ctx}");
    assert!(
        !h.authoritative && !h.truncation && !h.authentic_data,
        "{ctx}: AA/TC/AD"
    );
    assert_eq!(h.recursion_desired, q.rd, "{ctx}: RD kept");
    assert!(h.recursion_available, "{ctx}: RA");
    assert_eq!(h.checking_disabled, q.cd, "{ctx}: CD kept");
    assert_eq!(h.response_code, ResponseCode::NXDomain, "{ctx}");
    assert_eq!(m.queries.len(), 1, "{ctx}");
    assert!(m.answers.is_empty() && m.authorities.is_empty(), "{ctx}");
    match &q.edns {
        None => assert!(
            m.edns.is_none() && m.additionals.is_empty(),
            "{ctx}: no OPT"
        ),
        Some((size, dok, _)) => {
            let e = m
                .edns
                .as_ref()
                .unwrap_or_else(|| panic!("{ctx}: OPT missing"));
            assert_eq!(e.max_payload(), *size, "{ctx}: payload size kept");
            assert_eq!(e.flags().dnssec_ok, *dok, "{ctx}: DO echoed");
            assert_eq!(e.version(), 0, "{ctx}");
            assert_eq!(&rp.dns[rp.dns.len() - 2..], &[0, 0], "{ctx}: OPT rdlen 0");
        }
    }
}

fn assert_passed(dp: &mut Dataplane, f: &[u8], ctx: &str) {
    let (verdict, out) = dp.test_run(f).unwrap();
    assert_eq!(verdict, XDP_PASS, "{ctx}: expected XDP_PASS");
    assert_eq!(out, f, "{ctx}: packet changed on PASS");
}

fn cookie() -> EdnsOption {
    EdnsOption::Unknown(10, vec![1, 2, 3, 4, 5, 6, 7, 8])
}

fn wraps() -> Vec<Wrap> {
    let mut v = vec![];
    for base in [Wrap::v4(), Wrap::v6()] {
        v.push(base.clone());
        v.push(base.clone().vlans(&[0x8100]));
        v.push(base.vlans(&[0x88a8, 0x8100]));
    }
    v
}

#[test]
fn blocked_names_are_answered_in_place() {
    require_root!();
    let mut dp = dataplane();
    let names = [
        "api.github.com.svc.cluster.local",
        "ApI.GitHub.CoM.sVc.CLUSTER.local", // 0x20 mixed case
        "com.svc.cluster.local",
        "blocked.example",
        "x.y.z.blocked.example",
        "deep.ok.blocked.example",
        "a.deep.ok.blocked.example.",
    ];
    let types = [
        RecordType::A,
        RecordType::AAAA,
        RecordType::TXT,
        RecordType::ANY,
    ];
    let mut n = 0;
    for w in wraps() {
        for name in names {
            for t in types {
                for edns in [
                    None,
                    Some((1232, false, vec![])),
                    Some((4096, true, vec![cookie()])),
                ] {
                    let mut q = Q::new(name, t);
                    q.edns = edns;
                    q.id = 0x4000 + n;
                    q.cd = n % 3 == 0;
                    q.rd = n % 2 == 0;
                    assert_answered(&mut dp, &q, &w);
                    n += 1;
                }
            }
        }
    }
    let c = dp.counters().unwrap();
    assert_eq!(c.answered_nxdomain, n as u64);
    assert_eq!(c.dns_queries, n as u64);
    assert_eq!(c.packets, n as u64);
}

#[test]
fn unmatched_and_allowed_names_pass_untouched() {
    require_root!();
    let mut dp = dataplane();
    let cases = [
        ("xcom.svc.cluster.local", "no_match"),
        ("svc.cluster.local", "no_match"),
        ("com.svc.cluster.local.evil", "no_match"),
        ("example", "no_match"),
        ("ok.blocked.example", "allowed"),
        ("X.OK.blocked.example", "allowed"),
        ("notdeep.ok.blocked.example", "allowed"),
    ];
    let mut n = 0u64;
    for w in wraps() {
        for (name, _) in cases {
            for edns in [None, Some((1232, true, vec![cookie()]))] {
                let mut q = Q::new(name, RecordType::A);
                q.edns = edns;
                assert_passed(&mut dp, &frame(&w, &q.bytes()), name);
                n += 1;
            }
        }
    }
    let c = dp.counters().unwrap();
    assert_eq!(c.pass_no_match, n * 4 / 7);
    assert_eq!(c.pass_allowed, n * 3 / 7);
    assert_eq!(c.answered_nxdomain, 0);
}

/// A blocked query with one thing wrong or unsupported, and the counter it
/// must land in.
fn bad_cases() -> Vec<(&'static str, Vec<u8>, &'static str)> {
    let blocked = "api.github.com.svc.cluster.local";
    let good = || Q::new(blocked, RecordType::A).bytes();
    let v4 = Wrap::v4();
    let mut v = vec![];
    let mut edit =
        |what: &'static str, reason: &'static str, f: &dyn Fn(&mut Vec<u8>), w: &Wrap| {
            let mut d = good();
            f(&mut d);
            v.push((what, frame(w, &d), reason));
        };
    edit("QR=1", "not_dns", &|d| d[2] |= 0x80, &v4);
    edit("opcode STATUS", "unsupported", &|d| d[2] |= 2 << 3, &v4);
    edit("opcode UPDATE", "unsupported", &|d| d[2] |= 5 << 3, &v4);
    edit("QDCOUNT=0", "unsupported", &|d| d[5] = 0, &v4);
    edit("QDCOUNT=2", "unsupported", &|d| d[5] = 2, &v4);
    edit("ANCOUNT=1", "unsupported", &|d| d[7] = 1, &v4);
    edit("NSCOUNT=1", "unsupported", &|d| d[9] = 1, &v4);
    edit("ARCOUNT=2", "unsupported", &|d| d[11] = 2, &v4);
    edit(
        "trailing bytes",
        "malformed",
        &|d| d.extend_from_slice(b"xx"),
        &v4,
    );
    edit("ARCOUNT=1, no record", "malformed", &|d| d[11] = 1, &v4);
    // Jumbo frames: the datagram's end is past the offsets the program
    // masks to 2,047; once, 2,048 junk bytes made it read the query short
    // and answer it.
    for junk in [2048usize, 2049, 3000] {
        edit(
            "query + junk to past 2,047 bytes (v4)",
            "unsupported",
            &|d| d.extend(std::iter::repeat_n(0x41, junk)),
            &v4,
        );
    }
    edit(
        "query + 2,048 junk bytes (v6)",
        "unsupported",
        &|d| d.extend(std::iter::repeat_n(0x41, 2048)),
        &Wrap::v6(),
    );
    edit(
        "to port 5353",
        "not_dns",
        &|_| {},
        &Wrap {
            dport: 5353,
            ..Wrap::v4()
        },
    );
    edit(
        "IPv6 to port 80",
        "not_dns",
        &|_| {},
        &Wrap {
            dport: 80,
            ..Wrap::v6()
        },
    );

    let mut with_edns = Q::new(blocked, RecordType::A)
        .edns(1232, false, vec![])
        .bytes();
    let n = with_edns.len();
    with_edns[n - 11 + 6] = 1; // EDNS version 1
    v.push(("EDNS version 1", frame(&v4, &with_edns), "unsupported"));
    let mut opt_long = Q::new(blocked, RecordType::A)
        .edns(1232, false, vec![])
        .bytes();
    let n = opt_long.len();
    opt_long[n - 1] = 4; // OPT rdlen runs past the end
    v.push(("OPT rdlen past end", frame(&v4, &opt_long), "malformed"));

    let mut m = Q::new(blocked, RecordType::A).message();
    let rec = Record::from_rdata(
        "x.example.".parse().unwrap(),
        60,
        RData::A("192.0.2.1".parse().unwrap()),
    );
    m.additionals.push(rec);
    v.push((
        "additional A record",
        frame(&v4, &m.to_vec().unwrap()),
        "unsupported",
    ));
    v.push((
        "QCLASS CH",
        frame(&v4, &pkt::query_with_class(blocked, DNSClass::CH)),
        "unsupported",
    ));
    v.push((
        "QCLASS ANY",
        frame(&v4, &pkt::query_with_class(blocked, DNSClass::ANY)),
        "unsupported",
    ));

    let wire = dnsfast_common::pattern::to_wire(blocked);
    let mut label64 = vec![64u8];
    label64.extend(std::iter::repeat_n(b'a', 64));
    label64.extend_from_slice(&wire);
    v.push((
        "label of 64",
        frame(&v4, &raw_query(&label64, 1, 1)),
        "malformed",
    ));
    let mut ptr = b"\x03api".to_vec();
    ptr.extend_from_slice(&[0xc0, 0x0c]);
    v.push((
        "compression pointer",
        frame(&v4, &raw_query(&ptr, 1, 1)),
        "malformed",
    ));
    let mut long = vec![];
    for _ in 0..4 {
        long.push(63u8);
        long.extend(std::iter::repeat_n(b'b', 63));
    }
    long.extend_from_slice(&wire); // > 255 bytes, ends in a blocked suffix
    v.push((
        "name over 255 bytes",
        frame(&v4, &raw_query(&long, 1, 1)),
        "malformed",
    ));
    v.push((
        "name without root",
        frame(&v4, &raw_query(&wire[..wire.len() - 1], 1, 1)),
        "malformed",
    ));

    // IP-level cases.
    let base = frame(&v4, &good());
    // Addresses the stack would not answer from or to: answering them
    // would reflect or leak. (IPv4 source at 26, destination at 30.)
    for (what, at, addr) in [
        ("IPv4 multicast source", 26, [224, 0, 0, 5]),
        ("IPv4 broadcast source", 26, [255, 255, 255, 255]),
        ("IPv4 unspecified source", 26, [0, 0, 0, 0]),
        ("IPv4 mDNS destination", 30, [224, 0, 0, 251]),
        ("IPv4 loopback destination from outside", 30, [127, 0, 0, 1]),
    ] {
        let mut f = base.clone();
        f[at..at + 4].copy_from_slice(&addr);
        fix_v4(&mut f);
        v.push((what, f, "unsupported"));
    }
    let mut f = base.clone();
    f[6] = 0x03; // group bit in the source MAC
    v.push(("group source MAC", f, "unsupported"));
    let base6 = frame(&Wrap::v6(), &good());
    // IPv6 source at 22, destination at 38.
    let mut loop6 = [0u8; 16];
    loop6[15] = 1;
    let mut mcast6 = [0u8; 16];
    mcast6[0] = 0xff;
    mcast6[1] = 0x02;
    mcast6[15] = 1;
    for (what, at, addr) in [
        ("IPv6 multicast source", 22, mcast6),
        ("IPv6 unspecified source", 22, [0u8; 16]),
        ("IPv6 multicast destination", 38, mcast6),
        ("IPv6 loopback destination from outside", 38, loop6),
    ] {
        let mut f = base6.clone();
        f[at..at + 16].copy_from_slice(&addr);
        v.push((what, f, "unsupported"));
    }
    let mut f = base.clone();
    f[14 + 6] |= 0x20; // MF
    fix_v4(&mut f);
    v.push(("IPv4 first fragment", f, "unsupported"));
    let mut f = base.clone();
    f[14 + 7] = 8; // offset 64
    fix_v4(&mut f);
    v.push(("IPv4 later fragment", f, "not_dns"));
    let mut f = base.clone();
    f[14 + 9] = 6; // TCP
    fix_v4(&mut f);
    v.push(("TCP", f, "not_dns"));
    v.push(("IPv4 options", ipv4_with_options(&base), "unsupported"));
    let mut f = base.clone();
    let too_long = (f.len() - 14 + 1) as u16;
    f[14 + 2..14 + 4].copy_from_slice(&too_long.to_be_bytes());
    fix_v4(&mut f);
    v.push(("IPv4 length past frame", f, "malformed"));
    let mut f = base.clone();
    f[14 + 20 + 5] -= 1; // UDP length one short of IP's
    v.push(("UDP/IP length mismatch", f, "malformed"));
    let mut f = frame(&Wrap::v6(), &good());
    f[14 + 6] = 0; // hop-by-hop extension header
    v.push(("IPv6 extension header", f, "unsupported"));
    let mut f = base.clone();
    f[12..14].copy_from_slice(&0x0806u16.to_be_bytes());
    v.push(("ARP", f, "not_dns"));
    v
}

fn fix_v4(f: &mut [u8]) {
    f[24] = 0;
    f[25] = 0;
    let c = pkt::ipv4_checksum(&f[14..34]);
    f[24..26].copy_from_slice(&c.to_be_bytes());
}

fn ipv4_with_options(f: &[u8]) -> Vec<u8> {
    let mut out = f[..34].to_vec();
    out.extend_from_slice(&[1, 1, 1, 0]); // NOP NOP NOP EOL
    out.extend_from_slice(&f[34..]);
    out[14] = 0x46;
    let tot = (out.len() - 14) as u16;
    out[16..18].copy_from_slice(&tot.to_be_bytes());
    out[24] = 0;
    out[25] = 0;
    let c = pkt::ipv4_checksum(&out[14..38]);
    out[24..26].copy_from_slice(&c.to_be_bytes());
    out
}

fn reason_count(c: &Counters, reason: &str) -> u64 {
    match reason {
        "not_dns" => c.pass_not_dns,
        "malformed" => c.pass_malformed,
        "unsupported" => c.pass_unsupported,
        other => panic!("unknown reason {other}"),
    }
}

#[test]
fn label_sets_past_their_capacity_are_refused_whole() {
    require_root!();
    let mut dp = dataplane();
    let before = dp.rules().unwrap();
    let mut rules = before.clone();
    let cap = dnsfast_common::MAX_NAMESPACES as usize;
    for p in std::iter::once("svc.cluster.local".to_string())
        .chain((0..=cap).map(|i| format!("ns{i}.svc.cluster.local")))
    {
        let (key, rule) =
            dnsfast_common::pattern::rule_entry(&Pattern::parse(&p).unwrap(), Action::Suffix);
        rules.insert(key, rule);
    }
    let err = dp.reconcile(&rules, &Default::default()).unwrap_err();
    assert!(
        err.to_string()
            .contains(&format!("{} namespaces do not fit", cap + 1)),
        "{err:#}"
    );
    // Nothing was written.
    assert_eq!(dp.rules().unwrap(), before);
}

#[test]
fn search_suffixes_answer_only_artifacts() {
    require_root!();
    let mut dp = dataplane();
    let mut rules = dp.rules().unwrap();
    for (p, a) in [
        ("svc.cluster.local", Action::Suffix),
        ("dev.svc.cluster.local", Action::Suffix),
        ("default.svc.cluster.local", Action::Suffix),
        ("cluster.local", Action::Suffix),
        ("us-west-2.compute.internal", Action::Suffix),
        ("github.com.cluster.local", Action::Allow),
    ] {
        let (key, rule) = dnsfast_common::pattern::rule_entry(&Pattern::parse(p).unwrap(), a);
        rules.insert(key, rule);
    }
    let tlds = ["com", "dev", "io", "local", "internal"]
        .iter()
        .map(|t| t.to_string())
        .collect();
    // As the agent writes them: the two namespace suffixes are folded into
    // the namespace set under `svc.cluster.local`.
    let d = dp.reconcile(&rules, &tlds).unwrap();
    assert_eq!(d.namespaces.added, 2, "{d}");
    for w in wraps() {
        for name in [
            "api.github.com.default.svc.cluster.local",
            "Api.GitHub.IO.svc.cluster.local",
            "web.default.svc.cluster.local.default.svc.cluster.local",
            "kubedns.kube-system.svc.cluster.local.us-west-2.compute.internal",
            "www.example.com.cluster.local",
        ] {
            assert_answered(&mut dp, &Q::new(name, RecordType::A), &w);
        }
        for name in [
            // Real names: a service in namespace `dev`, a name without a
            // TLD before the suffix, a suffix itself, an allow pattern.
            "web.dev.svc.cluster.local",
            "web.default.svc.cluster.local",
            "app.default.svc.cluster.local",
            "io.svc.cluster.local",
            "svc.cluster.local",
            "api.github.com.cluster.local",
            "www.example.com",
        ] {
            let f = frame(&w, &Q::new(name, RecordType::A).bytes());
            assert_passed(&mut dp, &f, name);
        }
    }
}

#[test]
fn malformed_and_unsupported_pass_untouched_and_are_counted() {
    require_root!();
    let mut dp = dataplane();
    for (what, f, reason) in bad_cases() {
        let before = dp.counters().unwrap();
        assert_passed(&mut dp, &f, what);
        let after = dp.counters().unwrap();
        assert_eq!(
            reason_count(&after, reason) - reason_count(&before, reason),
            1,
            "{what}: expected to count as {reason}, counters {after:?}"
        );
        assert_eq!(after.answered_nxdomain, 0, "{what}");
    }
}

#[test]
fn every_truncation_passes_untouched() {
    require_root!();
    let mut dp = dataplane();
    let blocked = "api.github.com.svc.cluster.local";
    let mut frames: Vec<(String, Vec<u8>)> = bad_cases()
        .into_iter()
        .map(|(w, f, _)| (w.to_string(), f))
        .collect();
    for w in wraps() {
        let q = Q::new(blocked, RecordType::AAAA).edns(1232, true, vec![cookie()]);
        frames.push((
            format!("good {:?} {:?}", w.ip, w.vlans),
            frame(&w, &q.bytes()),
        ));
    }
    let mut runs = 0;
    for (what, f) in &frames {
        // The frame cut short (lengths in the headers now lie). The kernel
        // refuses test frames shorter than an Ethernet header.
        for n in 14..f.len() {
            assert_passed(&mut dp, &f[..n], &format!("{what} cut at {n}"));
            runs += 1;
        }
    }
    // The DNS message cut short with consistent IP/UDP lengths.
    for w in wraps() {
        let d = Q::new(blocked, RecordType::A)
            .edns(1232, false, vec![cookie()])
            .bytes();
        for n in 0..d.len() {
            assert_passed(&mut dp, &frame(&w, &d[..n]), &format!("DNS cut at {n}"));
            runs += 1;
        }
    }
    assert_eq!(dp.counters().unwrap().answered_nxdomain, 0);
    assert!(runs > 2000, "{runs} runs");
}

#[test]
fn destination_and_port_filters_apply() {
    require_root!();
    let mut dp = dataplane();
    let q = Q::new("api.github.com.svc.cluster.local", RecordType::A);
    let mut cfg = dnsfast_common::XdpConfig {
        ports: [5353, 53, 0, 0],
        filter_dst: 1,
        ..Default::default()
    };
    dp.set_config(&cfg).unwrap();
    // Filter on, no addresses listed: nothing is answered.
    assert_passed(
        &mut dp,
        &frame(&Wrap::v4(), &q.bytes()),
        "dst filter, empty",
    );
    let v4 = dnsfast::dataplane::addr_key("10.99.0.1".parse().unwrap());
    dp.set_xdp(&cfg, &[v4]).unwrap();
    assert_answered(&mut dp, &q, &Wrap::v4());
    assert_answered(
        &mut dp,
        &q,
        &Wrap {
            dport: 5353,
            ..Wrap::v4()
        },
    );
    assert_passed(
        &mut dp,
        &frame(&Wrap::v6(), &q.bytes()),
        "v6 dst not listed",
    );
    let v6 = dnsfast::dataplane::addr_key("fd00:99::1".parse().unwrap());
    dp.set_xdp(&cfg, &[v4, v6]).unwrap();
    assert_answered(&mut dp, &q, &Wrap::v6());
    cfg.filter_dst = 0;
    cfg.ports = [5353, 0, 0, 0];
    dp.set_config(&cfg).unwrap();
    assert_passed(
        &mut dp,
        &frame(&Wrap::v4(), &q.bytes()),
        "port 53 no longer DNS",
    );
}

#[test]
fn pattern_changes_take_effect_at_once() {
    require_root!();
    let mut dp = dataplane();
    let q = Q::new("www.example.org", RecordType::A);
    let f = frame(&Wrap::v4(), &q.bytes());
    assert_passed(&mut dp, &f, "before insert");
    let p = Pattern::parse("example.org").unwrap();
    dp.insert_pattern(&p, Action::Block).unwrap();
    assert_answered(&mut dp, &q, &Wrap::v4());
    dp.insert_pattern(&Pattern::parse("www.example.org").unwrap(), Action::Allow)
        .unwrap();
    assert_passed(&mut dp, &f, "allow is longer");
    dp.remove_pattern(&Pattern::parse("www.example.org").unwrap())
        .unwrap();
    assert_answered(&mut dp, &q, &Wrap::v4());
    dp.remove_pattern(&p).unwrap();
    assert_passed(&mut dp, &f, "after delete");
}

/// Every program in the object passes the verifier, and the effort is
/// printed so that host and guest kernels (test-kernels) can be compared in
/// the logs; fails if the kernel reports nothing where it should (5.16+).
#[test]
fn every_program_verifies_and_reports_its_cost() {
    require_root!();
    let mut dp = dataplane();
    dp.load_all().unwrap();
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let counts = dp.verified_insns().unwrap();
    assert_eq!(counts.len(), 4, "{counts:?}");
    for (name, n) in counts {
        eprintln!("verified instructions on {}: {name} {n:?}", release.trim());
        assert!(n.is_some_and(|n| n > 0), "{name}");
    }
}

/// While someone watches, each decided query leaves one event in the ring,
/// at most `WATCH_EVENTS_PER_SEC` per second and CPU; the rest are counted
/// as dropped. Nobody watching: nothing is emitted.
#[test]
fn watch_events_are_emitted_and_rate_limited() {
    require_root!();
    use dnsfast_common::{WatchEvent, VERDICT_ALLOWED, WATCH_EVENTS_PER_SEC};
    let mut dp = dataplane();
    // Passed untouched, so every repeat of the test run sees the same
    // query (an answer would turn the packet into a response).
    let q = Q::new("Www.OK.blocked.example", RecordType::AAAA);
    let f = frame(&Wrap::v4(), &q.bytes());
    dp.time_run(&f, 10, false).unwrap();
    assert_eq!(dp.watch_tally().unwrap(), (0, 0), "nobody watches yet");
    dp.set_watch(true).unwrap();
    let runs = u64::from(WATCH_EVENTS_PER_SEC) + 1000;
    dp.time_run(&f, runs as u32, false).unwrap();
    let (sent, dropped) = dp.watch_tally().unwrap();
    assert_eq!(sent + dropped, runs);
    // All runs fit in one second, unless the machine stalls in between.
    assert!(sent <= u64::from(WATCH_EVENTS_PER_SEC), "sent {sent}");
    assert!(dropped >= 1000, "dropped {dropped}");
    let mut ring = dp.take_events().unwrap();
    let item = ring.next().expect("an event in the ring");
    let e = WatchEvent::from_bytes(&item).unwrap();
    assert_eq!(e.verdict, VERDICT_ALLOWED);
    assert_eq!(e.qtype, 28);
    let wire = dnsfast_common::pattern::to_wire(&q.name);
    assert_eq!(&e.name[..e.name_len as usize], &wire[..], "case kept");
    assert_eq!(
        e.rule_len as usize,
        Pattern::parse("ok.blocked.example").unwrap().key().1
    );
    assert_eq!(e.rule_action, Action::Allow.code());
    drop(item);
    dp.set_watch(false).unwrap();
    dp.set_watch(false).unwrap(); // idempotent
    dp.time_run(&f, 100, false).unwrap();
    assert_eq!(dp.watch_tally().unwrap(), (sent, dropped), "off again");
}
