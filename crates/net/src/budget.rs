//! The one server-wide budget for message data held in memory while it is received: SMTP
//! bodies (DATA, BDAT) and IMAP literals (APPEND) draw on the same instance.
//!
//! Each session is bounded by its own limits (`smtp.max_message_size`, IMAP's literal limits),
//! but many sessions at once could still hold far more than the machine has. Data reserves
//! memory from one semaphore (in KiB units) as it arrives, never ahead of it; when the budget is
//! spent, the protocol reads the rest, drops it, and answers "try again later" (`452 4.3.1`,
//! `NO [LIMIT]`) instead of growing the server.

use std::sync::Arc;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

const UNIT: usize = 1024;

#[derive(Clone, Debug)]
pub struct BodyBudget {
    units: Arc<Semaphore>,
}

impl BodyBudget {
    pub fn new(bytes: usize) -> BodyBudget {
        let units = bytes.div_ceil(UNIT).min(Semaphore::MAX_PERMITS);
        BodyBudget {
            units: Arc::new(Semaphore::new(units)),
        }
    }

    /// Bytes not reserved by anyone at this moment. A check before agreeing to receive data
    /// (IMAP's `+`); the data still reserves as it arrives, and may find the budget spent by then.
    pub fn available(&self) -> usize {
        self.units.available_permits().saturating_mul(UNIT)
    }

    pub fn reservation(&self) -> Reservation {
        Reservation {
            budget: self.clone(),
            held: None,
            units: 0,
        }
    }
}

/// Memory reserved for one body; given back when dropped.
#[derive(Debug)]
pub struct Reservation {
    budget: BodyBudget,
    held: Option<OwnedSemaphorePermit>,
    units: usize,
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
        match self.budget.units.clone().try_acquire_many_owned(more_u32) {
            Ok(permit) => {
                match &mut self.held {
                    Some(held) => held.merge(permit),
                    None => self.held = Some(permit),
                }
                self.units = needed;
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
