//! `wsload compare`: puts wsedge next to nginx and HAProxy.
//!
//! Starts the echo backend, then for each contender (no proxy, nginx and
//! HAProxy as shipped and tuned, wsedge, wsedge with `relay = "tunnel"`)
//! starts the proxy pinned to one CPU, runs the scenarios with wsload and the
//! echo server pinned to the other CPU(s), and stops the proxy by its PID.
//! Proxy CPU is read from `/proc/PID/stat` at the edges of each measured
//! window (by the `wsload run --watch` child). Results go to the terminal, to
//! `docs/benchmarks.md` (its `## Proxy comparison (wsload)` section) and to
//! SVG plots in `docs/img/`.
//!
//! `--tls` runs the same machinery over TLS: the proxies terminate TLS with
//! one openssl-made certificate (see `certs`) in front of the same plain
//! echo server, the scenarios are TLS handshakes (full and resumed), round
//! trips and idle memory (`tls_plan`), and the results go to their own
//! section, `## Proxy comparison over TLS (wsload)`. Each scenario names its
//! certificate; a proxy is started once per certificate.

mod certs;
mod doc;
mod proxy;

use std::collections::BTreeMap;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::connect::ConnectReport;
use crate::run::RunReport;
use crate::sys;
use certs::CertFiles;
pub use certs::CertKind;
pub use proxy::Contender;

/// Options of `wsload compare`.
#[derive(Debug, clap::Args)]
pub struct CompareArgs {
    /// About a minute: fewer scenarios, shorter runs, 3,000 idle connections.
    #[arg(long)]
    pub quick: bool,
    /// Contenders to run, comma separated (default: all available):
    /// direct, nginx, nginx-tuned, haproxy, haproxy-tuned, wsedge, wsedge-tunnel.
    #[arg(long, value_delimiter = ',')]
    pub only: Vec<String>,
    /// The wsedge binary.
    #[arg(long, default_value = "target/release/wsedge")]
    pub wsedge: PathBuf,
    /// Another wsedge build, run as contender `wsedge-before` next to
    /// `wsedge`: a data-path change's before/after in one run.
    #[arg(long)]
    pub wsedge_before: Option<PathBuf>,
    /// Markdown file whose `## Proxy comparison (wsload)` section is rewritten.
    #[arg(long, default_value = "docs/benchmarks.md")]
    pub doc: PathBuf,
    /// Directory for the SVG plots (linked from the markdown).
    #[arg(long, default_value = "docs/img")]
    pub img: PathBuf,
    /// Do not touch the markdown or the plots.
    #[arg(long)]
    pub no_doc: bool,
    /// Also write every figure as JSON here.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Keep the raw per-run JSON and logs here (default: a temporary dir).
    #[arg(long)]
    pub work_dir: Option<PathBuf>,
    /// Do not apt-get install missing nginx/HAProxy.
    #[arg(long)]
    pub no_install: bool,
    /// CPU for the proxy (default: the first allowed CPU).
    #[arg(long)]
    pub proxy_cpu: Option<usize>,
    /// CPUs for wsload and the echo server (default: the other allowed CPUs).
    #[arg(long)]
    pub load_cpus: Option<String>,
    /// Priority (nice) for the proxy, wsload and the echo server; the machine
    /// may be shared with builds. `--nice 0` leaves it alone.
    #[arg(long, default_value_t = -10, allow_hyphen_values = true)]
    pub nice: i32,
    /// Do not record `perf record -e cpu-clock` profiles of wsedge (extra,
    /// unmeasured 64 B and 16 KiB runs whose top symbols go in the report;
    /// never with --quick).
    #[arg(long)]
    pub no_profile: bool,
    /// Render the markdown and plots from a `--json` file of an earlier
    /// run instead of measuring.
    #[arg(long)]
    pub from_json: Option<PathBuf>,
    /// Override the measured seconds per run.
    #[arg(long, value_parser = crate::cli::parse_duration)]
    pub duration: Option<Duration>,
    /// Compare TLS termination instead: each proxy terminates TLS 1.3 (an
    /// ECDSA P-256 certificate for localhost, made with openssl) in front of
    /// the plain echo server; direct is the echo server terminating TLS
    /// itself. Measures CPU per full and per resumed handshake (upgrade
    /// included), per round trip at 64 B and 16 KiB, and memory per idle
    /// connection. Writes the `## Proxy comparison over TLS (wsload)`
    /// section.
    #[arg(long)]
    pub tls: bool,
    /// With --tls: also measure the handshakes with an RSA 2048 certificate.
    #[arg(long, requires = "tls")]
    pub tls_rsa: bool,
}

