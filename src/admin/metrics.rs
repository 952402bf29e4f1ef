//! `GET /metrics`: the Prometheus text exposition format (version 0.0.4),
//! rendered from the workers' counters, the servers' shared slots and
//! `/proc`. Checked by `promtool check metrics` (`tests/admin.rs`).

use std::fmt::Write;

use super::AdminView;
use crate::policy::refusal::Reason;

/// Builds the exposition text: one `# HELP` and `# TYPE` per family, then
/// its samples.
struct Out(String);

impl Out {
    fn family(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.0, "# HELP {name} {help}");
        let _ = writeln!(self.0, "# TYPE {name} {kind}");
    }

    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: impl std::fmt::Display) {
        self.0.push_str(name);
        if !labels.is_empty() {
            self.0.push('{');
            for (i, (k, v)) in labels.iter().enumerate() {
                if i > 0 {
                    self.0.push(',');
                }
                let _ = write!(self.0, "{k}=\"{}\"", escape(v));
            }
            self.0.push('}');
        }
        let _ = writeln!(self.0, " {value}");
    }
}

/// A label value as the format wants it: `\`, `"` and newlines escaped.
fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// The whole exposition.
pub fn render(view: &AdminView) -> String {
    let mut o = Out(String::with_capacity(8 << 10));
    let sum = |f: fn(&crate::stats::Stats) -> u64| view.stats.iter().map(|s| f(s)).sum::<u64>();

    o.family("wsedge_info", "gauge", "wsedge's version (always 1).");
    o.sample("wsedge_info", &[("version", env!("CARGO_PKG_VERSION"))], 1);
    o.family("wsedge_workers", "gauge", "Worker threads.");
    o.sample("wsedge_workers", &[], view.stats.len());
    o.family(
        "wsedge_config_generation",
        "gauge",
        "The configuration generation new connections start under (1 at start, one more per reload).",
    );
    o.sample("wsedge_config_generation", &[], view.generation.serial);
    o.family(
        "wsedge_config_generations_live",
        "gauge",
        "Configuration generations in memory: the current one and those still held by connections that started under an older one.",
    );
    o.sample(
        "wsedge_config_generations_live",
        &[],
        crate::generation::live(),
    );
    o.family(
        "wsedge_config_reloads_total",
        "counter",
        "Reloads (SIGHUP, POST /api/reload) by result: a failed one changed nothing.",
    );
    let (ok, failed) = crate::reload::counts();
    o.sample("wsedge_config_reloads_total", &[("result", "ok")], ok);
    o.sample(
        "wsedge_config_reloads_total",
        &[("result", "failed")],
        failed,
    );

    o.family(
        "wsedge_connections_accepted_total",
        "counter",
        "Client connections accepted.",
    );
    o.sample(
        "wsedge_connections_accepted_total",
        &[],
        sum(|s| s.accepted.get()),
    );
    o.family(
        "wsedge_connections_active",
        "gauge",
        "Client connections open now (handshakes in progress included), by worker.",
    );
    for (i, s) in view.stats.iter().enumerate() {
        o.sample(
            "wsedge_connections_active",
            &[("worker", &i.to_string())],
            s.active.get(),
        );
    }

    o.family(
        "wsedge_handshakes_total",
        "counter",
        "Handshakes by outcome: 101, a policy refusal reason, or refused_other (a bad request, no route, a backend's error).",
    );
    let upgraded = sum(|s| s.upgraded.get());
    o.sample("wsedge_handshakes_total", &[("outcome", "101")], upgraded);
    let mut by_reason = 0;
    for reason in Reason::ALL {
        let n: u64 = view
            .stats
            .iter()
            .map(|s| s.refused_by[reason.index()].get())
            .sum();
        by_reason += n;
        o.sample("wsedge_handshakes_total", &[("outcome", reason.label())], n);
    }
    let refused = sum(|s| s.refused.get());
    o.sample(
        "wsedge_handshakes_total",
        &[("outcome", "refused_other")],
        refused.saturating_sub(by_reason),
    );
    o.family(
        "wsedge_refusals_total",
        "counter",
        "Handshakes answered with an HTTP error, by status (policy refusals included; a backend's own answer relayed counts under its status).",
    );
    for (i, status) in crate::stats::STATUSES
        .iter()
        .map(|s| s.to_string())
        .chain(std::iter::once("other".to_string()))
        .enumerate()
    {
        let n: u64 = view.stats.iter().map(|s| s.refused_status[i].get()).sum();
        o.sample("wsedge_refusals_total", &[("status", &status)], n);
    }
    o.family(
        "wsedge_backend_connect_failures_total",
        "counter",
        "Handshakes that found no backend server to connect to (after retries).",
    );
    o.sample(
        "wsedge_backend_connect_failures_total",
        &[],
        sum(|s| s.backend_failures.get()),
    );

    o.family(
        "wsedge_connections_closed_total",
        "counter",
        "Relayed connections that ended: normal (close handshake), protocol_error, other (a side vanished, timeouts, shutdown, limits).",
    );
    for (how, n) in [
        ("normal", sum(|s| s.closed_normally.get())),
        ("protocol_error", sum(|s| s.protocol_errors.get())),
        ("other", sum(|s| s.closed_otherwise.get())),
    ] {
        o.sample("wsedge_connections_closed_total", &[("how", how)], n);
    }
    o.family(
        "wsedge_bytes_total",
        "counter",
        "Bytes relayed, by the leg they were read from (counted when a connection ends).",
    );
    o.sample(
        "wsedge_bytes_total",
        &[("from", "client")],
        sum(|s| s.bytes_from_client.get()),
    );
    o.sample(
        "wsedge_bytes_total",
        &[("from", "backend")],
        sum(|s| s.bytes_from_backend.get()),
    );

    o.family(
        "wsedge_tls_handshakes_total",
        "counter",
        "TLS handshakes with clients that completed, by whether the session was resumed.",
    );
    o.sample(
        "wsedge_tls_handshakes_total",
        &[("resumed", "false")],
        sum(|s| s.tls_full.get()),
    );
    o.sample(
        "wsedge_tls_handshakes_total",
        &[("resumed", "true")],
        sum(|s| s.tls_resumed.get()),
    );
    o.family(
        "wsedge_tls_handshake_failures_total",
        "counter",
        "TLS handshakes with clients that failed (refused, garbage, timed out).",
    );
    o.sample(
        "wsedge_tls_handshake_failures_total",
        &[],
        sum(|s| s.tls_failed.get()),
    );

    websocket(&mut o, view);
    servers(&mut o, view);
    process(&mut o, view);
    o.0
}

