//! The contenders: how each proxy is installed, configured, started in the
//! foreground from a temporary directory, pinned, and stopped by its PID.

use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use super::certs::CertFiles;

/// Every proxy gets the same timeouts (seconds).
pub const CONNECT_TIMEOUT_S: u32 = 5;
pub const IDLE_TIMEOUT_S: u32 = 60;

/// One contender of the comparison.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Contender {
    Direct,
    Nginx,
    NginxTuned,
    Haproxy,
    HaproxyTuned,
    Wsedge,
    WsedgeTunnel,
    /// Another wsedge build (`--wsedge-before`), for before/after figures
    /// measured side by side in one run.
    WsedgeBefore,
}

impl Contender {
    pub const ALL: [Contender; 8] = [
        Self::Nginx,
        Self::NginxTuned,
        Self::Haproxy,
        Self::HaproxyTuned,
        Self::Direct,
        Self::WsedgeBefore,
        Self::Wsedge,
        Self::WsedgeTunnel,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Self::Direct => "direct",
            Self::Nginx => "nginx",
            Self::NginxTuned => "nginx-tuned",
            Self::Haproxy => "haproxy",
            Self::HaproxyTuned => "haproxy-tuned",
            Self::Wsedge => "wsedge",
            Self::WsedgeTunnel => "wsedge-tunnel",
            Self::WsedgeBefore => "wsedge-before",
        }
    }

    pub fn describe(self) -> &'static str {
        match self {
            Self::Direct => "no proxy: wsload talks to the echo server",
            Self::Nginx => "nginx, 1 worker, as shipped (proxy_buffer_size 4k)",
            Self::NginxTuned => "nginx, 1 worker, proxy_buffer_size 64k",
            Self::Haproxy => "HAProxy, nbthread 1, as shipped (tune.bufsize 16384)",
            Self::HaproxyTuned => "HAProxy, nbthread 1, tune.bufsize 65536",
            Self::Wsedge => "wsedge, 1 worker, relay = \"frames\" (default)",
            Self::WsedgeTunnel => "wsedge, 1 worker, relay = \"tunnel\"",
            Self::WsedgeBefore => "wsedge (--wsedge-before build), 1 worker, relay = \"frames\"",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|c| c.name() == s)
    }

    pub fn is_wsedge(self) -> bool {
        matches!(self, Self::Wsedge | Self::WsedgeTunnel | Self::WsedgeBefore)
    }
}

/// A running proxy.
#[derive(Debug)]
pub struct Running {
    pub child: Child,
    pub pid: u32,
}

