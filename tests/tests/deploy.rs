//! Shipping it: the `deploy/` manifests against the Kubernetes schemas
//! (offline, kubernetes-validate), the example configs, and the container
//! image built with buildah and run with podman in a lab namespace.

use std::{
    path::{Path, PathBuf},
    process::{Command, Output},
    time::Duration,
};

use dnsfast_tests::{
    dnsfast_bin,
    netns::{unique, wait_until, Lab},
    require_root,
};

/// Where `cargo xtask setup` installs the pinned Python tools.
const PY_DIR: &str = "/opt/dnsfast-tools/python";
const K8S_VERSION: &str = "1.31.0";

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn deploy() -> PathBuf {
    root().join("deploy")
}

fn validate(file: &Path) -> Output {
    Command::new("/usr/bin/python3")
        .args(["-m", "kubernetes_validate", "-k", K8S_VERSION, "--strict"])
        .arg(file)
        .env("PYTHONPATH", PY_DIR)
        .output()
        .unwrap()
}

fn have_validator() -> bool {
    let ok = Command::new("/usr/bin/python3")
        .args(["-c", "import kubernetes_validate"])
        .env("PYTHONPATH", PY_DIR)
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok {
        if std::env::var("CI").is_ok_and(|v| v == "true") {
            panic!("kubernetes-validate is missing in {PY_DIR}; `cargo xtask setup` installs it");
        }
        eprintln!(
            "SKIPPED manifest validation: kubernetes-validate missing (run `cargo xtask setup`)"
        );
    }
    ok
}

fn manifests() -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(deploy())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            p.extension().is_some_and(|e| e == "yaml")
                && p.file_name().is_some_and(|n| n != "kustomization.yaml")
        })
        .collect();
    v.sort();
    v
}

#[test]
fn manifests_validate_against_the_kubernetes_schemas() {
    if !have_validator() {
        return;
    }
    let files = manifests();
    assert!(files.len() >= 2, "{files:?}");
    for f in &files {
        let o = validate(f);
        assert!(
            o.status.success(),
            "{}: {}{}",
            f.display(),
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
    }
    // The validator is live: a misspelt field fails.
    let ds = std::fs::read_to_string(deploy().join("daemonset.yaml")).unwrap();
    let bad = std::env::temp_dir().join(format!("dnsfast-bad-{}.yaml", std::process::id()));
    std::fs::write(&bad, ds.replace("hostNetwork:", "hostNetwrk:")).unwrap();
    let o = validate(&bad);
    let _ = std::fs::remove_file(&bad);
    assert!(!o.status.success(), "a misspelt field passed");

    // The kustomization lists exactly the manifests, and renders (with
    // kubectl where there is one) into manifests that validate.
    let k = std::fs::read_to_string(deploy().join("kustomization.yaml")).unwrap();
    let listed: Vec<&str> = k
        .lines()
        .filter_map(|l| l.trim().strip_prefix("- "))
        .collect();
    let names: Vec<String> = files
        .iter()
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    assert_eq!(listed, names, "kustomization resources");
    match Command::new("kubectl")
        .args(["kustomize"])
        .arg(deploy())
        .output()
    {
        Ok(o) if o.status.success() => {
            let out =
                std::env::temp_dir().join(format!("dnsfast-kust-{}.yaml", std::process::id()));
            std::fs::write(&out, &o.stdout).unwrap();
            let v = validate(&out);
            let _ = std::fs::remove_file(&out);
            assert!(v.status.success(), "{}", String::from_utf8_lossy(&v.stdout));
            eprintln!("kubectl kustomize deploy/ renders and validates");
        }
        _ => eprintln!(
            "no kubectl here: checked that the kustomization (resources only) lists every manifest"
        ),
    }
}

/// The ConfigMap carries the node-local example verbatim; every example
/// config validates; the DaemonSet's flags exist; the image pulls nothing.
#[test]
fn configs_and_flags_in_the_manifests_are_real() {
    let cm = std::fs::read_to_string(deploy().join("configmap.yaml")).unwrap();
    let body: String = cm
        .split("dnsfast.toml: |\n")
        .nth(1)
        .unwrap()
        .lines()
        .map(|l| l.strip_prefix("    ").unwrap_or(l))
        .map(|l| format!("{l}\n"))
        .collect();
    let example = std::fs::read_to_string(deploy().join("examples/node-local.toml")).unwrap();
    assert_eq!(
        body, example,
        "configmap.yaml drifted from examples/node-local.toml"
    );
    for e in std::fs::read_dir(deploy().join("examples")).unwrap() {
        let p = e.unwrap().path();
        let o = Command::new(dnsfast_bin())
            .arg("check-config")
            .arg(&p)
            .output()
            .unwrap();
        assert!(
            o.status.success(),
            "{}: {}",
            p.display(),
            String::from_utf8_lossy(&o.stderr)
        );
    }
    let help = Command::new(dnsfast_bin())
        .args(["load", "--help"])
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&help.stdout);
    let ds = std::fs::read_to_string(deploy().join("daemonset.yaml")).unwrap();
    let flags: Vec<&str> = ds
        .lines()
        .filter_map(|l| l.trim().strip_prefix("- --"))
        .map(|f| f.split('=').next().unwrap())
        .collect();
    assert!(flags.contains(&"keep-attached"), "{flags:?}");
    for f in flags {
        assert!(
            help.contains(&format!("--{f}")),
            "dnsfast load has no --{f}"
        );
    }
    let cf = std::fs::read_to_string(root().join("Containerfile")).unwrap();
    let froms: Vec<&str> = cf.lines().filter(|l| l.starts_with("FROM")).collect();
    assert_eq!(froms, ["FROM scratch"]);
}

