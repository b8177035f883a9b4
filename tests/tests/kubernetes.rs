//! The exact cluster domain against a real Kubernetes API server (etcd
//! and kube-apiserver in the node's namespace, built by `cargo xtask
//! setup`): `dnsfast load --kubeconfig` learns Namespaces and Services,
//! and then a pod's lookups through its search list find every real
//! cluster name — StatefulSet pods of headless Services, SRV names, TLD-named
//! Services and namespaces — while names that do not exist get the
//! kernel's NXDOMAIN. The upstream (dnsmasq) answers every name with an
//! address, so an NXDOMAIN can only come from dnsfast.

use std::{
    path::PathBuf,
    process::Command,
    time::{Duration, Instant},
};

use dnsfast_tests::{
    bpftool_counter, dnsfast_bin,
    kube::ApiServer,
    netns::{wait_until, Lab},
    require_root,
};
use serde_json::Value;

const NODE: &str = "10.86.0.1";
const POD: &str = "10.86.0.2";

struct Cluster {
    lab: Lab,
    api: ApiServer,
    pod: String,
    pins: PathBuf,
    log: PathBuf,
}

impl Cluster {
    fn dig(&self, name: &str, extra: &[&str]) -> String {
        self.lab.dig_rcode(&self.pod, NODE, name, extra)
    }

    fn status(&self) -> Value {
        let out = Command::new(dnsfast_bin())
            .args(["status", "--json", "--pin-dir"])
            .arg(&self.pins)
            .output()
            .unwrap();
        serde_json::from_slice(&out.stdout).unwrap_or(Value::Null)
    }

