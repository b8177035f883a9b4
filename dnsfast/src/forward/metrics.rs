//! The forwarder's counters: relaxed atomics, read by the shutdown summary
//! (and by `stats` and `/metrics` later).

use std::sync::atomic::{AtomicU64, Ordering};

use hickory_proto::op::ResponseCode;

#[derive(Default)]
pub struct Metrics {
    pub udp_queries: AtomicU64,
    pub tcp_queries: AtomicU64,
    /// Answered NXDOMAIN from the block patterns.
    pub blocked: AtomicU64,
    /// Refused because `max-inflight` upstream queries were already out.
    pub overloaded: AtomicU64,
    /// SERVFAIL because every upstream of the zone was down or failed.
    pub upstreams_failed: AtomicU64,
    /// REFUSED because no zone covers the name.
    pub no_route: AtomicU64,
    /// Answers by RCODE (0–15).
    pub rcodes: [AtomicU64; 16],
    /// Answers sent with TC because they exceeded the client's payload size.
    pub truncated: AtomicU64,
}

impl Metrics {
    pub fn answered(&self, rcode: ResponseCode, truncated: bool) {
        let i = (u16::from(rcode) as usize).min(15);
        self.rcodes[i].fetch_add(1, Ordering::Relaxed);
        if truncated {
            self.truncated.fetch_add(1, Ordering::Relaxed);
        }
    }

    pub fn get(c: &AtomicU64) -> u64 {
        c.load(Ordering::Relaxed)
    }

    /// "NOERROR=12 NXDOMAIN=3" for the RCODEs seen.
    pub fn rcode_summary(&self) -> String {
        (0..16u16)
            .filter_map(|i| {
                let n = Self::get(&self.rcodes[i as usize]);
                (n > 0).then(|| format!("{}={n}", rcode_name(ResponseCode::from(0, i as u8))))
            })
            .collect::<Vec<_>>()
            .join(" ")
    }
}

pub fn rcode_name(r: ResponseCode) -> String {
    match r {
        ResponseCode::NoError => "NOERROR".into(),
        ResponseCode::FormErr => "FORMERR".into(),
        ResponseCode::ServFail => "SERVFAIL".into(),
        ResponseCode::NXDomain => "NXDOMAIN".into(),
        ResponseCode::NotImp => "NOTIMP".into(),
        ResponseCode::Refused => "REFUSED".into(),
        other => format!("RCODE{}", u16::from(other)),
    }
}
