//! wsedge: a thread-per-core WebSocket reverse proxy for Linux edge hosts.
//!
//! The crate is split the way the data flows: [`proto`] is the sans-IO
//! protocol core (frames, masking, UTF-8, close codes, handshake);
//! [`session`] takes one client through the handshake and hands it to
//! [`relay`], which moves frames both ways in pooled buffers; [`worker`]
//! runs one monoio runtime per core; [`server`] starts and stops them from a
//! [`config::Config`], talking to each worker over its [`control`] channel.
#![warn(missing_docs)]

pub mod admin;
pub mod balance;
pub mod config;
pub mod control;
pub mod echo;
pub mod fleet;
pub mod generation;
pub mod health;
pub mod listener;
pub mod logging;
pub mod notify;
pub mod policy;
pub mod pool;
pub mod proto;
pub mod rebalance;
pub mod relay;
pub mod reload;
pub mod resolve;
pub mod route;
pub mod server;
pub mod session;
pub mod stats;
pub mod tls;
pub mod transport;
pub mod upgrade;
pub mod uring;
pub mod worker;

mod sys;
