//! TLS on both legs: rustls runs the handshakes; the records after it are
//! sealed and opened in place in the worker's pool buffers by wsedge's own
//! record layer over `ring` (the secrets are handed over with rustls's
//! kernel-connection API, the one kTLS uses).
//!
//! - [`record`]: sealing and opening records in place (sans-IO).
//! - [`conn`]: one connection after its handshake: alerts, key updates,
//!   tickets (sans-IO).
//! - [`handshake`]: rustls's unbuffered handshake over growable buffers.
//! - [`certs`], [`setup`]: certificates (SNI, reload) and rustls's
//!   configurations.
//! - [`stream`]: a [`Transport`](crate::transport::Transport) over another.

pub mod certs;
pub mod conn;
pub mod handshake;
pub mod record;
pub mod setup;
pub mod stream;

pub use conn::{TlsConn, TlsError};
pub use handshake::{Done, Established, HandshakeError, accept, connect};
pub use stream::TlsStream;

#[cfg(test)]
mod tests;
