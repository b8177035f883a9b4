//! The forwarder's counters: relaxed atomics, read by the shutdown summary,
//! `dnsfast stats` and `/metrics`.

use std::sync::atomic::{AtomicU64, Ordering};

use hickory_proto::op::ResponseCode;

#[derive(Default)]
pub(crate) struct Metrics {
    pub(crate) udp_queries: AtomicU64,
    pub(crate) tcp_queries: AtomicU64,
    /// Answered NXDOMAIN from the block patterns.
    pub(crate) blocked: AtomicU64,
    /// Refused because `max-inflight` upstream queries were already out.
    pub(crate) overloaded: AtomicU64,
    /// SERVFAIL because every upstream of the zone was down or failed.
    pub(crate) upstreams_failed: AtomicU64,
    /// REFUSED because no zone covers the name.
    pub(crate) no_route: AtomicU64,
    /// Answers by RCODE (0–15).
    pub(crate) rcodes: [AtomicU64; 16],
    /// Answers sent with TC because they exceeded the client's payload size.
    pub(crate) truncated: AtomicU64,
    /// Refused because the client already had `max-inflight-per-client`
    /// upstream queries out.
    pub(crate) client_limited: AtomicU64,
    /// TCP connections closed at once: past `tcp-max-connections` or
    /// `tcp-max-per-client`.
    pub(crate) tcp_rejected: AtomicU64,
    /// TCP connections closed because the client did not take its answers
    /// (`tcp-write-timeout-ms`), or sent a message too slowly or too large.
    pub(crate) tcp_dropped: AtomicU64,
}

impl Metrics {
    pub(crate) fn answered(&self, rcode: ResponseCode, truncated: bool) {
        let i = (u16::from(rcode) as usize).min(15);
        self.rcodes[i].fetch_add(1, Ordering::Relaxed);
        if truncated {
            self.truncated.fetch_add(1, Ordering::Relaxed);
        }
    }

    pub(crate) fn get(c: &AtomicU64) -> u64 {
        c.load(Ordering::Relaxed)
    }
}

pub(crate) fn rcode_name(r: ResponseCode) -> String {
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

/// Upper bounds of the upstream latency buckets, in microseconds
/// (Prometheus `le` labels are these in seconds).
pub(crate) const LATENCY_BUCKETS_US: [u64; 12] = [
    500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000, 1_000_000,
    2_500_000,
];

/// A latency histogram: one relaxed add per observation.
#[derive(Default, Debug)]
pub(crate) struct Histogram {
    /// Per bucket (not cumulative); the last slot is +Inf.
    buckets: [AtomicU64; LATENCY_BUCKETS_US.len() + 1],
    sum_us: AtomicU64,
}

impl Histogram {
    pub(crate) fn observe(&self, us: u64) {
        let i = LATENCY_BUCKETS_US.partition_point(|&b| b < us);
        self.buckets[i].fetch_add(1, Ordering::Relaxed);
        self.sum_us.fetch_add(us, Ordering::Relaxed);
    }

    /// Cumulative counts per bucket (the last is +Inf, the total count),
    /// and the sum in microseconds.
    pub(crate) fn snapshot(&self) -> (Vec<u64>, u64) {
        let mut acc = 0;
        let cum = self
            .buckets
            .iter()
            .map(|b| {
                acc += b.load(Ordering::Relaxed);
                acc
            })
            .collect();
        (cum, self.sum_us.load(Ordering::Relaxed))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_are_cumulative() {
        let h = Histogram::default();
        for us in [100, 500, 501, 3_000, 9_999_999] {
            h.observe(us);
        }
        let (cum, sum) = h.snapshot();
        assert_eq!(cum[0], 2, "<= 0.5 ms");
        assert_eq!(cum[1], 3, "<= 1 ms");
        assert_eq!(cum[3], 4, "<= 5 ms");
        assert_eq!(*cum.last().unwrap(), 5, "+Inf is the count");
        assert_eq!(sum, 100 + 500 + 501 + 3_000 + 9_999_999);
    }
}
