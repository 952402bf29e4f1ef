//! Load balancing across an upstream's servers, sans-IO: which server a new
//! connection goes to, when a server is taken out and brought back, when to
//! retry and how long to wait, and which connections to move when the load
//! is skewed. No sockets and no clock: time comes in as `now_ms`, a
//! monotonic millisecond count the caller keeps.
//!
//! - [`server`]: [`ServerSlot`], one server's configuration and the atomic
//!   counters every worker shares (connections, handshakes, state, slow
//!   start, outlier bookkeeping).
//! - [`pick`]: [`Picker`], one per worker per upstream: smooth weighted
//!   [`RoundRobin`], [`LeastConn`], [`RandomTwo`] (power of two choices)
//!   and, in [`maglev`], [`HashPicker`] (consistent hashing with bounded
//!   loads over a [`Maglev`] table); backup servers only when no primary
//!   is eligible.
//! - [`key`]: [`key_hash`], the stable hash of a request's key and of a
//!   server's address.
//! - [`outlier`]: passive ejection after consecutive failures, with doubling
//!   ejection times.
//! - [`health`]: the rise/fall state machine of active checks and their
//!   jittered schedule.
//! - [`retry`]: a [`RetryBudget`] over a sliding window and full-jitter
//!   [`backoff_ms`](retry::backoff_ms).
//! - [`rebalance`]: the [`Planner`] that paces closes off servers that stay
//!   over their fair share after a scale-out.
//!
//! A handshake with retries goes: `pick` (with the `skip` mask of servers
//! already tried), `acquire` and `begin_handshake` on the chosen slot,
//! connect; on failure `end_handshake`, `release`,
//! [`outlier::record_failure`], then, if [`RetryBudget::try_acquire_retry`]
//! allows it, wait [`retry::backoff_ms`] and pick again with the failed
//! server's bit set in `skip`.

pub mod health;
pub mod key;
pub mod maglev;
pub mod outlier;
pub mod pick;
pub mod rebalance;
pub mod retry;
pub mod server;

pub use self::key::key_hash;
pub use self::maglev::{HashPicker, Maglev};
pub use self::pick::{LeastConn, Picker, RandomTwo, RoundRobin};
pub use self::rebalance::{Load, Planner, RebalanceConfig};
pub use self::retry::RetryBudget;
pub use self::server::{ServerSlot, ServerState, find_by_id};
