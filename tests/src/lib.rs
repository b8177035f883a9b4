//! Helpers for dnsfast's kernel and end-to-end tests.
pub mod cgroup;
pub mod clients;
pub mod kube;
pub mod netns;
pub mod pkt;
pub mod upstream;

/// Tests that need root call this first. Without root they skip loudly;
/// with `CI=true` they fail instead, since CI runs as root and a skipped
/// kernel test there would prove nothing.
pub fn have_root(test: &str) -> bool {
    use std::os::unix::fs::MetadataExt;
    let root = std::fs::metadata("/proc/self")
        .map(|m| m.uid() == 0)
        .unwrap_or(false);
    if root {
        return true;
    }
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("{test}: needs root, and CI=true forbids skipping");
    }
    eprintln!("SKIPPED {test}: needs root (run `sudo cargo xtask test`)");
    false
}

/// Shorthand for the root check at the top of a test.
#[macro_export]
macro_rules! require_root {
    () => {
        if !$crate::have_root(module_path!()) {
            return;
        }
    };
}

/// The RCODE in `dig`'s output ("NOERROR", "NXDOMAIN", …), or
/// "(no answer)".
pub fn rcode(dig_output: &str) -> &str {
    dig_output
        .split("status: ")
        .nth(1)
        .and_then(|s| s.split(',').next())
        .unwrap_or("(no answer)")
}

/// The agent binary under test: `DNSFAST_BIN` (set by `cargo xtask`), or
/// the newer of the workspace's debug and release builds.
pub fn dnsfast_bin() -> std::path::PathBuf {
    if let Ok(p) = std::env::var("DNSFAST_BIN") {
        return p.into();
    }
    let target = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target");
    ["debug", "release"]
        .iter()
        .map(|p| target.join(p).join("dnsfast"))
        .filter_map(|p| Some((std::fs::metadata(&p).ok()?.modified().ok()?, p)))
        .max()
        .map(|(_, p)| p)
        .expect("no dnsfast binary: run `cargo build -p dnsfast` or `cargo xtask test`")
}

/// The binary that ships: the static release build of the image
/// (`DNSFAST_RELEASE_BIN`, which `cargo xtask test` sets). Tests that
/// measure service under load run it, since a debug build's throughput
/// is a tenth of it and would be what they measured; without it they run
/// `dnsfast_bin()` and say so.
pub fn dnsfast_release_bin() -> std::path::PathBuf {
    match std::env::var("DNSFAST_RELEASE_BIN") {
        Ok(p) => p.into(),
        Err(_) => {
            let p = dnsfast_bin();
            eprintln!(
                "DNSFAST_RELEASE_BIN is not set: running {}, whose throughput is not the product's",
                p.display()
            );
            p
        }
    }
}

/// Kernel counters as an operator reads them: `bpftool map dump pinned
/// DIR/counters`, one BTF-named field summed over CPUs. Fails if bpftool
/// shows no field names.
pub fn bpftool_counters(pin_dir: &std::path::Path) -> anyhow::Result<Vec<(String, u64)>> {
    let path = pin_dir.join("counters");
    let out = netns::run_ok(
        "bpftool",
        &["map", "dump", "pinned", &path.to_string_lossy()],
    )?;
    let mut totals: Vec<(String, u64)> = Vec::new();
    for line in out.lines() {
        let Some((k, v)) = line.trim().trim_end_matches(',').split_once(": ") else {
            continue;
        };
        let (Some(k), Ok(v)) = (
            k.strip_prefix('"').and_then(|k| k.strip_suffix('"')),
            v.parse::<u64>(),
        ) else {
            continue;
        };
        if k == "key" || k == "cpu" {
            continue;
        }
        match totals.iter_mut().find(|(n, _)| n == k) {
            Some((_, t)) => *t += v,
            None => totals.push((k.to_string(), v)),
        }
    }
    anyhow::ensure!(
        totals.iter().any(|(k, _)| k == "pass_no_match"),
        "bpftool shows no BTF field names:\n{out}"
    );
    Ok(totals)
}

/// One field of [`bpftool_counters`].
pub fn bpftool_counter(pin_dir: &std::path::Path, field: &str) -> u64 {
    bpftool_counters(pin_dir)
        .unwrap()
        .into_iter()
        .find(|(k, _)| k == field)
        .map(|(_, v)| v)
        .unwrap_or_else(|| panic!("no counter {field}"))
}
