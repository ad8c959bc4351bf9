//! The global budget for buffered request bodies: one byte count shared by every request, so the
//! memory held by bodies being read or handled has a bound that does not grow with the number of
//! connections (`server.body_budget_bytes`).
//!
//! A request claims its declared `Content-Length` before a byte of its body is read, and a chunked
//! body claims each chunk as it arrives. A claim that would take the total past the budget is
//! refused (the caller answers 503 before reading on). A [`BodyClaim`] gives its bytes back when
//! dropped, on every path: answered, refused, timed out or cancelled with its connection.
//!
//! This module must stay cheap: a claim is one compare-and-swap on one shared counter, and its
//! release one subtraction; nothing allocates or locks.

use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};

use bytes::Bytes;
use hyper::body::{Body, Frame, SizeHint};

/// The budget is spent: the request must be refused before its body is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the budget for buffered request bodies ({limit} bytes) is spent")]
pub struct BudgetExhausted {
    /// The budget, bytes.
    pub limit: u64,
}

/// The bytes of request bodies held at once, and their limit.
#[derive(Debug)]
pub struct BodyBudget {
    used: AtomicU64,
    limit: u64,
}

impl BodyBudget {
    /// A budget of `limit` bytes, none of it claimed.
    pub fn new(limit: u64) -> BodyBudget {
        BodyBudget {
            used: AtomicU64::new(0),
            limit,
        }
    }

    /// The limit, bytes.
    pub fn limit(&self) -> u64 {
        self.limit
    }

    /// Bytes claimed now, all requests together.
    pub fn in_use(&self) -> u64 {
        self.used.load(Ordering::Relaxed)
    }

    /// Claims `bytes` (0 is always granted and touches nothing shared).
    pub fn claim(&self, bytes: u64) -> Result<BodyClaim<'_>, BudgetExhausted> {
        let mut claim = BodyClaim {
            budget: self,
            bytes: 0,
        };
        claim.grow(bytes)?;
        Ok(claim)
    }

    fn take(&self, bytes: u64) -> Result<(), BudgetExhausted> {
        if bytes == 0 {
            return Ok(());
        }
        // A compare-and-swap rather than add-then-undo: an overshoot, however brief, would
        // refuse a small request that fits.
        self.used
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |used| {
                used.checked_add(bytes).filter(|&total| total <= self.limit)
            })
            .map(|_| ())
            .map_err(|_| BudgetExhausted { limit: self.limit })
    }

    fn give_back(&self, bytes: u64) {
        if bytes != 0 {
            let before = self.used.fetch_sub(bytes, Ordering::Relaxed);
            debug_assert!(
                before >= bytes,
                "a body claim gave back more than was claimed"
            );
        }
    }
}

/// Bytes of the budget held by one request; given back when dropped.
#[derive(Debug)]
pub struct BodyClaim<'a> {
    budget: &'a BodyBudget,
    bytes: u64,
}

impl BodyClaim<'_> {
    /// The bytes this claim holds.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Claims `more` bytes besides those held; on refusal the claim keeps what it held.
    pub fn grow(&mut self, more: u64) -> Result<(), BudgetExhausted> {
        self.budget.take(more)?;
        self.bytes += more;
        Ok(())
    }

    /// Makes sure the claim covers `total` bytes.
    pub fn cover(&mut self, total: u64) -> Result<(), BudgetExhausted> {
        match total.checked_sub(self.bytes) {
            Some(more) if more > 0 => self.grow(more),
            _ => Ok(()),
        }
    }
}

impl Drop for BodyClaim<'_> {
    fn drop(&mut self) {
        self.budget.give_back(self.bytes);
    }
}

/// A request body whose data frames are charged to a [`BodyClaim`] as they arrive, so a chunked
/// body (no `Content-Length` to claim up front) is refused as soon as it would pass the budget.
/// A body with a declared length was claimed in full before reading and never grows the claim.
pub struct Metered<'c, 'b, B> {
    inner: B,
    claim: &'c mut BodyClaim<'b>,
    received: u64,
}

impl<'c, 'b, B> Metered<'c, 'b, B> {
    /// Charges `inner`'s data to `claim`.
    pub fn new(inner: B, claim: &'c mut BodyClaim<'b>) -> Self {
        Metered {
            inner,
            claim,
            received: 0,
        }
    }
}

