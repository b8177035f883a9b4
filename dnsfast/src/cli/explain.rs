//! `dnsfast explain NAME`: what the loaded XDP program does with a query
//! for NAME, from the kernel itself (BPF_PROG_TEST_RUN on the pinned
//! program), and which rule and labels decided it (from the pinned maps).

use std::path::PathBuf;

use anyhow::{anyhow, bail, Context, Result};
use aya::maps::{Array, MapData};
use clap::Args;
use dnsfast_common::{
    frame::Wrap,
    pattern::{key_labels, key_name, to_wire, Action, Pattern},
    suffix::name_key,
    XdpConfig, ACTION_SUFFIX_NS, MAP_CONFIG,
};
use hickory_proto::{
    op::{Message, Query},
    rr::{Name, RecordType},
};

use crate::{
    dataplane::{pins::Pins, require_root, test_run_pinned},
    forward::metrics::rcode_name,
    paths::{self, PIN_DIR},
};

#[derive(Args, Debug)]
pub struct ExplainArgs {
    /// The name to ask about, e.g. api.github.com.default.svc.cluster.local.
    pub(crate) name: String,
    /// Query type.
    #[arg(long = "type", default_value = "A")]
    pub(crate) qtype: String,
    /// Destination of the synthesized query (matters with xdp.server-addrs).
    #[arg(long, default_value = "127.0.0.1")]
    pub(crate) to: std::net::Ipv4Addr,
    /// Where `dnsfast load` pinned its program and maps.
    #[arg(long, value_name = "DIR", default_value = PIN_DIR)]
    pub(crate) pin_dir: PathBuf,
}

const XDP_PASS: u32 = 2;
const XDP_TX: u32 = 3;

