//! Throw-away network namespaces with veth links, and processes inside them.
//! Everything a `Lab` creates is removed when it drops, test failure or not.

use std::{
    process::{Child, Command, Output, Stdio},
    sync::atomic::{AtomicU32, Ordering},
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};

static SEQ: AtomicU32 = AtomicU32::new(0);

/// Namespaces and child PIDs of every live lab, so a signal handler can clean
/// up when Drop will not run (Ctrl-C in the demo).
static LIVE: std::sync::Mutex<(Vec<String>, Vec<u32>)> =
    std::sync::Mutex::new((Vec::new(), Vec::new()));

/// Removes everything any lab in this process created. For signal handlers.
pub fn cleanup_all() {
    let (namespaces, pids) = {
        let mut live = LIVE.lock().unwrap_or_else(|e| e.into_inner());
        (std::mem::take(&mut live.0), std::mem::take(&mut live.1))
    };
    for pid in pids {
        let _ = Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status();
    }
    std::thread::sleep(Duration::from_millis(300));
    for ns in namespaces {
        let _ = run("ip", &["netns", "del", &ns]);
        let _ = std::fs::remove_dir_all(format!("/etc/netns/{ns}"));
    }
}

fn register(ns: Option<&str>, pid: Option<u32>) {
    let mut live = LIVE.lock().unwrap_or_else(|e| e.into_inner());
    live.0.extend(ns.map(String::from));
    live.1.extend(pid);
}

fn unregister(ns: Option<&str>, pid: Option<u32>) {
    let mut live = LIVE.lock().unwrap_or_else(|e| e.into_inner());
    live.0.retain(|n| Some(n.as_str()) != ns);
    live.1.retain(|p| Some(*p) != pid);
}

/// A short name unique to this process and call (interface names are
/// limited to 15 bytes).
pub fn unique(prefix: &str) -> String {
    let n = SEQ.fetch_add(1, Ordering::Relaxed);
    format!("{prefix}{}x{n}", std::process::id() % 100_000)
}

pub fn run(cmd: &str, args: &[&str]) -> Result<Output> {
    let out = Command::new(cmd)
        .args(args)
        .output()
        .with_context(|| format!("running {cmd}"))?;
    Ok(out)
}

