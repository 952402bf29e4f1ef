//! Rebalancing after a scale-out (`rebalance = { max_skew, closes_per_second
//! }`), run by every worker over its own connections.
//!
//! Each worker looks at the shared per-server counts four times a second and
//! asks [`Planner`] how many connections should leave which server now: a
//! server holding more than `max_skew` × its weighted fair share for
//! `sustain` (30 s by default) sheds its excess, at most `closes_per_second`
//! over the upstream. The worker closes its share of that (the count
//! divided by the number of workers, rounded up) from its own connections
//! on that server, oldest first, with 1012 (service restart), so that
//! clients reconnect onto the other servers. Connections already asked to
//! close count as closed, so a close handshake in progress is not planned
//! twice. With N workers the upstream may see up to N − 1 more closes per
//! tick than planned (the rounding up).

use std::rc::Rc;
use std::time::Duration;

use tracing::info;

use crate::balance::rebalance::{Load, Planner, RebalanceConfig};
use crate::fleet::{now_ms, slot_key};
use crate::proto::close::CloseCode;
use crate::relay::{CloseRequest, Ending, Tag};
use crate::worker::WorkerCtx;

/// This worker's connections on server `key` not yet asked to close,
/// oldest first (registry slots). A server's key is its slot's (unique in
/// the process, and kept across reloads), so connections that started
/// under an older configuration, where the upstream's index may differ,
/// are found too.
fn oldest_open(tagged: &[(usize, Tag)], key: usize) -> Vec<usize> {
    let mut mine: Vec<(usize, u64)> = tagged
        .iter()
        .filter(|(_, t)| t.server == key && !t.closing)
        .map(|&(slot, t)| (slot, t.since_ms))
        .collect();
    mine.sort_by_key(|&(_, since)| since);
    mine.into_iter().map(|(slot, _)| slot).collect()
}

/// Closes this worker's share of the connections of servers an operator
/// drains with a close rate: 1001, oldest first.
fn close_drained(ctx: &WorkerCtx, workers: u32) {
    for st in &ctx.current().fleet.upstreams {
        let drains = st.drains();
        if drains.is_empty() {
            continue;
        }
        let tagged = ctx.relay.shutdown.tagged();
        for (key, per_second) in drains {
            // This tick's share of the rate, spread over the workers.
            let share =
                (f64::from(per_second) * TICK.as_secs_f64() / f64::from(workers)).ceil() as usize;
            for slot in oldest_open(&tagged, key).into_iter().take(share) {
                ctx.relay.shutdown.request_close(
                    slot,
                    CloseRequest {
                        why: Ending::ByOperator,
                        code: CloseCode::GOING_AWAY,
                        reason: "server draining",
                    },
                );
            }
        }
    }
}

/// How often a worker plans.
const TICK: Duration = Duration::from_millis(250);

/// Runs until the worker shuts down: rebalancing (for upstreams with
/// `rebalance`) and the paced closes of drained servers.
pub async fn run(ctx: Rc<WorkerCtx>, workers: usize) {
    let workers = workers.max(1) as u32;
    loop {
        // Planners for the current configuration; a reload starts over.
        let g = ctx.current();
        let serial = g.shared.serial;
        let planners = planners(&g.config);
        drop(g);
        if plan_until_reload(&ctx, workers, serial, planners).await {
            return;
        }
    }
}

fn planners(config: &crate::config::Config) -> Vec<(usize, Planner)> {
    config
        .upstreams
        .iter()
        .enumerate()
        .filter_map(|(i, u)| {
            let r = u.rebalance?;
            Some((
                i,
                Planner::new(RebalanceConfig {
                    max_skew: r.max_skew,
                    closes_per_second: r.closes_per_second.ceil() as u32,
                    sustain_ms: r.sustain.as_millis() as u64,
                }),
            ))
        })
        .collect()
}

/// Plans every tick until the worker shuts down (true) or the
/// configuration generation is no longer `serial` (false).
async fn plan_until_reload(
    ctx: &WorkerCtx,
    workers: u32,
    serial: u64,
    mut planners: Vec<(usize, Planner)>,
) -> bool {
    loop {
        monoio::select! {
            _ = monoio::time::sleep(TICK) => {}
            _ = ctx.relay.shutdown.fired() => return true,
        }
        let g = ctx.current();
        if g.shared.serial != serial {
            return false;
        }
        close_drained(ctx, workers);
        for (u, planner) in &mut planners {
            let st = &g.fleet.upstreams[*u];
            let set = st.current();
            let now = now_ms();
            let loads: Vec<Load> = set
                .slots
                .iter()
                .map(|s| Load {
                    active: s.active(),
                    weight: if s.eligible(now) && !s.is_backup() {
                        s.effective_weight(now, st.slow_start_ms)
                    } else {
                        0
                    },
                })
                .collect();
            let plan = planner.plan(&loads, now).to_vec();
            if plan.iter().all(|&k| k == 0) {
                continue;
            }
            let tagged = ctx.relay.shutdown.tagged();
            for (j, &k) in plan.iter().enumerate() {
                if k == 0 {
                    continue;
                }
                let key = slot_key(&set.slots[j]);
                let mine = oldest_open(&tagged, key);
                let closing = tagged
                    .iter()
                    .filter(|(_, t)| t.server == key && t.closing)
                    .count() as u32;
                let share = k.div_ceil(workers).saturating_sub(closing);
                for &slot in mine.iter().take(share as usize) {
                    ctx.relay.shutdown.request_close(
                        slot,
                        CloseRequest {
                            why: Ending::Rebalanced,
                            code: CloseCode::SERVICE_RESTART,
                            reason: "rebalancing",
                        },
                    );
                }
                if share > 0 && !mine.is_empty() {
                    info!(
                        worker = ctx.id,
                        upstream = %g.config.upstreams[*u].name,
                        backend = %set.specs[j].addr,
                        closing = share.min(mine.len() as u32),
                        active = set.slots[j].active(),
                        "rebalance: closing connections with 1012 (the server holds more than its share)"
                    );
                }
            }
        }
    }
}
