//! The memory request bodies may hold, shared by every connection: a body is read only as far
//! as budget for it is granted. A request with a declared length reserves it whole before its
//! first byte is read (so uploads never each hold part of the budget while waiting for the
//! rest); one without reserves as its chunks arrive. Budget not granted within a short wait is
//! an answer, 503 with Retry-After, not a queue. While a request waits, its body is not read:
//! TCP (HTTP/1.1) and HTTP/2 flow control (the stream and connection windows are only replenished
//! as the body is read) hold the client back, so a client cannot push more than it was granted.
//!
//! An eighth of the budget (at most 4 MiB) is kept for small bodies, those of ordinary
//! reviews: waiters are served first come first served, and a review of a few KiB must not wait
//! behind uploads of megabytes for the room they need.

use std::sync::Arc;
use std::time::Duration;

use prometheus_client::metrics::gauge::Gauge;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// How long a request waits for budget before it is answered 503.
pub const WAIT: Duration = Duration::from_millis(500);

/// A body of at most this many bytes is small: it may draw on the part kept for small bodies.
pub const SMALL_BODY: usize = 64 * 1024;

/// The most kept for small bodies: room for a thousand ordinary reviews at once.
const MOST_KEPT_FOR_SMALL: usize = 4 * 1024 * 1024;

/// Bytes of request bodies in memory, across all connections, at most `limit`.
#[derive(Debug, Clone)]
pub struct MemoryBudget {
    /// For any body.
    shared: Arc<Semaphore>,
    shared_bytes: usize,
    /// Only for small bodies, when the shared part has no room.
    small: Arc<Semaphore>,
    limit: usize,
    in_use: Gauge,
}

/// Budget held for one body; returned when dropped.
#[derive(Debug)]
pub struct Reservation {
    shared: Option<OwnedSemaphorePermit>,
    small: Option<OwnedSemaphorePermit>,
    bytes: usize,
    in_use: Gauge,
}

impl MemoryBudget {
    /// A budget of `limit` bytes (at most 4 GiB), its use shown in `in_use`.
    pub fn new(limit: usize, in_use: Gauge) -> Self {
        let limit = limit.clamp(1, u32::MAX as usize);
        // Too small a budget to split: everything shared.
        let kept = if limit >= 4 * SMALL_BODY {
            (limit / 8).clamp(SMALL_BODY, MOST_KEPT_FOR_SMALL)
        } else {
            0
        };
        Self {
            shared: Arc::new(Semaphore::new(limit - kept)),
            shared_bytes: limit - kept,
            small: Arc::new(Semaphore::new(kept)),
            limit,
            in_use,
        }
    }

    pub fn limit(&self) -> usize {
        self.limit
    }

    /// Nothing reserved yet.
    pub fn empty(&self) -> Reservation {
        Reservation {
            shared: None,
            small: None,
            bytes: 0,
            in_use: self.in_use.clone(),
        }
    }

    /// Adds `bytes` to `reservation`, waiting at most [`WAIT`]; `false` if not granted. A body
    /// bigger than the shared part of the budget may still take all of it.
    pub async fn grow(&self, reservation: &mut Reservation, bytes: usize) -> bool {
        let total = reservation.bytes.saturating_add(bytes);
        if total <= SMALL_BODY {
            if let Ok(permit) = self.shared.clone().try_acquire_many_owned(bytes as u32) {
                reservation.hold_shared(permit, bytes);
                return true;
            }
            if self.small.available_permits() > 0 || self.shared_bytes == 0 {
                let pool = if self.shared_bytes == 0 {
                    &self.shared
                } else {
                    &self.small
                };
                return match acquire(pool, bytes).await {
                    Some(permit) => {
                        reservation.hold_small(permit, bytes, self.shared_bytes == 0);
                        true
                    }
                    None => false,
                };
            }
        }
        let held = reservation
            .shared
            .as_ref()
            .map_or(0, OwnedSemaphorePermit::num_permits);
        let bytes = bytes.min(self.shared_bytes.saturating_sub(held));
        if bytes == 0 {
            return true;
        }
        match acquire(&self.shared, bytes).await {
            Some(permit) => {
                reservation.hold_shared(permit, bytes);
                true
            }
            None => false,
        }
    }

    /// Adds `bytes` to `reservation` without waiting, past the limit if need be: for an answer
    /// that is already in memory, so that the gauge shows it and later bodies wait for it.
    pub fn take(&self, reservation: &mut Reservation, bytes: usize) {
        let available = self.shared.available_permits().min(bytes);
        if let Ok(permit) = self.shared.clone().try_acquire_many_owned(available as u32) {
            reservation.hold_shared(permit, available);
        }
        // The rest is shown, not held: there is nothing left to hold.
        let rest = bytes - available;
        reservation.bytes += rest;
        reservation.in_use.inc_by(rest as i64);
    }
}

