//! dnsfast agent library: the loader and its maps, configuration, dnsmasq
//! flag import, and the `load` command. `main.rs` is only the CLI.
pub mod agent;
pub mod auto;
pub mod bpf;
pub mod config;
pub mod ctl;
pub mod cuckoo;
pub mod dnsmasq;
pub mod explain;
pub mod forward;
pub mod kernel;
pub mod labels;
pub mod load;
pub mod maps;
pub mod serve;
pub mod table;