/// The DaemonSet's memory limit is what `check-config` derives from the
/// ConfigMap's config (kernel maps, cache bytes, upstream queries, TCP
/// buffers and a base), rounded up: an agent that stays within its
/// config's bounds is never OOM-killed (tests/hostile.rs runs the attacks
/// under that limit).
#[test]
fn the_memory_limit_is_derived_from_the_config() {
    let o = Command::new(dnsfast_bin())
        .arg("check-config")
        .arg(deploy().join("examples/node-local.toml"))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&o.stdout);
    let need: u64 = text
        .split("a limit of at least ")
        .nth(1)
        .and_then(|s| s.split("Mi").next())
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no limit in check-config's output:\n{text}"));
    let ds = std::fs::read_to_string(deploy().join("daemonset.yaml")).unwrap();
    let limits = ds.split("limits:").nth(1).expect("a limits block");
    let have: u64 = limits
        .lines()
        .find_map(|l| l.trim().strip_prefix("memory: "))
        .and_then(|m| m.strip_suffix("Mi"))
        .and_then(|m| m.parse().ok())
        .expect("limits.memory in Mi");
    assert!(
        have >= need && have <= need + 16,
        "daemonset.yaml limits memory to {have}Mi; check-config derives {need}Mi from the ConfigMap's config"
    );
}

/// podman as it runs here: runc, cgroupfs, and no default ulimits (no
/// CAP_SYS_RESOURCE on this machine).
fn podman(conf: &Path) -> Command {
    let mut c = Command::new("podman");
    c.args(["--runtime", "runc", "--cgroup-manager", "cgroupfs"])
        .env("CONTAINERS_CONF", conf);
    c
}

