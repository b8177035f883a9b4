//! The oldest kernel dnsfast supports, checked before anything is loaded so
//! that an old node gets one clear line instead of a verifier failure.

use anyhow::{bail, Context, Result};

/// Linux 6.1: the oldest kernel `cargo xtask test-kernels` verifies the
/// program on and runs the packet table against. The program itself needs
/// BTF-defined maps and read-only global data (5.2), bounded loops (5.3),
/// jmp32 (5.1, `-Ctarget-cpu=v3`), and a verifier that follows its
/// map-memory round trips within the 1M-instruction budget (6.1 walks 42 %).
pub(crate) const MIN_KERNEL: (u32, u32) = (6, 1);

/// `(major, minor)` of a release string such as `6.1.0-50-cloud-amd64`.
pub(crate) fn parse_release(release: &str) -> Option<(u32, u32)> {
    let mut it = release.trim().split(['.', '-']);
    let major = it.next()?.parse().ok()?;
    let minor = it.next()?.parse().ok()?;
    Some((major, minor))
}

pub(crate) fn check_running_kernel() -> Result<()> {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .context("reading /proc/sys/kernel/osrelease")?;
    check(release.trim())
}

pub(crate) fn check(release: &str) -> Result<()> {
    let Some(v) = parse_release(release) else {
        bail!("cannot tell the kernel version from '{release}'");
    };
    if v < MIN_KERNEL {
        bail!(
            "dnsfast needs Linux {}.{} or newer (the oldest kernel its XDP program is verified on); \
             this node runs {release}",
            MIN_KERNEL.0,
            MIN_KERNEL.1
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn releases_parse() {
        assert_eq!(parse_release("6.1.0-50-cloud-amd64"), Some((6, 1)));
        assert_eq!(parse_release("6.18.44-fc-v595\n"), Some((6, 18)));
        assert_eq!(parse_release("5.15.0"), Some((5, 15)));
        assert_eq!(parse_release("garbage"), None);
    }

    #[test]
    fn old_kernels_are_refused_in_one_line() {
        assert!(check("6.1.0-50-cloud-amd64").is_ok());
        assert!(check("6.18.44").is_ok());
        assert!(check("7.0.1").is_ok());
        let e = check("5.15.0-91-generic").unwrap_err().to_string();
        assert_eq!(
            e,
            "dnsfast needs Linux 6.1 or newer (the oldest kernel its XDP program is verified on); \
             this node runs 5.15.0-91-generic"
        );
        assert!(check("6.0.9").is_err());
        assert!(check("x.y").is_err());
    }
}
