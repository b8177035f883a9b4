//! Who may send a query upstream: `forward.max-inflight` slots in all, and
//! at most `forward.max-inflight-per-client` of them per client address,
//! so that one pod asking for names whose servers never answer holds a
//! bounded share for the upstream timeout and the others keep theirs.

use std::{
    collections::HashMap,
    hash::BuildHasher,
    net::IpAddr,
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc, Mutex,
    },
};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Shards of the per-client counts: queries from many clients at once
/// rarely wait on the same lock.
const SHARDS: usize = 16;

pub(crate) struct Admission {
    global: Arc<Semaphore>,
    /// `max-inflight-per-client`; a reload may change it.
    per_client: AtomicUsize,
    counts: [Mutex<HashMap<IpAddr, usize>>; SHARDS],
    hasher: std::collections::hash_map::RandomState,
}

/// Why a query was not admitted.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Full {
    /// Every `max-inflight` slot is taken.
    Global,
    /// This client holds `max-inflight-per-client` already.
    Client,
}

/// One admitted query's slots, given back when it is dropped.
pub(crate) struct Ticket {
    _global: OwnedSemaphorePermit,
    client: IpAddr,
    admission: Arc<Admission>,
}

impl Admission {
    pub(crate) fn new(max_inflight: usize, per_client: usize) -> Arc<Self> {
        Arc::new(Self {
            global: Arc::new(Semaphore::new(max_inflight)),
            per_client: AtomicUsize::new(per_client),
            counts: Default::default(),
            hasher: Default::default(),
        })
    }

    /// Global slots free now.
    pub(crate) fn available(&self) -> usize {
        self.global.available_permits()
    }

    pub(crate) fn set_per_client(&self, n: usize) {
        self.per_client.store(n, Ordering::Relaxed);
    }

    fn shard(&self, ip: &IpAddr) -> &Mutex<HashMap<IpAddr, usize>> {
        &self.counts[self.hasher.hash_one(ip) as usize % SHARDS]
    }

    /// Slots for one more upstream query from `client`, or why not.
    pub(crate) fn admit(self: &Arc<Self>, client: IpAddr) -> Result<Ticket, Full> {
        let limit = self.per_client.load(Ordering::Relaxed);
        {
            let mut m = self
                .shard(&client)
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            let n = m.entry(client).or_insert(0);
            if *n >= limit {
                return Err(Full::Client);
            }
            *n += 1;
        }
        match self.global.clone().try_acquire_owned() {
            Ok(p) => Ok(Ticket {
                _global: p,
                client,
                admission: self.clone(),
            }),
            Err(_) => {
                self.release(client);
                Err(Full::Global)
            }
        }
    }

    fn release(&self, client: IpAddr) {
        let mut m = self
            .shard(&client)
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if let Some(n) = m.get_mut(&client) {
            *n -= 1;
            // Forget idle clients: the map holds only those with queries out.
            if *n == 0 {
                m.remove(&client);
            }
        }
    }

    /// Queries out now, and clients with any out (for tests and stats).
    #[cfg(test)]
    fn clients(&self) -> usize {
        self.counts
            .iter()
            .map(|s| s.lock().map_or(0, |m| m.len()))
            .sum()
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        self.admission.release(self.client);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_client_cannot_take_every_slot() {
        let a = Admission::new(10, 3);
        let (bad, good): (IpAddr, IpAddr) =
            ("10.0.0.9".parse().unwrap(), "10.0.0.1".parse().unwrap());
        let held: Vec<Ticket> = (0..3).map(|_| a.admit(bad).unwrap()).collect();
        assert_eq!(a.admit(bad).err(), Some(Full::Client));
        let mine: Vec<Ticket> = (0..3).map(|_| a.admit(good).unwrap()).collect();
        drop(held);
        assert!(a.admit(bad).is_ok(), "slots come back when queries end");
        drop(mine);
        assert_eq!(a.clients(), 0, "idle clients are forgotten");
    }

    #[test]
    fn the_global_bound_holds_and_gives_back_the_client_slot() {
        let a = Admission::new(2, 5);
        let ips: Vec<IpAddr> = (1..=3)
            .map(|i| format!("10.0.0.{i}").parse().unwrap())
            .collect();
        let _t1 = a.admit(ips[0]).unwrap();
        let _t2 = a.admit(ips[1]).unwrap();
        assert_eq!(a.admit(ips[2]).err(), Some(Full::Global));
        // The refused query took nothing.
        a.set_per_client(1);
        drop(_t1);
        assert!(a.admit(ips[2]).is_ok());
    }
}