/// Removes the test's container and image, whatever happens.
struct Cleanup {
    conf: PathBuf,
    container: String,
    image: String,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        let _ = podman(&self.conf)
            .args(["rm", "-f", "-t", "5", &self.container])
            .output();
        let _ = podman(&self.conf).args(["rmi", "-f", &self.image]).output();
        if let Some(dir) = self.conf.parent() {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

/// The image, built with buildah here, runs the agent under podman in a lab
/// namespace with only the DaemonSet's capabilities: a pod namespace gets
/// NXDOMAIN for artifacts (kernel) and real answers (forwarder); SIGTERM to
/// the container leaves nothing attached.
#[test]
fn the_image_serves_a_pod_namespace_and_detaches_on_sigterm() {
    require_root!();
    let Some(ctx) = std::env::var_os("DNSFAST_IMAGE_CONTEXT") else {
        if std::env::var("CI").is_ok_and(|v| v == "true") {
            panic!("DNSFAST_IMAGE_CONTEXT unset: run the suite with `cargo xtask test`");
        }
        eprintln!("SKIPPED image test: no image context (`cargo xtask test` makes one)");
        return;
    };
    let tmp = std::env::temp_dir().join(unique("dnsfast-image-"));
    std::fs::create_dir_all(&tmp).unwrap();
    let conf = tmp.join("containers.conf");
    std::fs::write(&conf, "[containers]\ndefault_ulimits = []\n").unwrap();
    let tag = format!("localhost/dnsfast-test:{}", unique("t"));
    let name = unique("dnsfast-test-");
    let _cleanup = Cleanup {
        conf: conf.clone(),
        container: name.clone(),
        image: tag.clone(),
    };
    let b = Command::new("buildah")
        .args([
            "bud",
            "--layers=false",
            "-q",
            "-f",
            "Containerfile",
            "-t",
            &tag,
        ])
        .arg(&ctx)
        .output()
        .unwrap();
    assert!(
        b.status.success(),
        "buildah: {}",
        String::from_utf8_lossy(&b.stderr)
    );
    let size = Command::new("buildah")
        .args(["images", "--noheading", "--format", "{{.Size}}", &tag])
        .output()
        .unwrap();
    eprintln!(
        "image {tag}: {}",
        String::from_utf8_lossy(&size.stdout).trim()
    );

    // Can this machine run containers at all?
    let probe = podman(&conf)
        .args(["run", "--rm", "--network", "none", &tag, "--version"])
        .output()
        .unwrap();
    if !probe.status.success() {
        eprintln!(
            "SKIPPED the image run: the container runtime cannot start here: {}",
            String::from_utf8_lossy(&probe.stderr)
        );
        return;
    }
    assert!(String::from_utf8_lossy(&probe.stdout).starts_with("dnsfast "));

    let mut lab = Lab::new();
    let pod = lab.add_ns("dip", None).unwrap();
    let node = lab.add_ns("din", None).unwrap();
    let (_, node_if) = lab
        .veth(&pod, &["10.81.0.2/24"], &node, &["10.81.0.1/24"])
        .unwrap();
    lab.dnsmasq_answering_all(
        &node,
        5300,
        "192.0.2.99",
        tmp.join("dnsmasq.log").to_str().unwrap(),
    )
    .unwrap();
    let cfg_dir = tmp.join("config");
    std::fs::create_dir_all(&cfg_dir).unwrap();
    std::fs::write(
        cfg_dir.join("dnsfast.toml"),
        "[auto]\ncluster-domain = \"cluster.local\"\nnamespaces = [\"default\"]\n\
         search = [\"us-west-2.compute.internal\"]\n",
    )
    .unwrap();
    let pins = format!("/sys/fs/bpf/dnsfast-test-{node}");
    std::fs::create_dir_all("/run/dnsfast").unwrap();
    let mut run = podman(&conf);
    run.args(["run", "-d", "--name", &name])
        .arg(format!("--network=ns:/run/netns/{node}"))
        .args(["--cap-drop", "all"])
        // As the DaemonSet: podman's default seccomp profile allows bpf(2)
        // only with CAP_SYS_ADMIN.
        .args(["--security-opt", "seccomp=unconfined"])
        .args([
            "--cap-add",
            "CAP_BPF,CAP_PERFMON,CAP_NET_ADMIN,CAP_NET_BIND_SERVICE",
        ])
        .args([
            "--read-only",
            "-v",
            "/sys/fs/bpf:/sys/fs/bpf",
            "-v",
            "/run/dnsfast:/run/dnsfast",
        ])
        .arg("-v")
        .arg(format!("{}:/etc/dnsfast:ro", cfg_dir.display()))
        .arg(&tag)
        .args(["load", "--iface", &node_if, "--mode", "skb"])
        .args([
            "--config",
            "/etc/dnsfast/dnsfast.toml",
            "--listen",
            "10.81.0.1",
        ])
        .args([
            "--server",
            "127.0.0.1#5300",
            "--no-resolv",
            "--pin-dir",
            &pins,
        ]);
    let run = run.output().unwrap();
    assert!(
        run.status.success(),
        "podman run: {}",
        String::from_utf8_lossy(&run.stderr)
    );
    let logs = || {
        let o = podman(&conf).args(["logs", &name]).output().unwrap();
        format!(
            "{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        )
    };
    let ready = wait_until(Duration::from_secs(30), || {
        Command::new(dnsfast_bin())
            .args(["status", "--json", "--pin-dir", &pins])
            .output()
            .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("\"ready\":true"))
    });
    assert!(
        ready,
        "the containerized agent did not come up:\n{}",
        logs()
    );

    let dig = |name: &str| {
        let o = lab
            .exec(&pod, "dig", &["+tries=1", "+time=3", "@10.81.0.1", name])
            .unwrap();
        String::from_utf8_lossy(&o.stdout).into_owned()
    };
    let artifact = dig("api.github.com.us-west-2.compute.internal");
    assert!(artifact.contains("status: NXDOMAIN"), "{artifact}");
    let real = dig("api.github.com");
    assert!(
        real.contains("status: NOERROR") && real.contains("192.0.2.99"),
        "{real}"
    );
    let stats = Command::new(dnsfast_bin())
        .args(["stats", "--json", "--pin-dir", &pins])
        .output()
        .unwrap();
    let stats = String::from_utf8_lossy(&stats.stdout);
    assert!(stats.contains("\"answered_nxdomain\":1"), "{stats}");

    // SIGTERM to the container: the agent detaches and unpins.
    let stop = podman(&conf)
        .args(["stop", "-t", "10", &name])
        .output()
        .unwrap();
    assert!(
        stop.status.success(),
        "{}",
        String::from_utf8_lossy(&stop.stderr)
    );
    let code = podman(&conf)
        .args(["inspect", "--format", "{{.State.ExitCode}}", &name])
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&code.stdout).trim(),
        "0",
        "{}",
        logs()
    );
    let link = lab
        .exec_ok(&node, "ip", &["-d", "link", "show", "dev", &node_if])
        .unwrap();
    assert!(
        !link.contains("prog/xdp"),
        "still attached after SIGTERM: {link}"
    );
    assert!(!Path::new(&pins).exists(), "pins left behind");
    assert!(logs().contains("SIGTERM: shutting down"), "{}", logs());
    let after = dig("api.github.com.us-west-2.compute.internal");
    assert!(
        !after.contains("NXDOMAIN"),
        "something still answers: {after}"
    );
}
