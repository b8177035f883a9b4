//! A real Kubernetes API server for the tests: Debian's etcd and the
//! kube-apiserver `cargo xtask setup` builds (v1.20.2, from Debian's
//! source package), both inside a lab namespace on its loopback, with a
//! static token and the kubeconfig the agent reads. Objects are made and
//! deleted with `curl` from inside the namespace, as `kubectl` would.

use std::{
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::{bail, Context, Result};

use crate::netns::{wait_until, Lab};

/// Where `cargo xtask setup` leaves the binary (outside the clone).
pub const APISERVER: &str = "/var/cache/dnsfast-kube-apiserver/bin/kube-apiserver";
const TOKEN: &str = "dnsfast-test-token";

pub struct ApiServer {
    pub ns: String,
    pub dir: PathBuf,
    pub port: u16,
    etcd_port: u16,
    etcd: Option<u32>,
    apiserver: Option<u32>,
}

impl ApiServer {
    /// Starts etcd and the API server in `ns` (their data and logs in
    /// `dir`) and waits for `/readyz` (about 5 s).
    pub fn start(lab: &mut Lab, ns: &str, dir: &Path) -> Result<Self> {
        let bin = std::env::var("DNSFAST_KUBE_APISERVER").unwrap_or_else(|_| APISERVER.into());
        if !Path::new(&bin).exists() {
            bail!("no kube-apiserver at {bin}: run `cargo xtask setup` as root");
        }
        std::fs::create_dir_all(dir.join("certs"))?;
        let key = dir.join("sa.key");
        crate::netns::run_ok(
            "openssl",
            &["genrsa", "-out", key.to_str().unwrap(), "2048"],
        )?;
        crate::netns::run_ok(
            "openssl",
            &[
                "rsa",
                "-in",
                key.to_str().unwrap(),
                "-pubout",
                "-out",
                dir.join("sa.pub").to_str().unwrap(),
            ],
        )?;
        std::fs::write(
            dir.join("tokens.csv"),
            format!("{TOKEN},admin,admin-uid,\"system:masters\"\n"),
        )?;
        let mut s = Self {
            ns: ns.to_string(),
            dir: dir.to_path_buf(),
            port: 16443,
            etcd_port: 23790,
            etcd: None,
            apiserver: None,
        };
        let etcd_data = dir.join("etcd");
        let (c, p, m) = (s.etcd_port, s.etcd_port + 10, s.etcd_port + 20);
        let pid = lab.spawn(
            ns,
            "etcd",
            &[
                "--name",
                "test",
                "--data-dir",
                etcd_data.to_str().unwrap(),
                "--listen-client-urls",
                &format!("http://127.0.0.1:{c}"),
                "--advertise-client-urls",
                &format!("http://127.0.0.1:{c}"),
                "--listen-peer-urls",
                &format!("http://127.0.0.1:{p}"),
                "--initial-advertise-peer-urls",
                &format!("http://127.0.0.1:{p}"),
                "--initial-cluster",
                &format!("test=http://127.0.0.1:{p}"),
                "--listen-metrics-urls",
                &format!("http://127.0.0.1:{m}"),
            ],
            dir.join("etcd.log").to_str().unwrap(),
        )?;
        s.etcd = Some(pid);
        s.start_apiserver(lab, &bin)?;
        std::fs::write(
            s.kubeconfig(),
            format!(
                "apiVersion: v1\nkind: Config\nclusters:\n- name: test\n  cluster:\n    \
                 server: https://127.0.0.1:{}\n    certificate-authority: {}\nusers:\n- name: admin\n  \
                 user:\n    token: {TOKEN}\ncontexts:\n- name: test\n  context: {{cluster: test, user: \
                 admin}}\ncurrent-context: test\n",
                s.port,
                dir.join("certs/apiserver.crt").display()
            ),
        )?;
        Ok(s)
    }

    /// A second API server on the same etcd, on `port`, which the agent
    /// does not know: what it accepts happens behind the agent's back.
    pub fn second(&self, lab: &mut Lab, port: u16) -> Result<ApiServer> {
        let bin = std::env::var("DNSFAST_KUBE_APISERVER").unwrap_or_else(|_| APISERVER.into());
        let mut s = Self {
            ns: self.ns.clone(),
            dir: self.dir.join(format!("second-{port}")),
            port,
            etcd_port: self.etcd_port,
            etcd: None,
            apiserver: None,
        };
        std::fs::create_dir_all(s.dir.join("certs"))?;
        for f in ["sa.key", "sa.pub", "tokens.csv"] {
            std::fs::copy(self.dir.join(f), s.dir.join(f))?;
        }
        s.start_apiserver(lab, &bin)?;
        Ok(s)
    }

    fn start_apiserver(&mut self, lab: &mut Lab, bin: &str) -> Result<()> {
        let d = |f: &str| self.dir.join(f).display().to_string();
        let pid = lab.spawn(
            &self.ns,
            bin,
            &[
                &format!("--etcd-servers=http://127.0.0.1:{}", self.etcd_port),
                "--bind-address=127.0.0.1",
                &format!("--secure-port={}", self.port),
                "--advertise-address=127.0.0.1",
                "--endpoint-reconciler-type=none",
                &format!("--cert-dir={}", d("certs")),
                "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
                &format!("--service-account-signing-key-file={}", d("sa.key")),
                &format!("--service-account-key-file={}", d("sa.pub")),
                "--authorization-mode=AlwaysAllow",
                &format!("--token-auth-file={}", d("tokens.csv")),
                "--anonymous-auth=false",
                "--service-cluster-ip-range=10.96.0.0/16",
            ],
            &d("apiserver.log"),
        )?;
        self.apiserver = Some(pid);
        let ready = wait_until(Duration::from_secs(60), || {
            self.curl(lab, &["/readyz"]).is_ok_and(|o| o.trim() == "ok")
        });
        if !ready {
            let log = std::fs::read_to_string(self.dir.join("apiserver.log")).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(15).collect();
            bail!("kube-apiserver not ready in 60 s:\n{}", tail.join("\n"));
        }
        Ok(())
    }

    pub fn kubeconfig(&self) -> PathBuf {
        self.dir.join("kubeconfig")
    }

    /// Stops the API server (etcd keeps the data).
    pub fn stop(&mut self, lab: &mut Lab) -> Result<()> {
        if let Some(pid) = self.apiserver.take() {
            lab.stop(pid)?;
        }
        Ok(())
    }

    /// Starts it again on the same etcd.
    pub fn restart(&mut self, lab: &mut Lab) -> Result<()> {
        let bin = std::env::var("DNSFAST_KUBE_APISERVER").unwrap_or_else(|_| APISERVER.into());
        self.start_apiserver(lab, &bin)
    }

    /// `curl` against the API from inside the namespace: PATH, then extra
    /// curl arguments.
    pub fn curl(&self, lab: &Lab, args: &[&str]) -> Result<String> {
        let url = format!("https://127.0.0.1:{}{}", self.port, args[0]);
        let auth = format!("Authorization: Bearer {TOKEN}");
        let mut all = vec!["-sSk", "--max-time", "10", "-H", &auth, &url];
        all.extend_from_slice(&args[1..]);
        lab.exec_ok(&self.ns, "curl", &all)
    }

    fn post(&self, lab: &Lab, path: &str, body: &str) -> Result<()> {
        let out = self.curl(
            lab,
            &[
                path,
                "-X",
                "POST",
                "-H",
                "Content-Type: application/json",
                "-d",
                body,
            ],
        )?;
        if out.contains("\"kind\":\"Status\"") || out.contains("\"kind\": \"Status\"") {
            bail!("POST {path}: {out}");
        }
        Ok(())
    }

    pub fn create_namespace(&self, lab: &Lab, name: &str) -> Result<()> {
        self.post(
            lab,
            "/api/v1/namespaces",
            &format!(r#"{{"apiVersion":"v1","kind":"Namespace","metadata":{{"name":"{name}"}}}}"#),
        )
        .with_context(|| format!("creating namespace {name}"))
    }

    /// A Service of `kind`: "ClusterIP", "Headless" or "ExternalName".
    pub fn create_service(&self, lab: &Lab, ns: &str, name: &str, kind: &str) -> Result<()> {
        let spec = match kind {
            "ClusterIP" => r#"{"ports":[{"name":"http","port":80,"protocol":"TCP"}]}"#.to_string(),
            "Headless" => {
                r#"{"clusterIP":"None","ports":[{"name":"http","port":80,"protocol":"TCP"}]}"#
                    .to_string()
            }
            "ExternalName" => r#"{"type":"ExternalName","externalName":"example.org"}"#.to_string(),
            other => bail!("unknown Service kind {other}"),
        };
        self.post(
            lab,
            &format!("/api/v1/namespaces/{ns}/services"),
            &format!(
                r#"{{"apiVersion":"v1","kind":"Service","metadata":{{"name":"{name}"}},"spec":{spec}}}"#
            ),
        )
        .with_context(|| format!("creating service {ns}/{name}"))
    }

    /// Deletes a namespace and, as no controller manager runs here to
    /// finalize it, empties its finalizers so that it goes at once.
    pub fn delete_namespace(&self, lab: &Lab, name: &str) -> Result<()> {
        self.curl(
            lab,
            &[&format!("/api/v1/namespaces/{name}"), "-X", "DELETE"],
        )?;
        let body = format!(
            r#"{{"apiVersion":"v1","kind":"Namespace","metadata":{{"name":"{name}"}},"spec":{{"finalizers":[]}}}}"#
        );
        self.curl(
            lab,
            &[
                &format!("/api/v1/namespaces/{name}/finalize"),
                "-X",
                "PUT",
                "-H",
                "Content-Type: application/json",
                "-d",
                &body,
            ],
        )
        .map(|_| ())
    }

    pub fn delete_service(&self, lab: &Lab, ns: &str, name: &str) -> Result<()> {
        self.curl(
            lab,
            &[
                &format!("/api/v1/namespaces/{ns}/services/{name}"),
                "-X",
                "DELETE",
            ],
        )
        .map(|_| ())
    }
}
