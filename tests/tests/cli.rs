//! The `dnsfast` binary's failure modes: one line on stderr, exit code 1, no
//! panic, and nothing loaded. These need no root, except the one that drops
//! root to check the "needs root" message.

use std::{path::PathBuf, process::Command};

use dnsfast_tests::{dnsfast_bin, netns::Lab, require_root};

/// Tests that must fail before touching an interface name one that does not
/// exist: a regression then fails the test instead of attaching anywhere.
const NO_IF: &str = "dnsfast-none0";

/// Runs dnsfast and returns (exit code, stdout, stderr).
fn run(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(dnsfast_bin())
        .args(args)
        .env("RUST_BACKTRACE", "0")
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn assert_one_line_error(args: &[&str], expect: &str) {
    let (code, _, err) = run(args);
    assert_eq!(code, 1, "{args:?}: exit code; stderr: {err}");
    assert_eq!(
        err.lines().count(),
        1,
        "{args:?}: one line expected, got:\n{err}"
    );
    assert!(err.starts_with("dnsfast: error: "), "{err}");
    assert!(
        err.contains(expect),
        "{args:?}: expected {expect:?} in {err:?}"
    );
    assert!(!err.contains("panicked"), "{err}");
}

fn temp_config(name: &str, text: &str) -> PathBuf {
    let p = std::env::temp_dir().join(format!("dnsfast-cli-{}-{name}.toml", std::process::id()));
    std::fs::write(&p, text).unwrap();
    p
}

#[test]
fn bad_patterns_name_file_and_line_or_flag() {
    let cfg = temp_config(
        "bad",
        "[patterns]\nblock = [\n  \"ok.example\",\n  \"bad..example\",\n]\n",
    );
    let c = cfg.to_str().unwrap();
    assert_one_line_error(
        &["load", "--iface", NO_IF, "--config", c],
        &format!("{c}:4: pattern 'bad..example': empty label"),
    );
    assert_one_line_error(&["check-config", c], &format!("{c}:4:"));
    assert_one_line_error(
        &[
            "load",
            "--iface",
            NO_IF,
            "--address=/ok.example/bad_char!.example/",
        ],
        "flag --address=/ok.example/bad_char!.example/: pattern 'bad_char!.example': character '!'",
    );
    let long = format!("--address=/{}.example/", "x".repeat(64));
    assert_one_line_error(
        &["load", "--iface", NO_IF, &long],
        "is 64 bytes; the limit is 63",
    );
    let name = format!("--address=/{}/", vec!["y".repeat(63); 4].join("."));
    assert_one_line_error(&["load", "--iface", NO_IF, &name], "the limit is 255");
    assert_one_line_error(
        &["load", "--iface", NO_IF, "--address=/example.com/1.2.3.4"],
        "not supported",
    );
    let _ = std::fs::remove_file(cfg);
}

#[test]
fn missing_config_and_interface() {
    assert_one_line_error(
        &[
            "load",
            "--iface",
            NO_IF,
            "--config",
            "/nonexistent/dnsfast.toml",
        ],
        "reading config file /nonexistent/dnsfast.toml",
    );
    assert_one_line_error(
        &["load", "--iface", "no-such-if0"],
        "no such interface: no-such-if0",
    );
}

#[test]
fn explain_and_suggest_fail_in_one_line() {
    assert_one_line_error(
        &[
            "explain",
            "--pin-dir",
            "/nonexistent/dnsfast-pins",
            "x.example",
        ],
        "nothing loaded: no program pinned at /nonexistent/dnsfast-pins/prog",
    );
    assert_one_line_error(
        &["explain", "--type", "BOGUS", "x.example"],
        "--type BOGUS: not a record type",
    );
    let c = temp_config(
        "auto-bad",
        "[auto]\ncluster-domain = \"cluster.local\"\nnamespaces = [\"a..b\"]\n",
    );
    let c = c.to_str().unwrap();
    assert_one_line_error(
        &["suggest", "--config", c],
        &format!("{c}:3: auto.namespace 'a..b': empty label"),
    );
}

#[test]
fn check_config_explains_a_good_file() {
    let cfg = temp_config("good", "[xdp]\nports = [53, 5353]\n[patterns]\nblock = [\"Com.SVC.cluster.local.\"]\nallow = [\"ok.com.svc.cluster.local\"]\n");
    let (code, out, err) = run(&[
        "check-config",
        cfg.to_str().unwrap(),
        "--address=/net.svc.cluster.local/",
    ]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("ok: 3 pattern(s)"), "{out}");
    assert!(out.contains("xdp.ports = [53, 5353]"), "{out}");
    assert!(out.contains("block com.svc.cluster.local"), "{out}");
    assert!(out.contains("allow ok.com.svc.cluster.local"), "{out}");
    let _ = std::fs::remove_file(cfg);
}

#[test]
fn example_config_is_valid() {
    let (code, out, _) = run(&["example-config"]);
    assert_eq!(code, 0);
    let cfg = temp_config("example", &out);
    let (code, _, err) = run(&["check-config", cfg.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    let _ = std::fs::remove_file(cfg);
}

#[test]
fn load_without_root_says_so() {
    require_root!(); // to drop root we must have it
                     // In a throw-away namespace, so that its `lo` is the only thing a
                     // regression could attach to.
    let mut lab = Lab::new();
    let ns = lab.add_ns("dfr", None).unwrap();
    let bin = dnsfast_bin();
    let out = lab
        .exec(
            &ns,
            "setpriv",
            &[
                "--reuid=65534",
                "--regid=65534",
                "--clear-groups",
                "--inh-caps=-all",
                bin.to_str().unwrap(),
                "load",
                "--iface",
                "lo",
            ],
        )
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("dnsfast load needs root"), "{err}");
}

/// The control commands with nothing loaded say so in one line (or, for
/// `status`, as their answer), and bad input fails before anything.
#[test]
fn control_commands_without_an_agent() {
    let dir = format!("/sys/fs/bpf/dnsfast-cli-none-{}", std::process::id());
    let pd = ["--pin-dir", dir.as_str()];
    let with = |args: &[&'static str]| -> Vec<String> {
        args.iter()
            .map(|s| s.to_string())
            .chain(pd.iter().map(|s| s.to_string()))
            .collect()
    };
    for args in [
        with(&["block", "list"]),
        with(&["allow", "add", "x.example"]),
        with(&["stats"]),
    ] {
        let a: Vec<&str> = args.iter().map(String::as_str).collect();
        assert_one_line_error(&a, "nothing loaded: no dnsfast maps pinned in");
    }
    let a = with(&["watch"]);
    let a: Vec<&str> = a.iter().map(String::as_str).collect();
    assert_one_line_error(&a, "`dnsfast watch` needs a running `dnsfast load`");
    let a = with(&["status"]);
    let a: Vec<&str> = a.iter().map(String::as_str).collect();
    let (code, out, _) = run(&a);
    assert_eq!(code, 0);
    assert!(out.contains("nothing loaded"), "{out}");
    let a = with(&["stats", "--watch", "--interval", "0"]);
    let a: Vec<&str> = a.iter().map(String::as_str).collect();
    assert_one_line_error(&a, "--interval 0: give 0.1 seconds or more");
    assert_one_line_error(
        &["load", "--iface", "tst*", "--iface", NO_IF],
        &format!("no such interface: {NO_IF}"),
    );
    // Flag syntax is clap's: exit code 2 and its usage line.
    let (code, _, err) = run(&["load", "--iface", "tst*", "--metrics", "not-an-addr"]);
    assert_eq!(code, 2);
    assert!(
        err.contains("invalid value 'not-an-addr' for '--metrics <ADDR>'"),
        "{err}"
    );
}
