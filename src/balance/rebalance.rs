//! Rebalancing long-lived connections: which servers should shed how many
//! connections now ([`Planner`]).
//!
//! WebSocket connections last hours, so a server added to an upstream (scale
//! out), or one back from an outage, gets only new connections while the old
//! ones stay where they are. The planner notices a lasting skew and asks
//! the caller to close some connections on the overloaded servers; their
//! clients reconnect and the picker (least_conn, say) places them on the
//! light ones. Pure: counts and the time in, counts out; the caller chooses
//! which connections (the oldest) and closes them (1001 "going away" or
//! 1012 "service restart").
//!
//! For each server, with `T` connections in total over the servers given a
//! weight and `fair = T × w / W`:
//!
//! - it is *over* while `active > max_skew × fair`;
//! - over for `sustain_ms` (30 s) without a break, it *sheds*: its excess is
//!   `active − ⌊fair⌋`. It keeps shedding until it is down to `⌊fair⌋`,
//!   even once it is back under the skew threshold (hysteresis: stopping at
//!   the threshold would leave it at `max_skew × fair` for good);
//! - closes are paced by a token bucket of `closes_per_second` over the
//!   whole upstream, at most one second's worth banked. Tokens only accrue
//!   while some server sheds (an idle hour banks nothing), so over any
//!   interval of `t` seconds the planner asks for at most
//!   `closes_per_second × t` closes, plus one for rounding. Tokens go to the
//!   servers with the largest remaining excess first.
//!
//! The counts it is given are the truth: call [`Planner::plan`] after the
//! previous plan's closes have happened (say, once a second), or it asks
//! again for the same excess.

/// The rebalancer's settings.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RebalanceConfig {
    /// A server is over when its connections exceed this multiple of its
    /// fair share (e.g. 1.5).
    pub max_skew: f64,
    /// Closes per second across the upstream (0 = never close).
    pub closes_per_second: u32,
    /// How long a server must stay over before it sheds.
    pub sustain_ms: u64,
}

impl Default for RebalanceConfig {
    fn default() -> RebalanceConfig {
        RebalanceConfig {
            max_skew: 1.5,
            closes_per_second: 20,
            sustain_ms: 30_000,
        }
    }
}

/// One server as the planner sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Load {
    /// Its open connections.
    pub active: u32,
    /// Its effective weight; 0 leaves it out (down, draining, a backup): it
    /// neither counts towards the total nor sheds.
    pub weight: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Fine,
    Over { since_ms: u64 },
    Shedding,
}

/// The rebalancer of one upstream (one per proxy, or per worker over that
/// worker's connections).
#[derive(Debug, Clone)]
pub struct Planner {
    cfg: RebalanceConfig,
    /// `max_skew` in thousandths.
    skew_milli: u64,
    phases: Vec<Phase>,
    closes: Vec<u32>,
    /// Banked closes, in thousandths.
    tokens_milli: u64,
    last_ms: Option<u64>,
    /// Some server was shedding at the last call (tokens accrue only
    /// between two such calls).
    shedding: bool,
}

impl Planner {
    /// A planner with nothing over yet.
    pub fn new(cfg: RebalanceConfig) -> Planner {
        let skew = if cfg.max_skew.is_nan() {
            1.0
        } else {
            cfg.max_skew.clamp(1.0, 1000.0)
        };
        Planner {
            cfg,
            skew_milli: (skew * 1000.0).round() as u64,
            phases: Vec::new(),
            closes: Vec::new(),
            tokens_milli: 0,
            last_ms: None,
            shedding: false,
        }
    }