impl Running {
    /// Stops the proxy by its own PID: SIGTERM, then SIGKILL after 3 s.
    pub fn stop(mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.pid.to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(3);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Where the binaries are.
#[derive(Debug, Clone)]
pub struct Binaries {
    pub nginx: Option<PathBuf>,
    pub haproxy: Option<PathBuf>,
    pub wsedge: Option<PathBuf>,
    pub wsedge_before: Option<PathBuf>,
    /// Whether `wsedge` (and `--wsedge-before`) take `--tls-cert`.
    pub wsedge_tls: bool,
    pub wsedge_before_tls: bool,
}

/// Whether `bin --help` mentions `flag`.
pub fn takes_flag(bin: &Path, flag: &str) -> bool {
    Command::new(bin)
        .arg("--help")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains(flag))
}

fn which(name: &str) -> Option<PathBuf> {
    for dir in [
        "/usr/sbin",
        "/usr/bin",
        "/sbin",
        "/bin",
        "/usr/local/sbin",
        "/usr/local/bin",
    ] {
        let p = Path::new(dir).join(name);
        if p.is_file() {
            return Some(p);
        }
    }
    None
}

/// Finds nginx and HAProxy, installing them from Debian packages if asked
/// and missing; finds wsedge if built and new enough (`--upstream`).
pub fn find_binaries(install: bool, wsedge: &Path, notes: &mut Vec<String>) -> Binaries {
    let mut missing: Vec<&str> = Vec::new();
    if which("nginx").is_none() {
        missing.push("nginx");
    }
    if which("haproxy").is_none() {
        missing.push("haproxy");
    }
    if !missing.is_empty() && install {
        eprintln!(
            "compare: installing {} from Debian packages",
            missing.join(" ")
        );
        let apt = |args: &[&str]| {
            Command::new("apt-get")
                .args(args)
                .env("DEBIAN_FRONTEND", "noninteractive")
                .stdout(Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
        };
        let mut ok = apt(&[
            &["install", "-y", "--no-install-recommends"][..],
            &missing[..],
        ]
        .concat());
        if !ok {
            apt(&["-f", "install", "-y"]);
            apt(&["update"]);
            ok = apt(&[
                &["install", "-y", "--no-install-recommends"][..],
                &missing[..],
            ]
            .concat());
        }
        if !ok {
            notes.push(format!("installing {} failed", missing.join(" ")));
        }
    }
    let nginx = which("nginx");
    let haproxy = which("haproxy");
    if nginx.is_none() {
        notes.push("nginx is not installed: skipped".into());
    }
    if haproxy.is_none() {
        notes.push("HAProxy is not installed: skipped".into());
    }
    // Proxies run from their own directory: make the path absolute.
    let wsedge = &wsedge
        .canonicalize()
        .unwrap_or_else(|_| wsedge.to_path_buf());
    let wsedge_ok = wsedge.is_file() && takes_flag(wsedge, "--upstream");
    if !wsedge_ok {
        notes.push(format!(
            "wsedge and wsedge-tunnel skipped: {} is missing or does not take --upstream (run `cargo build --release` first)",
            wsedge.display()
        ));
    }
    Binaries {
        nginx,
        haproxy,
        wsedge: wsedge_ok.then(|| wsedge.to_path_buf()),
        wsedge_before: None,
        wsedge_tls: wsedge_ok && takes_flag(wsedge, "--tls-cert"),
        wsedge_before_tls: false,
    }
}

/// A program's version line, for the report.
pub fn version(c: Contender, bins: &Binaries) -> String {
    let out = |p: &Option<PathBuf>, arg: &str| -> String {
        p.as_ref()
            .and_then(|p| Command::new(p).arg(arg).output().ok())
            .map(|o| {
                let s = format!(
                    "{}{}",
                    String::from_utf8_lossy(&o.stdout),
                    String::from_utf8_lossy(&o.stderr)
                );
                s.lines().next().unwrap_or("").trim().to_string()
            })
            .unwrap_or_default()
    };
    match c {
        Contender::Nginx | Contender::NginxTuned => out(&bins.nginx, "-v"),
        Contender::Haproxy | Contender::HaproxyTuned => out(&bins.haproxy, "-v"),
        Contender::Wsedge | Contender::WsedgeTunnel => {
            "wsedge (this repository, release build)".into()
        }
        Contender::WsedgeBefore => format!(
            "wsedge ({})",
            bins.wsedge_before
                .as_ref()
                .map(|p| p.display().to_string())
                .unwrap_or_default()
        ),
        Contender::Direct => String::new(),
    }
}

/// Whether `c` can terminate TLS here (`None`: yes; else why not).
pub fn tls_unavailable(c: Contender, bins: &Binaries) -> Option<&'static str> {
    match c {
        Contender::Wsedge if !bins.wsedge_tls => {
            Some("wsedge skipped over TLS: the binary does not take --tls-cert yet")
        }
        Contender::WsedgeBefore if !bins.wsedge_before_tls => {
            Some("wsedge-before skipped over TLS: the binary does not take --tls-cert")
        }
        Contender::WsedgeTunnel => Some(
            "wsedge-tunnel skipped over TLS: it is configured by file, and --tls-cert applies to --listen addresses",
        ),
        _ => None,
    }
}

pub fn available(c: Contender, bins: &Binaries) -> bool {
    match c {
        Contender::Direct => true,
        Contender::Nginx | Contender::NginxTuned => bins.nginx.is_some(),
        Contender::Haproxy | Contender::HaproxyTuned => bins.haproxy.is_some(),
        Contender::Wsedge | Contender::WsedgeTunnel => bins.wsedge.is_some(),
        Contender::WsedgeBefore => bins.wsedge_before.is_some(),
    }
}

fn nginx_conf(
    dir: &Path,
    listen: SocketAddr,
    backend: SocketAddr,
    tuned: bool,
    tls: Option<&CertFiles>,
) -> String {
    let d = dir.display();
    // TLS: tickets and a shared session cache for resumption, TLS 1.2 and
    // 1.3 (nginx's defaults otherwise: its cipher list, OpenSSL's groups).
    let (ssl, tls_conf) = match tls {
        Some(t) => (
            " ssl",
            format!(
                "        ssl_certificate {};\n        ssl_certificate_key {};\n        ssl_protocols TLSv1.2 TLSv1.3;\n        ssl_session_tickets on;\n        ssl_session_cache shared:SSL:10m;\n",
                t.cert.display(),
                t.key.display()
            ),
        ),
        None => ("", String::new()),
    };
    // Upgraded connections are relayed through proxy_buffer_size in each
    // direction; proxy_buffers only has to be consistent with it.
    let buffer = if tuned {
        "            proxy_buffer_size 64k;\n            proxy_buffers 4 64k;\n            proxy_busy_buffers_size 128k;\n"
    } else {
        ""
    };
    format!(
        "daemon off;
worker_processes 1;
worker_rlimit_nofile 20000;
pid {d}/nginx.pid;
error_log {d}/error.log warn;
events {{
    worker_connections 19500;
    multi_accept on;
}}
http {{
    access_log off;
    client_body_temp_path {d}/client_body;
    proxy_temp_path {d}/proxy;
    fastcgi_temp_path {d}/fastcgi;
    uwsgi_temp_path {d}/uwsgi;
    scgi_temp_path {d}/scgi;
    upstream echo {{
        server {backend};
    }}
    server {{
        listen {listen}{ssl} backlog=4096;
{tls_conf}        location / {{
            proxy_pass http://echo;
            proxy_http_version 1.1;
            proxy_set_header Upgrade $http_upgrade;
            proxy_set_header Connection \"upgrade\";
            proxy_set_header Host $host;
            proxy_connect_timeout {CONNECT_TIMEOUT_S}s;
            proxy_read_timeout {IDLE_TIMEOUT_S}s;
            proxy_send_timeout {IDLE_TIMEOUT_S}s;
{buffer}        }}
    }}
}}
"
    )
}

fn haproxy_conf(
    listen: SocketAddr,
    backend: SocketAddr,
    tuned: bool,
    tls: Option<&CertFiles>,
) -> String {
    // TLS: the certificate and key in one file; session tickets and the
    // session cache are on by default.
    let ssl = match tls {
        Some(t) => format!(
            " ssl crt {} alpn http/1.1 ssl-min-ver TLSv1.2 ssl-max-ver TLSv1.3",
            t.combined.display()
        ),
        None => String::new(),
    };
    let bufsize = if tuned {
        "    tune.bufsize 65536\n"
    } else {
        ""
    };
    // maxconn 9500: two descriptors per proxied connection stay within the
    // 20,000 open files a process may hold here.
    format!(
        "global
    nbthread 1
    maxconn 9500
{bufsize}
defaults
    mode http
    timeout connect {CONNECT_TIMEOUT_S}s
    timeout client {IDLE_TIMEOUT_S}s
    timeout server {IDLE_TIMEOUT_S}s
    timeout tunnel {IDLE_TIMEOUT_S}s
    timeout http-request 10s
    maxconn 9500

frontend ws
    bind {listen}{ssl}
    default_backend echo

backend echo
    server echo1 {backend}
"
    )
}

/// wsedge's configuration for the tunnel contender (the one place that
/// knows the configuration schema).
fn wsedge_tunnel_conf(listen: SocketAddr, backend: SocketAddr) -> String {
    format!(
        "workers = 1

[[listener]]
address = \"{listen}\"

[[upstream]]
name = \"echo\"
servers = [\"{backend}\"]

[[route]]
path = \"/\"
upstream = \"echo\"
relay = \"tunnel\"
"
    )
}

/// The command prefix that pins to `cpus` and sets the priority.
pub fn pinned(cpus: &str, nice: Option<i32>) -> Command {
    let mut c = match nice {
        Some(n) => {
            let mut c = Command::new("nice");
            c.args(["-n", &n.to_string(), "taskset", "-c", cpus]);
            c
        }
        None => {
            let mut c = Command::new("taskset");
            c.args(["-c", cpus]);
            c
        }
    };
    c.stdin(Stdio::null());
    c
}

/// Starts `c` listening on `listen` in front of `backend`, pinned to `cpu`;
/// with `tls`, terminating TLS with that certificate (the backend stays
/// plain `ws`).
#[allow(clippy::too_many_arguments)]
pub fn start(
    c: Contender,
    bins: &Binaries,
    dir: &Path,
    cpu: &str,
    nice: Option<i32>,
    listen: SocketAddr,
    backend: SocketAddr,
    tls: Option<&CertFiles>,
) -> anyhow::Result<Running> {
    let dir = match tls {
        None => dir.join(c.name()),
        Some(t) => dir.join(format!("{}-tls-{}", c.name(), t.kind.name())),
    };
    std::fs::create_dir_all(&dir)?;
    let log = dir.join("stderr.log");
    let mut cmd = pinned(cpu, nice);
    match c {
        Contender::Direct => bail!("direct has no proxy"),
        Contender::Nginx | Contender::NginxTuned => {
            let conf = dir.join("nginx.conf");
            std::fs::write(
                &conf,
                nginx_conf(&dir, listen, backend, c == Contender::NginxTuned, tls),
            )?;
            let bin = bins.nginx.as_ref().context("nginx not found")?;
            cmd.arg(bin)
                .arg("-p")
                .arg(&dir)
                .arg("-e")
                .arg(dir.join("error.log"))
                .arg("-c")
                .arg(&conf);
        }
        Contender::Haproxy | Contender::HaproxyTuned => {
            let conf = dir.join("haproxy.cfg");
            std::fs::write(
                &conf,
                haproxy_conf(listen, backend, c == Contender::HaproxyTuned, tls),
            )?;
            let bin = bins.haproxy.as_ref().context("haproxy not found")?;
            // -db: stay in the foreground.
            cmd.arg(bin).arg("-db").arg("-f").arg(&conf);
        }
        Contender::Wsedge | Contender::WsedgeBefore => {
            let bin = if c == Contender::Wsedge {
                bins.wsedge.as_ref()
            } else {
                bins.wsedge_before.as_ref()
            }
            .context("wsedge not found")?;
            cmd.arg(bin).args([
                "--listen",
                &listen.to_string(),
                "--upstream",
                &backend.to_string(),
                "--workers",
                "1",
            ]);
            if let Some(t) = tls {
                cmd.arg("--tls-cert")
                    .arg(&t.cert)
                    .arg("--tls-key")
                    .arg(&t.key);
            }
        }
        Contender::WsedgeTunnel => {
            if tls.is_some() {
                bail!("wsedge-tunnel is not run over TLS");
            }
            let conf = dir.join("wsedge.toml");
            std::fs::write(&conf, wsedge_tunnel_conf(listen, backend))?;
            let bin = bins.wsedge.as_ref().context("wsedge not found")?;
            cmd.arg(bin).arg("--config").arg(&conf);
        }
    }
    cmd.current_dir(&dir)
        .stdout(Stdio::from(std::fs::File::create(dir.join("stdout.log"))?))
        .stderr(Stdio::from(std::fs::File::create(&log)?));
    let mut child = cmd
        .spawn()
        .with_context(|| format!("starting {}", c.name()))?;
    let pid = child.id();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            let err = std::fs::read_to_string(&log).unwrap_or_default();
            bail!("{} exited at start ({status}): {}", c.name(), err.trim());
        }
        if TcpStream::connect_timeout(&listen, Duration::from_millis(200)).is_ok() {
            break;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            bail!("{} did not listen on {listen} within 10 s", c.name());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(Running { child, pid })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addrs() -> (SocketAddr, SocketAddr) {
        (
            "127.0.0.1:8080".parse().unwrap(),
            "127.0.0.1:9001".parse().unwrap(),
        )
    }

    #[test]
    fn configs_differ_only_where_tuned() {
        let (l, b) = addrs();
        let dir = Path::new("/tmp/x");
        let shipped = nginx_conf(dir, l, b, false, None);
        let tuned = nginx_conf(dir, l, b, true, None);
        assert!(!shipped.contains("proxy_buffer_size"));
        assert!(tuned.contains("proxy_buffer_size 64k;"));
        for c in [&shipped, &tuned] {
            assert!(c.contains("worker_processes 1;"));
            assert!(c.contains("access_log off;"));
            assert!(c.contains("daemon off;"));
            assert!(c.contains("proxy_read_timeout 60s;"));
        }
        assert!(!shipped.contains("ssl"));
        let shipped = haproxy_conf(l, b, false, None);
        let tuned = haproxy_conf(l, b, true, None);
        assert!(!shipped.contains("tune.bufsize"));
        assert!(tuned.contains("tune.bufsize 65536"));
        assert!(shipped.contains("nbthread 1") && shipped.contains("timeout tunnel 60s"));
        assert!(!shipped.contains("ssl"));
        let t = wsedge_tunnel_conf(l, b);
        assert!(t.contains("relay = \"tunnel\"") && t.contains("servers = [\"127.0.0.1:9001\"]"));
    }

    #[test]
    fn tls_configs_terminate_tls_in_front_of_the_plain_backend() {
        let (l, b) = addrs();
        let files = CertFiles {
            kind: super::super::certs::CertKind::Ecdsa,
            cert: "/c/cert.pem".into(),
            key: "/c/key.pem".into(),
            combined: "/c/both.pem".into(),
        };
        let n = nginx_conf(Path::new("/tmp/x"), l, b, false, Some(&files));
        for line in [
            "listen 127.0.0.1:8080 ssl backlog=4096;",
            "ssl_certificate /c/cert.pem;",
            "ssl_certificate_key /c/key.pem;",
            "ssl_protocols TLSv1.2 TLSv1.3;",
            "ssl_session_tickets on;",
            "ssl_session_cache shared:SSL:10m;",
            "proxy_pass http://echo;",
        ] {
            assert!(n.contains(line), "{line} missing from\n{n}");
        }
        let h = haproxy_conf(l, b, true, Some(&files));
        assert!(h.contains(
            "bind 127.0.0.1:8080 ssl crt /c/both.pem alpn http/1.1 ssl-min-ver TLSv1.2 ssl-max-ver TLSv1.3\n"
        ));
        assert!(h.contains("server echo1 127.0.0.1:9001\n"));
    }

    #[test]
    fn contender_names_round_trip() {
        for c in Contender::ALL {
            assert_eq!(Contender::parse(c.name()), Some(c));
        }
        assert_eq!(
            Contender::ALL[0],
            Contender::Nginx,
            "nginx first: it sets the fixed rate"
        );
    }
}
