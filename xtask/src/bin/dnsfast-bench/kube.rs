//! From the Kubernetes API to the kernel: how long after a Service is
//! created its name stops being NXDOMAIN in the XDP program. A real
//! kube-apiserver and etcd in a lab namespace (the tests' fixture), the
//! agent with `--kubeconfig`, and the pinned program asked through
//! `BPF_PROG_TEST_RUN` every 100 µs while the create is under way.

use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use dnsfast_tests::{
    kube::ApiServer,
    netns::{wait_until, Lab},
    pkt::{frame, Wrap, Q},
};
use hickory_proto::rr::RecordType;

const XDP_PASS: u32 = 2;
const XDP_TX: u32 = 3;

pub fn run(bin: &str, creates: usize) -> Result<()> {
    let mut lab = Lab::new();
    let cli = lab.add_ns("bkc", None)?;
    let node = lab.add_ns("bkn", None)?;
    let (_, node_if) = lab.veth(&cli, &["10.88.0.2/24"], &node, &["10.88.0.1/24"])?;
    let tmp = std::env::temp_dir().join(format!("dnsfast-bench-{node}"));
    std::fs::create_dir_all(&tmp)?;
    let api = ApiServer::start(&mut lab, &node, &tmp.join("api"))?;
    api.create_namespace(&lab, "bench")?;
    let cfg = tmp.join("dnsfast.toml");
    std::fs::write(
        &cfg,
        "[auto]\ncluster-domain = \"cluster.local\"\nsearch = []\n[kubernetes]\nenabled = true\n",
    )?;
    let pins = std::path::PathBuf::from(format!("/sys/fs/bpf/dnsfast-bench-{node}"));
    lab.spawn(
        &node,
        bin,
        &[
            "load",
            "--iface",
            &node_if,
            "--mode",
            "skb",
            "--no-forward",
            "--pin-dir",
            pins.to_str().unwrap(),
            "--config",
            cfg.to_str().unwrap(),
            "--kubeconfig",
            api.kubeconfig().to_str().unwrap(),
        ],
        tmp.join("agent.log").to_str().unwrap(),
    )?;
    let synced = wait_until(Duration::from_secs(30), || {
        std::process::Command::new(bin)
            .args(["status", "--json", "--pin-dir"])
            .arg(&pins)
            .output()
            .ok()
            .and_then(|o| serde_json::from_slice::<serde_json::Value>(&o.stdout).ok())
            .is_some_and(|v| v["kubernetes"]["synced"] == true)
    });
    if !synced {
        bail!("the agent did not list the API; see {}", tmp.display());
    }
    let prog = dnsfast::paths::prog_pin(&pins);
    let (mut from_start, mut from_return) = (vec![], vec![]);
    for i in 0..creates {
        let name = format!("s{i}.bench.svc.cluster.local");
        let f = frame(&Wrap::v4(), &Q::new(&name, RecordType::A).bytes());
        let (v, _) = dnsfast::dataplane::test_run_pinned(&prog, &f)?;
        if v != XDP_TX {
            bail!("{name} was not NXDOMAIN before its Service existed (verdict {v})");
        }
        let t0 = Instant::now();
        api.create_service(&lab, "bench", &format!("s{i}"), "ClusterIP")?;
        let t1 = Instant::now();
        let deadline = t0 + Duration::from_secs(10);
        loop {
            let (v, _) = dnsfast::dataplane::test_run_pinned(&prog, &f)?;
            if v == XDP_PASS {
                break;
            }
            if Instant::now() > deadline {
                bail!("{name} still NXDOMAIN 10 s after its Service was created");
            }
            std::thread::sleep(Duration::from_micros(100));
        }
        let t2 = Instant::now();
        from_start.push(t2.duration_since(t0));
        from_return.push(t2.saturating_duration_since(t1));
    }
    let stat = |v: &mut Vec<Duration>| {
        v.sort();
        let q = |p: f64| v[((v.len() - 1) as f64 * p).round() as usize].as_secs_f64() * 1e3;
        (q(0.5), q(0.99), q(1.0))
    };
    let (s50, s99, smax) = stat(&mut from_start);
    let (r50, r99, rmax) = stat(&mut from_return);
    println!(
        "\n== Kubernetes API -> kernel: {creates} Services created one after the other (curl from \
         the node namespace), each polled in the pinned program every 100 us"
    );
    println!(
        "from the create request's start (curl, API, etcd, watch, table write): \
         p50 {s50:.1} ms, p99 {s99:.1} ms, max {smax:.1} ms"
    );
    println!(
        "from the create call's return (the watch and the table write):          \
         p50 {r50:.1} ms, p99 {r99:.1} ms, max {rmax:.1} ms"
    );
    crate::history::note("k8s_event", format!("{r99:.1} ms"));
    let _ = std::fs::remove_dir_all(&tmp).context("removing the bench's files");
    Ok(())
}