    /// How many connections to close now on each server (same order as
    /// `loads`). A different number of servers than last time starts every
    /// server's tracking over.
    pub fn plan(&mut self, loads: &[Load], now_ms: u64) -> &[u32] {
        if self.phases.len() != loads.len() {
            self.phases.clear();
            self.phases.resize(loads.len(), Phase::Fine);
        }
        self.closes.clear();
        self.closes.resize(loads.len(), 0);

        let elapsed = self.last_ms.map_or(0, |last| now_ms.saturating_sub(last));
        self.last_ms = Some(self.last_ms.map_or(now_ms, |last| last.max(now_ms)));

        let weighted = loads.iter().filter(|l| l.weight > 0);
        let total: u64 = weighted.clone().map(|l| u64::from(l.active)).sum();
        let total_weight: u64 = weighted.map(|l| u64::from(l.weight)).sum();
        if total_weight == 0 {
            self.phases.fill(Phase::Fine);
            self.tokens_milli = 0;
            self.shedding = false;
            return &self.closes;
        }

        let mut shedding = false;
        for (load, phase) in loads.iter().zip(self.phases.iter_mut()) {
            if load.weight == 0 {
                *phase = Phase::Fine;
                continue;
            }
            let active = u64::from(load.active);
            let w = u64::from(load.weight);
            // active > skew × T × w / W, without division.
            let over = u128::from(active) * 1000 * u128::from(total_weight)
                > u128::from(self.skew_milli) * u128::from(total) * u128::from(w);
            let fair = share(total, w, total_weight);
            *phase = match *phase {
                Phase::Fine if over => Phase::Over { since_ms: now_ms },
                Phase::Fine => Phase::Fine,
                Phase::Over { .. } if !over => Phase::Fine,
                Phase::Over { since_ms }
                    if now_ms.saturating_sub(since_ms) >= self.cfg.sustain_ms =>
                {
                    Phase::Shedding
                }
                p @ Phase::Over { .. } => p,
                Phase::Shedding if active <= fair => Phase::Fine,
                Phase::Shedding => Phase::Shedding,
            };
            shedding |= *phase == Phase::Shedding;
        }

        let was_shedding = std::mem::replace(&mut self.shedding, shedding);
        if !shedding {
            self.tokens_milli = 0;
            return &self.closes;
        }
        if was_shedding {
            let rate = u64::from(self.cfg.closes_per_second);
            self.tokens_milli = self
                .tokens_milli
                .saturating_add(elapsed.saturating_mul(rate))
                .min(rate * 1000);
        }
        let budget = self.tokens_milli / 1000;

        // Hand the budget out one close at a time to the server with the
        // largest remaining excess, computed at once by water-filling: the
        // lowest level L with sum(max(0, excess - L)) <= budget; servers
        // above L come down to it, and what is left takes one more from
        // each of the first servers at L.
        let excess = |i: usize| -> u64 {
            match (self.phases[i], loads.get(i)) {
                (Phase::Shedding, Some(l)) => {
                    let fair = share(total, u64::from(l.weight), total_weight);
                    u64::from(l.active).saturating_sub(fair)
                }
                _ => 0,
            }
        };
        let above = |level: u64| -> u64 {
            (0..loads.len())
                .map(|i| excess(i).saturating_sub(level))
                .sum()
        };
        let (mut lo, mut hi) = (0u64, (0..loads.len()).map(excess).max().unwrap_or(0));
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            if above(mid) <= budget {
                hi = mid;
            } else {
                lo = mid + 1;
            }
        }
        let level = lo;
        let mut left = if level == 0 { 0 } else { budget - above(level) };
        let mut spent = 0u64;
        for (i, close) in self.closes.iter_mut().enumerate() {
            let e = excess(i);
            let mut k = e.saturating_sub(level);
            if left > 0 && e >= level && level > 0 {
                k += 1;
                left -= 1;
            }
            *close = k.min(u64::from(u32::MAX)) as u32;
            spent += k;
        }
        self.tokens_milli = self.tokens_milli.saturating_sub(spent.saturating_mul(1000));
        &self.closes
    }
}