impl<B> Body for Metered<'_, '_, B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    type Data = Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(
        self: Pin<&mut Self>,
        context: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = self.get_mut();
        let frame = match Pin::new(&mut this.inner).poll_frame(context) {
            Poll::Ready(Some(Ok(frame))) => frame,
            Poll::Ready(Some(Err(error))) => return Poll::Ready(Some(Err(error.into()))),
            Poll::Ready(None) => return Poll::Ready(None),
            Poll::Pending => return Poll::Pending,
        };
        if let Some(data) = frame.data_ref() {
            this.received = this.received.saturating_add(data.len() as u64);
            if let Err(exhausted) = this.claim.cover(this.received) {
                return Poll::Ready(Some(Err(Box::new(exhausted))));
            }
        }
        Poll::Ready(Some(Ok(frame)))
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    #[test]
    fn claims_are_refused_past_the_limit_and_given_back_on_drop() {
        let budget = BodyBudget::new(100);
        let first = budget.claim(60).unwrap();
        assert_eq!(budget.in_use(), 60);
        assert_eq!(
            budget.claim(41).unwrap_err(),
            BudgetExhausted { limit: 100 }
        );
        assert_eq!(budget.in_use(), 60, "a refused claim holds nothing");
        let second = budget.claim(40).unwrap();
        assert_eq!(budget.in_use(), 100);
        assert!(budget.claim(1).is_err());
        assert_eq!(
            budget.claim(0).unwrap().bytes(),
            0,
            "an empty body always fits"
        );
        drop(first);
        assert_eq!(budget.in_use(), 40);
        drop(second);
        assert_eq!(budget.in_use(), 0);
        assert!(budget.claim(u64::MAX).is_err(), "no overflow");
        assert_eq!(budget.in_use(), 0);
    }

    #[test]
    fn a_claim_grows_or_keeps_what_it_held() {
        let budget = BodyBudget::new(10);
        let mut claim = budget.claim(4).unwrap();
        claim.cover(3).unwrap();
        assert_eq!(claim.bytes(), 4, "cover never shrinks a claim");
        claim.cover(9).unwrap();
        assert_eq!((claim.bytes(), budget.in_use()), (9, 9));
        assert!(claim.grow(2).is_err());
        assert_eq!((claim.bytes(), budget.in_use()), (9, 9));
        drop(claim);
        assert_eq!(budget.in_use(), 0);
    }

    #[test]
    fn claims_from_many_threads_never_pass_the_limit() {
        let budget = BodyBudget::new(1000);
        let peak = AtomicU64::new(0);
        std::thread::scope(|scope| {
            for _ in 0..4 {
                scope.spawn(|| {
                    for size in (1..2000u64).map(|i| i % 97 + 1) {
                        if let Ok(claim) = budget.claim(size) {
                            peak.fetch_max(budget.in_use(), Ordering::Relaxed);
                            drop(claim);
                        }
                    }
                });
            }
        });
        assert!(peak.load(Ordering::Relaxed) <= 1000);
        assert_eq!(budget.in_use(), 0);
    }

    /// A body of ready data frames, as hyper gives a chunked body.
    struct Chunks(std::collections::VecDeque<&'static str>);

    impl Body for Chunks {
        type Data = Bytes;
        type Error = std::io::Error;

        fn poll_frame(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, std::io::Error>>> {
            let chunk = self.get_mut().0.pop_front();
            Poll::Ready(chunk.map(|chunk| Ok(Frame::data(Bytes::from_static(chunk.as_bytes())))))
        }
    }

    fn chunked(chunks: &[&'static str]) -> Chunks {
        Chunks(chunks.iter().copied().collect())
    }

    #[tokio::test]
    async fn a_chunked_body_is_charged_as_it_arrives_and_refused_past_the_budget() {
        let budget = BodyBudget::new(10);
        let mut claim = budget.claim(0).unwrap();
        let read = Metered::new(chunked(&["abcd", "efgh"]), &mut claim)
            .collect()
            .await
            .unwrap();
        assert_eq!(read.to_bytes(), Bytes::from_static(b"abcdefgh"));
        assert_eq!((claim.bytes(), budget.in_use()), (8, 8));
        drop(claim);

        let _other = budget.claim(5).unwrap();
        let mut claim = budget.claim(0).unwrap();
        let error = Metered::new(chunked(&["abc", "def"]), &mut claim)
            .collect()
            .await
            .unwrap_err();
        assert!(error.is::<BudgetExhausted>(), "{error}");
        assert_eq!(
            claim.bytes(),
            3,
            "the chunk that fit stays claimed until the claim drops"
        );
        drop(claim);
        assert_eq!(budget.in_use(), 5);
    }
}
