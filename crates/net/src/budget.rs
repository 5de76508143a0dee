//! The one server-wide budget for message data held in memory while it is received: SMTP
//! bodies (DATA, BDAT) and IMAP literals (APPEND) draw on the same instance.
//!
//! Each session is bounded by its own limits (`smtp.max_message_size`, IMAP's literal limits),
//! but many sessions at once could still hold far more than the machine has. Data reserves
//! memory from one semaphore (in KiB units) as it arrives, never ahead of it; when the budget is
//! spent, the protocol reads the rest, drops it, and answers "try again later" (`452 4.3.1`,
//! `NO [LIMIT]`) instead of growing the server.

//!
//! One client (an IPv4 address, or an IPv6 /64 like the bans) may hold at most a share of the
//! budget at once: without it, a few connections that stop in the middle of their data (or
//! send non-final BDAT chunks) could hold all of it, and every other sender would get `452`.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

const UNIT: usize = 1024;

/// The largest part of the budget one client may hold: an eighth, but never less than one
/// message of the largest size the server accepts (a client can always send one message).
pub fn client_share(budget_bytes: usize, max_message_bytes: usize) -> usize {
    (budget_bytes / 8).max(max_message_bytes).min(budget_bytes)
}

#[derive(Clone, Debug)]
pub struct BodyBudget {
    units: Arc<Semaphore>,
    /// Units one client may hold at once.
    per_client: usize,
    /// Units held per client; an entry lives only while its client holds something, so the
    /// map is as large as the reservations in flight at most.
    held: Arc<Mutex<HashMap<IpAddr, usize>>>,
}

/// The key a client's share is counted under: the address, or its /64 for IPv6 (one
/// customer's prefix), with IPv4-mapped IPv6 taken as IPv4.
fn client_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let prefix = u128::from(v6) & (u128::MAX << 64);
                IpAddr::V6(std::net::Ipv6Addr::from(prefix))
            }
        },
    }
}

impl BodyBudget {
    /// A budget of `bytes` in which any one client may hold everything.
    pub fn new(bytes: usize) -> BodyBudget {
        BodyBudget::with_client_share(bytes, bytes)
    }

    /// A budget of `bytes` in which one client may hold at most `per_client` bytes at once.
    pub fn with_client_share(bytes: usize, per_client: usize) -> BodyBudget {
        let units = bytes.div_ceil(UNIT).min(Semaphore::MAX_PERMITS);
        BodyBudget {
            units: Arc::new(Semaphore::new(units)),
            per_client: per_client.div_ceil(UNIT),
            held: Arc::new(Mutex::new(HashMap::new())),
        }
    }

    /// A reservation counted against `client`'s share.
    pub fn reservation_for(&self, client: IpAddr) -> Reservation {
        Reservation {
            budget: self.clone(),
            held: None,
            units: 0,
            client: Some(client_key(client)),
        }
    }

    /// Bytes not reserved by anyone at this moment. A check before agreeing to receive data
    /// (IMAP's `+`); the data still reserves as it arrives, and may find the budget spent by then.
    pub fn available(&self) -> usize {
        self.units.available_permits().saturating_mul(UNIT)
    }

    /// A reservation counted against no client's share (data the server makes itself).
    pub fn reservation(&self) -> Reservation {
        Reservation {
            budget: self.clone(),
            held: None,
            units: 0,
            client: None,
        }
    }
}

/// Memory reserved for one body; given back when dropped.
#[derive(Debug)]
pub struct Reservation {
    budget: BodyBudget,
    held: Option<OwnedSemaphorePermit>,
    units: usize,
    client: Option<IpAddr>,
}

impl Drop for Reservation {
    fn drop(&mut self) {
        let (Some(client), true) = (self.client, self.units > 0) else {
            return;
        };
        let mut held = self.budget.held.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(units) = held.get_mut(&client) {
            *units = units.saturating_sub(self.units);
            if *units == 0 {
                held.remove(&client);
            }
        }
    }
}

impl Reservation {
    /// Makes the reservation cover `bytes`; false when the budget cannot.
    pub fn grow_to(&mut self, bytes: usize) -> bool {
        let needed = bytes.div_ceil(UNIT);
        if needed <= self.units {
            return true;
        }
        let more = needed - self.units;
        let Ok(more_u32) = u32::try_from(more) else {
            return false;
        };
        // The client's share is checked and taken under one lock, so two connections of
        // one client cannot both pass the check.
        let mut by_client = self.budget.held.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(client) = self.client {
            let held = by_client.get(&client).copied().unwrap_or(0);
            if held + more > self.budget.per_client {
                return false;
            }
        }
        match self.budget.units.clone().try_acquire_many_owned(more_u32) {
            Ok(permit) => {
                match &mut self.held {
                    Some(held) => held.merge(permit),
                    None => self.held = Some(permit),
                }
                self.units = needed;
                if let Some(client) = self.client {
                    *by_client.entry(client).or_insert(0) += more;
                }
                true
            }
            Err(_) => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_client_holds_at_most_its_share_and_gets_it_back() {
        let budget = BodyBudget::with_client_share(16 * UNIT, 4 * UNIT);
        let a: IpAddr = [192, 0, 2, 1].into();
        let b: IpAddr = [192, 0, 2, 2].into();
        let mut first = budget.reservation_for(a);
        let mut second = budget.reservation_for(a);
        assert!(first.grow_to(3 * UNIT));
        assert!(!second.grow_to(2 * UNIT), "a's two connections share one share");
        assert!(second.grow_to(UNIT));
        let mut other = budget.reservation_for(b);
        assert!(other.grow_to(4 * UNIT), "another client has its own share");
        drop(first);
        assert!(second.grow_to(4 * UNIT), "a's share came back");
        drop(second);
        drop(other);
        assert!(
            budget.held.lock().map(|h| h.is_empty()).unwrap_or(false),
            "no entry left behind"
        );
        assert_eq!(budget.available(), 16 * UNIT);
    }

    #[test]
    fn an_ipv6_slash_64_is_one_client() {
        let budget = BodyBudget::with_client_share(16 * UNIT, 4 * UNIT);
        let one: IpAddr = "2001:db8:1:2::1".parse().unwrap_or(IpAddr::from([0u8; 16]));
        let same: IpAddr = "2001:db8:1:2:ffff::9".parse().unwrap_or(IpAddr::from([0u8; 16]));
        let mut r1 = budget.reservation_for(one);
        let mut r2 = budget.reservation_for(same);
        assert!(r1.grow_to(3 * UNIT));
        assert!(!r2.grow_to(2 * UNIT));
        assert_eq!(
            client_key("::ffff:192.0.2.1".parse().unwrap_or(one)),
            IpAddr::from([192, 0, 2, 1])
        );
    }

    #[test]
    fn a_client_may_always_send_one_largest_message() {
        assert_eq!(client_share(512 << 20, 50 << 20), 64 << 20);
        assert_eq!(client_share(64 << 10, 64 << 10), 64 << 10);
        assert_eq!(client_share(64 << 10, 1 << 20), 64 << 10);
    }

    #[test]
    fn reservations_share_the_budget_and_give_it_back() {
        let budget = BodyBudget::new(10 * UNIT);
        let mut a = budget.reservation();
        let mut b = budget.reservation();
        assert!(a.grow_to(6 * UNIT));
        assert!(!b.grow_to(5 * UNIT), "over budget");
        assert!(b.grow_to(4 * UNIT));
        assert_eq!(budget.available(), 0);
        drop(a);
        assert_eq!(budget.available(), 6 * UNIT);
        assert!(b.grow_to(9 * UNIT), "a's share came back");
    }
}
