//! The `wsedge` binary: arguments → configuration → workers.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use wsedge::config::{Config, DEFAULT_CONFIG, IoDriver};
use wsedge::server::{self, Server};
use wsedge::tls::certs::CertFiles;
use wsedge::tls::setup::TlsSetup;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// mimalloc's entry points that the `mimalloc` crate does not wrap.
mod mimalloc_ext {
    // SAFETY: `mi_collect` is part of mimalloc's public C API
    // (`void mi_collect(bool force)` in mimalloc.h), compiled into the static
    // library that `mimalloc` links; it takes a plain bool, returns nothing,
    // and may be called from any thread at any time.
    unsafe extern "C" {
        safe fn mi_collect(force: bool);
    }

    /// Returns the memory the calling thread has freed to the OS now,
    /// instead of after mimalloc's purge delay and only on later allocator
    /// activity (which a worker that has gone idle does not have).
    pub fn release_freed_memory() {
        mi_collect(true);
    }
}

/// A thread-per-core WebSocket reverse proxy.
///
/// With no arguments, listens on 127.0.0.1:8080 and proxies every path to a
/// built-in echo server.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Args {
    /// Configuration file (TOML). See docs/configuration.md.
    #[arg(long, short, value_name = "FILE", conflicts_with_all = ["listen", "upstream", "tls_cert", "tls_key", "upstream_ca"])]
    config: Option<PathBuf>,
    /// Check a configuration file and exit (0: valid, 1: not).
    #[arg(long, value_name = "FILE")]
    check_config: Option<PathBuf>,
    /// Print the embedded default configuration and exit.
    #[arg(long)]
    print_default_config: bool,
    /// Listen on this address (repeatable). Without --config.
    #[arg(long, value_name = "ADDR")]
    listen: Vec<SocketAddr>,
    /// Proxy every path to this backend, HOST:PORT or wss://HOST:PORT
    /// (repeatable: round-robin). Without --config.
    #[arg(long, value_name = "ADDR")]
    upstream: Vec<String>,
    /// Serve TLS (wss://) on every --listen address with this certificate
    /// chain (PEM). Needs --tls-key.
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// The private key (PEM) for --tls-cert.
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Verify wss:// upstreams against this CA (PEM) instead of the
    /// system's roots.
    #[arg(long, value_name = "FILE")]
    upstream_ca: Option<PathBuf>,
    /// Worker threads (default: the CPUs this process may run on).
    #[arg(long, value_name = "N")]
    workers: Option<usize>,
    /// io driver: auto (io_uring, else epoll), uring or epoll.
    #[arg(long, value_name = "DRIVER")]
    io_driver: Option<IoDriver>,
    /// Serve the admin endpoint (metrics, status page, API) on this
    /// address, e.g. 127.0.0.1:9901. Overrides [admin] address.
    #[arg(long, value_name = "ADDR")]
    admin: Option<SocketAddr>,
    /// Tell the running wsedge (the process in the configuration's
    /// pid_file) to reload: the file is checked first, and nothing is sent
    /// when it has an error.
    #[arg(long, requires = "config")]
    reload: bool,
    /// Do not pin workers to cores (containers with CPU quotas).
    #[arg(long)]
    no_pin: bool,
    /// Log format: text (colour only on a terminal, never with NO_COLOR) or
    /// json (one object per line).
    #[arg(long, value_name = "FORMAT")]
    log_format: Option<wsedge::logging::LogFormat>,
}