/// `⌊total × w / total_weight⌋` (`total_weight > 0`, `w ≤ total_weight`),
/// without overflow.
fn share(total: u64, w: u64, total_weight: u64) -> u64 {
    (u128::from(total) * u128::from(w) / u128::from(total_weight.max(1))) as u64
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::balance::pick::{LeastConn, Picker};
    use crate::balance::server::ServerSlot;
    use std::sync::Arc;

    fn loads(active: &[u32]) -> Vec<Load> {
        active
            .iter()
            .map(|&a| Load {
                active: a,
                weight: 1,
            })
            .collect()
    }

    #[test]
    fn scale_out_from_two_to_four() {
        let s: Vec<Arc<ServerSlot>> = (0..4)
            .map(|i| Arc::new(ServerSlot::new(&format!("s{i}"), 1)))
            .collect();
        for _ in 0..100 {
            s[0].acquire();
            s[1].acquire();
        }
        let mut planner = Planner::new(RebalanceConfig {
            max_skew: 1.5,
            closes_per_second: 20,
            sustain_ms: 30_000,
        });
        let mut picker = Picker::LeastConn(LeastConn::new(0));
        let mut total_closed = 0;
        let mut first_close = None;
        for tick in 0..=120u64 {
            let now = tick * 1_000;
            let l: Vec<Load> = s
                .iter()
                .map(|x| Load {
                    active: x.active(),
                    weight: x.effective_weight(now, 0),
                })
                .collect();
            let closes = planner.plan(&l, now).to_vec();
            let n: u32 = closes.iter().sum();
            assert!(n <= 20, "tick {tick}: {n} closes");
            if n > 0 {
                first_close.get_or_insert(now);
            }
            total_closed += n;
            // The closed clients reconnect through least_conn.
            for (i, &k) in closes.iter().enumerate() {
                for _ in 0..k {
                    s[i].release();
                    let j = picker.pick(&s, None, 0, now, 0).unwrap();
                    s[j].acquire();
                }
            }
        }
        let first = first_close.expect("it rebalanced");
        assert!(
            first >= 30_000,
            "nothing before 30 s over: first at {first}"
        );
        for x in &s {
            assert!(
                (45..=55).contains(&x.active()),
                "{}: {}",
                x.addr(),
                x.active()
            );
        }
        assert_eq!(total_closed, 100, "no close more than needed");
    }

    #[test]
    fn a_dip_below_the_skew_restarts_the_clock() {
        let mut p = Planner::new(RebalanceConfig::default());
        assert_eq!(p.plan(&loads(&[100, 0]), 0), [0, 0]);
        assert_eq!(p.plan(&loads(&[100, 0]), 29_000), [0, 0]);
        // Level for a moment.
        assert_eq!(p.plan(&loads(&[50, 50]), 29_500), [0, 0]);
        assert_eq!(p.plan(&loads(&[100, 0]), 30_000), [0, 0]);
        assert_eq!(p.plan(&loads(&[100, 0]), 59_000), [0, 0]);
        assert_eq!(
            p.plan(&loads(&[100, 0]), 60_000),
            [0, 0],
            "shedding starts, no tokens yet"
        );
        assert_eq!(p.plan(&loads(&[100, 0]), 61_000), [20, 0]);
        // Half a second: half the rate.
        assert_eq!(p.plan(&loads(&[80, 20]), 61_500), [10, 0]);
    }

    #[test]
    fn pacing_over_fine_ticks() {
        // Ticks every 100 ms: no more than the rate over any whole second.
        let mut p = Planner::new(RebalanceConfig {
            sustain_ms: 0,
            ..RebalanceConfig::default()
        });
        let mut active = [1_000u32, 0];
        let mut per_tick = Vec::new();
        for tick in 0..200u64 {
            let c = p.plan(&loads(&active), tick * 100).to_vec();
            active[0] -= c[0];
            active[1] += c[0];
            per_tick.push(c[0]);
        }
        for w in per_tick.windows(10) {
            let n: u32 = w.iter().sum();
            assert!(n <= 21, "{n} in one second");
        }
        assert!(per_tick.iter().sum::<u32>() >= 390, "the rate is used");
    }

    #[test]
    fn weights_set_the_fair_share() {
        let mut p = Planner::new(RebalanceConfig {
            sustain_ms: 0,
            closes_per_second: 1_000,
            ..RebalanceConfig::default()
        });
        let l = [
            Load {
                active: 300,
                weight: 3,
            },
            Load {
                active: 100,
                weight: 1,
            },
            Load {
                active: 0,
                weight: 0,
            },
        ];
        // 300 of 400 with weight 3 of 4 is exactly fair.
        assert_eq!(p.plan(&l, 0), [0, 0, 0]);
        assert_eq!(p.plan(&l, 10_000), [0, 0, 0]);
        let l = [
            Load {
                active: 100,
                weight: 1,
            },
            Load {
                active: 100,
                weight: 3,
            },
            Load {
                active: 500,
                weight: 0,
            },
        ];
        p.plan(&l, 20_000);
        p.plan(&l, 21_000);
        // Fair is 50 / 150; the weight-0 server is neither counted nor shed.
        assert_eq!(p.plan(&l, 22_000), [50, 0, 0]);
    }

    #[test]
    fn degenerate_inputs() {
        let mut p = Planner::new(RebalanceConfig {
            max_skew: f64::NAN,
            closes_per_second: u32::MAX,
            sustain_ms: 0,
        });
        assert_eq!(p.plan(&[], 0), [0u32; 0]);
        assert_eq!(p.plan(&loads(&[0, 0]), 0), [0, 0]);
        p.plan(&loads(&[u32::MAX, 0]), u64::MAX - 2);
        p.plan(&loads(&[u32::MAX, 0]), u64::MAX - 1);
        let c = p.plan(&loads(&[u32::MAX, 0]), u64::MAX);
        assert!(c[0] > 0);
        // Time going backwards does not panic or mint tokens.
        assert_eq!(p.plan(&loads(&[u32::MAX, 0]), 0), [0, 0]);
        let mut q = Planner::new(RebalanceConfig {
            closes_per_second: 0,
            sustain_ms: 0,
            ..RebalanceConfig::default()
        });
        q.plan(&loads(&[10, 0]), 0);
        q.plan(&loads(&[10, 0]), 5_000);
        assert_eq!(q.plan(&loads(&[10, 0]), 10_000), [0, 0]);
    }
}
