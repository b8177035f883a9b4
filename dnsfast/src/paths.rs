//! Every path and pin name dnsfast uses, in one place: where `dnsfast load`
//! pins its program, maps and links, and where its control socket lives.
//! The agent, the control CLI, `explain` and the docs all name them from
//! here, so they cannot drift apart.

use std::path::{Component, Path, PathBuf};

use dnsfast_common::{
    table::{MAP_PATTERN_DEPTHS, MAP_PATTERN_TAILS},
    MAP_ANSWERS, MAP_CONFIG, MAP_COUNTERS, MAP_JUMPS, MAP_LEASE, MAP_NAMESPACES, MAP_PATTERNS,
    MAP_SERVER_ADDRS, MAP_TLDS,
};

/// The default pin directory (`--pin-dir`); kept in `dnsfast-common` with
/// the map names it holds.
pub(crate) use dnsfast_common::PIN_DIR;

/// Where the kernel's BPF filesystem is mounted; a pin directory below it
/// gets the filesystem mounted if it is not there yet.
pub(crate) const BPFFS_ROOT: &str = "/sys/fs/bpf";

/// `statfs` magic of bpffs (`BPF_FS_MAGIC` in linux/magic.h).
pub(crate) const BPF_FS_MAGIC: i64 = 0xcafe_4a11;

/// Where control sockets live.
pub(crate) const RUN_DIR: &str = "/run/dnsfast";

/// Where `dnsfast load` pins the main program, for `dnsfast explain`.
pub(crate) const PINNED_PROG: &str = "prog";

/// Maps pinned by `dnsfast load` (file names are the lower-cased map
/// names: a pin name cannot hold a `.`); the scratch map is private to the
/// program. The jump table is pinned so that the cache program stays in it
/// while the links outlive the agent (a program array is emptied when its
/// last user reference goes); the answer cache so that the next agent can
/// warm its own from it.
pub(crate) const PINNED_MAPS: [&str; 11] = [
    MAP_PATTERNS,
    MAP_PATTERN_DEPTHS,
    MAP_PATTERN_TAILS,
    MAP_COUNTERS,
    MAP_CONFIG,
    MAP_SERVER_ADDRS,
    MAP_TLDS,
    MAP_NAMESPACES,
    MAP_JUMPS,
    MAP_LEASE,
    MAP_ANSWERS,
];

/// Where pinned links live under the pin directory, one per interface.
pub(crate) const LINKS_DIR: &str = "links";

/// The pin of map `name` under `pin_dir`.
pub(crate) fn map_pin(pin_dir: &Path, name: &str) -> PathBuf {
    pin_dir.join(name.to_ascii_lowercase())
}

/// The pinned main program under `pin_dir`.
pub fn prog_pin(pin_dir: &Path) -> PathBuf {
    pin_dir.join(PINNED_PROG)
}

/// The directory of pinned links under `pin_dir`.
pub(crate) fn links_dir(pin_dir: &Path) -> PathBuf {
    pin_dir.join(LINKS_DIR)
}

/// The control socket of the agent pinning in `pin_dir`: the pin dir's
/// path below /sys/fs/bpf (or its whole path elsewhere), `/` written as
/// `--`: `/sys/fs/bpf/dnsfast` → `/run/dnsfast/dnsfast.sock`. Two agents
/// with different pin dirs never share a socket.
pub(crate) fn control_socket(pin_dir: &Path) -> PathBuf {
    let rel = pin_dir.strip_prefix(BPFFS_ROOT).unwrap_or(pin_dir);
    let name: Vec<String> = rel
        .components()
        .filter_map(|c| match c {
            Component::Normal(s) => Some(s.to_string_lossy().into_owned()),
            _ => None,
        })
        .collect();
    let name = if name.is_empty() {
        "dnsfast".to_string()
    } else {
        name.join("--")
    };
    Path::new(RUN_DIR).join(format!("{name}.sock"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sockets_follow_the_pin_dir() {
        assert_eq!(
            control_socket(Path::new("/sys/fs/bpf/dnsfast")),
            Path::new("/run/dnsfast/dnsfast.sock")
        );
        assert_eq!(
            control_socket(Path::new("/sys/fs/bpf/dnsfast-test-1/")),
            Path::new("/run/dnsfast/dnsfast-test-1.sock")
        );
        assert_eq!(
            control_socket(Path::new("/sys/fs/bpf/a/dnsfast")),
            Path::new("/run/dnsfast/a--dnsfast.sock")
        );
        assert_eq!(
            control_socket(Path::new("/mnt/bpf/dnsfast")),
            Path::new("/run/dnsfast/mnt--bpf--dnsfast.sock")
        );
    }

    #[test]
    fn pins_are_lower_case_map_names() {
        assert_eq!(
            map_pin(Path::new(PIN_DIR), MAP_PATTERNS),
            Path::new(PIN_DIR).join(MAP_PATTERNS.to_ascii_lowercase())
        );
        assert!(PINNED_MAPS.iter().all(|m| !m.contains('.')));
    }
}