    fn synced(&self) -> bool {
        self.status()["kubernetes"]["synced"] == Value::Bool(true)
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn nxdomains(&self) -> u64 {
        bpftool_counter(&self.pins, "answered_nxdomain")
    }
}

/// A pod and a node namespace; on the node the API server, dnsmasq
/// answering everything on :5300, and `dnsfast load --kubeconfig`.
fn cluster(stale_after: f64) -> Cluster {
    let mut lab = Lab::new();
    let search = "default.svc.cluster.local svc.cluster.local cluster.local \
                  us-west-2.compute.internal compute.internal";
    let resolv =
        format!("nameserver {NODE}\nsearch {search}\noptions ndots:5 timeout:2 attempts:1\n");
    let (pod, node, node_if) = lab
        .client_and_node(("kpod", "knode"), POD, NODE, Some(&resolv))
        .unwrap();
    let tmp = std::env::temp_dir().join(format!("dnsfast-{node}"));
    std::fs::create_dir_all(&tmp).unwrap();
    let api = ApiServer::start(&mut lab, &node, &tmp.join("api")).unwrap();
    for ns in ["default", "kube-system", "dev"] {
        // `default` and `kube-system` the API server makes itself.
        let _ = api.create_namespace(&lab, ns);
    }
    for (ns, svc, kind) in [
        ("default", "app", "ClusterIP"),
        ("default", "store", "Headless"),
        ("default", "data", "ClusterIP"),
        ("default", "ext", "ExternalName"),
        ("kube-system", "search", "Headless"),
        ("dev", "web", "ClusterIP"),
    ] {
        api.create_service(&lab, ns, svc, kind).unwrap();
    }
    lab.dnsmasq_answering_all(
        &node,
        5300,
        "192.0.2.99",
        tmp.join("dnsmasq.log").to_str().unwrap(),
    )
    .unwrap();
    let cfg = tmp.join("dnsfast.toml");
    std::fs::write(
        &cfg,
        format!(
            "[auto]\ncluster-domain = \"cluster.local\"\n\
             search = [\"us-west-2.compute.internal\", \"compute.internal\"]\n\
             [kubernetes]\nstale-after = {stale_after}\n"
        ),
    )
    .unwrap();
    let pins = PathBuf::from(format!("/sys/fs/bpf/dnsfast-test-{node}"));
    let log = tmp.join("agent.log");
    let kubeconfig = api.kubeconfig();
    lab.spawn(
        &node,
        dnsfast_bin().to_str().unwrap(),
        &[
            "load",
            "--iface",
            &node_if,
            "--mode",
            "skb",
            "--pin-dir",
            pins.to_str().unwrap(),
            "--config",
            cfg.to_str().unwrap(),
            "--kubeconfig",
            kubeconfig.to_str().unwrap(),
            "--listen",
            NODE,
            "--server",
            "127.0.0.1#5300",
            "--no-resolv",
        ],
        log.to_str().unwrap(),
    )
    .unwrap();
    let c = Cluster {
        lab,
        api,
        pod,
        pins,
        log,
    };
    let synced = wait_until(Duration::from_secs(30), || c.synced());
    assert!(synced, "the API was not listed:\n{}", c.log());
    c
}

/// Real names through dig and a pod's search list; non-existent ones
/// answered NXDOMAIN by the kernel; the forwarder (TCP) agrees; a Service
/// created or deleted changes the verdict within a second.
#[test]
fn the_cluster_domain_follows_the_api() {
    require_root!();
    let mut c = cluster(30.0);
    let real = [
        "store-0.store.default.svc.cluster.local",
        "es-0.search.kube-system.svc.cluster.local",
        "app.default.svc.cluster.local",
        "data.default.svc.cluster.local",
        "ext.default.svc.cluster.local",
        "web.dev.svc.cluster.local",
        "default.svc.cluster.local",
        "svc.cluster.local",
        "cluster.local",
        "1-2-3-4.default.pod.cluster.local",
        "*.default.svc.cluster.local",
        "example.com",
    ];
    for name in real {
        assert_eq!(c.dig(name, &[]), "NOERROR", "{name} (udp)");
        assert_eq!(c.dig(name, &["+tcp"]), "NOERROR", "{name} (tcp)");
    }
    // dnsmasq has no SRV records (it REFUSEs): what matters is that the
    // name went up, never NXDOMAIN.
    let srv = c.dig("_http._tcp.app.default.svc.cluster.local", &["SRV"]);
    assert_ne!(srv, "NXDOMAIN", "the SRV name of a Service");
    assert_ne!(srv, "(no answer)");
    let before = c.nxdomains();
    let absent = [
        "wiki.default.svc.cluster.local",
        "wiki.svc.cluster.local",
        "wiki.cluster.local",
        "api.github.com.default.svc.cluster.local",
        "web.prod.svc.cluster.local",
        "store.dev.svc.cluster.local",
        "api.github.com.us-west-2.compute.internal",
    ];
    for name in absent {
        assert_eq!(c.dig(name, &[]), "NXDOMAIN", "{name} (udp)");
        assert_eq!(c.dig(name, &["+tcp"]), "NXDOMAIN", "{name} (tcp)");
    }
    assert_eq!(
        c.nxdomains() - before,
        absent.len() as u64,
        "the UDP NXDOMAINs came from the kernel"
    );

    // glibc through the pod's search list: `store-0.store` and `web.dev`
    // are cluster names whose last labels are TLDs.
    for short in ["store-0.store", "web.dev", "app", "api.example.com"] {
        let out = c
            .lab
            .exec_ok(&c.pod, "getent", &["ahosts", short])
            .unwrap_or_default();
        assert!(out.contains("192.0.2.99"), "getent {short}: {out:?}");
    }

    // A new namespace and Service: real within a moment, and never NXDOMAIN
    // after the API has accepted them.
    c.api.create_namespace(&c.lab, "prod").unwrap();
    let t = Instant::now();
    c.api
        .create_service(&c.lab, "prod", "web", "ClusterIP")
        .unwrap();
    let seen = wait_until(Duration::from_secs(5), || {
        c.dig("web.prod.svc.cluster.local", &[]) == "NOERROR"
    });
    eprintln!(
        "Service create -> its name resolves: {} ms (API call included)",
        t.elapsed().as_millis()
    );
    assert!(seen, "web.prod never resolved:\n{}", c.log());
    assert_eq!(c.dig("wiki.prod.svc.cluster.local", &[]), "NXDOMAIN");
    c.api.delete_service(&c.lab, "prod", "web").unwrap();
    let gone = wait_until(Duration::from_secs(5), || {
        c.dig("web.prod.svc.cluster.local", &[]) == "NXDOMAIN"
    });
    assert!(gone, "web.prod still resolves after its deletion");
    assert_eq!(c.dig("prod.svc.cluster.local", &[]), "NOERROR");
    c.api.delete_namespace(&c.lab, "prod").unwrap();
    let gone = wait_until(Duration::from_secs(5), || {
        c.dig("prod.svc.cluster.local", &[]) == "NXDOMAIN"
    });
    assert!(
        gone,
        "namespace prod still exists for dnsfast after its deletion"
    );

    // explain names the Namespace or Service that made the verdict.
    let explain = |name: &str| {
        let o = Command::new(dnsfast_bin())
            .args(["explain", "--pin-dir"])
            .arg(&c.pins)
            .arg(name)
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        String::from_utf8_lossy(&o.stdout).into_owned()
    };
    let e = explain("store-0.store.default.svc.cluster.local");
    assert!(
        e.contains("passed up") && e.contains("Service 'store' in namespace 'default' exists"),
        "{e}"
    );
    let e = explain("wiki.default.svc.cluster.local");
    assert!(
        e.contains("NXDOMAIN") && e.contains("namespace 'default' exists") && e.contains("'wiki'"),
        "{e}"
    );
    let e = explain("web.nope.svc.cluster.local");
    assert!(e.contains("no namespace named 'nope'"), "{e}");

    let status = c.status();
    let k = &status["kubernetes"];
    assert_eq!(k["synced"], true, "{status}");
    assert!(k["services"].as_u64().unwrap() >= 6, "{k}");
    assert!(k["namespaces"].as_u64().unwrap() >= 4, "{k}");
    let human = Command::new(dnsfast_bin())
        .args(["status", "--pin-dir"])
        .arg(&c.pins)
        .output()
        .unwrap();
    let human = String::from_utf8_lossy(&human.stdout);
    assert!(human.contains("kubernetes: synced"), "{human}");
    c.api.stop(&mut c.lab).unwrap();
}

/// The API server the agent knows goes away: after `stale-after` the
/// cluster domain's verdicts are withdrawn (everything passes). A Service
/// created meanwhile through another API server on the same etcd never
/// gets NXDOMAIN: not while the agent cannot see it, nor while its watch
/// resumes, nor after; and the verdicts return.
#[test]
fn a_lost_api_fails_open_and_resumes() {
    require_root!();
    let mut c = cluster(2.0);
    assert_eq!(c.dig("wiki.default.svc.cluster.local", &[]), "NXDOMAIN");
    c.api.stop(&mut c.lab).unwrap();
    let open = wait_until(Duration::from_secs(20), || !c.synced());
    assert!(open, "still synced with the API down:\n{}", c.log());
    assert_eq!(
        c.dig("wiki.default.svc.cluster.local", &[]),
        "NOERROR",
        "with stale knowledge, names pass to the upstream"
    );
    let s = c.status();
    assert!(s["kubernetes"]["errors"].as_u64().unwrap() > 0, "{s}");
    assert!(c.log().contains("kernel verdicts are withdrawn"));

    let mut other = c.api.second(&mut c.lab, 16444).unwrap();
    other
        .create_service(&c.lab, "default", "late", "ClusterIP")
        .unwrap();
    let mut answers = 0;
    for _ in 0..5 {
        assert_eq!(c.dig("late.default.svc.cluster.local", &[]), "NOERROR");
        answers += 1;
    }
    other.stop(&mut c.lab).unwrap();
    c.api.restart(&mut c.lab).unwrap();
    // From the moment the API accepted it, the name never gets NXDOMAIN,
    // through the resync and after it.
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline && !c.synced() {
        assert_eq!(c.dig("late.default.svc.cluster.local", &[]), "NOERROR");
        answers += 1;
    }
    assert!(c.synced(), "not synced again:\n{}", c.log());
    assert_eq!(c.dig("late.default.svc.cluster.local", &[]), "NOERROR");
    assert_eq!(c.dig("wiki.default.svc.cluster.local", &[]), "NXDOMAIN");
    eprintln!(
        "{answers} lookups of the new Service, while the agent could not see it and while its watch resumed: none NXDOMAIN"
    );
    c.api.stop(&mut c.lab).unwrap();
}
