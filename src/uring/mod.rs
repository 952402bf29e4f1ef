//! Building blocks of the io_uring-native relay driver (in progress; see
//! `docs/architecture.md`, "The io_uring-native driver"): the provided-buffer
//! ring that receives take their buffers from, and the per-worker timer
//! wheel that replaces a timer object per connection.

pub mod bufring;
pub mod native;
pub mod relay;
pub mod wheel;