pub fn run_ok(cmd: &str, args: &[&str]) -> Result<String> {
    let out = run(cmd, args)?;
    if !out.status.success() {
        bail!(
            "{cmd} {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

#[derive(Default)]
pub struct Lab {
    namespaces: Vec<String>,
    children: Vec<(String, Child)>,
}

impl Lab {
    pub fn new() -> Self {
        ensure_bpffs();
        Self::default()
    }

    /// Creates a namespace with loopback up. `resolv` becomes its
    /// /etc/resolv.conf under `ip netns exec`.
    pub fn add_ns(&mut self, prefix: &str, resolv: Option<&str>) -> Result<String> {
        let ns = unique(prefix);
        run_ok("ip", &["netns", "add", &ns])?;
        register(Some(&ns), None);
        self.namespaces.push(ns.clone());
        self.exec_ok(&ns, "ip", &["link", "set", "lo", "up"])?;
        if let Some(text) = resolv {
            let dir = format!("/etc/netns/{ns}");
            std::fs::create_dir_all(&dir)?;
            std::fs::write(format!("{dir}/resolv.conf"), text)?;
        }
        Ok(ns)
    }

    /// A veth pair between `ns_a` and `ns_b` with the given CIDR addresses
    /// and no default routes. Returns the two ends' names, which are unique
    /// like the namespaces'.
    pub fn veth(
        &mut self,
        ns_a: &str,
        addr_a: &[&str],
        ns_b: &str,
        addr_b: &[&str],
    ) -> Result<(String, String)> {
        let (a, b) = (unique("va"), unique("vb"));
        self.veth_named(ns_a, &a, addr_a, ns_b, &b, addr_b)?;
        Ok((a, b))
    }

    /// `dig +tries=1 +time=3 @server name extra…` from `ns`: the RCODE the
    /// client got, or "(no answer)".
    pub fn dig_rcode(&self, ns: &str, server: &str, name: &str, extra: &[&str]) -> String {
        let at = format!("@{server}");
        let mut args = vec!["+tries=1", "+time=3", &at, name];
        args.extend_from_slice(extra);
        let out = self
            .exec(ns, "dig", &args)
            .map(|o| o.stdout)
            .unwrap_or_default();
        crate::rcode(&String::from_utf8_lossy(&out)).to_string()
    }

    /// The shape most end-to-end tests start from: a client namespace (with
    /// `resolv` as its resolv.conf) and a node namespace, joined by a veth,
    /// `client_ip` and `node_ip` on its ends (/24). Returns the client
    /// namespace, the node namespace and the node's end of the veth.
    pub fn client_and_node(
        &mut self,
        prefixes: (&str, &str),
        client_ip: &str,
        node_ip: &str,
        resolv: Option<&str>,
    ) -> Result<(String, String, String)> {
        let cli = self.add_ns(prefixes.0, resolv)?;
        let node = self.add_ns(prefixes.1, None)?;
        let (_, node_if) = self.veth(
            &cli,
            &[&format!("{client_ip}/24")],
            &node,
            &[&format!("{node_ip}/24")],
        )?;
        Ok((cli, node, node_if))
    }

    /// `veth` with the ends' names chosen by the caller (unique, at most
    /// 15 bytes).
    pub fn veth_named(
        &mut self,
        ns_a: &str,
        a: &str,
        addr_a: &[&str],
        ns_b: &str,
        b: &str,
        addr_b: &[&str],
    ) -> Result<()> {
        run_ok(
            "ip",
            &[
                "link", "add", a, "netns", ns_a, "type", "veth", "peer", "name", b, "netns", ns_b,
            ],
        )?;
        for (ns, dev, addrs) in [(ns_a, a, addr_a), (ns_b, b, addr_b)] {
            for addr in addrs {
                let mut args = vec!["addr", "add", addr, "dev", dev];
                if addr.contains(':') {
                    args.push("nodad");
                }
                self.exec_ok(ns, "ip", &args)?;
            }
            self.exec_ok(ns, "ip", &["link", "set", dev, "up"])?;
        }
        Ok(())
    }

    /// Runs a command inside `ns` (with its /etc/netns files bound).
    pub fn exec(&self, ns: &str, cmd: &str, args: &[&str]) -> Result<Output> {
        let mut all = vec!["netns", "exec", ns, cmd];
        all.extend_from_slice(args);
        run("ip", &all)
    }

    pub fn exec_ok(&self, ns: &str, cmd: &str, args: &[&str]) -> Result<String> {
        let mut all = vec!["netns", "exec", ns, cmd];
        all.extend_from_slice(args);
        run_ok("ip", &all)
    }

    /// Starts a long-running process in `ns`. `nsenter --net` keeps the
    /// mount namespace, so bpffs pins stay visible (`ip netns exec`
    /// remounts /sys and hides them).
    pub fn spawn(&mut self, ns: &str, cmd: &str, args: &[&str], log: &str) -> Result<u32> {
        let log_file = std::fs::File::create(log).with_context(|| format!("creating {log}"))?;
        let child = Command::new("nsenter")
            .arg(format!("--net=/run/netns/{ns}"))
            .arg(cmd)
            .args(args)
            .stdin(Stdio::null())
            .stdout(log_file.try_clone()?)
            .stderr(log_file)
            .spawn()
            .with_context(|| format!("starting {cmd} in {ns}"))?;
        let pid = child.id();
        register(None, Some(pid));
        self.children.push((cmd.to_string(), child));
        Ok(pid)
    }

    /// Sends SIGKILL to a process this lab started and waits for it.
    pub fn kill(&mut self, pid: u32) -> Result<std::process::ExitStatus> {
        let mut child = self.take_child(pid)?;
        unregister(None, Some(pid));
        child.kill()?;
        Ok(child.wait()?)
    }

    /// Sends SIGTERM to a process this lab started and waits for it.
    pub fn stop(&mut self, pid: u32) -> Result<std::process::ExitStatus> {
        let mut child = self.take_child(pid)?;
        terminate(&mut child)
    }

    fn take_child(&mut self, pid: u32) -> Result<Child> {
        let i = self
            .children
            .iter()
            .position(|(_, c)| c.id() == pid)
            .context("not a child of this lab")?;
        Ok(self.children.remove(i).1)
    }

    /// dnsmasq on 127.0.0.1:`port` in `ns`, answering every name with
    /// `addr` (so an NXDOMAIN a client sees comes from dnsfast).
    pub fn dnsmasq_answering_all(
        &mut self,
        ns: &str,
        port: u16,
        addr: &str,
        log: &str,
    ) -> Result<u32> {
        self.spawn(
            ns,
            "dnsmasq",
            &[
                "--keep-in-foreground",
                "--no-resolv",
                "--no-hosts",
                "--bind-interfaces",
                "--listen-address=127.0.0.1",
                &format!("--port={port}"),
                "--user=root",
                "--pid-file=",
                &format!("--address=/#/{addr}"),
            ],
            log,
        )
    }
}

fn terminate(child: &mut Child) -> Result<std::process::ExitStatus> {
    unregister(None, Some(child.id()));
    let pid = child.id().to_string();
    if let Ok(Some(st)) = child.try_wait() {
        return Ok(st);
    }
    let _ = Command::new("kill").args(["-TERM", &pid]).status();
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if let Some(st) = child.try_wait()? {
            return Ok(st);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    Ok(child.wait()?)
}

impl Drop for Lab {
    fn drop(&mut self) {
        for (_, c) in self.children.iter_mut() {
            let _ = terminate(c);
        }
        for ns in &self.namespaces {
            unregister(Some(ns), None);
            let _ = run("ip", &["netns", "del", ns]);
            let _ = std::fs::remove_dir_all(format!("/etc/netns/{ns}"));
        }
    }
}

/// Mounts bpffs at /sys/fs/bpf once per process if it is not there. The
/// agent mounts it itself when needed, but two agents started at the same
/// moment by parallel tests could both see it missing and stack two mounts,
/// hiding one agent's pins from its test.
pub fn ensure_bpffs() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let fs = run_ok("stat", &["-f", "-c", "%T", "/sys/fs/bpf"]).unwrap_or_default();
        if fs.trim() != "bpf_fs" {
            let _ = run("mount", &["-t", "bpf", "bpf", "/sys/fs/bpf"]);
        }
    });
}

/// Polls `f` until it returns true or `timeout` passes.
pub fn wait_until(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    f()
}