/// What a scenario measures.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Kind {
    /// Closed loop echo.
    Echo {
        size: usize,
        conns: usize,
        in_flight: usize,
    },
    /// Open loop at half of nginx's peak.
    Rate { size: usize, conns: usize },
    /// Handshake churn.
    Churn,
    /// TLS handshake churn (connect, TLS, upgrade, close): full handshakes,
    /// or resumed ones (`--tls-resume`).
    TlsChurn { resume: bool },
    /// Idle connections: RSS at `low` and at `high`.
    Idle { low: usize, high: usize },
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Scenario {
    pub key: String,
    pub label: String,
    pub kind: Kind,
    /// Over TLS with this kind of certificate; `None`: plain ws.
    #[serde(default)]
    pub cert: Option<CertKind>,
}

fn size_label(n: usize) -> String {
    if n >= 1024 && n % 1024 == 0 {
        format!("{} KiB", n / 1024)
    } else {
        format!("{n} B")
    }
}

fn plan(quick: bool) -> Vec<Scenario> {
    let mut v = Vec::new();
    let (sizes, conns): (&[usize], &[usize]) = if quick {
        (&[64, 16384], &[100])
    } else {
        (&[64, 1024, 16384, 262144], &[100, 1000])
    };
    for &c in conns {
        for &s in sizes {
            v.push(Scenario {
                key: format!("echo-{s}-{c}-1"),
                label: format!("{} × {c} conns", size_label(s)),
                kind: Kind::Echo {
                    size: s,
                    conns: c,
                    in_flight: 1,
                },
                cert: None,
            });
        }
    }
    v.push(Scenario {
        key: "echo-64-100-16".into(),
        label: "64 B × 100 conns × 16 in flight".into(),
        kind: Kind::Echo {
            size: 64,
            conns: 100,
            in_flight: 16,
        },
        cert: None,
    });
    v.push(Scenario {
        key: "rate-64-100".into(),
        label: "64 B × 100 conns, fixed rate".into(),
        kind: Kind::Rate {
            size: 64,
            conns: 100,
        },
        cert: None,
    });
    v.push(Scenario {
        key: "churn".into(),
        label: "handshake churn".into(),
        kind: Kind::Churn,
        cert: None,
    });
    let (low, high) = if quick { (1000, 3000) } else { (1000, 9000) };
    v.push(Scenario {
        key: "idle".into(),
        label: format!("idle {low} → {high}"),
        kind: Kind::Idle { low, high },
        cert: None,
    });
    v
}

/// The scenarios of `--tls`: full and resumed TLS 1.3 handshakes, round
/// trips at 64 B and 16 KiB, idle memory, with an ECDSA P-256 certificate;
/// with `rsa`, the handshakes again with an RSA 2048 one (the rest does not
/// depend on the key).
fn tls_plan(quick: bool, rsa: bool) -> Vec<Scenario> {
    let mut v = Vec::new();
    let mut kinds = vec![CertKind::Ecdsa];
    if rsa {
        kinds.push(CertKind::Rsa);
    }
    for kind in kinds {
        for (resume, what) in [(false, "full"), (true, "resumed")] {
            v.push(Scenario {
                key: format!("tls-{what}-{}", kind.name()),
                label: format!("{what} TLS 1.3 handshake, {}", kind.describe()),
                kind: Kind::TlsChurn { resume },
                cert: Some(kind),
            });
        }
        if kind != CertKind::Ecdsa {
            continue;
        }
        for size in [64, 16384] {
            v.push(Scenario {
                key: format!("tls-echo-{size}-100-1"),
                label: format!("{} × 100 conns over TLS", size_label(size)),
                kind: Kind::Echo {
                    size,
                    conns: 100,
                    in_flight: 1,
                },
                cert: Some(kind),
            });
        }
        let (low, high) = if quick { (1000, 3000) } else { (1000, 9000) };
        v.push(Scenario {
            key: "tls-idle".into(),
            label: format!("idle over TLS {low} → {high}"),
            kind: Kind::Idle { low, high },
            cert: Some(kind),
        });
    }
    v
}

/// One contender in one scenario.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct Outcome {
    pub contender: String,
    pub scenario: String,
    /// Why there is no figure, if there is none.
    pub failed: Option<String>,
    /// Messages (or handshakes) per second.
    pub per_s: f64,
    /// Proxy CPU µs per round trip (or handshake); none for direct.
    pub proxy_cpu: Option<f64>,
    /// Echo server CPU µs per round trip (or handshake).
    pub echo_cpu: f64,
    /// wsload CPU µs per round trip (or handshake).
    pub gen_cpu: f64,
    /// Share of the proxy's CPU it kept busy (0 to 1).
    pub proxy_busy: f64,
    /// Share of the load CPUs wsload and the echo server kept busy.
    pub load_busy: f64,
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub p999: f64,
    pub max: f64,
    pub errors: BTreeMap<String, u64>,
    pub curve: Vec<(f64, f64)>,
    /// Idle: RSS at the low and high counts, and the slope per connection.
    pub rss_low: Option<u64>,
    pub rss_high: Option<u64>,
    pub rss_per_conn: Option<f64>,
    /// Open loop: the rate asked for.
    pub rate: Option<f64>,
    /// System-wide during the run: packets dropped at a full input backlog,
    /// TCP retransmits, SYNs dropped at a full listen queue.
    pub backlog_drops: u64,
    pub retransmits: u64,
    pub listen_drops: u64,
    /// Over TLS: handshakes that resumed a session and full ones (churn),
    /// and the negotiated version and cipher suite.
    pub tls_resumed: u64,
    pub tls_full: u64,
    pub tls_session: Option<String>,
}