async fn acquire(pool: &Arc<Semaphore>, bytes: usize) -> Option<OwnedSemaphorePermit> {
    let acquired = tokio::time::timeout(WAIT, pool.clone().acquire_many_owned(bytes as u32));
    acquired.await.ok()?.ok()
}

impl Reservation {
    /// Bytes reserved.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    fn hold_shared(&mut self, permit: OwnedSemaphorePermit, bytes: usize) {
        merge(&mut self.shared, permit);
        self.bytes += bytes;
        self.in_use.inc_by(bytes as i64);
    }

    fn hold_small(&mut self, permit: OwnedSemaphorePermit, bytes: usize, shared: bool) {
        merge(
            if shared {
                &mut self.shared
            } else {
                &mut self.small
            },
            permit,
        );
        self.bytes += bytes;
        self.in_use.inc_by(bytes as i64);
    }
}

fn merge(held: &mut Option<OwnedSemaphorePermit>, permit: OwnedSemaphorePermit) {
    match held {
        Some(held) => held.merge(permit),
        none => *none = Some(permit),
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        self.in_use.dec_by(self.bytes as i64);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: usize = 1024 * 1024;

    #[tokio::test]
    async fn budget_is_granted_up_to_the_limit_and_returned() {
        let gauge = Gauge::default();
        // 8 MiB: 1 MiB kept for small bodies, 7 MiB shared.
        let budget = MemoryBudget::new(8 * MIB, gauge.clone());
        let mut first = budget.empty();
        assert!(budget.grow(&mut first, 4 * MIB).await);
        assert_eq!(gauge.get(), 4 * MIB as i64);
        let mut second = budget.empty();
        let started = tokio::time::Instant::now();
        assert!(!budget.grow(&mut second, 4 * MIB).await, "only 3 MiB left");
        assert!(started.elapsed() >= WAIT);
        assert!(budget.grow(&mut second, 3 * MIB).await);
        drop(first);
        assert_eq!(gauge.get(), 3 * MIB as i64);
        assert!(budget.grow(&mut second, 4 * MIB).await);
        assert_eq!(gauge.get(), 7 * MIB as i64);
        // More than the shared part takes what there is.
        drop(second);
        let mut huge = budget.empty();
        assert!(budget.grow(&mut huge, 50 * MIB).await);
        assert_eq!(gauge.get(), 7 * MIB as i64);
        drop(huge);
        assert_eq!(gauge.get(), 0);
    }

    #[tokio::test]
    async fn small_bodies_do_not_wait_behind_big_ones() {
        let gauge = Gauge::default();
        let budget = MemoryBudget::new(8 * MIB, gauge.clone());
        let mut big = budget.empty();
        assert!(budget.grow(&mut big, 7 * MIB).await);
        // Another big one waits for the shared part...
        let waiting = {
            let budget = budget.clone();
            tokio::spawn(async move {
                let mut next = budget.empty();
                let granted = budget.grow(&mut next, 7 * MIB).await;
                (granted, next)
            })
        };
        tokio::task::yield_now().await;
        // ...while small ones are granted at once from the part kept for them, up to it.
        let started = tokio::time::Instant::now();
        let mut smalls = Vec::new();
        for _ in 0..16 {
            let mut small = budget.empty();
            assert!(budget.grow(&mut small, SMALL_BODY).await);
            smalls.push(small);
        }
        assert!(started.elapsed() < WAIT);
        let mut one_too_many = budget.empty();
        assert!(!budget.grow(&mut one_too_many, SMALL_BODY).await);
        assert_eq!(gauge.get(), 8 * MIB as i64);
        drop(big);
        let (granted, _next) = waiting.await.unwrap();
        assert!(granted);
        drop(smalls);
        assert_eq!(gauge.get(), 7 * MIB as i64);
    }

    #[tokio::test]
    async fn a_tiny_budget_is_shared_whole() {
        let gauge = Gauge::default();
        let budget = MemoryBudget::new(1000, gauge.clone());
        let mut first = budget.empty();
        assert!(budget.grow(&mut first, 600).await);
        let mut second = budget.empty();
        assert!(!budget.grow(&mut second, 600).await);
        assert!(budget.grow(&mut second, 400).await);
        assert_eq!(gauge.get(), 1000);
    }

    #[tokio::test]
    async fn an_answer_beyond_the_budget_is_shown_not_refused() {
        let gauge = Gauge::default();
        let budget = MemoryBudget::new(1000, gauge.clone());
        let mut reservation = budget.empty();
        assert!(budget.grow(&mut reservation, 800).await);
        budget.take(&mut reservation, 500);
        assert_eq!(reservation.bytes(), 1300);
        assert_eq!(gauge.get(), 1300);
        drop(reservation);
        assert_eq!(gauge.get(), 0);
        let mut next = budget.empty();
        assert!(
            budget.grow(&mut next, 1000).await,
            "all of it was given back"
        );
    }
}
