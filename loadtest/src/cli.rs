//! Command-line arguments.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

/// Thread-per-core WebSocket load generator and echo server.
#[derive(Debug, Parser)]
#[command(name = "wsload", version, about, long_about = None)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Echo round trips against URL (the default subcommand).
    Run(RunArgs),
    /// Run a fast RFC 6455 echo server.
    Echo(EchoArgs),
    /// Handshake churn: connect, upgrade, close, repeat.
    Connect(ConnectArgs),
    /// Open and hold N connections (for memory-per-connection figures).
    Idle(IdleArgs),
    /// Compare direct, wsedge, nginx and HAProxy (needs root on Debian).
    Compare(crate::compare::CompareArgs),
}

/// Parses `1.5`, `1.5s`, `250ms`, `2m`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (num, scale) = if let Some(n) = s.strip_suffix("ms") {
        (n, 1e-3)
    } else if let Some(n) = s.strip_suffix("us") {
        (n, 1e-6)
    } else if let Some(n) = s.strip_suffix('s') {
        (n, 1.0)
    } else if let Some(n) = s.strip_suffix('m') {
        (n, 60.0)
    } else {
        (s, 1.0)
    };
    let v: f64 = num
        .trim()
        .parse()
        .map_err(|_| format!("not a duration: {s:?}"))?;
    if !(v >= 0.0 && v.is_finite()) {
        return Err(format!("not a duration: {s:?}"));
    }
    Ok(Duration::from_secs_f64(v * scale))
}

/// Options every client subcommand shares.
#[derive(Debug, Args, Clone)]
pub struct ClientArgs {
    /// Worker threads (one monoio runtime each, pinned to the allowed CPUs).
    #[arg(long, short = 'w')]
    pub workers: Option<usize>,
    /// Do not pin workers to CPUs.
    #[arg(long)]
    pub no_pin: bool,
    /// Per-operation timeout (connect, handshake, message round trip).
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    pub timeout: Duration,
    /// Spread source addresses over a range (default 127.0.0.2-127.0.0.255)
    /// or a comma list, to get past ~28k ephemeral ports per address pair.
    #[arg(long, num_args = 0..=1, default_missing_value = "127.0.0.2-127.0.0.255")]
    pub source_ips: Option<String>,
    /// Write every figure and the parameters as JSON.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Write the latency percentile curve as SVG.
    #[arg(long)]
    pub plot: Option<PathBuf>,
    /// Read this process's CPU (utime+stime, with its children) at the
    /// edges of the measured window: `NAME=PID` or `PID`. Repeatable.
    #[arg(long)]
    pub watch: Vec<String>,
    /// An extra header on every upgrade request: `"Name: value"`
    /// (`--header "Authorization: Bearer $TOKEN"`). Repeatable.
    #[arg(long = "header", short = 'H', value_name = "NAME: VALUE")]
    pub headers: Vec<String>,
    #[command(flatten)]
    pub tls: TlsArgs,
}

/// TLS options of the client subcommands (for `wss://` URLs).
#[derive(Debug, Args, Clone)]
pub struct TlsArgs {
    /// wss://: trust the CA certificates in this PEM file (default: the
    /// system's roots).
    #[arg(long, value_name = "FILE", conflicts_with = "insecure")]
    pub ca: Option<PathBuf>,
    /// wss://: do not verify the server's certificate (its handshake
    /// signatures are still checked).
    #[arg(long)]
    pub insecure: bool,
    /// wss://: offer only this TLS version (default: 1.3 and 1.2).
    #[arg(long, value_name = "VERSION", value_parser = ["1.2", "1.3"])]
    pub tls_version: Option<String>,
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// ws://host:port/path or wss://host:port/path
    pub url: String,
    /// Concurrent connections.
    #[arg(long, short = 'c', default_value_t = 100)]
    pub connections: usize,
    /// Message size in bytes: `64`, a list `64,1k,16k` (picked at random) or
    /// a range `64..4k`.
    #[arg(long, short = 's', default_value = "64")]
    pub size: String,
    /// Messages in flight per connection (closed loop).
    #[arg(long, short = 'k', default_value_t = 1)]
    pub in_flight: usize,
    /// Messages per second in total (open loop; latency corrected for
    /// coordinated omission). Overrides --in-flight.
    #[arg(long, short = 'r')]
    pub rate: Option<f64>,
    /// Measured time.
    #[arg(long, short = 'd', default_value = "10s", value_parser = parse_duration)]
    pub duration: Duration,
    /// Time before measuring starts (connections are opened during it).
    #[arg(long, default_value = "2s", value_parser = parse_duration)]
    pub warmup: Duration,
    /// Send text messages.
    #[arg(long, conflicts_with = "binary")]
    pub text: bool,
    /// Send binary messages (the default).
    #[arg(long)]
    pub binary: bool,
    /// Pack all messages that are ready into one write. By default each
    /// message is its own write, as from independent senders, so that with
    /// --in-flight K a proxy sees K segments, not one.
    #[arg(long)]
    pub coalesce: bool,
    /// Largest message accepted from the server.
    #[arg(long, default_value_t = 64 << 20)]
    pub max_message: usize,
    #[command(flatten)]
    pub client: ClientArgs,
}