/// One leg's `wsedge_message_size_bytes`, summed over the workers.
fn size_histogram(o: &mut Out, view: &AdminView, leg: &str, l: usize) {
    use crate::relay::walk::MessageSizes;
    let mut counts = [0u64; MessageSizes::BUCKETS];
    let mut bytes = 0u64;
    for s in &view.stats {
        let h = &s.ws.message_sizes[l];
        for (c, b) in counts.iter_mut().zip(&h.counts) {
            *c += b.get();
        }
        bytes += h.bytes.get();
    }
    let mut cumulative = 0;
    for (i, c) in counts.iter().enumerate() {
        cumulative += c;
        let le = MessageSizes::BOUNDS
            .get(i)
            .map_or("+Inf".to_string(), |b| b.to_string());
        o.sample(
            "wsedge_message_size_bytes_bucket",
            &[("from", leg), ("le", &le)],
            cumulative,
        );
    }
    o.sample("wsedge_message_size_bytes_sum", &[("from", leg)], bytes);
    o.sample(
        "wsedge_message_size_bytes_count",
        &[("from", leg)],
        cumulative,
    );
}

/// A histogram family: cumulative buckets, `_sum` (seconds) and `_count`,
/// summed over the workers; `pick` selects one worker's histogram.
fn histogram(
    o: &mut Out,
    view: &AdminView,
    name: &str,
    labels: &[(&str, &str)],
    pick: &dyn Fn(&crate::stats::Stats) -> &crate::stats::Histogram,
) {
    use crate::stats::BUCKETS;
    let mut counts = [0u64; BUCKETS.len() + 1];
    let mut sum_us = 0u64;
    for s in &view.stats {
        let h = pick(s);
        for (c, b) in counts.iter_mut().zip(&h.buckets) {
            *c += b.get();
        }
        sum_us += h.sum_us.get();
    }
    let bucket = format!("{name}_bucket");
    let mut cumulative = 0;
    for (i, c) in counts.iter().enumerate() {
        cumulative += c;
        let le = BUCKETS.get(i).map_or("+Inf".to_string(), |b| b.to_string());
        let mut l = labels.to_vec();
        l.push(("le", &le));
        o.sample(&bucket, &l, cumulative);
    }
    o.sample(
        &format!("{name}_sum"),
        labels,
        format!("{:.6}", sum_us as f64 / 1e6),
    );
    o.sample(&format!("{name}_count"), labels, cumulative);
}

