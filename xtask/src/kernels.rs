//! `cargo xtask test-kernels`: boots Debian kernels older than the host's
//! under QEMU (software emulation; KVM does not work here) and runs the XDP
//! packet table (`tests/tests/xdp_table.rs`) and the answer-cache tests
//! (`tests/tests/xdp_cache.rs`) inside: load and verification of every
//! program exactly as the agent does it, then every BPF_PROG_TEST_RUN case
//! with the same expected verdicts and replies.
//!
//! Kernel, QEMU and busybox packages are downloaded with `apt-get download`
//! and unpacked into a cache outside the clone, once. QEMU is not installed:
//! `apt-get install qemu-system-x86` would remove a package CI needs.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, Context, Result};

use crate::{cargo, run};

/// One line per kernel: the Debian package and the release it boots.
const KERNELS: &[(&str, &str)] = &[(
    "linux-image-6.1.0-50-cloud-amd64-unsigned",
    "6.1.0-50-cloud-amd64",
)];

const CACHE: &str = "/var/cache/dnsfast-kernels";
/// QEMU under TCG runs the whole table in about 35 s; this is a safety net.
const GUEST_TIMEOUT_SECS: &str = "300";

pub fn test_kernels(root: &Path) -> Result<()> {
    let cache = Path::new(CACHE);
    let sysroot = cache.join("root");
    std::fs::create_dir_all(&sysroot).with_context(|| format!("creating {CACHE}"))?;
    fetch_qemu(cache, &sysroot)?;
    let bins = build_static(root)?;
    host_costs(&bins.table)?;
    for (pkg, release) in KERNELS {
        let vmlinuz = sysroot.join(format!("boot/vmlinuz-{release}"));
        fetch(cache, &sysroot, pkg, &vmlinuz)?;
        boot(cache, &sysroot, release, &bins)?;
    }
    Ok(())
}

/// Downloads and unpacks `pkg` unless `marker` exists.
fn fetch(cache: &Path, sysroot: &Path, pkg: &str, marker: &Path) -> Result<()> {
    if marker.exists() {
        return Ok(());
    }
    println!("test-kernels: downloading {pkg}");
    let dl = cache.join("debs");
    std::fs::create_dir_all(&dl)?;
    run(Command::new("apt-get")
        .arg("download")
        .arg(pkg)
        .current_dir(&dl))?;
    unpack_all(&dl, sysroot)
}

fn unpack_all(dir: &Path, sysroot: &Path) -> Result<()> {
    for e in std::fs::read_dir(dir)? {
        let p = e?.path();
        if p.extension().is_some_and(|x| x == "deb") {
            run(Command::new("dpkg-deb").arg("-x").arg(&p).arg(sysroot))?;
            std::fs::remove_file(&p)?;
        }
    }
    Ok(())
}

/// QEMU and its libraries, unpacked rather than installed.
fn fetch_qemu(cache: &Path, sysroot: &Path) -> Result<()> {
    fetch(
        cache,
        sysroot,
        "busybox-static",
        &sysroot.join("bin/busybox"),
    )?;
    if qemu(sysroot).exists() {
        return Ok(());
    }
    let sim = Command::new("apt-get")
        .args([
            "install",
            "-s",
            "--no-install-recommends",
            "qemu-system-x86",
        ])
        .output()
        .context("asking apt which packages QEMU needs")?;
    let pkgs: Vec<String> = String::from_utf8_lossy(&sim.stdout)
        .lines()
        .filter_map(|l| l.strip_prefix("Inst "))
        .filter_map(|l| l.split_whitespace().next())
        .map(String::from)
        .collect();
    if pkgs.is_empty() {
        bail!("apt lists no packages for qemu-system-x86 (run apt-get update?)");
    }
    println!("test-kernels: downloading QEMU ({} packages)", pkgs.len());
    let dl = cache.join("debs");
    std::fs::create_dir_all(&dl)?;
    run(Command::new("apt-get")
        .arg("download")
        .args(&pkgs)
        .current_dir(&dl))?;
    unpack_all(&dl, sysroot)
}

fn qemu(sysroot: &Path) -> PathBuf {
    sysroot.join("usr/bin/qemu-system-x86_64")
}

/// The static executables the guest runs.
pub struct Static {
    /// `tests/tests/xdp_table.rs`: the packet table.
    table: PathBuf,
    /// `tests/tests/xdp_cache.rs`: the answer cache.
    cache: PathBuf,
    agent: PathBuf,
}

