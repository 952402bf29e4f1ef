//! Handshake policy: who the client is (PROXY protocol, trusted proxies),
//! who may connect (CIDR lists, Origin lists), who they are
//! (authentication: JWT, API keys, an external service) and how much they
//! may use (per-IP and per-identity limits). Decided between "request
//! parsed" and "backend chosen"; every refusal knows its HTTP status and a
//! short reason for the log and the counters.

pub mod admit;
pub mod api_key;
pub mod cidr;
pub mod client_ip;
pub mod credential;
pub mod external;
pub mod jwt;
pub mod limiter;
pub mod origin;
pub mod refusal;
pub mod state;
