//! Helpers for dnsfast's kernel and end-to-end tests.
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
