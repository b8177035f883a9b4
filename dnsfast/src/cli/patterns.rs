//! `dnsfast block|allow add|del|list`: pattern changes go straight into
//! the pinned kernel pattern table (so they work whether or not an agent
//! runs), then the agent is told to give its forwarder the same table.

use anyhow::{anyhow, bail, Context, Result};
use aya::maps::MapData;
use clap::Subcommand;
use dnsfast_common::{
    pattern::{key_name, rule_entry, Action, Pattern},
    Rule,
};
use serde_json::{json, Value};

use super::PinArgs;
use crate::{
    agent::client,
    dataplane::{pattern_table::Patterns, pins::Pins},
};

#[derive(Subcommand, Debug)]
pub enum PatternCmd {
    /// Add patterns (each covers the name and every name below it).
    Add {
        #[arg(required = true, value_name = "PATTERN")]
        patterns: Vec<String>,
    },
    /// Remove patterns added before (as written, not names they cover).
    Del {
        #[arg(required = true, value_name = "PATTERN")]
        patterns: Vec<String>,
    },
    /// List the patterns in the kernel now.
    List {
        /// One JSON array of {"pattern", "action"} objects.
        #[arg(long)]
        json: bool,
    },
}

/// `dnsfast block|allow …`.
pub fn run(action: Action, cmd: PatternCmd, pins: &PinArgs) -> Result<()> {
    let p = Pins::open(&pins.pin_dir)?;
    // The agent writes the same table on a reload: one writer at a time.
    let lock = p.lock()?;
    let mut table = p.patterns()?;
    match cmd {
        PatternCmd::List { json } => {
            let rules = table.rules()?;
            let mut names: Vec<String> = rules
                .iter()
                .filter(|(_, r)| r.action == action.code())
                .map(|(k, _)| key_name(k))
                .collect();
            names.sort();
            if json {
                let v: Vec<Value> = names
                    .iter()
                    .map(|n| json!({ "pattern": n, "action": action.to_string() }))
                    .collect();
                println!("{}", Value::Array(v));
            } else {
                for n in names {
                    println!("{n}");
                }
            }
            return Ok(());
        }
        PatternCmd::Add { patterns } => {
            // All are checked before any is written: no half-applied change.
            let parsed = parse_all(&patterns)?;
            for pat in &parsed {
                if let Some(r) = exact(&table, pat)? {
                    if r.action != action.code() {
                        let other = Action::from_code(r.action)
                            .map(|a| a.to_string())
                            .unwrap_or_else(|| format!("action {}", r.action));
                        bail!("{pat} is already a {other} pattern; delete it there first");
                    }
                }
            }
            let mut added: Vec<Vec<u8>> = vec![];
            for pat in &parsed {
                let (key, rule) = rule_entry(pat, action);
                match table.insert(&key, rule) {
                    Ok(new) => {
                        if new {
                            added.push(key);
                        }
                    }
                    Err(e) => {
                        // Take back what this command added: all or nothing.
                        for k in &added {
                            table.remove(k).context("undoing a partial add")?;
                        }
                        return Err(e.context(format!("adding {pat}; nothing was added")));
                    }
                }
            }
            println!("{action}: added {} pattern(s)", parsed.len());
        }
        PatternCmd::Del { patterns } => {
            let parsed = parse_all(&patterns)?;
            for pat in &parsed {
                match exact(&table, pat)? {
                    Some(r) if r.action == action.code() => {}
                    Some(_) => bail!("{pat} is not a {action} pattern"),
                    None => bail!("{pat}: no such {action} pattern"),
                }
            }
            for pat in &parsed {
                let (key, _) = rule_entry(pat, action);
                table
                    .remove(&key)
                    .with_context(|| format!("removing {pat}"))?;
            }
            println!("{action}: removed {} pattern(s)", parsed.len());
        }
    }
    drop(lock);
    match client::ask(&pins.pin_dir, "resync")? {
        Some(_) => println!("the agent's forwarder follows"),
        None => println!("note: no agent runs; the kernel table changed, nothing else"),
    }
    println!(
        "note: a config reload puts the table back to the config; write lasting changes there"
    );
    Ok(())
}

/// The rule stored for exactly `pat`.
fn exact(table: &Patterns<MapData>, pat: &Pattern) -> Result<Option<Rule>> {
    let (key, _) = rule_entry(pat, Action::Block);
    table.get(&key)
}

fn parse_all(texts: &[String]) -> Result<Vec<Pattern>> {
    texts
        .iter()
        .map(|t| Pattern::parse(t).map_err(|e| anyhow!("pattern '{t}': {e}")))
        .collect()
}