/// What no other proxy exports: messages and frames by opcode, close codes
/// by who began the close, protocol errors by kind and leg, ping round
/// trips; per route where it applies. Counted when each connection ends.
fn websocket(o: &mut Out, view: &AdminView) {
    use crate::stats::{CLOSE_CODES, OPCODES, close_code_label};
    let legs = ["client", "backend"];
    let routes = &view.config.routes;
    let sum =
        |f: &dyn Fn(&crate::stats::Stats) -> u64| view.stats.iter().map(|s| f(s)).sum::<u64>();
    let route_sum = |i: usize, f: &dyn Fn(&crate::stats::RouteStats) -> u64| {
        view.generation
            .routes
            .iter()
            .filter_map(|w| w.get(i))
            .map(|x| f(x))
            .sum::<u64>()
    };
    o.family(
        "wsedge_route_upgrades_total",
        "counter",
        "Handshakes that got a 101, by route.",
    );
    for (i, r) in routes.iter().enumerate() {
        let n = route_sum(i, &|x| x.upgraded.get());
        o.sample("wsedge_route_upgrades_total", &[("route", &r.label)], n);
    }
    o.family(
        "wsedge_messages_total",
        "counter",
        "Data messages relayed, by route and the leg that sent them (counted when a connection ends).",
    );
    for (i, r) in routes.iter().enumerate() {
        for (l, leg) in legs.iter().enumerate() {
            let n = route_sum(i, &|x| x.messages[l].get());
            o.sample(
                "wsedge_messages_total",
                &[("route", &r.label), ("from", leg)],
                n,
            );
        }
    }
    o.family(
        "wsedge_frames_total",
        "counter",
        "Frames relayed, by route, sending leg and opcode (counted when a connection ends).",
    );
    for (i, r) in routes.iter().enumerate() {
        for (l, leg) in legs.iter().enumerate() {
            for (k, op) in OPCODES.iter().enumerate() {
                let n = route_sum(i, &|x| x.frames[l][k].get());
                o.sample(
                    "wsedge_frames_total",
                    &[("route", &r.label), ("from", leg), ("opcode", op)],
                    n,
                );
            }
        }
    }
    o.family(
        "wsedge_route_bytes_total",
        "counter",
        "Bytes relayed, by route and sending leg (counted when a connection ends).",
    );
    for (i, r) in routes.iter().enumerate() {
        for (l, leg) in legs.iter().enumerate() {
            let n = route_sum(i, &|x| x.bytes[l].get());
            o.sample(
                "wsedge_route_bytes_total",
                &[("route", &r.label), ("from", leg)],
                n,
            );
        }
    }
    o.family(
        "wsedge_close_frames_total",
        "counter",
        "Close handshakes begun by an endpoint, by who began it and the code of its close frame (1005: none).",
    );
    for (l, leg) in legs.iter().enumerate() {
        for b in 0..CLOSE_CODES.len() + 2 {
            let n = sum(&|s| s.ws.closes[l][b].get());
            o.sample(
                "wsedge_close_frames_total",
                &[("started_by", leg), ("code", close_code_label(b))],
                n,
            );
        }
    }
    o.family(
        "wsedge_protocol_errors_total",
        "counter",
        "Connections ended by a protocol error, by the leg at fault and the kind of error.",
    );
    for (l, leg) in legs.iter().enumerate() {
        for (k, kind) in crate::proto::error::ProtocolError::KIND_LABELS
            .iter()
            .enumerate()
        {
            let n = sum(&|s| s.ws.protocol_errors[l][k].get());
            o.sample(
                "wsedge_protocol_errors_total",
                &[("leg", leg), ("kind", kind)],
                n,
            );
        }
    }
    o.family(
        "wsedge_connection_endings_total",
        "counter",
        "Relayed connections that ended, by how (closed, vanished, dead, protocol_error, idle, shutdown, expired, rate_limited, operator, rebalanced, close_timeout, tunnel_ended).",
    );
    for (i, e) in crate::relay::Ending::LABELS.iter().enumerate() {
        if *e == "other" {
            continue;
        }
        let n = sum(&|s| s.ws.endings[i].get());
        o.sample("wsedge_connection_endings_total", &[("ending", e)], n);
    }
    o.family(
        "wsedge_upstream_retries_total",
        "counter",
        "Backend attempts retried on another server, by upstream.",
    );
    for (i, u) in view.config.upstreams.iter().enumerate() {
        let n: u64 = view
            .generation
            .retries
            .iter()
            .filter_map(|w| w.get(i))
            .map(|c| c.get())
            .sum();
        o.sample("wsedge_upstream_retries_total", &[("upstream", &u.name)], n);
    }
    o.family(
        "wsedge_tls_handshakes_by_version_total",
        "counter",
        "Client TLS handshakes completed, by version.",
    );
    for (i, v) in ["1.2", "1.3"].iter().enumerate() {
        let n = sum(&|s| s.ws.tls_versions[i].get());
        o.sample(
            "wsedge_tls_handshakes_by_version_total",
            &[("version", v)],
            n,
        );
    }
    o.family(
        "wsedge_handshake_duration_seconds",
        "histogram",
        "From a client's complete request head to its 101 (backend connect and handshake included).",
    );
    histogram(o, view, "wsedge_handshake_duration_seconds", &[], &|s| {
        &s.ws.handshake_seconds
    });
    o.family(
        "wsedge_backend_connect_duration_seconds",
        "histogram",
        "Connecting to a backend server (TCP, and TLS when its upstream has it), failures included.",
    );
    histogram(
        o,
        view,
        "wsedge_backend_connect_duration_seconds",
        &[],
        &|s| &s.ws.connect_seconds,
    );
    o.family(
        "wsedge_message_size_bytes",
        "histogram",
        "Data messages relayed, by sending leg and size (payload bytes of all their frames, as on the wire), counted as they pass.",
    );
    for (l, leg) in legs.iter().enumerate() {
        size_histogram(o, view, leg, l);
    }
    o.family(
        "wsedge_ping_rtt_seconds",
        "histogram",
        "The last keepalive ping round trip of each ended connection that was pinged, by leg (ping_interval).",
    );
    for (l, leg) in legs.iter().enumerate() {
        histogram(o, view, "wsedge_ping_rtt_seconds", &[("leg", leg)], &|s| {
            &s.ws.ping_rtt_seconds[l]
        });
    }
}

