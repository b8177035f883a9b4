//! `cargo xtask setup|build|test|bench|demo`.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};

mod image;
mod kernels;

/// Where `setup` installs bpf-linker: outside the clone, so it survives
/// fresh checkouts and CI runs on the same machine.
const TOOLS_ROOT: &str = "/opt/dnsfast-tools";
const BPF_LINKER_VERSION: &str = "0.13.0";
const LLVM_PREFIX: &str = "/usr/lib/llvm-22";

/// Python packages (from PyPI, pinned) for the tests, installed under
/// TOOLS_ROOT/python for Debian's python3 (PYTHONPATH), apart from any
/// other Python on the machine.
pub const PY_PACKAGES: &[&str] = &["kubernetes-validate==1.31.0"];
pub const PY_DIR: &str = "/opt/dnsfast-tools/python";

/// Debian packages and what they are for.
const APT_PACKAGES: &[(&str, &str)] = &[
    ("rustc-web", "Debian's rustc, which builds the eBPF crate"),
    (
        "libstd-rust-web-dev-bpf",
        "prebuilt core for bpfel-unknown-none",
    ),
    ("llvm-22-dev", "LLVM that bpf-linker links against"),
    (
        "bpftool",
        "inspecting programs and pinned maps (tests read counters with it)",
    ),
    (
        "bind9-dnsutils",
        "dig, the DNS client of the end-to-end tests",
    ),
    (
        "dnsmasq-base",
        "the DNS server behind dnsfast in tests, demo and bench",
    ),
    ("unbound", "the second peer of the benchmark"),
    ("dnsperf", "load generator of the benchmark"),
    ("iproute2", "network namespaces and veths"),
    ("util-linux", "nsenter"),
    (
        "musl-tools",
        "musl-gcc: the musl stub resolver of the auto-mode tests",
    ),
    ("golang-go", "Go's pure resolver in the auto-mode tests"),
    (
        "buildah",
        "builds the container image (cargo xtask image, the image test)",
    ),
    (
        "podman",
        "runs the image in a lab namespace in the image test",
    ),
    ("runc", "the OCI runtime podman uses here"),
    (
        "python3-pip",
        "installs kubernetes-validate for the manifest test",
    ),
    (
        "python3-prometheus-client",
        "the Prometheus text parser that checks /metrics in the live-ops tests",
    ),
    (
        "publicsuffix",
        "the Public Suffix List that `cargo xtask update-tlds` reads",
    ),
    (
        "etcd-server",
        "the store of the kube-apiserver the Kubernetes-API tests run",
    ),
    (
        "curl",
        "the Kubernetes-API tests make and delete objects with it",
    ),
    ("openssl", "service-account keys of the test kube-apiserver"),
    (
        "dpkg-dev",
        "dpkg-source, to unpack Debian's kubernetes source for the kube-apiserver build",
    ),
];

/// The kube-apiserver the Kubernetes-API tests run, built from Debian's
/// source package by `xtask/scripts/kube-apiserver.sh` into a cache outside
/// the clone (about 8.5 minutes cold on two cores; rebuilt only when
/// missing).
const KUBE_CACHE: &str = "/var/cache/dnsfast-kube-apiserver";
const KUBE_VERSION: &str = "v1.20.2";

#[derive(Parser)]
#[command(about = "dnsfast development tasks")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install what is missing (apt packages, bpf-linker); idempotent.
    Setup,
    /// Build one release `dnsfast` binary with the XDP program embedded.
    Build,
    /// Run the whole suite: fmt, clippy, unit, kernel and end-to-end tests.
    Test,
    /// Verify and run the XDP program's packet table on older kernels under QEMU.
    TestKernels,
    /// Measure ns/packet (BPF_PROG_TEST_RUN) and qps against dnsmasq/unbound.
    Bench {
        /// Extra arguments for the bench runner (see its --help).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Run a small lab: a pod's lookups with and without dnsfast.
    Demo,
    /// Build the container image (FROM scratch, one static binary) with
    /// buildah, as localhost/dnsfast:VERSION.
    Image,
    /// Regenerate dnsfast/data/tlds.txt (the built-in TLD list) from a
    /// Public Suffix List file (default: Debian's, package publicsuffix).
    UpdateTlds {
        #[arg(default_value = "/usr/share/publicsuffix/public_suffix_list.dat")]
        psl: PathBuf,
    },
}

fn main() {
    let cli = Cli::parse();
    let r = match cli.task {
        Task::Setup => setup(),
        Task::Build => build().map(|p| println!("built {}", p.display())),
        Task::Test => test(),
        Task::TestKernels => kernels::test_kernels(&root()),
        Task::Bench { args } => bench(&args),
        Task::Demo => demo(),
        Task::Image => setup().and_then(|_| image::image(&root())),
        Task::UpdateTlds { psl } => update_tlds(&psl),
    };
    if let Err(e) = r {
        eprintln!("xtask: error: {e:#}");
        std::process::exit(1);
    }
}

