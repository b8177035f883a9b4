//! The docs stay true: every command in a `sh` block of README.md, of every
//! file in docs/ and of deploy/README.md is run here, in a lab namespace, or named as covered
//! elsewhere (with the reason). A command this test does not know fails it,
//! so a new doc command needs a way to run.
//!
//! Substitutions, all visible in `adapt`: `eth0` is the lab's veth,
//! `/etc/dnsfast/dnsfast.toml` a copy of examples/dnsfast.toml,
//! `/sys/fs/bpf/dnsfast` the lab's pin dir (added as `--pin-dir` to the
//! control commands), `kubectl exec … POD --` runs the command directly, and
//! a `[--flag]` synopsis runs both without and with its options.

use std::{
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use dnsfast_tests::{
    dnsfast_bin,
    netns::{unique, wait_until, Lab},
    require_root,
};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Commands of the `sh` blocks of `file`, continuation lines joined and
/// trailing comments removed.
fn commands(file: &Path) -> Vec<String> {
    let text = std::fs::read_to_string(file).unwrap();
    let mut out = vec![];
    for block in text.split("```sh\n").skip(1) {
        let body = block.split("```").next().unwrap();
        let mut cur = String::new();
        for line in body.lines() {
            let line = match line.find("  #") {
                Some(i) => &line[..i],
                None => line,
            };
            let line = line.trim();
            if let Some(part) = line.strip_suffix('\\') {
                cur.push_str(part.trim());
                cur.push(' ');
                continue;
            }
            cur.push_str(line);
            if !cur.trim().is_empty() {
                out.push(cur.trim().to_string());
            }
            cur.clear();
        }
    }
    out
}

/// `[--a] [--b X]` synopsis: the bare command, and the one with every option
/// (placeholders filled).
fn variants(cmd: &str, iface: &str) -> Vec<String> {
    if !cmd.contains('[') {
        return vec![cmd.to_string()];
    }
    let bare: String = cmd
        .split('[')
        .map(|p| p.split_once(']').map(|(_, rest)| rest).unwrap_or(p))
        .collect::<Vec<_>>()
        .join("");
    let full = cmd
        .replace(['[', ']'], "")
        .replace("--count N", "--count 1")
        .replace("--iface IFACE", &format!("--iface {iface}"));
    vec![
        bare.split_whitespace().collect::<Vec<_>>().join(" "),
        full.split_whitespace().collect::<Vec<_>>().join(" "),
    ]
}

/// What a doc command becomes here.
enum Plan {
    /// Runs to completion and must succeed.
    Run(Vec<String>),
    /// Runs until stopped (an agent): must come up, then exit 0 on SIGTERM.
    Serve(Vec<String>),
    /// Runs until stopped (`--watch`, `watch`): must print, then is ended.
    Stream(Vec<String>),
    /// Detaches: run last.
    Unload(Vec<String>),
    /// Runs and must succeed, unless it fails with this message (a kernel
    /// without the driver it needs), which is reported.
    Optional(Vec<String>, &'static str),
    Elsewhere(&'static str),
}

const CONTROL: [&str; 8] = [
    "block", "allow", "stats", "status", "watch", "explain", "unload", "cache",
];

fn adapt(cmd: &str, lab: &Ctx) -> Plan {
    let cmd = cmd
        .strip_prefix("kubectl exec -n kube-system POD -- ")
        .unwrap_or(cmd);
    let words: Vec<String> = cmd
        .split_whitespace()
        .map(|w| {
            w.replace("/etc/dnsfast/dnsfast.toml", lab.config.to_str().unwrap())
                .replace("/sys/fs/bpf/dnsfast", lab.pins.to_str().unwrap())
        })
        .map(|w| if w == "eth0" { lab.iface2.clone() } else { w })
        .map(|w| {
            if w == "NAME" {
                "api.github.com.svc.cluster.local".into()
            } else {
                w
            }
        })
        .collect();
    match (
        words[0].as_str(),
        words.get(1).map(String::as_str).unwrap_or(""),
    ) {
        ("cargo", "xtask") => match words[2].as_str() {
            "test" => Plan::Elsewhere("CI runs it (.ci/run)"),
            "image" => {
                Plan::Elsewhere("tests/tests/deploy.rs builds its context and runs buildah bud")
            }
            "demo" => Plan::Elsewhere("the demo; run by hand"),
            "bench" => Plan::Elsewhere("a benchmark: run by hand, never timed in a test"),
            _ => panic!("unknown doc command: {cmd}"),
        },
        ("podman", "save") | ("ctr", _) => {
            Plan::Elsewhere("moves the image onto a cluster node; no cluster here")
        }
        ("kubectl", "apply") => {
            Plan::Elsewhere("needs a cluster; deploy.rs renders the kustomization and validates it")
        }
        // The node-local address, made in the lab namespace.
        ("ip", "link") => Plan::Optional(
            vec!["sh".into(), "-c".into(), cmd.to_string()],
            "Unknown device type",
        ),
        ("bpftool", _) => Plan::Run(words),
        ("dnsfast", sub) => {
            let mut w = words.clone();
            w[0] = dnsfast_bin().display().to_string();
            match sub {
                "load" => {
                    w.extend(["--pin-dir".into(), lab.pins2.display().to_string()]);
                    Plan::Serve(w)
                }
                "serve" => Plan::Serve(w),
                s if CONTROL.contains(&s) => {
                    w.extend(["--pin-dir".into(), lab.pins.display().to_string()]);
                    if s == "unload" {
                        Plan::Unload(w)
                    } else if s == "watch" || cmd.contains("--watch") {
                        Plan::Stream(w)
                    } else {
                        Plan::Run(w)
                    }
                }
                _ => Plan::Run(w),
            }
        }
        _ => panic!("a doc command this test cannot run: {cmd}"),
    }
}

struct Ctx {
    lab: Lab,
    /// The control commands' agent runs here.
    ns: String,
    /// The doc's own `load` and `serve` run here, on `iface2`.
    ns2: String,
    iface2: String,
    config: PathBuf,
    /// The control commands' agent.
    pins: PathBuf,
    /// Pin dir for the doc's own `load` commands (one at a time).
    pins2: PathBuf,
    log: PathBuf,
}

fn run_in(ctx: &Ctx, w: &[String]) -> std::process::Output {
    Command::new("nsenter")
        .arg(format!("--net=/run/netns/{}", ctx.ns))
        .args(w)
        .output()
        .unwrap()
}

#[test]
fn every_documented_command_runs() {
    require_root!();
    let mut lab = Lab::new();
    let ns = lab.add_ns("ddn", None).unwrap();
    let cli = lab.add_ns("ddc", None).unwrap();
    let (_, iface) = lab
        .veth(&cli, &["10.82.0.2/24"], &ns, &["10.82.0.1/24"])
        .unwrap();
    let ns2 = lab.add_ns("ddm", None).unwrap();
    let (_, iface2) = lab
        .veth(&cli, &["10.83.0.2/24"], &ns2, &["10.83.0.1/24"])
        .unwrap();
    // The doc's node-local address.
    lab.exec_ok(
        &ns2,
        "ip",
        &["addr", "add", "169.254.20.10/32", "dev", "lo"],
    )
    .unwrap();
    let tmp = std::env::temp_dir().join(unique("dnsfast-docs-"));
    std::fs::create_dir_all(&tmp).unwrap();
    let config = tmp.join("dnsfast.toml");
    std::fs::copy(root().join("examples/dnsfast.toml"), &config).unwrap();
    let ctx = Ctx {
        lab,
        ns: ns.clone(),
        ns2: ns2.clone(),
        iface2,
        config,
        pins: PathBuf::from(format!("/sys/fs/bpf/dnsfast-test-{ns}")),
        pins2: PathBuf::from(format!("/sys/fs/bpf/dnsfast-test-{ns}-doc")),
        log: tmp.join("agent.log"),
    };
    let mut ctx = ctx;

    let mut plans = vec![];
    let mut files = vec!["README.md".to_string(), "deploy/README.md".to_string()];
    let mut docs: Vec<String> = std::fs::read_dir(root().join("docs"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".md"))
        .map(|n| format!("docs/{n}"))
        .collect();
    docs.sort();
    assert!(docs.len() >= 6, "docs/ lost its files: {docs:?}");
    files.extend(docs);
    for file in &files {
        for cmd in commands(&root().join(file)) {
            for v in variants(&cmd, &iface) {
                plans.push((file.as_str(), v.clone(), adapt(&v, &ctx)));
            }
        }
    }
    assert!(plans.len() > 25, "{} commands found", plans.len());

    // The agent the control commands talk to: the example config, on the veth.
    let bin = dnsfast_bin();
    let agent = ctx
        .lab
        .spawn(
            &ns,
            bin.to_str().unwrap(),
            &[
                "load",
                "--iface",
                &iface,
                "--config",
                ctx.config.to_str().unwrap(),
                "--pin-dir",
                ctx.pins.to_str().unwrap(),
            ],
            ctx.log.to_str().unwrap(),
        )
        .unwrap();
    let status = |pins: &Path| {
        Command::new(dnsfast_bin())
            .args(["status", "--json", "--pin-dir"])
            .arg(pins)
            .output()
            .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("\"ready\":true"))
    };
    assert!(
        wait_until(Duration::from_secs(30), || status(&ctx.pins)),
        "agent: {}",
        std::fs::read_to_string(&ctx.log).unwrap_or_default()
    );

    let mut report = vec![];
    let mut unloads = vec![];
    for (file, cmd, plan) in plans {
        match plan {
            Plan::Run(w) => {
                let o = run_in(&ctx, &w);
                assert!(
                    o.status.success(),
                    "{file}: `{cmd}` failed: {}{}",
                    String::from_utf8_lossy(&o.stdout),
                    String::from_utf8_lossy(&o.stderr)
                );
                report.push(format!("ran        {cmd}"));
            }
            Plan::Stream(w) => {
                let mut child = Command::new("nsenter")
                    .arg(format!("--net=/run/netns/{ns}"))
                    .args(&w)
                    .stdout(std::process::Stdio::piped())
                    .stderr(std::process::Stdio::null())
                    .spawn()
                    .unwrap();
                std::thread::sleep(Duration::from_millis(1500));
                // A query, so that `watch` has something to show.
                let _ = ctx.lab.exec(
                    &cli,
                    "dig",
                    &[
                        "+tries=1",
                        "+time=1",
                        "@10.82.0.1",
                        "x.com.svc.cluster.local",
                    ],
                );
                std::thread::sleep(Duration::from_millis(500));
                // `--count 1` ends after the query; the others run on.
                let ended = child.try_wait().unwrap();
                if cmd.contains("--count") {
                    assert!(
                        ended.is_some_and(|s| s.success()),
                        "{file}: `{cmd}` did not end"
                    );
                } else {
                    assert!(ended.is_none(), "{file}: `{cmd}` ended by itself");
                    let _ = child.kill();
                }
                let out = child.wait_with_output().unwrap();
                assert!(!out.stdout.is_empty(), "{file}: `{cmd}` printed nothing");
                report.push(format!("streamed   {cmd}"));
            }
            Plan::Serve(w) => {
                let log = tmp.join(unique("serve-"));
                let args: Vec<&str> = w[1..].iter().map(String::as_str).collect();
                let ns2 = ctx.ns2.clone();
                let pid = ctx
                    .lab
                    .spawn(&ns2, &w[0], &args, log.to_str().unwrap())
                    .unwrap();
                let up = if w[1] == "load" {
                    wait_until(Duration::from_secs(30), || status(&ctx.pins2))
                } else {
                    wait_until(Duration::from_secs(10), || {
                        std::fs::read_to_string(&log).is_ok_and(|l| l.contains("listening on"))
                    })
                };
                let text = std::fs::read_to_string(&log).unwrap_or_default();
                assert!(up, "{file}: `{cmd}` did not come up:\n{text}");
                let st = ctx.lab.stop(pid).unwrap();
                assert!(st.success(), "{file}: `{cmd}` exited {st}");
                report.push(format!("served     {cmd}"));
            }
            Plan::Unload(w) => unloads.push((file, cmd, w)),
            Plan::Optional(w, unsupported) => {
                let o = run_in(&ctx, &w);
                let err = String::from_utf8_lossy(&o.stderr);
                if o.status.success() {
                    report.push(format!("ran        {cmd}"));
                } else if err.contains(unsupported) {
                    report.push(format!(
                        "NOT RUN    {cmd}: this kernel says {unsupported:?}"
                    ));
                } else {
                    panic!("{file}: `{cmd}` failed: {err}");
                }
            }
            Plan::Elsewhere(why) => report.push(format!("elsewhere  {cmd}: {why}")),
        }
    }
    // Unloads last: one interface first, then everything.
    unloads.sort_by_key(|(_, c, _)| !c.contains("--iface"));
    for (file, cmd, w) in unloads {
        let o = run_in(&ctx, &w);
        assert!(
            o.status.success(),
            "{file}: `{cmd}` failed: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        report.push(format!("ran        {cmd}"));
    }
    assert!(wait_until(Duration::from_secs(10), || !ctx.pins.exists()));
    let _ = ctx.lab.stop(agent);
    eprintln!("{}", report.join("\n"));
    let _ = std::fs::remove_dir_all(&tmp);
}
