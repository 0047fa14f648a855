//! Each client's share of the HTTP connections (`server.max_connections_per_client`).
//!
//! actix-web counts connections for `server.max_connections` but not per client, so one client
//! could hold every slot (a few thousand long-polls, or idle connections opened faster than the
//! head timeout closes them). [`Shares::open`] counts each new connection against its address
//! (an IPv4 address, an IPv6 /64: [`ClientId::address`]) when actix-web hands it over; the
//! [`Open`] it returns is kept with the connection and uncounts it when the connection ends. A
//! connection over its client's share is not counted, and every request on it is answered `429`
//! with `Connection: close` ([`crate::api::auth`]). Nothing here fails: a connection whose peer
//! address cannot be read is simply not counted.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, MutexGuard};

use mailroom_actors::ClientId;

/// The connections open per client address.
#[derive(Debug)]
pub struct Shares {
    per_client: usize,
    open: Mutex<HashMap<ClientId, usize>>,
}

impl Shares {
    /// Shares of `per_client` connections each.
    pub fn new(per_client: usize) -> Arc<Shares> {
        Arc::new(Shares {
            per_client,
            open: Mutex::new(HashMap::new()),
        })
    }

    /// Counts a connection from `peer`, unless its client holds its share already.
    pub fn open(self: &Arc<Self>, peer: IpAddr) -> Open {
        let client = ClientId::address(peer);
        let mut open = self.lock();
        let n = open.entry(client.clone()).or_insert(0);
        let over = *n >= self.per_client;
        if !over {
            *n += 1;
        }
        Open {
            shares: self.clone(),
            client,
            over,
        }
    }

    /// Most connections one client may hold.
    pub fn per_client(&self) -> usize {
        self.per_client
    }

    /// Connections `peer`'s client holds now.
    pub fn held(&self, peer: IpAddr) -> usize {
        self.lock()
            .get(&ClientId::address(peer))
            .copied()
            .unwrap_or(0)
    }

    /// The counts (a panic cannot leave the map half changed).
    fn lock(&self) -> MutexGuard<'_, HashMap<ClientId, usize>> {
        self.open.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// One connection, counted against its client until dropped (with the connection).
#[derive(Debug)]
pub struct Open {
    shares: Arc<Shares>,
    client: ClientId,
    over: bool,
}

impl Open {
    /// Whether the connection came when its client held its share already: it is not
    /// counted, and its requests are refused.
    pub fn over(&self) -> bool {
        self.over
    }

    /// Most connections its client may hold.
    pub fn share(&self) -> usize {
        self.shares.per_client
    }
}

impl Drop for Open {
    fn drop(&mut self) {
        let mut open = self.shares.lock();
        if let Some(n) = open.get_mut(&self.client) {
            if !self.over {
                *n -= 1;
            }
            if *n == 0 {
                open.remove(&self.client);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_client_holds_its_share_and_gets_each_back_when_a_connection_ends() {
        let shares = Shares::new(2);
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        let first = shares.open(a);
        let second = shares.open(a);
        let third = shares.open(a);
        assert!(!first.over() && !second.over());
        assert!(third.over(), "a third connection is over a share of 2");
        assert!(!shares.open(b).over(), "another client has its own share");
        assert_eq!(shares.held(a), 2);
        drop(third);
        assert_eq!(shares.held(a), 2, "one over the share was never counted");
        drop(first);
        assert_eq!(shares.held(a), 1);
        assert!(!shares.open(a).over(), "a freed slot is taken again");
        drop(second);
        assert_eq!(shares.held(a), 0);
        assert!(
            shares.lock().is_empty(),
            "no entry is left for a client with none"
        );
    }

    #[test]
    fn an_ipv6_client_is_its_slash_64() {
        let shares = Shares::new(1);
        let one = shares.open("2001:db8::1".parse().unwrap());
        assert!(!one.over());
        assert!(shares.open("2001:db8::ffff:2".parse().unwrap()).over());
        assert!(!shares.open("2001:db8:0:1::1".parse().unwrap()).over());
    }
}