fn servers(o: &mut Out, view: &AdminView) {
    let now = crate::fleet::now_ms();
    let sets: Vec<_> = view.fleet.upstreams.iter().map(|u| u.current()).collect();
    let each = |o: &mut Out, name: &str, f: &dyn Fn(&crate::balance::server::ServerSlot) -> u64| {
        for (u, set) in view.config.upstreams.iter().zip(&sets) {
            for s in &set.slots {
                o.sample(name, &[("upstream", &u.name), ("server", s.addr())], f(s));
            }
        }
    };
    o.family(
        "wsedge_server_up",
        "gauge",
        "1 when the server takes new connections (up, and not ejected or draining).",
    );
    each(o, "wsedge_server_up", &|s| u64::from(s.eligible(now)));
    o.family(
        "wsedge_server_state",
        "gauge",
        "The server's state: 1 for the one it is in (UP, DOWN, DRAINING, EJECTED).",
    );
    for (u, set) in view.config.upstreams.iter().zip(&sets) {
        for s in &set.slots {
            let current = super::state_word(s, now);
            for state in ["UP", "DOWN", "DRAINING", "EJECTED"] {
                o.sample(
                    "wsedge_server_state",
                    &[
                        ("upstream", &u.name),
                        ("server", s.addr()),
                        ("state", state),
                    ],
                    u64::from(state == current),
                );
            }
        }
    }
    o.family(
        "wsedge_server_active_connections",
        "gauge",
        "Relayed connections open on the server, all workers.",
    );
    each(o, "wsedge_server_active_connections", &|s| {
        u64::from(s.active())
    });
    o.family(
        "wsedge_server_pending_handshakes",
        "gauge",
        "Backend handshakes in progress with the server.",
    );
    each(o, "wsedge_server_pending_handshakes", &|s| {
        u64::from(s.pending())
    });
    o.family(
        "wsedge_server_connections_ended_total",
        "counter",
        "Relayed connections to the server that ended.",
    );
    each(o, "wsedge_server_connections_ended_total", &|s| s.ended());
    for (family, help, f) in [
        (
            "wsedge_server_messages_total",
            "Data messages relayed to and from the server, by the leg that sent them (counted when a connection ends).",
            crate::balance::server::ServerSlot::messages
                as fn(&crate::balance::server::ServerSlot, usize) -> u64,
        ),
        (
            "wsedge_server_bytes_total",
            "Bytes relayed to and from the server, by sending leg (counted when a connection ends).",
            crate::balance::server::ServerSlot::bytes,
        ),
    ] {
        o.family(family, "counter", help);
        for (u, set) in view.config.upstreams.iter().zip(&sets) {
            for s in &set.slots {
                for (l, leg) in ["client", "backend"].iter().enumerate() {
                    o.sample(
                        family,
                        &[("upstream", &u.name), ("server", s.addr()), ("from", leg)],
                        f(s, l),
                    );
                }
            }
        }
    }
    o.family(
        "wsedge_server_ejections_total",
        "counter",
        "Times passive outlier detection ejected the server.",
    );
    each(o, "wsedge_server_ejections_total", &|s| {
        u64::from(s.ejections())
    });
    o.family(
        "wsedge_server_consecutive_failures",
        "gauge",
        "Failed attempts in a row (passive health).",
    );
    each(o, "wsedge_server_consecutive_failures", &|s| {
        u64::from(s.failures())
    });
}

