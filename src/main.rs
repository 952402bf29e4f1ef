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
    /// Binary upgrade: tell the running wsedge (the process in the
    /// configuration's pid_file) to start the binary again (the new version
    /// when the file was replaced), hand it the listening sockets and drain
    /// once it is ready. The file is checked first, and nothing is sent
    /// when it has an error. Same as SIGUSR2.
    #[arg(long, requires = "config", conflicts_with = "reload")]
    upgrade: bool,
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
    if args.upgrade {
        return upgrade(args.config.as_deref().unwrap_or(std::path::Path::new("")));
    }
    // Started by an upgrade: take the listening sockets handed on.
    // SAFETY: no other thread runs yet (argument parsing and the branches
    // above start none), and the descriptors named are this process's alone.
    let inherited = match unsafe { wsedge::upgrade::adopt_from_env() } {
        Ok(i) => i,
        Err(e) => {
            eprintln!("wsedge: upgrade: {e}");
            return ExitCode::FAILURE;
        }
    };
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
    if inherited.upgrade {
        tracing::info!(
            sockets = ?inherited.sockets,
            "started by a binary upgrade: taking over the listening sockets"
        );
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
    for addr in wsedge::upgrade::close_unclaimed() {
        tracing::warn!(%addr, "an inherited listening socket of {addr} is not in the configuration any more: closed");
    }
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
    // systemd (Type=notify): the listeners are bound, the workers run. After
    // an upgrade this process becomes the main one (NotifyAccess=all).
    let notified = if inherited.upgrade {
        wsedge::notify::ready_as_main_process()
    } else {
        wsedge::notify::ready()
    };
    if let Err(e) = notified {
        tracing::warn!("cannot notify the service manager: {e}");
    }
    // The old process drains once it reads this.
    if let Err(e) = wsedge::upgrade::report_ready() {
        tracing::warn!("upgrade: cannot report ready to the old process: {e}");
    }
    let stats = server.stats.clone();
    let sig = loop {
        let sig = server::wait_for_shutdown_signal(&server);
        if sig != libc::SIGUSR2 {
            break sig;
        }
        tracing::info!("SIGUSR2: binary upgrade: starting the new process");
        match wsedge::upgrade::start_new_binary(wsedge::upgrade::READY_TIMEOUT) {
            Ok(pid) => {
                tracing::info!(
                    new_pid = pid,
                    "upgrade: process {pid} is ready and serves; this one drains"
                );
                break sig;
            }
            Err(e) => tracing::error!("upgrade failed: {e}; this process goes on serving"),
        }
    };
    if sig == libc::SIGUSR2 {
        // No STOPPING=1: the service goes on, in the new process.
        server.drain_and_shutdown();
    } else if sig == libc::SIGTERM {
        let _ = wsedge::notify::stopping();
        // A service manager or an orchestrator: drain, paced.
        tracing::info!(signal = sig, "SIGTERM: draining");
        server.drain_and_shutdown();
    } else {
        let _ = wsedge::notify::stopping();
        // Ctrl-C in a terminal: the same, without the pacing.
        tracing::info!(signal = sig, "shutting down: closing connections with 1001");
        server.shutdown();
    }
    if let Some(path) = pid_file {
        remove_pid_file_if_ours(&path);
    }
    let accepted = wsedge::stats::sum(&stats)
        .into_iter()
        .find(|(name, _)| *name == "accepted")
        .map_or(0, |(_, n)| n);
    tracing::info!(pid = std::process::id(), accepted, "stopped");
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

/// Removes the pid file unless it names another process (the new one of
/// a binary upgrade wrote its own id there).
fn remove_pid_file_if_ours(path: &std::path::Path) {
    match std::fs::read_to_string(path) {
        Ok(text) if text.trim() == std::process::id().to_string() => {
            let _ = std::fs::remove_file(path);
        }
        Ok(text) => tracing::info!(
            "pid_file {} names process {}: left in place",
            path.display(),
            text.trim()
        ),
        Err(_) => {}
    }
}

/// `wsedge --reload --config FILE`: checks FILE, then sends SIGHUP to the
/// process named by its `pid_file`.
fn reload(path: &std::path::Path) -> ExitCode {
    match signal_running(path, libc::SIGHUP, "--reload", "SIGHUP") {
        Ok((pid, _)) => {
            println!(
                "wsedge: sent SIGHUP to process {pid}: it reloads {} (its log says what changed; open connections keep their configuration)",
                path.display()
            );
            ExitCode::SUCCESS
        }
        Err(code) => code,
    }
}

/// `wsedge --upgrade --config FILE`: checks FILE, sends SIGUSR2 to the
/// process named by its `pid_file`, and waits for the pid file to name the
/// new process.
fn upgrade(path: &std::path::Path) -> ExitCode {
    let (pid, pid_file) = match signal_running(path, libc::SIGUSR2, "--upgrade", "SIGUSR2") {
        Ok(sent) => sent,
        Err(code) => return code,
    };
    println!("wsedge: sent SIGUSR2 to process {pid}: it starts the new binary");
    let limit = wsedge::upgrade::READY_TIMEOUT + std::time::Duration::from_secs(5);
    let deadline = std::time::Instant::now() + limit;
    while std::time::Instant::now() < deadline {
        if let Ok(new) = read_pid(&pid_file) {
            if new != pid {
                println!(
                    "wsedge: upgraded: process {new} serves; process {pid} drains its connections and exits"
                );
                return ExitCode::SUCCESS;
            }
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    eprintln!(
        "wsedge: {} still names process {pid} after {limit:?}: the upgrade failed (the log says why); process {pid} goes on serving",
        pid_file.display()
    );
    ExitCode::FAILURE
}

/// Checks the configuration file `path`, reads the process id in its
/// `pid_file`, and sends `sig` to that process. Returns the id and the pid
/// file; on an error, says why on stderr (nothing was sent).
fn signal_running(
    path: &std::path::Path,
    sig: i32,
    option: &str,
    name: &str,
) -> Result<(i32, PathBuf), ExitCode> {
    let config = match Config::load(path) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("wsedge: {e}\nwsedge: nothing sent: fix the file first");
            return Err(ExitCode::FAILURE);
        }
    };
    let Some(pid_file) = config.pid_file else {
        eprintln!(
            "wsedge: {} has no pid_file: set pid_file = \"/run/wsedge.pid\" to use {option} (or send {name} yourself)",
            path.display()
        );
        return Err(ExitCode::FAILURE);
    };
    let pid = match read_pid(&pid_file) {
        Ok(pid) => pid,
        Err(e) => {
            eprintln!("wsedge: {}: {e}", pid_file.display());
            return Err(ExitCode::FAILURE);
        }
    };
    // SAFETY: kill takes no pointers; a wrong or stale pid is an error.
    if unsafe { libc::kill(pid, sig) } != 0 {
        eprintln!(
            "wsedge: cannot signal process {pid} (from {}): {}",
            pid_file.display(),
            std::io::Error::last_os_error()
        );
        return Err(ExitCode::FAILURE);
    }
    Ok((pid, pid_file))
}

/// The process id in a pid file.
fn read_pid(pid_file: &std::path::Path) -> Result<i32, String> {
    let text =
        std::fs::read_to_string(pid_file).map_err(|e| format!("{e} (is wsedge running?)"))?;
    match text.trim().parse::<i32>() {
        Ok(pid) if pid > 0 => Ok(pid),
        _ => Err("not a process id".into()),
    }
}
