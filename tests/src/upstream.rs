//! A fake upstream resolver for labs: answers a fixed table after a delay,
//! NXDOMAINs other names, and drops queries under given suffixes, as cloud
//! resolvers sometimes do with search-path artifacts.

use std::{
    collections::HashMap,
    net::{Ipv4Addr, SocketAddr, UdpSocket},
    sync::Arc,
    time::Duration,
};

use anyhow::{Context, Result};
use hickory_proto::{
    op::{Message, ResponseCode},
    rr::{RData, Record, RecordType},
};

pub struct Upstream {
    pub listen: SocketAddr,
    pub delay: Duration,
    /// Lower-case absolute names (with trailing dot) to IPv4 answers.
    pub answers: HashMap<String, Ipv4Addr>,
    /// Queries for names under these suffixes get no answer at all.
    pub drop_suffixes: Vec<String>,
}

impl Upstream {
    /// Serves forever.
    pub fn serve(self) -> Result<()> {
        let sock = Arc::new(
            UdpSocket::bind(self.listen).with_context(|| format!("binding {}", self.listen))?,
        );
        let me = Arc::new(self);
        let mut buf = [0u8; 4096];
        loop {
            let (n, peer) = sock.recv_from(&mut buf)?;
            let Ok(q) = Message::from_vec(&buf[..n]) else {
                continue;
            };
            let Some(reply) = me.answer(&q) else { continue };
            let (sock, delay) = (sock.clone(), me.delay);
            std::thread::spawn(move || {
                std::thread::sleep(delay);
                let _ = sock.send_to(&reply, peer);
            });
        }
    }

    /// The reply bytes, or `None` to drop the query.
    pub fn answer(&self, q: &Message) -> Option<Vec<u8>> {
        let query = q.queries.first()?;
        let name = query.name().to_ascii().to_ascii_lowercase();
        let name = if name.ends_with('.') {
            name
        } else {
            format!("{name}.")
        };
        if self
            .drop_suffixes
            .iter()
            .any(|s| name == *s || name.ends_with(&format!(".{s}")))
        {
            return None;
        }
        let mut r = Message::response(q.metadata.id, q.metadata.op_code);
        r.metadata.recursion_desired = q.metadata.recursion_desired;
        r.metadata.recursion_available = true;
        r.add_query(query.clone());
        match self.answers.get(&name) {
            Some(ip) => {
                if query.query_type() == RecordType::A {
                    r.answers.push(Record::from_rdata(
                        query.name().clone(),
                        60,
                        RData::A((*ip).into()),
                    ));
                }
            }
            None => r.metadata.response_code = ResponseCode::NXDomain,
        }
        r.to_vec().ok()
    }
}
