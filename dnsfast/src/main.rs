use std::path::PathBuf;

use clap::{Parser, Subcommand};
use dnsfast::{
    config::Config,
    ctl,
    load::{self, ForwardArgs, LoadArgs},
    serve::{self, ServeArgs},
};
use dnsfast_common::pattern::Action;

/// dnsfast: answers Kubernetes search-path artifacts with NXDOMAIN from the
/// kernel (XDP), so pod lookups of external names stop waiting on upstreams,
/// and forwards the rest per zone, with a cache.
#[derive(Parser)]
#[command(version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Load the XDP program, attach it, run the forwarder, and serve until
    /// SIGINT/SIGTERM.
    ///
    /// Patterns come from the config file and from dnsmasq-style
    /// --address=/suffix/ flags; the kernel answers them with NXDOMAIN, and
    /// the forwarder does too for what reaches it (TCP). Everything else the
    /// forwarder sends to its zone's upstreams. On exit the program is
    /// detached and the pins removed, so DNS falls back to the normal path
    /// (--keep-attached leaves it for the next agent to adopt).
    ///
    /// The config is reloaded on SIGHUP and when the file changes (a
    /// ConfigMap update too), by diff and without a gap; a bad one is
    /// refused and the old one keeps serving. `dnsfast block|allow|stats|
    /// status|watch|unload` work on the running agent.
    ///
    /// Example, as kube-dns ran dnsmasq:
    ///   dnsfast load --iface eth0 --listen 169.254.20.10 \
    ///     --server=/cluster.local/127.0.0.1#10053 --server=10.0.0.2 \
    ///     --cache-size=10000 --no-negcache --address=/com.svc.cluster.local/
    Load(LoadArgs),
    /// Run the forwarder alone, without XDP (no root needed on a high port).
    ///
    /// Example: dnsfast serve --listen 127.0.0.1:5353 --server=9.9.9.9
    Serve(ServeArgs),
    /// Validate a config file and flags, and print what they set.
    CheckConfig {
        /// The TOML config file.
        file: PathBuf,
        /// dnsmasq-style block patterns, as `load` takes them.
        #[arg(long = "address", value_name = "/DOMAIN[/DOMAIN…]/")]
        addresses: Vec<String>,
        #[command(flatten)]
        forward: ForwardArgs,
    },
    /// Print the search-path artifact rules auto mode derives, and why.
    ///
    /// From the `[auto]` table of the config (cluster domain, namespaces,
    /// extra search suffixes or the node's resolv.conf search line) and the
    /// TLD list. Read it before enabling auto mode; `load` applies exactly
    /// this.
    Suggest {
        /// The TOML config file.
        #[arg(long, value_name = "FILE")]
        config: Option<PathBuf>,
        /// dnsmasq-style hand-written patterns, as `load` takes them.
        #[arg(long = "address", value_name = "/DOMAIN[/DOMAIN…]/")]
        addresses: Vec<String>,
    },
    /// Ask the loaded XDP program what it does with a query for NAME
    /// (BPF_PROG_TEST_RUN on the pinned program), and name the rule and
    /// labels that decided it.
    ///
    /// Example: dnsfast explain api.github.com.default.svc.cluster.local
    Explain(dnsfast::explain::ExplainArgs),
    /// Add, remove or list block patterns in the running kernel table.
    ///
    /// Changes take effect at once, in the kernel and in the agent's
    /// forwarder. They last until the agent restarts or reloads its config:
    /// the config file is the truth, so write lasting changes there.
    ///
    /// Example: dnsfast block add com.svc.cluster.local net.svc.cluster.local
    Block {
        #[command(subcommand)]
        cmd: ctl::PatternCmd,
        #[command(flatten)]
        pins: ctl::PinArgs,
    },
    /// Add, remove or list allow patterns (exceptions inside blocked
    /// suffixes), like `block`.
    ///
    /// Example: dnsfast allow add kubernetes.default.svc.cluster.local
    Allow {
        #[command(subcommand)]
        cmd: ctl::PatternCmd,
        #[command(flatten)]
        pins: ctl::PinArgs,
    },
    /// Show the kernel's counters (summed over CPUs) and the forwarder's:
    /// RCODEs, cache, zones, upstream health and latency.
    ///
    /// Example: dnsfast stats --watch
    Stats {
        #[command(flatten)]
        args: ctl::StatsArgs,
        #[command(flatten)]
        pins: ctl::PinArgs,
    },
    /// Stream the kernel's decisions live: time, client, name, type,
    /// verdict and the pattern that decided (from a BPF ring buffer; off,
    /// and free, while nobody watches; rate-limited).
    ///
    /// Example: dnsfast watch | grep NXDOMAIN
    Watch {
        #[command(flatten)]
        args: ctl::WatchArgs,
        #[command(flatten)]
        pins: ctl::PinArgs,
    },
    /// Show the running agent: interfaces (mode, program id, since when),
    /// pattern counts, listeners, upstream health, reloads.
    Status {
        #[command(flatten)]
        args: ctl::StatusArgs,
        #[command(flatten)]
        pins: ctl::PinArgs,
    },
    /// Detach the program and remove the pins (the agent exits), or with
    /// --iface detach one interface. Also cleans up after --keep-attached
    /// when no agent runs.
    Unload {
        #[command(flatten)]
        args: ctl::UnloadArgs,
        #[command(flatten)]
        pins: ctl::PinArgs,
    },
    /// Print an example config file with every key documented.
    ExampleConfig,
    /// Print the ICANN TLDs of a Public Suffix List file, one per line in
    /// ASCII (for `cargo xtask update-tlds`).
    #[command(hide = true)]
    TldList {
        /// A public_suffix_list.dat.
        psl: PathBuf,
    },
}

