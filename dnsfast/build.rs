//! Builds the XDP program (crate `dnsfast-ebpf`) for `bpfel-unknown-none`
//! and hands its path to the agent, which embeds it. One `cargo build`
//! therefore yields one self-contained `dnsfast` binary.
//!
//! The eBPF side needs Debian's `rustc` (it ships a prebuilt `core` for the
//! BPF target) and `bpf-linker`; `cargo xtask setup` installs both. See
//! shared notes in the README ("Toolchain").

use std::{
    env,
    path::{Path, PathBuf},
    process::Command,
};

const BPF_RUSTC: &str = "/usr/bin/rustc";
const TOOLS_BIN: &str = "/opt/dnsfast-tools/bin";

fn main() {
    if let Err(e) = run() {
        // A build script's panic message is the clearest place for this.
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

fn run() -> anyhow::Result<()> {
    let manifest = PathBuf::from(env::var("CARGO_MANIFEST_DIR")?);
    let root = manifest.parent().expect("workspace root").to_path_buf();
    for dir in [
        "dnsfast-ebpf/src",
        "dnsfast-common/src",
        "dnsfast-ebpf/Cargo.toml",
    ] {
        println!("cargo:rerun-if-changed={}", root.join(dir).display());
    }

    let path = format!("{TOOLS_BIN}:{}", env::var("PATH").unwrap_or_default());
    let have_linker = path
        .split(':')
        .any(|d| Path::new(d).join("bpf-linker").is_file());
    let have_core = Path::new("/usr/lib/rustlib/bpfel-unknown-none/lib").is_dir();
    if !have_linker || !Path::new(BPF_RUSTC).is_file() || !have_core {
        anyhow::bail!(
            "the eBPF toolchain is missing (need {BPF_RUSTC} from Debian's rustc-web, \
             libstd-rust-web-dev-bpf and bpf-linker). Run `cargo xtask setup` as root."
        );
    }

    let log = env::var_os("CARGO_FEATURE_EBPF_LOG").is_some();
    let target_dir = root.join(if log {
        "target/ebpf-log"
    } else {
        "target/ebpf"
    });
    let cargo = env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(&root)
        .args(["build", "-p", "dnsfast-ebpf", "--release"])
        .args(["--target", "bpfel-unknown-none", "--target-dir"])
        .arg(&target_dir);
    if log {
        cmd.args(["--features", "log"]);
    }
    // The outer build's compiler settings (rustup's rustc, clippy's wrapper,
    // coverage flags) must not leak into the BPF build.
    for var in [
        "RUSTC_WORKSPACE_WRAPPER",
        "RUSTC_WRAPPER",
        "RUSTFLAGS",
        "CARGO_ENCODED_RUSTFLAGS",
        "CARGO_BUILD_RUSTFLAGS",
        "CARGO_TARGET_DIR",
        "CARGO_BUILD_TARGET",
    ] {
        cmd.env_remove(var);
    }
    for (k, _) in env::vars() {
        if k.starts_with("CARGO_PROFILE_")
            || k.starts_with("CARGO_CFG_")
            || k.starts_with("CARGO_FEATURE_")
        {
            cmd.env_remove(k);
        }
    }
    cmd.env("RUSTC", BPF_RUSTC)
        .env("RUSTC_BOOTSTRAP", "aya_ebpf")
        .env("PATH", &path)
        .env(
            "CARGO_ENCODED_RUSTFLAGS",
            [
                "--cfg=bpf_target_arch=\"x86_64\"",
                "-Cdebuginfo=2",
                "-Clink-arg=--btf",
                "-Cpanic=abort",
                // The scratch buffer is copied 8 bytes at a time at arbitrary
                // offsets. Without this LLVM splits each such access into 8
                // byte loads or stores. x86-64 and arm64 kernels (efficient
                // unaligned access) accept misaligned map-value access.
                "-Ctarget-feature=+allows-misaligned-mem-access",
                // v3: jmp32 and alu32, on every kernel since 5.1.
                "-Ctarget-cpu=v3",
            ]
            .join("\x1f"),
        );
    let status = cmd.status()?;
    if !status.success() {
        anyhow::bail!("building the eBPF program failed ({status})");
    }
    let obj = target_dir.join("bpfel-unknown-none/release/dnsfast");
    let out = PathBuf::from(env::var("OUT_DIR")?).join("dnsfast.bpf.o");
    std::fs::copy(&obj, &out)?;
    println!("cargo:rustc-env=DNSFAST_BPF_OBJ={}", out.display());
    Ok(())
}
