//! Who may send a query upstream: `forward.max-inflight` slots in all, and
//! at most `forward.max-inflight-per-client` of them per client address,
//! so that one pod asking for names whose servers never answer holds a
//! bounded share for the upstream timeout and the others keep theirs.
//!
//! A query that finds its share (or every slot) taken may wait a moment
//! in its client's own line (at most `WAIT_LINE` shares long): a burst,
//! such as the backlog a starting agent finds queued on its sockets, is
//! then answered at upstream speed instead of REFUSED, while a flood
//! waits only behind itself. The waits are a semaphore's queue, FIFO, with
//! no polling.

use std::{
    collections::HashMap,
    hash::BuildHasher,
    net::IpAddr,
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc, Mutex,
    },
    time::Duration,
};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Shards of the per-client table: queries from many clients at once
/// rarely wait on the same lock.
const SHARDS: usize = 16;
/// A client's wait line, in shares.
const WAIT_LINE: usize = 8;

pub(crate) struct Admission {
    global: Arc<Semaphore>,
    /// `max-inflight-per-client`; a reload changes it for clients that
    /// come (or come back) after it.
    per_client: AtomicUsize,
    /// Clients with queries out or waiting.
    clients: [Mutex<HashMap<IpAddr, Share>>; SHARDS],
    hasher: std::collections::hash_map::RandomState,
}

struct Share {
    slots: Arc<Semaphore>,
    limit: usize,
    waiting: usize,
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
    slots: Option<(OwnedSemaphorePermit, OwnedSemaphorePermit)>,
    client: IpAddr,
    admission: Arc<Admission>,
}

/// A query's place in its client's wait line, given back when dropped.
pub(crate) struct WaitPlace {
    client: IpAddr,
    admission: Arc<Admission>,
}

impl Admission {
    pub(crate) fn new(max_inflight: usize, per_client: usize) -> Arc<Self> {
        Arc::new(Self {
            global: Arc::new(Semaphore::new(max_inflight)),
            per_client: AtomicUsize::new(per_client),
            clients: Default::default(),
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

    fn shard(&self, ip: &IpAddr) -> &Mutex<HashMap<IpAddr, Share>> {
        &self.clients[self.hasher.hash_one(ip) as usize % SHARDS]
    }

    /// The client's slots (its entry made if new), and `f` on its entry.
    fn with_share<R>(&self, ip: IpAddr, f: impl FnOnce(&mut Share) -> R) -> R {
        let mut m = self.shard(&ip).lock().unwrap_or_else(|e| e.into_inner());
        let limit = self.per_client.load(Ordering::Relaxed);
        let share = m.entry(ip).or_insert_with(|| Share {
            slots: Arc::new(Semaphore::new(limit)),
            limit,
            waiting: 0,
        });
        f(share)
    }

    /// Forgets a client with nothing out, waiting or being admitted.
    fn tidy(&self, ip: IpAddr) {
        let mut m = self.shard(&ip).lock().unwrap_or_else(|e| e.into_inner());
        if let Some(s) = m.get(&ip) {
            if s.waiting == 0
                && s.slots.available_permits() == s.limit
                && Arc::strong_count(&s.slots) == 1
            {
                m.remove(&ip);
            }
        }
    }

    /// Slots for one more upstream query from `client` now, or why not.
    pub(crate) fn admit(self: &Arc<Self>, client: IpAddr) -> Result<Ticket, Full> {
        let slots = self.with_share(client, |s| s.slots.clone());
        let got = match slots.try_acquire_owned() {
            Err(_) => Err(Full::Client),
            Ok(mine) => match self.global.clone().try_acquire_owned() {
                Ok(global) => Ok((mine, global)),
                Err(_) => Err(Full::Global),
            },
        };
        self.ticket(client, got)
    }

    /// As `admit`, waiting up to `wait` for the slots, in order of arrival.
    /// The caller holds a `WaitPlace`.
    pub(crate) async fn admit_within(
        self: &Arc<Self>,
        client: IpAddr,
        wait: Duration,
    ) -> Result<Ticket, Full> {
        let deadline = tokio::time::Instant::now() + wait;
        let slots = self.with_share(client, |s| s.slots.clone());
        let got = match tokio::time::timeout_at(deadline, slots.acquire_owned()).await {
            Ok(Ok(mine)) => {
                match tokio::time::timeout_at(deadline, self.global.clone().acquire_owned()).await {
                    Ok(Ok(global)) => Ok((mine, global)),
                    _ => Err(Full::Global),
                }
            }
            _ => Err(Full::Client),
        };
        self.ticket(client, got)
    }

    fn ticket(
        self: &Arc<Self>,
        client: IpAddr,
        got: Result<(OwnedSemaphorePermit, OwnedSemaphorePermit), Full>,
    ) -> Result<Ticket, Full> {
        match got {
            Ok(slots) => Ok(Ticket {
                slots: Some(slots),
                client,
                admission: self.clone(),
            }),
            Err(full) => {
                self.tidy(client);
                Err(full)
            }
        }
    }

    /// A place in `client`'s wait line, or `None` when it is full.
    pub(crate) fn wait_place(self: &Arc<Self>, client: IpAddr) -> Option<WaitPlace> {
        let placed = self.with_share(client, |s| {
            if s.waiting >= s.limit * WAIT_LINE {
                return false;
            }
            s.waiting += 1;
            true
        });
        placed.then(|| WaitPlace {
            client,
            admission: self.clone(),
        })
    }

    /// Clients known now (with queries out or waiting).
    #[cfg(test)]
    fn clients(&self) -> usize {
        self.clients
            .iter()
            .map(|s| s.lock().map_or(0, |m| m.len()))
            .sum()
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        drop(self.slots.take());
        self.admission.tidy(self.client);
    }
}

impl Drop for WaitPlace {
    fn drop(&mut self) {
        self.admission.with_share(self.client, |s| s.waiting -= 1);
        self.admission.tidy(self.client);
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

    #[tokio::test]
    async fn a_burst_waits_in_its_clients_line() {
        let a = Admission::new(100, 2);
        let ip: IpAddr = "10.0.0.9".parse().unwrap();
        let held: Vec<Ticket> = (0..2).map(|_| a.admit(ip).unwrap()).collect();
        let places: Vec<WaitPlace> = (0..16).map(|_| a.wait_place(ip).unwrap()).collect();
        assert!(a.wait_place(ip).is_none(), "the line is eight shares long");
        let waiter = {
            let a = a.clone();
            tokio::spawn(async move { a.admit_within(ip, Duration::from_secs(5)).await.is_ok() })
        };
        tokio::time::sleep(Duration::from_millis(20)).await;
        drop(held);
        assert!(
            waiter.await.unwrap(),
            "admitted as soon as a slot came back"
        );
        assert_eq!(
            a.admit_within(ip, Duration::from_millis(20)).await.err(),
            None,
            "one slot is free again"
        );
        drop(places);
        assert_eq!(a.clients(), 0);
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
