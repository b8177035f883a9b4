//! Differential test: the kernel's verdict against the user-space reference
//! matcher on 100k+ random and mutated names and packets.

use dnsfast::dataplane::{Dataplane, LoadOptions};
use dnsfast_common::{
    pattern::{rule_entry, to_wire, Action, Pattern, ReferenceMatcher},
    suffix::{decide, name_key},
};
use dnsfast_tests::{
    pkt::{frame, parse, raw_query, Ip, Wrap},
    require_root,
};
use hickory_proto::op::{Message, MessageType, OpCode};
use rand::{rngs::StdRng, Rng, SeedableRng};

const XDP_PASS: u32 = 2;
const XDP_TX: u32 = 3;
const LABELS: [&str; 10] = [
    "com", "svc", "cluster", "local", "a", "b", "internal", "io", "x-1", "_t",
];

fn random_case(rng: &mut StdRng, s: &str) -> Vec<u8> {
    s.bytes()
        .map(|b| {
            if rng.gen_bool(0.3) {
                b.to_ascii_uppercase()
            } else {
                b
            }
        })
        .collect()
}

/// Random wire name: mostly labels from a small alphabet so that names hit
/// patterns often; sometimes odd bytes, dots inside labels, or huge labels.
fn random_wire(rng: &mut StdRng) -> Vec<u8> {
    let mut w = vec![];
    let n = rng.gen_range(0..=8);
    for _ in 0..n {
        let label: Vec<u8> = match rng.gen_range(0..20) {
            0 => (0..rng.gen_range(1..=63)).map(|_| rng.gen()).collect(),
            1 => b"cluster.local".to_vec(),
            2 => vec![b'q'; 63],
            _ => {
                let l = LABELS[rng.gen_range(0..LABELS.len())];
                random_case(rng, l)
            }
        };
        w.push(label.len() as u8);
        w.extend_from_slice(&label);
    }
    w.push(0);
    w
}

fn random_patterns(rng: &mut StdRng, n: usize) -> Vec<(Pattern, Action)> {
    (0..n)
        .map(|_| {
            let k = rng.gen_range(1..=4);
            let name: Vec<&str> = (0..k)
                .map(|_| LABELS[rng.gen_range(0..LABELS.len())])
                .collect();
            let a = match rng.gen_range(0..10) {
                0..=5 => Action::Block,
                6..=7 => Action::Allow,
                // Search suffixes: block only what looks fully qualified
                // before them (its last label in the TLD set below).
                _ => Action::Suffix,
            };
            (Pattern::parse(&name.join(".")).unwrap(), a)
        })
        .collect()
}

/// The question name of a DNS message, walked plainly (no compression).
fn question_wire(dns: &[u8]) -> Option<Vec<u8>> {
    let mut i = 12;
    loop {
        let n = *dns.get(i)? as usize;
        if n == 0 {
            return Some(dns.get(12..=i)?.to_vec());
        }
        i += n + 1;
    }
}

