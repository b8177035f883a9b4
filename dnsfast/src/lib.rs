//! The dnsfast agent and CLI.
//!
//! Data flows one way: the command line builds a configuration, the
//! configuration yields a rule set, and the rule set is written to the
//! kernel (the dataplane) and matched by the forwarder. A module uses only
//! the modules listed after it here; `tests/tests/layout.rs` keeps this list, and
//! that rule, true.
//!
//! - [`cli`]: one file per command group; `main.rs` is clap and dispatch.
//! - [`agent`]: the running `dnsfast load`: runtime and signals,
//!   interfaces, control socket, reloads, events, stats, `/metrics`.
//! - [`forward`]: the user-space DNS path: listener → resolver → router,
//!   upstream, cache, kernel cache, wire.
//! - [`dataplane`]: everything that touches BPF: loading, maps, the
//!   pattern table, label sets, pins, attach modes, kernel version.
//! - [`rules`]: the rule set, pure logic, no aya.
//! - [`config`]: the TOML model, flags (dnsmasq's too), auto derivation,
//!   the forwarder's tables.
//! - [`paths`]: every path and pin name.
//!
//! `forward` and `dataplane` are siblings and never use each other: the
//! agent hands the kernel answer cache's map from one to the other.

pub mod agent;
pub mod cli;
pub mod config;
pub mod dataplane;
pub mod forward;
pub mod paths;
pub mod rules;