fn update_tlds(psl: &Path) -> Result<()> {
    let out = cargo()
        .args(["run", "-q", "-p", "dnsfast", "--", "tld-list"])
        .arg(psl)
        .output()
        .context("running dnsfast tld-list")?;
    if !out.status.success() {
        bail!("{}", String::from_utf8_lossy(&out.stderr));
    }
    let dest = root().join("dnsfast/data/tlds.txt");
    std::fs::write(&dest, &out.stdout).with_context(|| format!("writing {}", dest.display()))?;
    println!("wrote {}", dest.display());
    Ok(())
}

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf()
}

fn is_root() -> bool {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/proc/self")
        .map(|m| m.uid() == 0)
        .unwrap_or(false)
}

/// A target directory outside the clone, under `cache`, for builds CI's
/// fresh clones should not redo from scratch. One per checkout: the build
/// script that embeds the XDP object watches its own checkout's sources,
/// and a target directory shared with another checkout would keep
/// embedding that one's object.
pub(crate) fn cached_target(cache: &str, name: &str) -> PathBuf {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    root()
        .canonicalize()
        .unwrap_or_else(|_| root())
        .hash(&mut h);
    Path::new(cache).join(format!("{name}-{:012x}", h.finish() & 0xffff_ffff_ffff))
}

pub(crate) fn cargo() -> Command {
    let mut c = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    c.current_dir(root());
    c
}

pub(crate) fn run(cmd: &mut Command) -> Result<()> {
    let shown = format!("{cmd:?}");
    let st = cmd.status().with_context(|| format!("starting {shown}"))?;
    if !st.success() {
        bail!("{shown} failed ({st})");
    }
    Ok(())
}

fn apt_missing() -> Vec<&'static str> {
    APT_PACKAGES
        .iter()
        .filter(|(p, _)| {
            let out = Command::new("dpkg-query")
                .args(["-W", "-f=${Status}", p])
                .output();
            !matches!(out, Ok(o) if String::from_utf8_lossy(&o.stdout).contains("install ok installed"))
        })
        .map(|(p, _)| *p)
        .collect()
}

fn bpf_linker() -> PathBuf {
    Path::new(TOOLS_ROOT).join("bin/bpf-linker")
}

fn bpf_linker_ok() -> bool {
    Command::new(bpf_linker())
        .arg("--version")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains(BPF_LINKER_VERSION))
}

fn kube_apiserver_ok() -> bool {
    Command::new(Path::new(KUBE_CACHE).join("bin/kube-apiserver"))
        .arg("--version")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains(KUBE_VERSION))
}

/// Whether Debian's python3 imports the pinned Python packages.
fn py_ok() -> bool {
    Command::new("/usr/bin/python3")
        .args([
            "-c",
            "import kubernetes_validate, importlib.metadata as m; \
             assert m.version('kubernetes-validate') == '1.31.0'",
        ])
        .env("PYTHONPATH", PY_DIR)
        .output()
        .is_ok_and(|o| o.status.success())
}

/// Installs what is missing, or says exactly what to install and stops.
fn setup() -> Result<()> {
    let missing = apt_missing();
    let linker = bpf_linker_ok();
    let py = py_ok();
    let kube = kube_apiserver_ok();
    if missing.is_empty() && linker && py && kube {
        println!("setup: everything is installed");
        return Ok(());
    }
    let has_apt = Path::new("/usr/bin/apt-get").exists();
    if !is_root() || !has_apt {
        let why = if has_apt { "not root" } else { "no apt-get" };
        let mut msg = format!("setup: cannot install ({why}). Install these, then rerun:\n");
        for p in &missing {
            let what = APT_PACKAGES
                .iter()
                .find(|(n, _)| n == p)
                .map(|(_, w)| *w)
                .unwrap_or("");
            msg.push_str(&format!("  apt package {p}  ({what})\n"));
        }
        if !linker {
            msg.push_str(&format!(
                "  LLVM_PREFIX={LLVM_PREFIX} cargo install bpf-linker@{BPF_LINKER_VERSION} --locked \
                 --no-default-features --features llvm-22 --root {TOOLS_ROOT}\n"
            ));
        }
        if !py {
            msg.push_str(&format!(
                "  /usr/bin/python3 -m pip install --target {PY_DIR} {}\n",
                PY_PACKAGES.join(" ")
            ));
        }
        if !kube {
            msg.push_str("  bash xtask/scripts/kube-apiserver.sh   # the test kube-apiserver\n");
        }
        bail!("{msg}");
    }
    if !missing.is_empty() {
        println!("setup: installing {}", missing.join(" "));
        run(Command::new("apt-get").args(["update", "-qq"]))?;
        run(Command::new("apt-get")
            .args(["install", "-y", "-qq", "--no-install-recommends"])
            .args(&missing)
            .env("DEBIAN_FRONTEND", "noninteractive"))?;
    }
    if !linker {
        println!(
            "setup: building bpf-linker {BPF_LINKER_VERSION} against LLVM 22 (about a minute)"
        );
        run(cargo()
            .args([
                "install",
                &format!("bpf-linker@{BPF_LINKER_VERSION}"),
                "--locked",
            ])
            .args([
                "--no-default-features",
                "--features",
                "llvm-22",
                "--root",
                TOOLS_ROOT,
            ])
            .env("LLVM_PREFIX", LLVM_PREFIX))?;
    }
    if !py_ok() {
        println!("setup: installing {} into {PY_DIR}", PY_PACKAGES.join(" "));
        run(Command::new("/usr/bin/python3")
            .args(["-m", "pip", "install", "--quiet", "--target", PY_DIR])
            .args(PY_PACKAGES))?;
    }
    if !kube_apiserver_ok() {
        println!(
            "setup: building the test kube-apiserver {KUBE_VERSION} from Debian's source into \
             {KUBE_CACHE} (about 8.5 minutes the first time, kept after)"
        );
        run(Command::new("bash")
            .arg(root().join("xtask/scripts/kube-apiserver.sh"))
            .env("D", KUBE_CACHE))?;
    }
    println!("setup: done");
    Ok(())
}

