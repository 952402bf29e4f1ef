//! wsedge: a thread-per-core WebSocket reverse proxy for Linux edge hosts.
//!
//! The crate is split the way the data flows: [`proto`] is the sans-IO
//! protocol core (frames, masking, UTF-8, close codes, handshake); the proxy
//! engine builds on it.
#![warn(missing_docs)]

pub mod proto;