/// The packet-table and answer-cache tests and the agent as static
/// executables, runnable in a bare initramfs.
fn build_static(root: &Path) -> Result<Static> {
    let target_dir = crate::cached_target(CACHE, "target-static");
    let out = cargo()
        .args([
            "test",
            "--no-run",
            "-p",
            "dnsfast-tests",
            "--test",
            "xdp_table",
            "--test",
            "xdp_cache",
        ])
        .args(["--target", "x86_64-unknown-linux-gnu", "--target-dir"])
        // In the cache, outside the clone: CI's fresh clones then rebuild
        // only dnsfast's own crates, not every dependency.
        .arg(&target_dir)
        .env("RUSTFLAGS", "-C target-feature=+crt-static")
        .output()
        .context("building the static packet-table test")?;
    let err = String::from_utf8_lossy(&out.stderr);
    if !out.status.success() {
        bail!("building the static packet-table test failed:\n{err}");
    }
    let exe = |test: &str| {
        let prefix = format!("Executable tests/{test}.rs (");
        err.lines()
            .find_map(|l| l.trim().strip_prefix(prefix.as_str()))
            .and_then(|l| l.strip_suffix(')'))
            .map(|p| root.join(p))
            .with_context(|| format!("cargo did not name the {test} executable"))
    };
    let (table, cache) = (exe("xdp_table")?, exe("xdp_cache")?);
    run(cargo()
        .args([
            "build",
            "-p",
            "dnsfast",
            "--target",
            "x86_64-unknown-linux-gnu",
            "--target-dir",
        ])
        .arg(&target_dir)
        .env("RUSTFLAGS", "-C target-feature=+crt-static"))?;
    // Cargo prints the tests' paths relative to the workspace when it can.
    Ok(Static {
        table,
        cache,
        agent: target_dir.join("x86_64-unknown-linux-gnu/debug/dnsfast"),
    })
}

/// The host kernel's verifier cost per program, printed next to the guests'.
fn host_costs(table: &Path) -> Result<()> {
    let out = Command::new(table)
        .args(["every_program_verifies", "--nocapture", "--test-threads=1"])
        .output()
        .context("running the packet-table test on the host")?;
    let text = String::from_utf8_lossy(&out.stderr);
    for l in text.lines().filter(|l| l.contains("verified instructions")) {
        println!("{l}");
    }
    if !out.status.success() {
        bail!("the host failed the verifier check:\n{text}");
    }
    Ok(())
}

fn boot(cache: &Path, sysroot: &Path, release: &str, bins: &Static) -> Result<()> {
    let initrd_dir = cache.join(format!("initrd-{release}"));
    let _ = std::fs::remove_dir_all(&initrd_dir);
    for d in ["bin", "proc", "sys", "dev", "tmp", "lib/modules"] {
        std::fs::create_dir_all(initrd_dir.join(d))?;
    }
    std::fs::copy(sysroot.join("bin/busybox"), initrd_dir.join("bin/busybox"))?;
    std::fs::copy(&bins.table, initrd_dir.join("bin/xdp_table"))?;
    std::fs::copy(&bins.cache, initrd_dir.join("bin/xdp_cache"))?;
    std::fs::copy(&bins.agent, initrd_dir.join("bin/dnsfast"))?;
    // Debug builds of static binaries are mostly debug info (hundreds of
    // MB with the Kubernetes client): the guest needs none of it, and an
    // initramfs that size starves its RAM.
    for b in ["xdp_table", "xdp_cache", "dnsfast"] {
        run(Command::new("strip")
            .arg("--strip-debug")
            .arg(initrd_dir.join("bin").join(b)))?;
    }
    let veth = sysroot.join(format!("lib/modules/{release}/kernel/drivers/net/veth.ko"));
    if veth.exists() {
        std::fs::copy(&veth, initrd_dir.join("lib/modules/veth.ko"))?;
    }
    let init = initrd_dir.join("init");
    std::fs::write(&init, INIT)?;
    run(Command::new("chmod").arg("+x").arg(&init))?;
    let initrd = cache.join(format!("initrd-{release}.gz"));
    let pack = format!(
        "cd '{}' && find . | ./bin/busybox cpio -o -H newc 2>/dev/null | gzip -1 > '{}'",
        initrd_dir.display(),
        initrd.display()
    );
    run(Command::new("sh").arg("-c").arg(&pack))?;

    let results = cache.join(format!("results-{release}.txt"));
    let _ = std::fs::remove_file(&results);
    let libs = format!(
        "{}:{}",
        sysroot.join("usr/lib/x86_64-linux-gnu").display(),
        sysroot.join("lib/x86_64-linux-gnu").display()
    );
    println!("test-kernels: booting Linux {release} under QEMU (TCG)");
    let started = std::time::Instant::now();
    let st = Command::new("timeout")
        .arg(GUEST_TIMEOUT_SECS)
        .arg(qemu(sysroot))
        .args(["-accel", "tcg", "-cpu", "max", "-smp", "1", "-m", "1024"])
        .arg("-bios")
        .arg(sysroot.join("usr/share/qemu/qboot.rom"))
        .args(["-nographic", "-no-reboot", "-kernel"])
        .arg(sysroot.join(format!("boot/vmlinuz-{release}")))
        .arg("-initrd")
        .arg(&initrd)
        .args([
            "-append",
            "console=ttyS0 panic=-1 quiet initramfs_async=0",
            "-serial",
            "null",
            "-serial",
        ])
        .arg(format!("file:{}", results.display()))
        .arg("-L")
        .arg(sysroot.join("usr/share/qemu"))
        .arg("-L")
        .arg(sysroot.join("usr/share/seabios"))
        .env("LD_LIBRARY_PATH", libs)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .status()
        .context("starting QEMU")?;
    let out = std::fs::read_to_string(&results).unwrap_or_default();
    let ok = out.contains("\nexit=0")
        && out.contains("\nexit_cache=0")
        && out.contains("test result: ok.")
        && out.contains("\nveth=ok");
    let summary: Vec<&str> = out
        .lines()
        .filter(|l| {
            ["kernel ", "test ", "exit", "verified instructions", "veth"]
                .iter()
                .any(|p| l.starts_with(p))
        })
        .collect();
    println!("{}", summary.join("\n"));
    if !ok {
        let tail: Vec<&str> = out.lines().rev().take(60).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        bail!(
            "the XDP packet table failed on Linux {release} (QEMU {st}); guest output tail:\n{}",
            tail.join("\n")
        );
    }
    println!(
        "test-kernels: Linux {release}: program verified, packet table passed, \
         `dnsfast load` answered a query over a veth ({:.0?})",
        started.elapsed()
    );
    Ok(())
}

