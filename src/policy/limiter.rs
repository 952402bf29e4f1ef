//! Limits keyed by client IP or identity, exact across workers: concurrent
//! connections and a handshake rate (GCRA) per key, in a sharded table
//! touched only at handshake and close. The table is bounded: idle keys
//! (no connection open, rate bucket drained) are evicted, so spraying
//! addresses cannot exhaust memory.
