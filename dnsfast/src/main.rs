use std::path::PathBuf;

use clap::{Parser, Subcommand};
use dnsfast::{
    config::Config,
    load::{self, LoadArgs},
};

/// dnsfast: answers Kubernetes search-path artifacts with NXDOMAIN from the
/// kernel (XDP), so pod lookups of external names stop waiting on upstreams.
#[derive(Parser)]
#[command(version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Load the XDP program, attach it and serve until SIGINT/SIGTERM.
    ///
    /// Patterns come from the config file and from dnsmasq-style
    /// --address=/suffix/ flags. On exit the program is detached and the pins
    /// removed, so DNS falls back to the normal path.
    ///
    /// Example: dnsfast load --iface eth0 --address=/com.svc.cluster.local/
    Load(LoadArgs),
    /// Validate a config file (and --address flags) and print what it sets.
    CheckConfig {
        /// The TOML config file.
        file: PathBuf,
        /// dnsmasq-style block patterns, as `load` takes them.
        #[arg(long = "address", value_name = "/DOMAIN[/DOMAIN…]/")]
        addresses: Vec<String>,
    },
    /// Print an example config file with every key documented.
    ExampleConfig,
}

fn main() {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info"))
        .format_timestamp_millis()
        .init();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Load(args) => load::run(args),
        Command::CheckConfig { file, addresses } => check_config(&file, &addresses),
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

fn check_config(file: &std::path::Path, addresses: &[String]) -> anyhow::Result<()> {
    let cfg = load::build_config(Some(file), addresses)?;
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
        println!("{a:5} {p}");
    }
}
