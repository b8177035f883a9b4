//! The ABI shared by the dnsfast XDP program and its agent.
//!
//! Everything that both sides must agree on lives here exactly once: map
//! key and value layouts, counters, limits, and the label-reversed name
//! encoding that turns "longest matching suffix at a label boundary" into a
//! longest-prefix lookup in an exact table.
#![cfg_attr(not(feature = "user"), no_std)]

pub mod abi;
pub mod answer;
#[cfg(feature = "user")]
pub mod frame;
pub mod labels;
pub mod name;
#[cfg(feature = "user")]
pub mod pattern;
#[cfg(feature = "user")]
pub mod suffix;
pub mod table;

pub use abi::*;
pub use name::*;
