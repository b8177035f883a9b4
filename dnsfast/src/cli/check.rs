//! `check-config`, `suggest`, `example-config` and the hidden `tld-list`:
//! what a config file and flags mean, printed; nothing is loaded.

use std::path::Path;

use anyhow::Result;

use crate::config::{
    self,
    auto::{self, Derived},
    Config, ForwardFlags, KubeFlags,
};
use crate::dataplane::budget::Budget;

/// `dnsfast example-config`.
pub fn example_config() -> Result<()> {
    print!("{}", config::EXAMPLE);
    Ok(())
}

pub fn check_config(file: &Path, addresses: &[String], forward: &ForwardFlags) -> Result<()> {
    let cfg = config::build(Some(file), addresses, forward, &KubeFlags::default())?;
    print_config(&cfg);
    Ok(())
}

fn print_config(cfg: &Config) {
    println!("ok: {} pattern(s)", cfg.patterns.len());
    println!("xdp.ports = {:?}", cfg.xdp.ports);
    if cfg.xdp.server_addrs.is_empty() {
        println!("xdp.server-addrs = any destination");
    } else {
        println!("xdp.server-addrs = {:?}", cfg.xdp.server_addrs);
    }
    println!("xdp.max-patterns = {}", cfg.xdp.max_patterns);
    for (p, a) in cfg.patterns.iter() {
        println!("{a:6} {p}");
    }
    match &cfg.derived {
        Some(d) => println!(
            "auto: {} search suffixes, {} TLD labels (see `dnsfast suggest`)",
            d.suffixes.len(),
            d.tlds.len()
        ),
        None => println!("auto: off"),
    }
    let f = &cfg.forward;
    let listen: Vec<String> = f.listen.iter().map(|a| a.to_string()).collect();
    println!(
        "forward.listen = [{}] (udp x{} workers, tcp)",
        listen.join(", "),
        f.worker_count()
    );
    println!(
        "forward: timeout {} ms, max-inflight {}, max-udp-size {}, log-queries {}",
        f.timeout.as_millis(),
        f.max_inflight,
        f.max_udp_size,
        f.log_queries
    );
    let t = &f.tcp;
    println!(
        "forward: max-inflight-per-client {}; tcp: {} connections ({} per client), pipeline {}, \
         idle {} ms, write timeout {} ms, answer buffer {} bytes",
        f.max_inflight_per_client,
        t.max_connections,
        t.max_per_client,
        t.pipeline,
        t.idle.as_millis(),
        t.write_timeout.as_millis(),
        t.buffer_bytes
    );
    let c = &f.cache;
    println!(
        "cache: size {} entries, {} bytes at most ({} per answer), ttl clamp {}..{} s, negative answers {}",
        c.size,
        c.max_bytes,
        c.max_entry_bytes,
        c.min_ttl,
        c.max_ttl,
        if c.neg_cache {
            format!("cached up to {} s", c.neg_ttl)
        } else {
            "not cached".into()
        }
    );
    let zones = match f.resolved_zones() {
        Ok(z) => z,
        Err(e) => {
            println!("note: {e:#}");
            f.zones.clone()
        }
    };
    if !zones.iter().any(|z| z.name == ".") {
        println!("note: no default zone: names outside the zones below get REFUSED");
    }
    for z in zones {
        let ups: Vec<String> = if z.use_default {
            vec!["(the default zone's upstreams)".into()]
        } else {
            z.upstreams
                .iter()
                .map(|u| format!("{} ({} ms)", u.addr, u.timeout.as_millis()))
                .collect()
        };
        println!(
            "zone {} [{:?}] -> {}   from {}",
            z.name,
            z.policy,
            ups.join(", "),
            z.origin
        );
    }
    println!("{}", Budget::of(cfg));
}

pub fn suggest(file: Option<&Path>, addresses: &[String]) -> Result<()> {
    let mut cfg = config::build(
        file,
        addresses,
        &ForwardFlags::default(),
        &KubeFlags::default(),
    )?;
    if cfg.derived.is_none() {
        // Show what would be derived even when auto mode is off.
        cfg.auto.enabled = true;
        if cfg.auto.cluster_domain.is_empty() {
            cfg.auto.cluster_domain = "cluster.local".into();
        }
        let d = auto::derive(&cfg.auto, &cfg.patterns)?;
        println!("auto mode is off (set [auto] cluster-domain to turn it on); it would derive:");
        print_derived(&d);
    } else if let Some(d) = &cfg.derived {
        println!("auto mode is on; `dnsfast load` derives:");
        print_derived(d);
    }
    let cd = &cfg.auto.cluster_domain;
    if cfg.kubernetes.enabled {
        println!(
            "\nthe cluster domain {cd} is decided by the Kubernetes API ([kubernetes]): a name \
             under it is NXDOMAIN exactly when its namespace or Service does not exist (as \
             CoreDNS answers); until the API has been listed, every name under it passes"
        );
    } else {
        println!(
            "\nconfig-only mode (no [kubernetes]): inside {cd} the rules above guess, and can \
             answer real names NXDOMAIN:\n  \
             - every name in a namespace not in auto.namespaces (web.prod.svc.{cd} when prod \
             is missing);\n  \
             - a name of two labels or more before <ns>.svc.{cd} whose last is a TLD: pods of \
             a headless Service named like a TLD (store-0.store.default.svc.{cd}), a Service's \
             SRV names (_http._tcp.app.default.svc.{cd});\n  \
             - the same under svc.{cd} and {cd}.\n\
             Give the agent API access ([kubernetes] enabled = true, or --kubeconfig) to decide \
             the cluster domain exactly."
        );
    }
    Ok(())
}

fn print_derived(d: &Derived) {
    println!(
        "\nsearch suffixes ({}): a name N = Q.S is answered NXDOMAIN when S is the longest of these\n\
         that N ends with, and Q has two labels or more, the last in the TLD set",
        d.suffixes.len()
    );
    for (p, why) in &d.suffixes {
        println!("  {:<40} {why}", p.name);
    }
    if !d.shadowed.is_empty() {
        println!("\nleft out, hand-written patterns decide there:");
        for (p, why) in &d.shadowed {
            println!("  {:<40} {why}", p.name);
        }
    }
    println!(
        "\nTLD set: {} labels from the {}",
        d.tlds.len(),
        d.tld_source
    );
    for (t, why) in &d.extra_tlds {
        println!("  + {t:<12} {why}");
    }
    if let Some((s, _)) = d.suffixes.first() {
        println!(
            "\nexample: api.github.com.{s} -> NXDOMAIN (com is a TLD); web.{s} and app.{s} -> pass \
             (one label: a service name)"
        );
    }
}

pub fn tld_list(psl: &Path) -> Result<()> {
    let text = std::fs::read_to_string(psl)
        .map_err(|e| anyhow::anyhow!("reading {}: {e}", psl.display()))?;
    let tlds = auto::tlds_from_psl(&text)?;
    println!(
        "# ICANN top-level domains from the Public Suffix List ({}), in ASCII.\n\
         # {} labels. Regenerate with `cargo xtask update-tlds [PSL]`.",
        psl.display(),
        tlds.len()
    );
    for t in tlds {
        println!("{t}");
    }
    Ok(())
}
