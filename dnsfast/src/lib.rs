//! dnsfast agent: loader and maps, configuration, dnsmasq flag import.
pub mod bpf;
