//! `dnsfast`: the clap command tree and the dispatch to `cli`.

use std::path::PathBuf;

use clap::{Parser, Subcommand};
use dnsfast::{
    cli::{
        cache, check, explain,
        load::{self, LoadArgs},
        ops, patterns,
        serve::{self, ServeArgs},
        PinArgs,
    },
    config::ForwardFlags,
};
use dnsfast_common::pattern::Action;

/// dnsfast: answers Kubernetes search-path artifacts with NXDOMAIN from the
/// kernel (XDP), so pod lookups of external names stop waiting on upstreams,
/// and forwards the rest per zone, with a cache.
#[derive(Parser)]
#[command(version, about, long_about = None)]
struct Cli {
    /// Log lines as text, or as JSON objects (one per line, with fields:
    /// for log pipelines such as Loki or Elasticsearch). RUST_LOG filters
    /// (default: info).
    #[arg(long, value_enum, default_value = "text", global = true)]
    log_format: dnsfast::cli::LogFormat,
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
        forward: ForwardFlags,
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
    Explain(explain::ExplainArgs),
    /// Add, remove or list block patterns in the running kernel table.
    ///
    /// Changes take effect at once, in the kernel and in the agent's
    /// forwarder. They last until the agent restarts or reloads its config:
    /// the config file is the truth, so write lasting changes there.
    ///
    /// Example: dnsfast block add com.svc.cluster.local net.svc.cluster.local
    Block {
        #[command(subcommand)]
        cmd: patterns::PatternCmd,
        #[command(flatten)]
        pins: PinArgs,
    },
    /// Add, remove or list allow patterns (exceptions inside blocked
    /// suffixes), like `block`.
    ///
    /// Example: dnsfast allow add kubernetes.default.svc.cluster.local
    Allow {
        #[command(subcommand)]
        cmd: patterns::PatternCmd,
        #[command(flatten)]
        pins: PinArgs,
    },
    /// Show the kernel's counters (summed over CPUs) and the forwarder's:
    /// RCODEs, cache, zones, upstream health and latency.
    ///
    /// Example: dnsfast stats --watch
    Stats {
        #[command(flatten)]
        args: ops::StatsArgs,
        #[command(flatten)]
        pins: PinArgs,
    },
    /// Stream the kernel's decisions live: time, client, name, type,
    /// verdict and the pattern that decided (from a BPF ring buffer; off,
    /// and free, while nobody watches; rate-limited).
    ///
    /// Example: dnsfast watch | grep NXDOMAIN
    Watch {
        #[command(flatten)]
        args: ops::WatchArgs,
        #[command(flatten)]
        pins: PinArgs,
    },
    /// Show the running agent: interfaces (mode, program id, since when),
    /// pattern counts, listeners, upstream health, reloads.
    Status {
        #[command(flatten)]
        args: ops::StatusArgs,
        #[command(flatten)]
        pins: PinArgs,
    },
    /// Detach the program and remove the pins (the agent exits), or with
    /// --iface detach one interface. Also cleans up after --keep-attached
    /// when no agent runs.
    Unload {
        #[command(flatten)]
        args: ops::UnloadArgs,
        #[command(flatten)]
        pins: PinArgs,
    },
    /// Drop answers from the running agent's caches (its forwarder's and
    /// the kernel's), so the next query for them goes upstream.
    ///
    /// Example: dnsfast cache flush api.example.com
    Cache {
        #[command(subcommand)]
        cmd: cache::CacheCmd,
        #[command(flatten)]
        pins: PinArgs,
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
    let cli = Cli::parse();
    dnsfast::cli::init_logging(cli.log_format);
    let result = match cli.command {
        Command::Load(args) => load::run(args),
        Command::Serve(args) => serve::run(args),
        Command::CheckConfig {
            file,
            addresses,
            forward,
        } => check::check_config(&file, &addresses, &forward),
        Command::Suggest { config, addresses } => check::suggest(config.as_deref(), &addresses),
        Command::TldList { psl } => check::tld_list(&psl),
        Command::Explain(args) => explain::run(args),
        Command::Block { cmd, pins } => patterns::run(Action::Block, cmd, &pins),
        Command::Allow { cmd, pins } => patterns::run(Action::Allow, cmd, &pins),
        Command::Stats { args, pins } => ops::stats(args, &pins),
        Command::Status { args, pins } => ops::status(args, &pins),
        Command::Watch { args, pins } => ops::watch(args, &pins),
        Command::Unload { args, pins } => ops::unload(args, &pins),
        Command::Cache { cmd, pins } => cache::run(cmd, &pins),
        Command::ExampleConfig => check::example_config(),
    };
    if let Err(e) = result {
        // One line: the chain of causes, outermost first.
        eprintln!("dnsfast: error: {}", format!("{e:#}").replace('\n', "\n  "));
        std::process::exit(1);
    }
}
