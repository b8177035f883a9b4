//! What the hostile-client and upgrade suites share with `cargo xtask
//! bench`: the upstream's answers and the command lines of the clients
//! that check them (`dnsfast-testdns`, `dnsfast-attack`), so that the
//! tests and the bench measure the same thing.

/// The address every victim name resolves to.
pub const GOOD: &str = "192.0.2.7";

/// The hostile suite's attacks, each as `dnsfast-attack`'s mode and
/// arguments (the server and the duration are added): `hostile.rs` runs
/// each in a test of its own, the bench runs them all against dnsfast and
/// unbound.
///
/// 300 connections that pipeline 2,000 queries each and never read: their
/// windows shut and stay shut.
pub const TCP_NEVER_READ: &[&str] = &[
    "tcp-noread",
    "--suffix",
    "good.test",
    "--conns",
    "300",
    "--queries",
    "2000",
];
/// A byte a second on 200 connections.
pub const SLOWLORIS: &[&str] = &["slowloris", "--conns", "200"];
/// Connections opened and closed as fast as one thread can.
pub const TCP_CHURN: &[&str] = &["churn"];
/// Random names as fast as one socket sends.
pub const UDP_FLOOD: &[&str] = &["udp-flood", "--suffix", "flood.test"];
/// Random names under a zone whose upstream never answers.
pub const SLOW_NAMES: &[&str] = &["udp-flood", "--suffix", "slow.test"];
/// 60 KB TXT answers over TCP, on 16 connections.
pub const LARGE_ANSWERS: &[&str] = &["tcp-large", "--suffix", "big.test", "--conns", "16"];

fn strings(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

/// `dnsfast-testdns` on `listen`: `good.test` names resolve to `GOOD`,
/// `flood.test` names to 192.0.2.8, `slow.test` names are never answered,
/// and `big.test` names get 60 KB of TXT over TCP (TC over UDP).
pub fn upstream_args(listen: &str) -> Vec<String> {
    let good = format!("good.test={GOOD}");
    strings(&[
        "--listen",
        listen,
        "--answer-suffix",
        &good,
        "--answer-suffix",
        "flood.test=192.0.2.8",
        "--drop",
        "slow.test",
        "--tc",
        "big.test",
        "--tc-txt-bytes",
        "60000",
    ])
}

/// `dnsfast-attack victim`: 50 new `good.test` names a second at
/// `server` for `seconds`, every answer one of `expect`.
pub fn victim_args(server: &str, expect: &[&str], seconds: u64) -> Vec<String> {
    strings(&[
        "victim",
        "--server",
        server,
        "--suffix",
        "good.test",
        "--expect",
        &expect.join(","),
        "--seconds",
        &seconds.to_string(),
    ])
}

/// `dnsfast-attack mix`: `rate` queries a second at `server` for
/// `seconds` (artifacts under `blocked.test`, cached and new `good.test`
/// names), every answer checked.
pub fn mix_args(server: &str, rate: u64, seconds: u64) -> Vec<String> {
    strings(&[
        "mix",
        "--server",
        server,
        "--suffix",
        "good.test",
        "--expect",
        GOOD,
        "--rate",
        &rate.to_string(),
        "--seconds",
        &seconds.to_string(),
    ])
}

/// The JSON summary line a `dnsfast-attack` client printed (other lines,
/// such as examples of wrong answers, are skipped); `Null` if none.
pub fn summary(output: &str) -> serde_json::Value {
    output
        .lines()
        .find(|l| l.contains("\"sent\""))
        .and_then(|l| serde_json::from_str(l).ok())
        .unwrap_or_default()
}