fn build() -> Result<PathBuf> {
    setup()?;
    run(cargo().args(["build", "--release", "-p", "dnsfast"]))?;
    Ok(root().join("target/release/dnsfast"))
}

fn test() -> Result<()> {
    setup()?;
    let ci = std::env::var("CI").is_ok_and(|v| v == "true");
    if !is_root() {
        if ci {
            bail!("CI=true but not root: the kernel and end-to-end tests cannot run");
        }
        eprintln!("test: not root; kernel and end-to-end tests will SKIP (run with sudo for the full suite)");
    }
    run(cargo().args(["fmt", "--all", "--", "--check"]))?;
    // Default members only: the eBPF crate builds for its own target (build.rs).
    run(cargo().args(["clippy", "--all-targets", "--", "-D", "warnings"]))?;
    // The bench and demo binaries (feature `lab`) too.
    run(cargo().args([
        "clippy",
        "-p",
        "xtask",
        "--features",
        "lab",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ]))?;
    // The feature-gated eBPF logging build must keep compiling too.
    run(cargo().args([
        "clippy",
        "-p",
        "dnsfast",
        "--features",
        "ebpf-log",
        "--",
        "-D",
        "warnings",
    ]))?;
    run(cargo().args(["build", "-p", "dnsfast"]))?;
    let bin = root().join("target/debug/dnsfast");
    // The image test builds the image itself, from this context.
    let image_ctx = image::context(&root())?;
    let tmp = fresh_tmp("test-tmp")?;
    run(cargo()
        .arg("test")
        .env("TMPDIR", &tmp)
        .env("DNSFAST_BIN", &bin)
        // The hostile and upgrade suites measure service under load: the
        // binary that ships, not the debug build.
        .env("DNSFAST_RELEASE_BIN", image_ctx.join("dnsfast"))
        .env("DNSFAST_IMAGE_CONTEXT", &image_ctx))?;
    // The lab binaries' own unit tests (the bench's history table).
    run(cargo().args(["test", "-p", "xtask", "--features", "lab", "--bins"]))?;
    if is_root() {
        kernels::test_kernels(&root())?;
    }
    Ok(())
}

/// An empty `target/<name>`, for a task's logs, configs and query files
/// instead of /tmp: kept after a run for a look at what went wrong,
/// replaced by the next run of the same task.
fn fresh_tmp(name: &str) -> Result<PathBuf> {
    let tmp = root().join("target").join(name);
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp).with_context(|| format!("clearing {}", tmp.display()))?;
    }
    std::fs::create_dir_all(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
    Ok(tmp)
}

/// Builds one of the lab binaries (bench, demo): they link the agent, so
/// they need the toolchain `setup` installs, and live behind a feature.
const LAB_BUILD: &[&str] = &[
    "build",
    "--release",
    "-p",
    "xtask",
    "--features",
    "lab",
    "--bin",
];

fn bench(args: &[String]) -> Result<()> {
    setup()?;
    if !is_root() {
        bail!("bench needs root (BPF_PROG_TEST_RUN and network namespaces)");
    }
    run(cargo().args(["build", "--release", "-p", "dnsfast"]))?;
    run(cargo().args(LAB_BUILD).arg("dnsfast-bench"))?;
    // The hostile-client part's victim, attacker and upstream.
    run(cargo().args(["build", "--release", "-p", "dnsfast-tests", "--bins"]))?;
    let dir = root().join("target/release");
    run(Command::new(dir.join("dnsfast-bench"))
        .args(args)
        .env("TMPDIR", fresh_tmp("bench-tmp")?)
        .env("DNSFAST_BIN", dir.join("dnsfast"))
        .env("DNSFAST_ATTACK", dir.join("dnsfast-attack"))
        .env("DNSFAST_TESTDNS", dir.join("dnsfast-testdns")))
}

fn demo() -> Result<()> {
    setup()?;
    if !is_root() {
        bail!("demo needs root (network namespaces and XDP)");
    }
    run(cargo().args(["build", "--release", "-p", "dnsfast"]))?;
    run(cargo().args(LAB_BUILD).arg("dnsfast-demo"))?;
    let dir = root().join("target/release");
    run(Command::new(dir.join("dnsfast-demo"))
        .env("TMPDIR", fresh_tmp("demo-tmp")?)
        .env("DNSFAST_BIN", dir.join("dnsfast")))
}