/// The guest's /init: mount what the tests need, run the packet table, then
/// `dnsfast load` on a veth in SKB mode and a real query through it, and
/// report on the second serial port before powering off.
///
/// Busybox has no network namespaces here, so the client's side of the veth
/// gets the address and a static ARP entry for the server's: the query then
/// leaves through veth1 and meets the program on veth0's ingress, and the
/// answer comes back the same way.
const INIT: &str = r#"#!/bin/busybox sh
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
mount -t bpf bpf /sys/fs/bpf
[ -f /lib/modules/veth.ko ] && insmod /lib/modules/veth.ko
echo "kernel $(uname -r)" > /dev/ttyS1
cd /tmp
# A large file just unpacked from the initramfs can still be open for
# writing for a moment (the kernel closes it late), and exec then fails
# with ETXTBSY (126): wait until each binary runs, for at most 10 s.
for b in xdp_table xdp_cache dnsfast; do
  n=0; while /bin/$b --help > /dev/null 2>&1; [ $? = 126 ] && [ $n -lt 50 ]; do n=$((n+1)); sleep 0.2; done
done
export DNSFAST_VERIFIER_LOG_LINES=60 RUST_BACKTRACE=0
/bin/xdp_table --test-threads=1 --nocapture > /dev/ttyS1 2>&1
echo "exit=$?" > /dev/ttyS1
/bin/xdp_cache --test-threads=1 > /dev/ttyS1 2>&1
echo "exit_cache=$?" > /dev/ttyS1

ip link set lo up
ip link add type veth
ip link set veth0 up
ip link set veth1 up
ip addr add 10.55.0.2/24 dev veth1
arp -s 10.55.0.1 "$(cat /sys/class/net/veth0/address)" -i veth1
/bin/dnsfast load --no-forward --iface veth0 --mode skb --address=/blocked.test/ > /tmp/agent.log 2>&1 &
agent=$!
i=0; while [ ! -e /sys/fs/bpf/dnsfast/counters ] && [ $i -lt 600 ]; do sleep 0.1; i=$((i+1)); done
answer=$(nslookup -timeout=5 x.blocked.test 10.55.0.1 2>&1)
echo "$answer" > /dev/ttyS1
kill -TERM $agent; wait $agent; status=$?
# Detached: nothing answers any more (nothing listens on 10.55.0.1).
after=$(nslookup -timeout=2 y.blocked.test 10.55.0.1 2>&1)
cat /tmp/agent.log > /dev/ttyS1
if echo "$answer" | grep -q NXDOMAIN && ! echo "$after" | grep -q NXDOMAIN && [ $status = 0 ] && [ ! -e /sys/fs/bpf/dnsfast/counters ]; then
  echo "veth=ok" > /dev/ttyS1
else
  echo "veth=FAILED agent_exit=$status after-unload: $after" > /dev/ttyS1
fi
poweroff -f
"#;