#[test]
fn kernel_matches_reference_on_100k_names_and_mutations() {
    require_root!();
    let seed: u64 = std::env::var("DNSFAST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| rand::thread_rng().gen());
    eprintln!("differential seed {seed} (set DNSFAST_SEED to replay)");
    let mut rng = StdRng::seed_from_u64(seed);

    let mut dp = Dataplane::load(&LoadOptions::default()).unwrap();
    let mut reference = ReferenceMatcher::new();
    let mut table = std::collections::BTreeMap::new();
    // Random rules, then a namespace-shaped family the agent folds into
    // the kernel's namespace set: `svc.local` and `<label>.svc.local`.
    let family = std::iter::once("svc.local".to_string())
        .chain(LABELS.iter().map(|l| format!("{l}.svc.local")))
        .map(|n| (Pattern::parse(&n).unwrap(), Action::Suffix));
    for (p, a) in random_patterns(&mut rng, 400).into_iter().chain(family) {
        // Later duplicates overwrite earlier ones on both sides alike.
        reference.insert(&p, a);
        table.insert(p, a);
    }
    let rules: dnsfast::rules::RuleSet = table.iter().map(|(p, a)| rule_entry(p, *a)).collect();
    let tlds: std::collections::BTreeSet<String> = ["com", "io", "local", "internal", "_t"]
        .iter()
        .map(|t| t.to_string())
        .collect();
    for tld in &tlds {
        reference.insert_tld(tld);
    }
    // The forwarder's copy of the same rules (unfolded), as it decides.
    let fwd_rules = dnsfast::rules::suffix_map(&rules);
    let fwd_tlds: std::collections::HashSet<Vec<u8>> =
        tlds.iter().map(|t| t.as_bytes().to_vec()).collect();
    // The kernel tables as the agent writes them (namespace suffixes folded).
    let d = dp.reconcile(&rules, &tlds).unwrap();
    eprintln!("kernel tables: {d}");
    assert!(d.namespaces.added >= LABELS.len(), "nothing folded: {d}");

    let (mut tx, mut names, mut mutated) = (0u64, 0u64, 0u64);
    for i in 0..120_000u32 {
        let wire = if i % 7 == 3 {
            // A name under a folded namespace suffix.
            let mut w = random_wire(&mut rng);
            w.pop();
            let ns = LABELS[rng.gen_range(0..LABELS.len())];
            let suffix = to_wire(&format!("{ns}.svc.local"));
            w.extend(random_case(
                &mut rng,
                std::str::from_utf8(&suffix).unwrap_or(""),
            ));
            w
        } else if i % 7 == 0 {
            // A name built on a pattern, so block and allow hits are common.
            let (p, _) = &random_patterns(&mut rng, 1)[0];
            let mut w = random_wire(&mut rng);
            w.pop();
            let suffix = to_wire(&p.name);
            w.extend(random_case(
                &mut rng,
                std::str::from_utf8(&suffix).unwrap_or(""),
            ));
            w
        } else {
            random_wire(&mut rng)
        };
        let wrap = if rng.gen_bool(0.5) {
            Wrap::v4()
        } else {
            Wrap::v6()
        };
        let qtype = [1u16, 28, 16, 255][rng.gen_range(0..4)];
        let f = frame(&wrap, &raw_query(&wire, qtype, 1));

        if i % 3 == 0 {
            // Mutated packet: flip bytes anywhere, or cut/extend it.
            let mut m = f.clone();
            for _ in 0..rng.gen_range(1..=3) {
                let at = rng.gen_range(0..m.len());
                m[at] = rng.gen();
            }
            if rng.gen_bool(0.1) {
                let keep = rng.gen_range(14..=m.len());
                m.truncate(keep);
            }
            let (verdict, out) = dp.test_run(&m).unwrap();
            if verdict == XDP_TX {
                check_tx_is_justified(&m, &reference);
            } else {
                assert_eq!(verdict, XDP_PASS);
                assert_eq!(out, m, "PASS changed a mutated packet");
            }
            tx += u64::from(verdict == XDP_TX);
            mutated += 1;
        } else {
            let expected = reference.decide_wire(&wire).map(|(a, _)| a) == Some(Action::Block);
            let (verdict, out) = dp.test_run(&f).unwrap();
            assert_eq!(
                verdict == XDP_TX,
                expected,
                "name {:?}: kernel {verdict}, reference {:?} (seed {seed})",
                String::from_utf8_lossy(&wire),
                reference.decide_wire(&wire)
            );
            if verdict != XDP_TX {
                assert_eq!(out, f);
            }
            // The forwarder (TCP, hosts without XDP) decides the same.
            let forwarder = name_key(&wire)
                .ok()
                .and_then(|(k, _)| decide(&fwd_rules, &fwd_tlds, &k))
                .map(|(a, _)| a)
                == Some(Action::Block);
            assert_eq!(
                forwarder,
                expected,
                "name {:?}: forwarder blocks: {forwarder}, reference {:?} (seed {seed})",
                String::from_utf8_lossy(&wire),
                reference.decide_wire(&wire)
            );
            tx += u64::from(verdict == XDP_TX);
            names += 1;
        }
    }
    eprintln!("{names} names, {mutated} mutated packets, {tx} answered");
    assert!(names + mutated >= 100_000);
    assert!(tx > 5_000, "the mix should hit block patterns often");
}

/// A mutated packet got XDP_TX: it must still be a well-formed query for a
/// blocked name to the DNS port.
fn check_tx_is_justified(m: &[u8], reference: &ReferenceMatcher) {
    let p = parse(m);
    assert_eq!(p.dport, 53, "TX for a packet not to port 53");
    assert!(matches!(p.ip, Ip::V4 | Ip::V6));
    let q = Message::from_vec(p.dns).expect("TX for a DNS message hickory cannot parse");
    assert_eq!(q.metadata.message_type, MessageType::Query);
    assert_eq!(q.metadata.op_code, OpCode::Query);
    assert_eq!(q.queries.len(), 1);
    assert_eq!(u16::from(q.queries[0].query_class()), 1);
    let wire = question_wire(p.dns).expect("question");
    assert_eq!(
        reference.decide_wire(&wire).map(|(a, _)| a),
        Some(Action::Block),
        "TX for a name outside the block rules: {:?}",
        String::from_utf8_lossy(&wire)
    );
}

/// CoreDNS's `kubernetes` plugin, written plainly from its source (parse.go,
/// kubernetes.go): whether it answers NXDOMAIN for `labels` (lower-cased,
/// name order) under the cluster domain `cd`. Where dnsfast passes a name
/// up that CoreDNS might still deny (pod names, names too long below a
/// Service), the forwarder asks CoreDNS, so those count as "not NXDOMAIN"
/// here: the kernel may only answer what this says is NXDOMAIN.
fn coredns_nxdomain(
    labels: &[Vec<u8>],
    cd: &[&str],
    namespaces: &std::collections::BTreeSet<String>,
    services: &std::collections::BTreeSet<(String, String)>,
    stubs: &[Vec<&str>],
) -> bool {
    let under = |zone: &[&str]| {
        labels.len() >= zone.len()
            && labels[labels.len() - zone.len()..]
                .iter()
                .zip(zone)
                .all(|(l, z)| l.as_slice() == z.as_bytes())
    };
    if !under(cd) || stubs.iter().any(|s| under(s)) {
        return false;
    }
    let rest: Vec<String> = labels[..labels.len() - cd.len()]
        .iter()
        .map(|l| String::from_utf8_lossy(l).into_owned())
        .collect();
    let wild = |l: &str| l == "*" || l == "any";
    let Some((kind, rest)) = rest.split_last() else {
        return false; // the apex
    };
    match kind.as_str() {
        // Pods, the name server's `ns.dns`, the schema TXT: not ours to deny.
        "pod" | "dns" | "dns-version" => false,
        "svc" => {
            let Some((ns, rest)) = rest.split_last() else {
                return false; // svc.<cd>
            };
            if wild(ns) {
                return false;
            }
            if !namespaces.contains(ns) {
                return true;
            }
            let Some((svc, _)) = rest.split_last() else {
                return false; // <ns>.svc.<cd>
            };
            !wild(svc) && !services.contains(&(ns.clone(), svc.clone()))
        }
        _ => true,
    }
}

/// The exact cluster domain: random cluster states (namespaces, Services,
/// a stub zone) and random names — real ones, artifacts, SRV names, pod
/// hostnames, wildcards, odd case — and the kernel's verdict must equal
/// CoreDNS's (above) on every one, the forwarder's too; with the cloud
/// suffixes' TLD rule beside it.
#[test]
fn cluster_domain_verdicts_equal_coredns() {
    use std::collections::BTreeSet;
    require_root!();
    let seed: u64 = std::env::var("DNSFAST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| rand::thread_rng().gen());
    eprintln!("cluster differential seed {seed} (set DNSFAST_SEED to replay)");
    let mut rng = StdRng::seed_from_u64(seed);
    const WORDS: [&str; 16] = [
        "default",
        "kube-system",
        "dev",
        "app",
        "store",
        "data",
        "web",
        "com",
        "io",
        "local",
        "store-0",
        "es-0",
        "search",
        "prod",
        "api",
        "x-1",
    ];
    const ODD: [&str; 10] = [
        "*",
        "any",
        "_http",
        "_tcp",
        "svc",
        "pod",
        "dns",
        "dns-version",
        "ns",
        "cluster",
    ];
    let cd = ["cluster", "local"];
    let stubs = vec![vec!["stub", "cluster", "local"]];
    let cloud = "compute.internal";
    let tlds: BTreeSet<String> = ["com", "io", "local", "internal", "app", "store", "dev"]
        .iter()
        .map(|t| t.to_string())
        .collect();
    let mut dp = Dataplane::load(&LoadOptions::default()).unwrap();
    let (mut names, mut tx) = (0u64, 0u64);
    for state in 0..6 {
        let mut cluster = dnsfast::rules::ClusterNames::default();
        for w in WORDS {
            if rng.gen_bool(0.4) {
                cluster.namespaces.insert(w.to_string());
            }
        }
        for ns in cluster.namespaces.clone() {
            for w in WORDS {
                if rng.gen_bool(0.3) {
                    cluster.services.insert((ns.clone(), w.to_string()));
                }
            }
        }
        let stub_names: Vec<String> = stubs.iter().map(|s| s.join(".")).collect();
        let (mut rules, bad) = dnsfast::rules::cluster_rules(&cd.join("."), &cluster, &stub_names);
        assert!(bad.is_empty(), "{bad:?}");
        let (k, r) = rule_entry(&Pattern::parse(cloud).unwrap(), Action::Suffix);
        rules.insert(k, r);
        dp.reconcile(&rules, &tlds).unwrap();
        let fwd_rules = dnsfast::rules::suffix_map(&rules);
        let fwd_tlds: std::collections::HashSet<Vec<u8>> =
            tlds.iter().map(|t| t.as_bytes().to_vec()).collect();
        eprintln!(
            "state {state}: {} namespaces, {} services, {} table entries",
            cluster.namespaces.len(),
            cluster.services.len(),
            rules.len()
        );
        for _ in 0..20_000 {
            let mut labels: Vec<String> = (0..rng.gen_range(0..=3))
                .map(|_| {
                    if rng.gen_bool(0.3) {
                        ODD[rng.gen_range(0..ODD.len())].to_string()
                    } else {
                        WORDS[rng.gen_range(0..WORDS.len())].to_string()
                    }
                })
                .collect();
            match rng.gen_range(0..10) {
                // <x>.<ns>.svc.<cd>, mostly real namespaces.
                0..=4 => {
                    let ns = if rng.gen_bool(0.8) && !cluster.namespaces.is_empty() {
                        let i = rng.gen_range(0..cluster.namespaces.len());
                        cluster.namespaces.iter().nth(i).unwrap().clone()
                    } else {
                        WORDS[rng.gen_range(0..WORDS.len())].to_string()
                    };
                    labels.extend([ns, "svc".into(), "cluster".into(), "local".into()]);
                }
                5 => labels.extend(["svc", "cluster", "local"].map(String::from)),
                6 => labels.extend(["cluster", "local"].map(String::from)),
                7 => labels.extend(["pod", "cluster", "local"].map(String::from)),
                8 => {
                    labels.extend(["default", "svc", "cluster", "local"].map(String::from));
                    labels.extend(["compute", "internal"].map(String::from));
                }
                _ => labels.extend(["stub", "cluster", "local"].map(String::from)),
            }
            let text = labels.join(".");
            let wire = random_case(&mut rng, std::str::from_utf8(&to_wire(&text)).unwrap());
            let lower: Vec<Vec<u8>> = labels.iter().map(|l| l.as_bytes().to_vec()).collect();
            let mut expected =
                coredns_nxdomain(&lower, &cd, &cluster.namespaces, &cluster.services, &stubs);
            // Under the cloud suffix, the TLD rule: at least two labels
            // before it, the last in the TLD set.
            if text.ends_with(cloud) {
                let before = &labels[..labels.len() - 2];
                expected = before.len() >= 2 && tlds.contains(before.last().unwrap());
            }
            let f = frame(&Wrap::v4(), &raw_query(&wire, 1, 1));
            let (verdict, _) = dp.test_run(&f).unwrap();
            assert_eq!(
                verdict == XDP_TX,
                expected,
                "{text}: kernel {verdict}, CoreDNS NXDOMAIN {expected} (seed {seed})"
            );
            let forwarder = name_key(&wire)
                .ok()
                .and_then(|(k, _)| decide(&fwd_rules, &fwd_tlds, &k))
                .map(|(a, _)| a)
                == Some(Action::Block);
            assert_eq!(forwarder, expected, "{text}: forwarder (seed {seed})");
            tx += u64::from(expected);
            names += 1;
        }
    }
    eprintln!("{names} names over 6 cluster states, {tx} NXDOMAIN");
    assert!(names >= 100_000);
    assert!(tx > 10_000 && tx < names - 10_000, "a mix of both verdicts");
}
