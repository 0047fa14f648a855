//! Each client's share of the HTTP connections (`server.max_connections_per_client`).
//!
//! actix-web counts connections for `server.max_connections` but not per client, so one client
//! could hold every slot (a few thousand long-polls, or idle connections opened faster than the
//! head timeout closes them). [`Shares::open`] counts each new connection against its address
//! (an IPv4 address, an IPv6 /64: [`ClientId::address`]) when actix-web hands it over; the
//! [`Open`] it returns is kept with the connection and uncounts it when the connection ends. A
//! connection over its client's share is not counted: [`refuse`] writes it a `429` as soon as
//! it is handed over and shuts it down, so actix-web lets it go without waiting for a request,
//! and marks it [`Refused`], so a request that arrived before the shutdown (already in the
//! socket's queue) is refused too and never reaches a handler ([`crate::api::auth`]). Nothing
//! here fails: a connection whose peer address cannot be read is not counted, and a refusal
//! that cannot be written just closes the connection (a client that writes after the shutdown
//! may see a reset instead of the answer).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, MutexGuard};

use mailroom_actors::ClientId;

/// The connections open per client address.
#[derive(Debug)]
pub struct Shares {
    per_client: usize,
    open: Mutex<HashMap<ClientId, usize>>,
    /// Connections refused for being over their client's share.
    refused: AtomicU64,
}

impl Shares {
    /// Shares of `per_client` connections each.
    pub fn new(per_client: usize) -> Arc<Shares> {
        Arc::new(Shares {
            per_client,
            open: Mutex::new(HashMap::new()),
            refused: AtomicU64::new(0),
        })
    }

    /// Counts a connection from `peer`; `None` when its client holds its share already.
    pub fn open(self: &Arc<Self>, peer: IpAddr) -> Option<Open> {
        let client = ClientId::address(peer);
        let mut open = self.lock();
        let n = open.get(&client).copied().unwrap_or(0);
        if n >= self.per_client {
            self.refused.fetch_add(1, Relaxed);
            return None;
        }
        open.insert(client.clone(), n + 1);
        Some(Open {
            shares: self.clone(),
            client,
        })
    }

    /// Connections refused so far for being over their client's share.
    pub fn refused(&self) -> u64 {
        self.refused.load(Relaxed)
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
}

impl Drop for Open {
    fn drop(&mut self) {
        let mut open = self.shares.lock();
        if let Some(n) = open.get_mut(&self.client) {
            *n -= 1;
            if *n == 0 {
                open.remove(&self.client);
            }
        }
    }
}

/// Marks a connection refused by [`refuse`] (in its connection data): every request on it is
/// refused.
#[derive(Debug, Clone, Copy)]
pub struct Refused {
    /// The share it was over.
    pub share: usize,
}

/// Answers a connection over its client's share with `429` (problem+json, `Retry-After: 1`,
/// `Connection: close`) before it sends anything, and shuts it down both ways: actix-web then
/// reads its end at once and drops it. The answer is written without waiting (a new
/// connection's send buffer is empty); if it cannot be written, the connection is only closed.
pub fn refuse(stream: &actix_web::rt::net::TcpStream, share: usize) -> Refused {
    let problem = Refused { share }.error().problem();
    let body = serde_json::to_string(&problem).unwrap_or_default();
    let answer = format!(
        "HTTP/1.1 429 Too Many Requests\r\ncontent-type: application/problem+json\r\n\
         retry-after: 1\r\nconnection: close\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    );
    // A failed write raises no SIGPIPE: Rust programs ignore it.
    let socket = socket2::SockRef::from(stream);
    let _ = socket.send(answer.as_bytes());
    let _ = socket.shutdown(std::net::Shutdown::Both);
    Refused { share }
}

impl Refused {
    /// The error its requests get.
    pub fn error(self) -> crate::problem::ApiError {
        crate::problem::ApiError::TooManyConnections(format!(
            "this client holds server.max_connections_per_client ({}) connections already; \
             send on those, or close one first",
            self.share
        ))
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
        let first = shares.open(a).expect("one of two");
        let second = shares.open(a).expect("two of two");
        assert!(shares.open(a).is_none(), "a third is over a share of 2");
        assert_eq!(shares.refused(), 1);
        assert!(shares.open(b).is_some(), "another client has its own share");
        assert_eq!(shares.held(a), 2);
        drop(first);
        assert_eq!(shares.held(a), 1);
        let again = shares.open(a).expect("a freed place is taken again");
        drop((second, again));
        assert_eq!(shares.held(a), 0);
        assert!(
            shares.lock().is_empty(),
            "no entry is left for a client with none"
        );
    }

    #[test]
    fn an_ipv6_client_is_its_slash_64() {
        let shares = Shares::new(1);
        let _one = shares.open("2001:db8::1".parse().unwrap()).unwrap();
        assert!(shares.open("2001:db8::ffff:2".parse().unwrap()).is_none());
        assert!(shares.open("2001:db8:0:1::1".parse().unwrap()).is_some());
    }
}