/// Clock ticks per second for `/proc/*/stat` times.
fn ticks() -> f64 {
    // SAFETY: sysconf takes no pointers and only reads a constant.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 { t as f64 } else { 100.0 }
}

/// utime + stime (fields 14 and 15) of a `/proc/.../stat` line, in seconds.
fn cpu_seconds(stat: &str) -> Option<f64> {
    // The command name (field 2) may hold spaces; fields resume after ')'.
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let utime: f64 = f.get(11)?.parse().ok()?;
    let stime: f64 = f.get(12)?.parse().ok()?;
    Some((utime + stime) / ticks())
}

fn process(o: &mut Out, view: &AdminView) {
    if let Ok(status) = std::fs::read_to_string("/proc/self/status") {
        let kb = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok());
        if let Some(kb) = kb {
            o.family(
                "wsedge_process_resident_memory_bytes",
                "gauge",
                "Resident memory of the process.",
            );
            o.sample("wsedge_process_resident_memory_bytes", &[], kb * 1024);
        }
    }
    if let Ok(dir) = std::fs::read_dir("/proc/self/fd") {
        o.family("wsedge_process_open_fds", "gauge", "Open file descriptors.");
        o.sample("wsedge_process_open_fds", &[], dir.count());
    }
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `lim` is a valid, writable rlimit.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } == 0 {
        o.family(
            "wsedge_process_max_fds",
            "gauge",
            "The open-file limit in force (soft).",
        );
        o.sample("wsedge_process_max_fds", &[], lim.rlim_cur);
    }
    if let Some(s) = std::fs::read_to_string("/proc/self/stat")
        .ok()
        .and_then(|s| cpu_seconds(&s))
    {
        o.family(
            "wsedge_process_cpu_seconds_total",
            "counter",
            "CPU time of the whole process (user + system).",
        );
        o.sample("wsedge_process_cpu_seconds_total", &[], format!("{s:.2}"));
    }
    o.family(
        "wsedge_worker_cpu_seconds_total",
        "counter",
        "CPU time of each worker thread (user + system).",
    );
    for (i, s) in view.stats.iter().enumerate() {
        let tid = s.tid.load(std::sync::atomic::Ordering::Relaxed);
        if tid == 0 {
            continue;
        }
        if let Some(secs) = std::fs::read_to_string(format!("/proc/self/task/{tid}/stat"))
            .ok()
            .and_then(|s| cpu_seconds(&s))
        {
            o.sample(
                "wsedge_worker_cpu_seconds_total",
                &[("worker", &i.to_string())],
                format!("{secs:.2}"),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_values_are_escaped() {
        let mut o = Out(String::new());
        o.sample("m", &[("a", "x\"y\\z\nw")], 1);
        assert_eq!(o.0, "m{a=\"x\\\"y\\\\z\\nw\"} 1\n");
    }

    #[test]
    fn cpu_from_a_stat_line_with_spaces_in_the_name() {
        let line =
            "123 (wsedge worker) S 1 123 123 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 3 0 1000";
        let t = cpu_seconds(line).unwrap();
        assert!((t - 300.0 / ticks()).abs() < 1e-9, "{t}");
    }
}