impl Outcome {
    fn failed(c: Contender, s: &Scenario, why: String) -> Self {
        Self {
            contender: c.name().into(),
            scenario: s.key.clone(),
            failed: Some(why),
            ..Self::default()
        }
    }

    pub fn errors_total(&self) -> u64 {
        self.errors.values().sum()
    }
}

/// Everything the comparison produced.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Comparison {
    pub command: String,
    pub date: String,
    pub machine: crate::report::Machine,
    pub proxy_cpu: String,
    pub load_cpus: String,
    pub nice: i32,
    pub warmup_s: f64,
    pub duration_s: f64,
    pub quick: bool,
    /// The TLS comparison (`--tls`).
    #[serde(default)]
    pub tls: bool,
    pub contenders: Vec<(String, String, String)>,
    pub scenarios: Vec<Scenario>,
    pub outcomes: Vec<Outcome>,
    pub notes: Vec<String>,
    pub profiles: Vec<(String, String, String)>,
}

impl Comparison {
    pub fn get(&self, contender: &str, scenario: &str) -> Option<&Outcome> {
        self.outcomes
            .iter()
            .find(|o| o.contender == contender && o.scenario == scenario && o.failed.is_none())
    }
}

/// The harness: directories, CPUs, the echo server and the wsload binary.
struct Harness {
    exe: PathBuf,
    dir: PathBuf,
    proxy_cpu: String,
    load_cpus: String,
    load_n: usize,
    nice: Option<i32>,
    warmup: Duration,
    duration: Duration,
    echo_pid: u32,
    runs: usize,
    /// Pause before reading RSS with idle connections open.
    settle: Duration,
}

fn free_port() -> anyhow::Result<SocketAddr> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?)
}