#[derive(Debug, Args)]
pub struct EchoArgs {
    /// Address to listen on.
    #[arg(long, short = 'l', default_value = "127.0.0.1:9001")]
    pub listen: SocketAddr,
    /// Worker threads (SO_REUSEPORT listener each).
    #[arg(long, short = 'w')]
    pub workers: Option<usize>,
    /// Do not pin workers to CPUs.
    #[arg(long)]
    pub no_pin: bool,
    /// Largest message accepted.
    #[arg(long, default_value_t = 64 << 20)]
    pub max_message: usize,
    /// Serve TLS (wss://) with this PEM certificate chain (TLS 1.3 and 1.2,
    /// ALPN http/1.1, session tickets on).
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// The PEM private key of --tls-cert.
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// Testing: flip one byte in every Nth echoed message.
    #[arg(long, hide = true, default_value_t = 0)]
    pub corrupt_every: u64,
}

#[derive(Debug, Args)]
pub struct ConnectArgs {
    /// ws://host:port/path or wss://host:port/path
    pub url: String,
    /// Handshakes per second in total (open loop).
    #[arg(long, short = 'r', conflicts_with = "max")]
    pub rate: Option<f64>,
    /// As fast as possible: --concurrency loops back to back.
    #[arg(long)]
    pub max: bool,
    /// Concurrent handshake loops per worker with --max.
    #[arg(long, default_value_t = 32)]
    pub concurrency: usize,
    #[arg(long, short = 'd', default_value = "10s", value_parser = parse_duration)]
    pub duration: Duration,
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    pub warmup: Duration,
    /// wss://: resume TLS sessions (tickets) through one session store that
    /// all workers share; by default every handshake is a full one. The
    /// report counts the resumed handshakes.
    #[arg(long)]
    pub tls_resume: bool,
    #[command(flatten)]
    pub client: ClientArgs,
}

#[derive(Debug, Args)]
pub struct IdleArgs {
    /// ws://host:port/path or wss://host:port/path
    pub url: String,
    /// Connections to open and hold.
    #[arg(long, short = 'c', default_value_t = 1000)]
    pub connections: usize,
    /// How long to hold them (until SIGINT/SIGTERM if not given).
    #[arg(long, short = 'd', value_parser = parse_duration)]
    pub duration: Option<Duration>,
    /// Create this file once all connections are open (or have failed).
    #[arg(long)]
    pub ready_file: Option<PathBuf>,
    /// Handshakes in progress at once, per worker.
    #[arg(long, default_value_t = 256)]
    pub concurrency: usize,
    #[command(flatten)]
    pub client: ClientArgs,
}

/// Subcommand names, for making `run` the default.
pub const SUBCOMMANDS: &[&str] = &["run", "echo", "connect", "idle", "compare", "help"];

impl ClientArgs {
    /// Workers: as asked, else one per allowed CPU; at most `max`.
    pub fn worker_count(&self, max: usize) -> usize {
        self.workers
            .unwrap_or_else(|| crate::net::allowed_cpus().len().max(1))
            .clamp(1, max.max(1))
    }

    pub fn sources(&self) -> anyhow::Result<Vec<std::net::IpAddr>> {
        match &self.source_ips {
            Some(s) => crate::net::parse_source_ips(s),
            None => Ok(Vec::new()),
        }
    }

    /// The target `url`, with this TLS configuration if it is `wss://`.
    pub fn target(&self, url: &str, resume: bool) -> anyhow::Result<crate::net::Target> {
        let tls = crate::tls::ClientTls {
            ca: self.tls.ca.clone(),
            insecure: self.tls.insecure,
            resume,
            version: self.tls.tls_version.clone(),
        };
        let mut target = crate::net::Target::parse(url, Some(&tls))?;
        for h in &self.headers {
            let Some((name, value)) = h.split_once(':') else {
                anyhow::bail!("--header {h:?}: expected \"Name: value\"");
            };
            if name.trim().is_empty() || h.contains(['\r', '\n']) {
                anyhow::bail!("--header {h:?}: expected \"Name: value\" on one line");
            }
            target
                .headers
                .push_str(&format!("{}: {}\r\n", name.trim(), value.trim()));
        }
        Ok(target)
    }

    pub fn watched(&self) -> anyhow::Result<Vec<(String, u32)>> {
        self.watch
            .iter()
            .map(|s| crate::report::parse_watch(s))
            .collect()
    }
}