pub fn run(a: ExplainArgs) -> Result<()> {
    let pattern = Pattern::parse(&a.name).map_err(|e| anyhow!("'{}': {e}", a.name))?;
    let qtype: RecordType = a
        .qtype
        .to_ascii_uppercase()
        .parse()
        .map_err(|_| anyhow!("--type {}: not a record type", a.qtype))?;
    let prog_path = paths::prog_pin(&a.pin_dir);
    if !prog_path.exists() {
        bail!(
            "nothing loaded: no program pinned at {} (is `dnsfast load` running, with --pin-dir {}?)",
            prog_path.display(),
            a.pin_dir.display()
        );
    }
    require_root("dnsfast explain")?;
    let pins = Pins::open(&a.pin_dir)?;
    let port = {
        let m = pins.map(MAP_CONFIG)?;
        let cfg: Array<MapData, XdpConfig> = Array::try_from(m)?;
        cfg.get(&0, 0)
            .context("reading the pinned CONFIG map")?
            .ports[0]
    };

    // The kernel's verdict on a real query frame.
    let mut q = Message::query();
    q.metadata.id = 0x4242;
    q.metadata.recursion_desired = true;
    q.add_query(Query::query(Name::from_ascii(&a.name)?, qtype));
    let frame = Wrap {
        dst_mac: [0x02, 0, 0, 0, 0, 1],
        src_mac: [0x02, 0, 0, 0, 0, 2],
        vlans: vec![],
        // The program leaves a loopback destination from outside to the
        // stack: a query to 127.0.0.1 comes from 127.0.0.1.
        src: if a.to.is_loopback() {
            a.to.into()
        } else {
            std::net::Ipv4Addr::new(192, 0, 2, 1).into()
        },
        dst: a.to.into(),
        sport: 40000,
        dport: port,
        udp_check: 0,
    }
    .frame(&q.to_vec()?);
    let (verdict, out) = test_run_pinned(&prog_path, &frame)?;
    match verdict {
        XDP_TX => {
            let reply = Message::from_vec(&out[42..]).context("parsing the kernel's answer")?;
            let rcode = rcode_name(reply.metadata.response_code);
            println!(
                "kernel: answered in place (XDP_TX): {rcode}, {} answer record(s)",
                reply.answers.len()
            );
        }
        XDP_PASS => println!("kernel: passed up (XDP_PASS): the forwarder or the stack answers"),
        v => println!("kernel: verdict {v}"),
    }

    // Which rule decided, from the pinned pattern table and TLD set.
    let (key, _) = name_key(&to_wire(&pattern.name)).map_err(|e| anyhow!("{e:?}"))?;
    let rule = match pins.patterns()?.longest(&key)? {
        Some((_, r)) => r,
        None => {
            println!(
                "rule: no pattern and no search suffix covers {}",
                pattern.name
            );
            return Ok(());
        }
    };
    let mut at = rule.key_len as usize;
    let mut action = rule.action;
    if action == ACTION_SUFFIX_NS {
        // Namespace suffixes live in a set under this one: the next
        // label, if it is a namespace, makes the suffix one label longer.
        let next = key_labels(&key[at..]).into_iter().next();
        let ns = pins.namespaces()?;
        if let Some(label) = next {
            let is_ns = ns.contains(&label)?;
            if is_ns && key.len() > at + 1 + label.len() {
                println!("namespace: '{label}' is in the namespace set");
                at += 1 + label.len();
            }
        }
        action = dnsfast_common::ACTION_SUFFIX;
    }
    let matched = key_name(&key[..at]);
    let before = key_labels(&key[at..]);
    match Action::from_code(action) {
        Some(Action::Suffix) => {
            println!(
                "rule: search suffix {matched} (the longest one {} ends with)",
                pattern.name
            );
            let Some(last) = before.first() else {
                println!("  nothing stands before it: not an artifact");
                return Ok(());
            };
            let tlds = pins.tlds()?;
            let is_tld = tlds.contains(last)?;
            let q: Vec<&str> = before.iter().rev().map(String::as_str).collect();
            println!(
                "  before it: {} ({} label{}); its last label '{last}' {} the TLD set",
                q.join("."),
                before.len(),
                if before.len() == 1 { "" } else { "s" },
                if is_tld { "is in" } else { "is not in" }
            );
            if before.len() < 2 {
                println!("  one label is a service's own name: not an artifact");
            } else if is_tld {
                println!("  -> a search-path artifact: NXDOMAIN");
            } else {
                println!("  -> not an artifact");
            }
            if matched.starts_with("svc.") || matched.contains(".svc.") {
                println!(
                    "  note: config-only auto mode guesses inside the cluster domain: a pod of a \
                     headless Service named like a TLD (store-0.store.<ns>.svc…) or a Service's \
                     SRV name (_http._tcp.app.<ns>.svc…) gets NXDOMAIN; with [kubernetes] the \
                     API decides instead"
                );
            }
        }
        Some(Action::Exists) => {
            println!("rule: the cluster domain {matched} exists (Kubernetes API)");
            match before.first() {
                None => println!("  the name itself: passed up"),
                Some(l) => println!(
                    "  '{l}' below it is neither svc nor pod: no such name (NXDOMAIN), as \
                     CoreDNS would answer"
                ),
            }
        }
        Some(Action::ExistsWild) => {
            // `svc.<cd>` or `<ns>.svc.<cd>`, by its shape.
            let labels: Vec<&str> = matched.split('.').collect();
            let below = before.first();
            let (what, missing) = if labels.first() == Some(&"svc") {
                (format!("{matched} (the Services' zone)"), "namespace")
            } else {
                (format!("namespace '{}'", labels[0]), "Service in it")
            };
            println!("rule: {what} exists (Kubernetes API)");
            match below {
                None => println!("  the name itself: passed up"),
                Some(l) if dnsfast_common::is_wildcard(l.as_bytes()) => {
                    println!("  '{l}' is a CoreDNS wildcard: passed up")
                }
                Some(l) => println!("  no {missing} named '{l}': NXDOMAIN"),
            }
        }
        Some(Action::Allow)
            if matched.split('.').nth(2) == Some("svc") && matched.split('.').count() > 3 =>
        {
            let l: Vec<&str> = matched.split('.').collect();
            println!(
                "rule: allow {matched}: Service '{}' in namespace '{}' exists (Kubernetes API), \
                 so it and every name below it (endpoints, pods of a headless Service, SRV) \
                 pass up",
                l[0], l[1]
            );
        }
        Some(action) => println!("rule: {action} pattern {matched}"),
        None => println!("rule: unknown action {action} at {matched}"),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_read_back_as_names() {
        let (k, _) = name_key(&to_wire("api.github.com.svc.cluster.local")).unwrap();
        assert_eq!(key_name(&k[..18]), "svc.cluster.local");
        assert_eq!(key_labels(&k[18..]), ["com", "github", "api"]);
    }
}
