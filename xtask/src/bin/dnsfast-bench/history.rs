//! One row of the history table in `docs/benchmarks.md` per recorded run:
//! the headline figures of this run, gathered while it prints its tables,
//! printed at the end as a Markdown row, and with `--record FILE` put into
//! the table (between its `history` markers, newest last).

use std::{path::Path, sync::Mutex};

use anyhow::{bail, Context, Result};

/// The table's columns: key, heading.
pub const COLUMNS: [(&str, &str); 11] = [
    ("date", "date"),
    ("commit", "commit"),
    ("no_match", "DNS no match"),
    ("block_100k", "block hit, 100k, 25 B"),
    ("artifact", "auto: artifact"),
    ("real", "auto: real name"),
    ("k8s", "cluster domain, 100k Services (slowest)"),
    ("k8s_event", "Service create → kernel, p99"),
    ("blocked_qps", "blocked qps ÷ dnsmasq / unbound"),
    ("cache_hits", "cache-hit qps ÷ dnsmasq / unbound"),
    ("rss", "RSS, `load`"),
];

const BEGIN: &str = "<!-- history:begin -->";
const END: &str = "<!-- history:end -->";

static CELLS: Mutex<Vec<(&'static str, String)>> = Mutex::new(Vec::new());

/// Notes one figure of this run.
pub fn note(key: &'static str, value: String) {
    if let Ok(mut c) = CELLS.lock() {
        c.retain(|(k, _)| *k != key);
        c.push((key, value));
    }
}

/// This run's row; `–` where a part did not run.
pub fn row() -> String {
    let cells = CELLS.lock().map(|c| c.clone()).unwrap_or_default();
    let get = |k: &str| {
        cells
            .iter()
            .find(|(key, _)| *key == k)
            .map(|(_, v)| v.clone())
            .unwrap_or_else(|| "–".into())
    };
    let mut s = String::from("|");
    for (k, _) in COLUMNS {
        s.push_str(&format!(" {} |", get(k)));
    }
    s
}

/// The table's header, for a file that has none yet.
pub fn header() -> String {
    let names: Vec<&str> = COLUMNS.iter().map(|(_, h)| *h).collect();
    format!(
        "| {} |\n|{}",
        names.join(" | "),
        "---|".repeat(COLUMNS.len())
    )
}

/// Puts `row` last in the history table of `file`.
pub fn record(file: &Path, row: &str) -> Result<()> {
    let text =
        std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
    let (Some(_), Some(end)) = (text.find(BEGIN), text.find(END)) else {
        bail!(
            "{}: no history table ({BEGIN} … {END}) to record into",
            file.display()
        );
    };
    let mut body = text[..end].trim_end().to_string();
    body.push('\n');
    body.push_str(row);
    body.push('\n');
    body.push_str(&text[end..]);
    std::fs::write(file, body).with_context(|| format!("writing {}", file.display()))
}

/// Today's date (UTC) and the checkout's commit, for the first two cells.
pub fn stamp() {
    let out = |cmd: &str, args: &[&str]| {
        std::process::Command::new(cmd)
            .args(args)
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
            .unwrap_or_else(|| "?".into())
    };
    note("date", out("date", &["-u", "+%Y-%m-%d"]));
    note("commit", out("git", &["rev-parse", "--short", "HEAD"]));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_go_last_between_the_markers() {
        let dir = std::env::temp_dir().join(format!("dnsfast-history-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("b.md");
        std::fs::write(&f, format!("x\n{BEGIN}\n{}\n| a |\n{END}\ny\n", header())).unwrap();
        record(&f, "| b |").unwrap();
        let t = std::fs::read_to_string(&f).unwrap();
        assert!(t.contains("| a |\n| b |\n<!-- history:end -->\ny"), "{t}");
        assert_eq!(row().matches('|').count(), COLUMNS.len() + 1);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