fn main() {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info"))
        .format_timestamp_millis()
        .init();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Load(args) => load::run(args),
        Command::Serve(args) => serve::run(args),
        Command::CheckConfig {
            file,
            addresses,
            forward,
        } => check_config(&file, &addresses, &forward),
        Command::Suggest { config, addresses } => suggest(config.as_deref(), &addresses),
        Command::TldList { psl } => tld_list(&psl),
        Command::Explain(args) => dnsfast::explain::run(args),
        Command::Block { cmd, pins } => ctl::patterns(Action::Block, cmd, &pins),
        Command::Allow { cmd, pins } => ctl::patterns(Action::Allow, cmd, &pins),
        Command::Stats { args, pins } => ctl::stats(args, &pins),
        Command::Status { args, pins } => ctl::status(args, &pins),
        Command::Watch { args, pins } => ctl::watch(args, &pins),
        Command::Unload { args, pins } => ctl::unload(args, &pins),
        Command::ExampleConfig => {
            print!("{}", dnsfast::config::EXAMPLE);
            Ok(())
        }
    };
    if let Err(e) = result {
        // One line: the chain of causes, outermost first.
        eprintln!("dnsfast: error: {}", format!("{e:#}").replace('\n', "\n  "));
        std::process::exit(1);
    }
}

fn check_config(
    file: &std::path::Path,
    addresses: &[String],
    forward: &ForwardArgs,
) -> anyhow::Result<()> {
    let cfg = load::build_config(Some(file), addresses, forward)?;
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
        "forward: timeout {} ms, max-inflight {}, log-queries {}",
        f.timeout.as_millis(),
        f.max_inflight,
        f.log_queries
    );
    let c = &f.cache;
    println!(
        "cache: size {}, ttl clamp {}..{} s, negative answers {}",
        c.size,
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
}

fn suggest(file: Option<&std::path::Path>, addresses: &[String]) -> anyhow::Result<()> {
    let mut cfg = load::build_config(file, addresses, &ForwardArgs::default())?;
    if cfg.derived.is_none() {
        // Show what would be derived even when auto mode is off.
        cfg.auto.enabled = true;
        if cfg.auto.cluster_domain.is_empty() {
            cfg.auto.cluster_domain = "cluster.local".into();
        }
        let d = dnsfast::auto::derive(&cfg.auto, &cfg.patterns)?;
        println!("auto mode is off (set [auto] cluster-domain to turn it on); it would derive:");
        print_derived(&d);
    } else if let Some(d) = &cfg.derived {
        println!("auto mode is on; `dnsfast load` derives:");
        print_derived(d);
    }
    Ok(())
}

fn print_derived(d: &dnsfast::auto::Derived) {
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

fn tld_list(psl: &std::path::Path) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(psl)
        .map_err(|e| anyhow::anyhow!("reading {}: {e}", psl.display()))?;
    let tlds = dnsfast::auto::tlds_from_psl(&text)?;
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
