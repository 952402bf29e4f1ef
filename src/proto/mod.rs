//! The sans-IO protocol core: RFC 6455 frames, masking, UTF-8, close payloads,
//! message sequencing and the HTTP/1.1 upgrade handshake.
//!
//! Nothing in here touches a socket, a clock or the allocator on the per-frame
//! path: bytes in, decisions out. Everything the network can send passes
//! through this module, so it is where the fuzz targets and property tests
//! concentrate.

pub mod close;
pub mod error;
pub mod frame;
pub mod handshake;
pub mod mask;
pub mod message;
pub mod proxy_protocol;
pub mod token;
pub mod utf8;
