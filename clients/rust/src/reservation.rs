//! Reserve, work, capture: the shape of a metered call whose cost is known only at the end (a
//! model call billed by tokens). The hold is placed before the work, so a wallet that cannot pay
//! is refused ([`ClientError::InsufficientCredits`]) before any work is done; the real cost is
//! captured after; the hold is released if the work fails, so a failed call costs nothing.
//!
//! Two forms: [`Reservations::with_reservation`], a closure, for the usual case; and
//! [`ReservationGuard`] from [`Reservations::hold`], for work that does not fit in one closure.
//! A guard dropped without a capture or a release (an early return, a panic, a request future
//! cancelled because its caller went away) releases its hold from a task on the current tokio
//! runtime; should even that fail, the hold lapses at its `ttl_seconds`.

use std::future::Future;

use crate::client::Client;
use crate::error::ClientError;
use crate::groups::Reservations;
use crate::types::{Capture, Hold, Release, Reservation};

/// An open reservation that is released when dropped, unless captured or released first.
#[derive(Debug)]
#[must_use = "a guard dropped at once releases its hold"]
pub struct ReservationGuard {
    client: Client,
    reservation: Reservation,
    id: String,
    open: bool,
}

/// What the work of [`Reservations::with_reservation`] sees of its hold.
#[derive(Debug, Clone)]
pub struct ActiveHold {
    client: Client,
    /// The reservation as it was answered.
    pub reservation: Reservation,
    /// Its id.
    pub reservation_id: String,
}

impl ActiveHold {
    /// Gives the hold a new lifetime of `ttl_seconds`, for work that runs longer than planned;
    /// the new expiry.
    pub async fn extend(&self, ttl_seconds: u64) -> Result<String, ClientError> {
        self.client
            .reservations()
            .extend(&self.reservation_id, ttl_seconds, None)
            .await
    }
}

/// What [`Reservations::with_reservation`] returns.
#[derive(Debug, Clone)]
pub struct Reserved<T> {
    /// What the work returned.
    pub value: T,
    /// The reservation's answer.
    pub reservation: Reservation,
    /// The capture's answer; `None` when the cost was 0 and the hold was released.
    pub capture: Option<Capture>,
}

impl ReservationGuard {
    /// The reservation as it was answered.
    pub fn reservation(&self) -> &Reservation {
        &self.reservation
    }

    /// Its id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// A handle for the work: the reservation and a way to extend it.
    pub fn active(&self) -> ActiveHold {
        ActiveHold {
            client: self.client.clone(),
            reservation: self.reservation.clone(),
            reservation_id: self.id.clone(),
        }
    }

    /// Charges `amount` (all that is held when `None`) and closes the guard. On an error the
    /// guard stays open: capture another amount, release, or drop it.
    pub async fn capture(&mut self, amount: Option<i64>) -> Result<Capture, ClientError> {
        let capture = self
            .client
            .reservations()
            .capture(&self.id, amount, None)
            .await?;
        self.open = false;
        Ok(capture)
    }

    /// Gives the held credits back and closes the guard.
    pub async fn release(mut self) -> Result<Release, ClientError> {
        self.open = false;
        self.client.reservations().release(&self.id, None).await
    }
}

impl Drop for ReservationGuard {
    fn drop(&mut self) {
        if !self.open {
            return;
        }
        // No `.await` in a drop: the release runs as a task of its own. Without a runtime (the
        // guard outlived it) the hold lapses at its expiry instead.
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            let (client, id) = (self.client.clone(), std::mem::take(&mut self.id));
            runtime.spawn(async move {
                let _ = client.reservations().release(&id, None).await;
            });
        }
    }
}

impl Client {
    /// [`Reservations::with_reservation`], from the client itself.
    pub async fn with_reservation<T, E, F, Fut>(
        &self,
        user: &str,
        hold: &Hold,
        work: F,
    ) -> Result<Reserved<T>, E>
    where
        F: FnOnce(ActiveHold) -> Fut,
        Fut: Future<Output = Result<(T, i64), E>>,
        E: From<ClientError>,
    {
        self.reservations().with_reservation(user, hold, work).await
    }
}

impl Reservations<'_> {
    /// Holds credits for `user` and returns a guard over the hold: capture it with the real
    /// cost, or release it; dropped open, it releases.
    pub async fn hold(
        &self,
        user: &str,
        hold: &Hold,
        key: Option<&str>,
    ) -> Result<ReservationGuard, ClientError> {
        let reservation = self.create(user, hold, key).await?;
        let id = reservation
            .reservation_id
            .clone()
            .ok_or_else(|| ClientError::Decode("the reservation has no id (a dry run?)".into()))?;
        Ok(ReservationGuard {
            client: self.client.clone(),
            reservation,
            id,
            open: true,
        })
    }

    /// Holds `hold` for `user`, runs `work`, then settles: `work` returns its value and the real
    /// cost. A cost of 0 releases the hold; any other cost is captured (more than held is charged
    /// from the wallet if it can pay, else the capture's 402 is returned and the hold released).
    /// If `work` fails, the hold is released and its error returned. A 402 on the hold returns
    /// before `work` runs.
    ///
    /// ```no_run
    /// # async fn gateway(client: &creditd_client::Client) -> Result<(), creditd_client::ClientError> {
    /// use creditd_client::Hold;
    /// let answer = client
    ///     .reservations()
    ///     .with_reservation("ada", &Hold::amount(50), |_hold| async {
    ///         let tokens = 42; // call the model here
    ///         Ok::<_, creditd_client::ClientError>((format!("{tokens} tokens"), tokens))
    ///     })
    ///     .await?;
    /// println!("{} for {}", answer.value, answer.capture.map_or(0, |c| c.charged));
    /// # Ok(()) }
    /// ```
    pub async fn with_reservation<T, E, F, Fut>(
        &self,
        user: &str,
        hold: &Hold,
        work: F,
    ) -> Result<Reserved<T>, E>
    where
        F: FnOnce(ActiveHold) -> Fut,
        Fut: Future<Output = Result<(T, i64), E>>,
        E: From<ClientError>,
    {
        let mut guard = self.hold(user, hold, None).await?;
        let reservation = guard.reservation().clone();
        let (value, cost) = match work(guard.active()).await {
            Ok(done) => done,
            Err(error) => {
                // The work's error is the one that matters; a failed release leaves the hold to
                // lapse at its expiry.
                let _ = guard.release().await;
                return Err(error);
            }
        };
        if cost == 0 {
            guard.release().await?;
            return Ok(Reserved {
                value,
                reservation,
                capture: None,
            });
        }
        let capture = guard.capture(Some(cost)).await?;
        Ok(Reserved {
            value,
            reservation,
            capture: Some(capture),
        })
    }
}