fn wait_port(addr: SocketAddr, child: &mut Child) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(10);
    while TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
        if let Ok(Some(s)) = child.try_wait() {
            bail!("exited at start: {s}");
        }
        if Instant::now() > deadline {
            bail!("not listening on {addr} after 10 s");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

fn kill_wait(child: &mut Child) {
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
}

impl Harness {
    fn wsload(&self) -> Command {
        let mut c = proxy::pinned(&self.load_cpus, self.nice);
        c.arg(&self.exe);
        c
    }

    /// Runs a wsload child that writes `--json`, with a time limit.
    fn child_json<T: DeserializeOwned>(
        &mut self,
        mut cmd: Command,
        name: &str,
        limit: Duration,
    ) -> anyhow::Result<T> {
        self.runs += 1;
        let json = self.dir.join(format!("{:03}-{name}.json", self.runs));
        let log = self.dir.join(format!("{:03}-{name}.log", self.runs));
        cmd.arg("--json")
            .arg(&json)
            .stdout(Stdio::from(std::fs::File::create(&log)?))
            .stderr(Stdio::from(
                std::fs::File::options().append(true).open(&log)?,
            ));
        let mut child = cmd.spawn().context("starting wsload")?;
        let deadline = Instant::now() + limit;
        let status = loop {
            if let Some(s) = child.try_wait()? {
                break s;
            }
            if Instant::now() > deadline {
                kill_wait(&mut child);
                bail!(
                    "wsload did not finish within {limit:?} (log: {})",
                    log.display()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        if !status.success() {
            let tail = std::fs::read_to_string(&log).unwrap_or_default();
            bail!(
                "wsload failed ({status}): {}",
                tail.lines().last().unwrap_or("")
            );
        }
        let text = std::fs::read_to_string(&json)
            .with_context(|| format!("reading {}", json.display()))?;
        Ok(serde_json::from_str(&text)?)
    }

    fn limit(&self) -> Duration {
        self.warmup + self.duration + Duration::from_secs(30)
    }

    fn common(&self, cmd: &mut Command, proxy_pid: Option<u32>) {
        cmd.args(["--workers", &self.load_n.to_string()]);
        cmd.arg("--warmup")
            .arg(format!("{}s", self.warmup.as_secs_f64()))
            .arg("--duration")
            .arg(format!("{}s", self.duration.as_secs_f64()));
        if let Some(p) = proxy_pid {
            cmd.arg("--watch").arg(format!("proxy={p}"));
        }
        cmd.arg("--watch").arg(format!("echo={}", self.echo_pid));
    }

    fn outcome_from_run(&self, c: Contender, s: &Scenario, r: &RunReport) -> Outcome {
        let find = |n: &str| r.watched.iter().find(|w| w.name == n);
        let echo = find("echo");
        let proxy = find("proxy");
        let window_us = (r.measured_s * 1e6).max(1.0);
        let echo_us = echo.map_or(0, |w| w.cpu_us);
        Outcome {
            contender: c.name().into(),
            scenario: s.key.clone(),
            failed: None,
            per_s: r.messages_per_s,
            proxy_cpu: proxy.map(|w| w.cpu_us_per_op),
            echo_cpu: echo.map_or(0.0, |w| w.cpu_us_per_op),
            gen_cpu: r.generator_cpu_us_per_op,
            proxy_busy: proxy.map_or(0.0, |w| w.cpu_us as f64 / window_us),
            load_busy: (r.generator_cpu_us + echo_us) as f64 / window_us / self.load_n as f64,
            p50: r.latency_us.p50,
            p90: r.latency_us.p90,
            p99: r.latency_us.p99,
            p999: r.latency_us.p999,
            max: r.latency_us.max,
            errors: r.errors.clone(),
            curve: r.percentile_curve.clone(),
            rate: r.params.rate,
            tls_session: r.tls_session.clone(),
            ..Outcome::default()
        }
    }

    /// Starts an echo server that terminates TLS itself (the direct
    /// contender over TLS), on the load CPUs like the plain one.
    fn tls_echo(&self, addr: SocketAddr, t: &CertFiles) -> anyhow::Result<Child> {
        let mut cmd = self.wsload();
        cmd.args([
            "echo",
            "--listen",
            &addr.to_string(),
            "--workers",
            &self.load_n.to_string(),
        ])
        .arg("--tls-cert")
        .arg(&t.cert)
        .arg("--tls-key")
        .arg(&t.key)
        .stdout(Stdio::null())
        .stderr(Stdio::from(std::fs::File::create(
            self.dir.join(format!("echo-tls-{}.log", t.kind.name())),
        )?));
        let mut child = cmd.spawn().context("starting the TLS echo server")?;
        if let Err(e) = wait_port(addr, &mut child) {
            kill_wait(&mut child);
            return Err(e.context("TLS echo server"));
        }
        Ok(child)
    }

    fn echo_run(
        &mut self,
        c: Contender,
        s: &Scenario,
        url: &str,
        proxy_pid: Option<u32>,
        extra: &[String],
    ) -> anyhow::Result<Outcome> {
        let mut cmd = self.wsload();
        cmd.arg("run").arg(url).args(extra);
        self.common(&mut cmd, proxy_pid);
        let r: RunReport =
            self.child_json(cmd, &format!("{}-{}", c.name(), s.key), self.limit())?;
        Ok(self.outcome_from_run(c, s, &r))
    }

    /// Handshake churn, 16 loops back to back per worker (`extra`: the TLS
    /// flags).
    fn churn(
        &mut self,
        c: Contender,
        s: &Scenario,
        url: &str,
        proxy_pid: Option<u32>,
        extra: &[String],
    ) -> anyhow::Result<Outcome> {
        let mut cmd = self.wsload();
        cmd.arg("connect")
            .arg(url)
            .args(["--max", "--concurrency", "16", "--source-ips"])
            .args(extra);
        self.common(&mut cmd, proxy_pid);
        let r: ConnectReport =
            self.child_json(cmd, &format!("{}-{}", c.name(), s.key), self.limit())?;
        let find = |n: &str| r.watched.iter().find(|w| w.name == n);
        let window_us = (r.measured_s * 1e6).max(1.0);
        let echo_us = find("echo").map_or(0, |w| w.cpu_us);
        Ok(Outcome {
            contender: c.name().into(),
            scenario: s.key.clone(),
            per_s: r.handshakes_per_s,
            proxy_cpu: find("proxy").map(|w| w.cpu_us_per_op),
            echo_cpu: find("echo").map_or(0.0, |w| w.cpu_us_per_op),
            gen_cpu: r.generator_cpu_us_per_op,
            proxy_busy: find("proxy").map_or(0.0, |w| w.cpu_us as f64 / window_us),
            load_busy: (r.generator_cpu_us + echo_us) as f64 / window_us / self.load_n as f64,
            p50: r.latency_us.p50,
            p90: r.latency_us.p90,
            p99: r.latency_us.p99,
            p999: r.latency_us.p999,
            max: r.latency_us.max,
            errors: r.errors.clone(),
            curve: r.percentile_curve.clone(),
            tls_resumed: r.tls_resumed,
            tls_full: r.tls_full,
            tls_session: r.tls_session.clone(),
            ..Outcome::default()
        })
    }

    /// Opens `low` idle connections, reads the RSS of `pid`, opens more up to
    /// `high`, reads it again: the slope is the memory per connection
    /// (`extra`: the TLS flags).
    #[allow(clippy::too_many_arguments)]
    fn idle(
        &mut self,
        c: Contender,
        s: &Scenario,
        url: &str,
        pid: u32,
        low: usize,
        high: usize,
        extra: &[String],
    ) -> anyhow::Result<Outcome> {
        let mut children: Vec<Child> = Vec::new();
        let result = (|| -> anyhow::Result<Outcome> {
            let mut rss = Vec::new();
            for (i, n) in [low, high - low].into_iter().enumerate() {
                self.runs += 1;
                let ready = self
                    .dir
                    .join(format!("{:03}-{}-idle-{i}.ready", self.runs, c.name()));
                let log = self
                    .dir
                    .join(format!("{:03}-{}-idle-{i}.log", self.runs, c.name()));
                let mut cmd = self.wsload();
                cmd.arg("idle")
                    .arg(url)
                    .args([
                        "--connections",
                        &n.to_string(),
                        "--source-ips",
                        "--duration",
                        "600s",
                    ])
                    .args(["--workers", &self.load_n.to_string()])
                    .args(extra)
                    .arg("--ready-file")
                    .arg(&ready)
                    .stdout(Stdio::from(std::fs::File::create(&log)?))
                    .stderr(Stdio::null());
                children.push(cmd.spawn()?);
                let deadline = Instant::now() + Duration::from_secs(60);
                while !ready.exists() {
                    if Instant::now() > deadline {
                        bail!("{n} idle connections did not open within 60 s");
                    }
                    std::thread::sleep(Duration::from_millis(50));
                }
                let opened: usize = std::fs::read_to_string(&ready)?.trim().parse().unwrap_or(0);
                if opened < n {
                    bail!("only {opened} of {n} idle connections opened");
                }
                // Let the proxy settle (lazy frees, deferred work).
                std::thread::sleep(self.settle);
                rss.push(sys::tree_rss_bytes(pid).context("reading RSS")?);
            }
            let slope = (rss[1] as f64 - rss[0] as f64) / (high - low) as f64;
            Ok(Outcome {
                contender: c.name().into(),
                scenario: s.key.clone(),
                rss_low: Some(rss[0]),
                rss_high: Some(rss[1]),
                rss_per_conn: Some(slope),
                ..Outcome::default()
            })
        })();
        for ch in &mut children {
            kill_wait(ch);
        }
        // Give the proxy a moment to close the connections.
        std::thread::sleep(Duration::from_millis(500));
        result
    }
}

/// Starts a `perf record` of `pid` for `secs`, if perf is there.
fn start_profile(pid: u32, out: &Path, secs: f64) -> Option<Child> {
    Command::new("perf")
        .args([
            "record",
            "-e",
            "cpu-clock",
            "-g",
            "-p",
            &pid.to_string(),
            "-o",
        ])
        .arg(out)
        .args(["--", "sleep", &format!("{secs:.1}")])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .ok()
}

/// Where the time went: by binary (kernel, wsedge, libc), then the top
/// symbols.
fn profile_report(data: &Path) -> String {
    let report = |sort: &str, limit: &str, lines: usize| -> String {
        let out = Command::new("perf")
            .args(["report", "--stdio", "--no-children", "-g", "none"])
            .args(["--sort", sort, "--percent-limit", limit, "-i"])
            .arg(data)
            .output();
        match out {
            Ok(o) => String::from_utf8_lossy(&o.stdout)
                .lines()
                .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
                .take(lines)
                .map(|l| l.trim_end_matches([' ', '-']))
                .collect::<Vec<_>>()
                .join("\n"),
            Err(e) => format!("perf report failed: {e}"),
        }
    };
    format!(
        "{}\n\n{}",
        report("dso", "0.5", 8),
        report("dso,symbol", "1", 25)
    )
}

fn cpu_list(ids: &[usize]) -> String {
    ids.iter()
        .map(usize::to_string)
        .collect::<Vec<_>>()
        .join(",")
}

pub fn run(a: CompareArgs) -> anyhow::Result<()> {
    if let Some(p) = &a.from_json {
        let text =
            std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?;
        let cmp: Comparison = serde_json::from_str(&text)?;
        return publish(&cmp, &a);
    }
    let started = Instant::now();
    let command = std::env::args().collect::<Vec<_>>().join(" ");
    let exe = std::env::current_exe().context("locating the wsload binary")?;
    let cpus: Vec<usize> = crate::net::allowed_cpus().iter().map(|c| c.id).collect();
    anyhow::ensure!(!cpus.is_empty(), "no CPU to run on");
    let mut notes = Vec::new();
    let proxy_cpu = a.proxy_cpu.unwrap_or(cpus[0]);
    let load: Vec<usize> = match &a.load_cpus {
        Some(s) => s
            .split(',')
            .map(|x| x.trim().parse().context("--load-cpus"))
            .collect::<anyhow::Result<_>>()?,
        None => {
            let rest: Vec<usize> = cpus.iter().copied().filter(|&c| c != proxy_cpu).collect();
            if rest.is_empty() {
                notes.push(
                    "only one CPU: the proxy shares it with wsload and the echo server".into(),
                );
                vec![proxy_cpu]
            } else {
                rest
            }
        }
    };
    let nice = (a.nice != 0).then_some(a.nice);
    let (warmup, duration) = if a.quick {
        (Duration::from_millis(300), Duration::from_secs(1))
    } else {
        (Duration::from_secs(1), Duration::from_secs(3))
    };
    let duration = a.duration.unwrap_or(duration);
    let mut bins = proxy::find_binaries(!a.no_install, &a.wsedge, &mut notes);
    bins.wsedge_before = a.wsedge_before.clone().filter(|p| p.is_file());
    bins.wsedge_before_tls = bins
        .wsedge_before
        .as_deref()
        .is_some_and(|p| proxy::takes_flag(p, "--tls-cert"));
    let dir = match &a.work_dir {
        Some(d) => d.clone(),
        None => std::env::temp_dir().join(format!("wsload-compare-{}", std::process::id())),
    };
    std::fs::create_dir_all(&dir)?;
    let backend = free_port()?;
    let listen = free_port()?;
    let mut h = Harness {
        exe,
        dir: dir.clone(),
        proxy_cpu: proxy_cpu.to_string(),
        load_cpus: cpu_list(&load),
        load_n: load.len(),
        nice,
        warmup,
        duration,
        echo_pid: 0,
        runs: 0,
        settle: if a.quick {
            Duration::from_millis(700)
        } else {
            Duration::from_millis(1500)
        },
    };
    println!(
        "wsload compare{}{}: proxy on CPU {}, wsload + echo on CPU(s) {}, nice {}, warmup {:?}, measured {:?} per run; work dir {}",
        if a.quick { " --quick" } else { "" },
        if a.tls { " --tls" } else { "" },
        h.proxy_cpu,
        h.load_cpus,
        a.nice,
        warmup,
        duration,
        dir.display()
    );
    let scenarios = if a.tls {
        tls_plan(a.quick, a.tls_rsa)
    } else {
        plan(a.quick)
    };
    // Each certificate once, in the order the scenarios use them; a proxy
    // is started once per certificate (`None`: plain ws).
    let mut groups: Vec<Option<CertKind>> = Vec::new();
    for s in &scenarios {
        if !groups.contains(&s.cert) {
            groups.push(s.cert);
        }
    }
    // Made before any process starts: a failure leaves nothing behind.
    let mut certs: Vec<CertFiles> = Vec::new();
    for kind in groups.iter().flatten() {
        certs.push(certs::generate(&dir.join("certs"), *kind)?);
    }
    let tls_backend = free_port()?;
    let mut echo = {
        let mut cmd = h.wsload();
        cmd.args([
            "echo",
            "--listen",
            &backend.to_string(),
            "--workers",
            &h.load_n.to_string(),
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::from(std::fs::File::create(dir.join("echo.log"))?));
        cmd.spawn().context("starting the echo server")?
    };
    wait_port(backend, &mut echo).context("echo server")?;
    h.echo_pid = echo.id();

    let wanted: Vec<Contender> = if a.only.is_empty() {
        Contender::ALL.to_vec()
    } else {
        a.only
            .iter()
            .map(|s| Contender::parse(s).with_context(|| format!("unknown contender {s:?}")))
            .collect::<anyhow::Result<_>>()?
    };
    // Always in the order of Contender::ALL: nginx first, so that the
    // fixed-rate run can be set to half of its peak.
    let contenders: Vec<Contender> = Contender::ALL
        .into_iter()
        .filter(|c| wanted.contains(c) && proxy::available(*c, &bins))
        .filter(
            |&c| match proxy::tls_unavailable(c, &bins).filter(|_| a.tls) {
                Some(why) => {
                    notes.push(why.into());
                    false
                }
                None => true,
            },
        )
        .collect();
    let mut outcomes: Vec<Outcome> = Vec::new();
    let mut fixed_rate: Option<f64> = None;
    let mut profiles = Vec::new();
    let mut ran: Vec<Contender> = Vec::new();
    for &c in &contenders {
        println!("== {} ({})", c.name(), c.describe());
        for (gi, group) in groups.iter().enumerate() {
            let tls = group.and_then(|k| certs.iter().find(|f| f.kind == k));
            // Direct over TLS: the echo server terminates TLS itself.
            let mut direct_echo: Option<Child> = None;
            let running = if c == Contender::Direct {
                if let Some(t) = tls {
                    match h.tls_echo(tls_backend, t) {
                        Ok(e) => direct_echo = Some(e),
                        Err(e) => {
                            notes.push(format!("direct: {e:#}"));
                            eprintln!("compare: direct: {e:#}");
                            continue;
                        }
                    }
                }
                None
            } else {
                match proxy::start(c, &bins, &dir, &h.proxy_cpu, nice, listen, backend, tls) {
                    Ok(r) => Some(r),
                    Err(e) => {
                        notes.push(format!("{}: {e:#}", c.name()));
                        eprintln!("compare: {}: {e:#}", c.name());
                        continue;
                    }
                }
            };
            if !ran.contains(&c) {
                ran.push(c);
            }
            let addr = match (c, tls) {
                (Contender::Direct, None) => backend,
                (Contender::Direct, Some(_)) => tls_backend,
                _ => listen,
            };
            // wss://localhost:…: SNI and the certificate's name; wsload
            // dials localhost's IPv4 address.
            let url = match tls {
                None => format!("ws://{addr}/"),
                Some(_) => format!("wss://localhost:{}/", addr.port()),
            };
            let tls_args: Vec<String> = match tls {
                None => Vec::new(),
                Some(t) => vec![
                    "--ca".into(),
                    t.cert.display().to_string(),
                    "--tls-version".into(),
                    "1.3".into(),
                ],
            };
            if let Some(t) = tls {
                println!("   TLS, {} certificate", t.kind.describe());
            }
            let plain_echo_pid = h.echo_pid;
            if let Some(e) = &direct_echo {
                h.echo_pid = e.id();
            }
            let pid = running.as_ref().map(|r| r.pid);
            for s in scenarios.iter().filter(|s| s.cert == *group) {
                let net_before = sys::NetCounters::read();
                let res = match s.kind {
                    Kind::Echo {
                        size,
                        conns,
                        in_flight,
                    } => {
                        let mut extra: Vec<String> = vec![
                            "--connections".into(),
                            conns.to_string(),
                            "--size".into(),
                            size.to_string(),
                            "--in-flight".into(),
                            in_flight.to_string(),
                        ];
                        extra.extend(tls_args.iter().cloned());
                        h.echo_run(c, s, &url, pid, &extra)
                    }
                    Kind::Rate { size, conns } => {
                        let rate = match fixed_rate {
                            Some(r) => Some(r),
                            None => {
                                // Half of nginx's peak; the first contender's if
                                // nginx is not in the run.
                                let key = format!("echo-{size}-{conns}-1");
                                let peak = outcomes
                                    .iter()
                                    .find(|o| {
                                        o.contender == "nginx"
                                            && o.scenario == key
                                            && o.failed.is_none()
                                    })
                                    .or_else(|| {
                                        outcomes
                                            .iter()
                                            .find(|o| o.scenario == key && o.failed.is_none())
                                    })
                                    .map(|o| o.per_s);
                                fixed_rate =
                                    peak.map(|p| (p / 2.0 / 1000.0).round().max(1.0) * 1000.0);
                                fixed_rate
                            }
                        };
                        match rate {
                            None => Err(anyhow::anyhow!(
                                "no peak measured to derive the fixed rate from"
                            )),
                            Some(rate) => {
                                let mut extra: Vec<String> = vec![
                                    "--connections".into(),
                                    conns.to_string(),
                                    "--size".into(),
                                    size.to_string(),
                                    "--rate".into(),
                                    format!("{rate}"),
                                ];
                                extra.extend(tls_args.iter().cloned());
                                h.echo_run(c, s, &url, pid, &extra)
                            }
                        }
                    }
                    Kind::Churn => h.churn(c, s, &url, pid, &tls_args),
                    Kind::TlsChurn { resume } => {
                        let mut extra = tls_args.clone();
                        if resume {
                            extra.push("--tls-resume".into());
                        }
                        h.churn(c, s, &url, pid, &extra)
                    }
                    Kind::Idle { low, high } => {
                        h.idle(c, s, &url, pid.unwrap_or(h.echo_pid), low, high, &tls_args)
                    }
                };
                let mut o = res.unwrap_or_else(|e| Outcome::failed(c, s, format!("{e:#}")));
                let net = sys::NetCounters::read().since(net_before);
                o.backlog_drops = net.backlog_drops;
                o.retransmits = net.retransmits;
                o.listen_drops = net.listen_drops;
                print_outcome(s, &o);
                outcomes.push(o);
            }
            // Profiles come from extra runs, so that perf's own cost is not in
            // the figures above.
            let profile = gi == 0 && c.is_wsedge() && !a.no_profile && !a.quick;
            if let (Some(pid), true) = (pid, profile) {
                for size in [64usize, 16384] {
                    let data = dir.join(format!("perf-{}-{size}.data", c.name()));
                    let secs = (warmup + duration).as_secs_f64();
                    let Some(mut perf) = start_profile(pid, &data, secs) else {
                        notes.push("perf is not available: no profile of wsedge".into());
                        break;
                    };
                    let s = Scenario {
                        key: format!("profile-{size}"),
                        label: format!(
                            "{} × 100 conns{}",
                            size_label(size),
                            if tls.is_some() { " over TLS" } else { "" }
                        ),
                        kind: Kind::Echo {
                            size,
                            conns: 100,
                            in_flight: 1,
                        },
                        cert: *group,
                    };
                    let mut extra: Vec<String> =
                        ["--connections", "100", "--size", &size.to_string()]
                            .map(String::from)
                            .to_vec();
                    extra.extend(tls_args.iter().cloned());
                    let _ = h.echo_run(c, &s, &url, Some(pid), &extra);
                    let _ = perf.wait();
                    profiles.push((c.name().to_string(), s.label, profile_report(&data)));
                }
            }
            h.echo_pid = plain_echo_pid;
            if let Some(r) = running {
                r.stop();
            }
            if let Some(mut e) = direct_echo {
                kill_wait(&mut e);
            }
        }
    }
    kill_wait(&mut echo);
    let cmp = Comparison {
        command,
        date: date_utc(),
        machine: crate::report::Machine::describe(),
        proxy_cpu: h.proxy_cpu.clone(),
        load_cpus: h.load_cpus.clone(),
        nice: a.nice,
        warmup_s: warmup.as_secs_f64(),
        duration_s: duration.as_secs_f64(),
        quick: a.quick,
        tls: a.tls,
        contenders: ran
            .iter()
            .map(|&c| {
                (
                    c.name().to_string(),
                    c.describe().to_string(),
                    proxy::version(c, &bins),
                )
            })
            .collect(),
        scenarios,
        outcomes,
        notes,
        profiles,
    };
    if let Some(p) = &a.json {
        crate::report::write_json(p, &cmp)?;
    }
    publish(&cmp, &a)?;
    println!("compare took {:.0} s", started.elapsed().as_secs_f64());
    Ok(())
}

/// Prints the markdown and, unless `--no-doc`, writes it and the plots.
fn publish(cmp: &Comparison, a: &CompareArgs) -> anyhow::Result<()> {
    let (md, heading) = if cmp.tls {
        (doc::render_tls(cmp), doc::TLS_HEADING)
    } else {
        (doc::render(cmp, &a.img), doc::HEADING)
    };
    println!("\n{md}");
    if !a.no_doc {
        if !cmp.tls {
            doc::write_plots(cmp, &a.img)?;
        }
        doc::update_section(&a.doc, heading, &md)?;
        println!("wrote {} and plots in {}", a.doc.display(), a.img.display());
    }
    Ok(())
}

fn print_outcome(s: &Scenario, o: &Outcome) {
    if let Some(why) = &o.failed {
        println!("  {:<34} FAILED: {why}", s.label);
        return;
    }
    let mut errs = if o.errors.is_empty() {
        String::new()
    } else {
        format!(" | ERRORS {:?}", o.errors)
    };
    if o.backlog_drops + o.listen_drops > 0 {
        errs += &format!(
            " | dropped: {} at the input backlog, {} SYNs; {} retransmits",
            o.backlog_drops, o.listen_drops, o.retransmits
        );
    }
    if o.tls_resumed + o.tls_full > 0 {
        errs += &format!(
            " | {} of {} TLS handshakes resumed",
            o.tls_resumed,
            o.tls_resumed + o.tls_full
        );
    }
    match s.kind {
        Kind::Idle { .. } => println!(
            "  {:<34} RSS {:.1} → {:.1} MB: {:.0} B per connection",
            s.label,
            o.rss_low.unwrap_or(0) as f64 / 1e6,
            o.rss_high.unwrap_or(0) as f64 / 1e6,
            o.rss_per_conn.unwrap_or(0.0)
        ),
        _ => println!(
            "  {:<34} {:>9.0}/s | proxy {} | echo {:.2} µs | p50 {:.0} p99 {:.0} µs | proxy busy {:.0}% load busy {:.0}%{errs}",
            s.label,
            o.per_s,
            o.proxy_cpu.map_or("-".into(), |v| format!("{v:.2} µs")),
            o.echo_cpu,
            o.p50,
            o.p99,
            o.proxy_busy * 100.0,
            o.load_busy * 100.0
        ),
    }
}

/// Today's date, UTC, from the system clock (no dependency for this).
fn date_utc() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let days = (secs / 86400) as i64;
    // Civil from days (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = if m <= 2 { y + 1 } else { y };
    format!("{y:04}-{m:02}-{d:02}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn full_plan_has_every_scenario() {
        let p = plan(false);
        assert_eq!(p.len(), 8 + 4);
        assert!(p.iter().any(|s| s.key == "echo-262144-1000-1"));
        assert!(plan(true).len() < p.len());
        assert!(p.iter().all(|s| s.cert.is_none()));
    }

    #[test]
    fn tls_plan_has_handshakes_round_trips_and_idle() {
        let p = tls_plan(false, false);
        let keys: Vec<&str> = p.iter().map(|s| s.key.as_str()).collect();
        assert_eq!(
            keys,
            [
                "tls-full-ecdsa",
                "tls-resumed-ecdsa",
                "tls-echo-64-100-1",
                "tls-echo-16384-100-1",
                "tls-idle"
            ]
        );
        assert!(p.iter().all(|s| s.cert == Some(CertKind::Ecdsa)));
        let rsa = tls_plan(true, true);
        assert_eq!(rsa.len(), p.len() + 2);
        assert!(
            rsa.iter()
                .any(|s| s.key == "tls-full-rsa" && s.kind == Kind::TlsChurn { resume: false })
        );
        // Keys are unique: outcomes are found by contender and key.
        let mut keys: Vec<&str> = rsa.iter().map(|s| s.key.as_str()).collect();
        keys.sort_unstable();
        keys.dedup();
        assert_eq!(keys.len(), rsa.len());
    }
}