fn main() -> ExitCode {
    let args = Args::parse();
    if args.print_default_config {
        print!("{DEFAULT_CONFIG}");
        return ExitCode::SUCCESS;
    }
    if let Some(path) = &args.check_config {
        // The file, then every certificate, key and CA it names.
        let checked = Config::load(path).map_err(|e| e.to_string()).and_then(|c| {
            let (_, warnings) =
                TlsSetup::build(&c).map_err(|e| format!("{}: {e}", path.display()))?;
            Ok((c, warnings))
        });
        return match checked {
            Ok((config, warnings)) => {
                for w in config.warnings().into_iter().chain(warnings) {
                    eprintln!("{}: warning: {w}", path.display());
                }
                println!("{}: ok", path.display());
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("{e}");
                ExitCode::FAILURE
            }
        };
    }
    if args.reload {
        return reload(args.config.as_deref().unwrap_or(std::path::Path::new("")));
    }
    // `--listen` alone serves the built-in echo server: only on loopback,
    // unless asked for by name (`--upstream builtin:echo`).
    if args.upstream.is_empty() {
        if let Some(a) = args.listen.iter().find(|a| !a.ip().is_loopback()) {
            eprintln!(
                "wsedge: --listen {a} without --upstream would serve the built-in echo server on a non-loopback address; add --upstream HOST:PORT, or --upstream builtin:echo to mean it"
            );
            return ExitCode::FAILURE;
        }
    }
    let loaded = match &args.config {
        Some(path) => Config::load(path),
        None if args.listen.is_empty()
            && args.upstream.is_empty()
            && args.tls_cert.is_none()
            && args.upstream_ca.is_none() =>
        {
            Ok(Config::embedded_default())
        }
        None => Config::from_args(
            &args.listen,
            &args.upstream,
            args.tls_cert
                .clone()
                .zip(args.tls_key.clone())
                .map(|(cert, key)| CertFiles { cert, key }),
            args.upstream_ca.clone(),
        ),
    };
    let mut config = match loaded {
        Ok(c) => c,
        Err(e) => {
            eprintln!("wsedge: {e}");
            return ExitCode::FAILURE;
        }
    };
    let overrides = Overrides {
        workers: args.workers,
        io_driver: args.io_driver,
        no_pin: args.no_pin,
        admin: args.admin,
        log_format: args.log_format,
    };
    overrides.apply(&mut config);
    if let Err(e) = wsedge::logging::init(&config.log) {
        eprintln!("wsedge: {e}");
        return ExitCode::FAILURE;
    }
    let uses_echo = config.uses_builtin_echo();
    let config_pid_file = config.pid_file.clone();
    let config_listeners: Vec<bool> = config.listeners.iter().map(|l| l.tls.is_some()).collect();

    wsedge::pool::set_release_hook(mimalloc_ext::release_freed_memory);
    server::block_shutdown_signals();
    // SIGHUP and POST /api/reload re-read the file, with the same flags.
    let source = args.config.clone().map(|path| server::Source {
        path,
        adjust: Box::new(move |c: &mut Config| overrides.apply(c)),
    });
    let server = match Server::start_reloadable(
        config,
        std::sync::Arc::new(wsedge::config::system_resolve),
        source,
    ) {
        Ok(s) => s,
        Err(e) => {
            // `{:#}`: the message and its causes, `cannot listen on ADDR:
            // Address already in use (os error 98)`.
            eprintln!("wsedge: {:#}", anyhow::Error::new(e));
            return ExitCode::FAILURE;
        }
    };
    let pid_file = config_pid_file.as_ref().and_then(|path| {
        match std::fs::write(path, format!("{}\n", std::process::id())) {
            Ok(()) => Some(path.clone()),
            Err(e) => {
                tracing::warn!("cannot write pid_file {}: {e}", path.display());
                None
            }
        }
    });
    for (addr, &l) in server.addrs.iter().zip(&config_listeners) {
        let scheme = if l { "wss" } else { "ws" };
        tracing::info!(
            "listening on {scheme}://{addr}/ with {} workers",
            server.drivers.len()
        );
        if uses_echo {
            tracing::info!(
                "every path goes to the built-in echo server; try: python3 -m websockets {scheme}://{addr}/ (or any WebSocket client)"
            );
        }
    }
    // systemd (Type=notify): the listeners are bound, the workers run.
    if let Err(e) = wsedge::notify::ready() {
        tracing::warn!("cannot notify the service manager: {e}");
    }
    let sig = server::wait_for_shutdown_signal(&server);
    let _ = wsedge::notify::stopping();
    if sig == libc::SIGTERM {
        // A service manager or an orchestrator: drain, paced.
        tracing::info!(signal = sig, "SIGTERM: draining");
        server.drain_and_shutdown();
    } else {
        // Ctrl-C in a terminal: the same, without the pacing.
        tracing::info!(signal = sig, "shutting down: closing connections with 1001");
        server.shutdown();
    }
    if let Some(path) = pid_file {
        let _ = std::fs::remove_file(path);
    }
    tracing::info!("stopped");
    ExitCode::SUCCESS
}

/// What the command line overrides in the configuration file (at start
/// and on each reload).
struct Overrides {
    workers: Option<usize>,
    io_driver: Option<IoDriver>,
    no_pin: bool,
    admin: Option<std::net::SocketAddr>,
    log_format: Option<wsedge::logging::LogFormat>,
}

impl Overrides {
    fn apply(&self, config: &mut Config) {
        if let Some(n) = self.workers {
            config.workers = n;
        }
        if let Some(d) = self.io_driver {
            config.io_driver = d;
        }
        if self.no_pin {
            config.pin = false;
        }
        if let Some(address) = self.admin {
            match &mut config.admin {
                Some(a) => a.address = address,
                None => {
                    config.admin = Some(wsedge::admin::AdminSettings {
                        address,
                        token_file: None,
                        read_open: false,
                    })
                }
            }
        }
        if let Some(f) = self.log_format {
            config.log.format = f;
        }
    }
}

/// `wsedge --reload --config FILE`: checks FILE, then sends SIGHUP to the
/// process named by its `pid_file`.
fn reload(path: &std::path::Path) -> ExitCode {
    let config = match Config::load(path) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("wsedge: {e}\nwsedge: nothing sent: fix the file first");
            return ExitCode::FAILURE;
        }
    };
    let Some(pid_file) = config.pid_file else {
        eprintln!(
            "wsedge: {} has no pid_file: set pid_file = \"/run/wsedge.pid\" to use --reload (or send SIGHUP yourself)",
            path.display()
        );
        return ExitCode::FAILURE;
    };
    let pid = match std::fs::read_to_string(&pid_file)
        .map_err(|e| e.to_string())
        .and_then(|t| t.trim().parse::<i32>().map_err(|e| e.to_string()))
    {
        Ok(pid) if pid > 0 => pid,
        Ok(_) => {
            eprintln!("wsedge: {}: not a process id", pid_file.display());
            return ExitCode::FAILURE;
        }
        Err(e) => {
            eprintln!("wsedge: {}: {e} (is wsedge running?)", pid_file.display());
            return ExitCode::FAILURE;
        }
    };
    // SAFETY: kill takes no pointers; a wrong or stale pid is an error.
    if unsafe { libc::kill(pid, libc::SIGHUP) } != 0 {
        eprintln!(
            "wsedge: cannot signal process {pid} (from {}): {}",
            pid_file.display(),
            std::io::Error::last_os_error()
        );
        return ExitCode::FAILURE;
    }
    println!(
        "wsedge: sent SIGHUP to process {pid}: it reloads {} (its log says what changed; open connections keep their configuration)",
        path.display()
    );
    ExitCode::SUCCESS
}
