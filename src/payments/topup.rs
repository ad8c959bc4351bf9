//! The automatic top-up worker. A debit that leaves a wallet under its rule's threshold sets the
//! wallet's trigger flag under its lock and hands a trigger over a bounded channel (never blocking
//! the debit). The worker asks the engine to plan: the engine checks the rule, the daily and hourly
//! caps and the backoff, and records the intent with a deterministic reference before anything
//! leaves the process. Only once that record is durable is the gateway called, with the reference
//! as its idempotency key; its answer is settled through the engine like any webhook.
//!
//! An answer that never came (a timeout, a crash) leaves the intent pending. The sweep and the start
//! reconcile it: the gateway's verify call says what happened; if the gateway never heard of it, the
//! same charge is sent again under the same reference, which gateways accept at most once. So a
//! crash between intent and settlement ends in exactly one charge and one credit.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;

use tokio::sync::Semaphore;

use super::gateway::{ChargeSpec, Outcome, PaymentGateway};
use super::{GatewayOp, Payments, WebhookOutcome};
use crate::engine::notify::TopupTrigger;
use crate::engine::payments::{PaymentView, TopupCharge, TopupDecision};
use crate::engine::types::Decline;

/// Pending intents younger than this are left to the call that is making them.
/// (At least twice the gateway timeout, so a call still running is never raced.)
const RECONCILE_AFTER_MS: i64 = 30_000;

/// How many times an intent the gateway has no record of is sent again (each after its own
/// verify) before it is given up as never charged.
const MAX_RESENDS: u32 = 3;

/// An intent is given up only once it is this old. A gateway's record of a charge can lag behind
/// the charge (Stripe's search is eventually consistent), so "no record" is believed only after
/// an hour; until then the intent stays pending and is verified again at every sweep. (Should a
/// paid report still come after it was given up, the payment is credited then.)
const ABANDON_AFTER_MS: i64 = 3_600_000;

/// The worker.
#[derive(Clone)]
pub struct TopupWorker {
    payments: Arc<Payments>,
    permits: Arc<Semaphore>,
    /// References this process is charging right now: reconciliation leaves them alone, however
    /// long the durable wait or the gateway takes.
    charging: Arc<Mutex<HashSet<String>>>,
    /// How often each pending intent was sent again by reconciliation (since this start).
    resent: Arc<Mutex<HashMap<String, u32>>>,
}

/// Marks a reference as being charged until dropped.
struct Charging {
    set: Arc<Mutex<HashSet<String>>>,
    reference: String,
}

impl Charging {
    fn start(set: &Arc<Mutex<HashSet<String>>>, reference: &str) -> Option<Charging> {
        set.lock().insert(reference.to_owned()).then(|| Charging {
            set: Arc::clone(set),
            reference: reference.to_owned(),
        })
    }
}

impl Drop for Charging {
    fn drop(&mut self) {
        self.set.lock().remove(&self.reference);
    }
}

impl TopupWorker {
    /// A worker charging at most `payments.autotopup.concurrency` at once.
    pub fn new(payments: Arc<Payments>) -> TopupWorker {
        let permits = Arc::new(Semaphore::new(
            payments.config.autotopup.concurrency.max(1) as usize
        ));
        TopupWorker {
            payments,
            permits,
            charging: Arc::new(Mutex::new(HashSet::new())),
            resent: Arc::new(Mutex::new(HashMap::new())),
        }
    }

    /// Runs the worker on the current runtime: triggers as they come, the sweep on its interval,
    /// and a reconciliation of unfinished intents right away.
    pub fn spawn(
        self,
        triggers: crossbeam_channel::Receiver<TopupTrigger>,
    ) -> tokio::task::JoinHandle<()> {
        let runtime = tokio::runtime::Handle::current();
        let forwarder = self.clone();
        // The engine's channel is synchronous; one thread hands its triggers to the runtime.
        let spawned = std::thread::Builder::new()
            .name("creditd-topups".into())
            .spawn(move || {
                for trigger in triggers.iter() {
                    let worker = forwarder.clone();
                    runtime.spawn(async move { worker.handle(trigger).await });
                }
            });
        if let Err(error) = spawned {
            tracing::error!(%error, "could not start the top-up trigger thread; the sweep alone will top up");
        }
        tokio::spawn(async move {
            self.reconcile_all(0).await;
            let every = Duration::from_secs(self.payments.config.autotopup.sweep_every.0.max(1));
            loop {
                tokio::time::sleep(every).await;
                self.sweep().await;
            }
        })
    }

    /// Handles one trigger: plan, charge, settle, and let the wallet be triggered again.
    pub async fn handle(&self, trigger: TopupTrigger) {
        let Ok(_permit) = self.permits.acquire().await else {
            return;
        };
        let engine = &self.payments.engine;
        let Some(tenant) = engine.tenant(&trigger.tenant) else {
            return;
        };
        let gateway = self.payments.gateway.name();
        match engine.plan_auto_topup(
            &tenant,
            &trigger.user,
            trigger.currency,
            gateway,
            &self.payments.policy,
        ) {
            Ok(TopupDecision::Charge(charge)) => self.charge(&charge).await,
            Ok(TopupDecision::Skip(reason)) => {
                tracing::debug!(tenant = %trigger.tenant, user = %trigger.user, ?reason, "no top-up now");
                self.payments.count_autotopup("skipped");
            }
            Err(error) => {
                tracing::warn!(%error, tenant = %trigger.tenant, user = %trigger.user, "planning a top-up failed");
                self.payments.count_autotopup("error");
            }
        }
        engine.clear_topup_trigger(&tenant, &trigger.user, trigger.currency);
    }

    /// Sends a recorded intent to the gateway and settles the answer.
    async fn charge(&self, charge: &TopupCharge) {
        // Fresh from planning, so nobody else holds it; the guard keeps reconciliation off it.
        let Some(_charging) = Charging::start(&self.charging, &charge.reference) else {
            return;
        };
        let engine = &self.payments.engine;
        // The intent must survive a crash before the gateway may charge anything.
        if engine.durable(charge.lsn).await.is_err() {
            self.payments.count_autotopup("error");
            return;
        }
        let spec = ChargeSpec {
            reference: &charge.reference,
            amount_minor: charge.payment.amount_minor,
            currency: charge.payment.price_currency,
            token: &charge.token,
            customer: charge.customer.as_deref(),
        };
        let answer = self
            .payments
            .timed(GatewayOp::Charge, self.payments.gateway.charge(&spec))
            .await;
        self.settle(&charge.reference, answer, "auto top-up charge")
            .await;
    }

    async fn settle(
        &self,
        reference: &str,
        answer: Result<Outcome, super::gateway::GatewayError>,
        detail: &str,
    ) {
        match answer {
            Ok(outcome @ (Outcome::Paid { .. } | Outcome::Declined { .. })) => {
                match self.payments.settle(reference, &outcome, detail).await {
                    // Counted by what the engine did, not by what the gateway said: a paid answer
                    // with the wrong amount is a failure, a repeated one is nothing new.
                    Ok(WebhookOutcome::Credited) => self.payments.count_autotopup("succeeded"),
                    Ok(WebhookOutcome::Failed) => self.payments.count_autotopup("failed"),
                    Ok(_) => {}
                    Err(error) => {
                        tracing::error!(%error, reference, "settling a top-up failed; it will be reconciled");
                        self.payments.count_autotopup("error");
                    }
                }
            }
            Ok(Outcome::Pending | Outcome::NotFound) => self.payments.count_autotopup("pending"),
            Err(error) => {
                tracing::warn!(%error, reference, "top-up charge got no answer; it will be verified");
                self.payments.count_autotopup("pending");
            }
        }
    }

    /// Reconciles stale intents and hands every wallet that wants a top-up a trigger.
    pub async fn sweep(&self) {
        let timeout_ms = self
            .payments
            .config
            .gateway_timeout_seconds
            .saturating_mul(2000);
        let after_ms = RECONCILE_AFTER_MS.max(i64::try_from(timeout_ms).unwrap_or(i64::MAX));
        self.reconcile_all(after_ms).await;
        let engine = Arc::clone(&self.payments.engine);
        let gateway = self.payments.gateway.name();
        let Ok(wanting) =
            tokio::task::spawn_blocking(move || engine.wallets_wanting_topup(gateway)).await
        else {
            return;
        };
        for trigger in wanting {
            let worker = self.clone();
            tokio::spawn(async move { worker.handle(trigger).await });
        }
    }

    /// Reconciles every unfinished intent older than `older_than_ms`.
    pub async fn reconcile_all(&self, older_than_ms: i64) {
        let now_ms = self.payments.engine.now_ms();
        let unfinished = self.payments.engine.unfinished_topups();
        self.resent
            .lock()
            .retain(|reference, _| unfinished.iter().any(|p| &p.reference == reference));
        for payment in unfinished {
            if now_ms - payment.created_ms >= older_than_ms {
                self.reconcile(&payment).await;
            }
        }
    }

    /// Asks the gateway what happened to an intent and settles it. If the gateway never heard of
    /// it, the same charge is sent again under the same reference, unless the rule was deleted or
    /// switched off meanwhile, or has nothing to charge, or it was sent again `MAX_RESENDS`
    /// times: then, once the intent is `ABANDON_AFTER_MS` old, it is recorded as abandoned.
    /// Intents of another gateway than the configured one are left pending (this gateway cannot
    /// verify them) and reported.
    pub async fn reconcile(&self, payment: &PaymentView) {
        let gateway = self.payments.gateway.name();
        if payment.gateway != gateway {
            tracing::warn!(
                reference = %payment.reference,
                issued_by = %payment.gateway,
                configured = gateway,
                "a pending automatic top-up belongs to another gateway; verify it there, then let its webhook settle it or give it up with POST /v1/payments/<reference>/abandon"
            );
            return;
        }
        let Some(_charging) = Charging::start(&self.charging, &payment.reference) else {
            // This process is charging it right now.
            return;
        };
        let Ok(_permit) = self.permits.acquire().await else {
            return;
        };
        // As for any charge: nothing goes to the gateway before the intent is durable.
        if self
            .payments
            .engine
            .durable(payment.last_lsn)
            .await
            .is_err()
        {
            return;
        }
        let answer = self
            .payments
            .timed(
                GatewayOp::Verify,
                self.payments.gateway.verify(&payment.reference),
            )
            .await;
        match answer {
            Ok(Outcome::NotFound) => self.resend_or_give_up(payment, gateway).await,
            other => {
                self.settle(
                    &payment.reference,
                    other,
                    "auto top-up reconciled by verify",
                )
                .await
            }
        }
    }

    /// For an intent the gateway has no record of: sends it again, waits, or gives it up.
    async fn resend_or_give_up(&self, payment: &PaymentView, gateway: &str) {
        let engine = &self.payments.engine;
        let Some(tenant) = engine.tenant(&payment.tenant) else {
            return;
        };
        let method = match engine.topup_method(&tenant, &payment.user, payment.currency, gateway) {
            Ok(method) => method,
            Err(error) => {
                tracing::warn!(%error, reference = %payment.reference, "reconciling a top-up failed");
                return;
            }
        };
        let resends = self.count_resend(&payment.reference);
        let (token, customer) = match method {
            Some(method) if resends <= MAX_RESENDS => method,
            _ if engine.now_ms() - payment.created_ms < ABANDON_AFTER_MS => {
                tracing::debug!(reference = %payment.reference, "no record at the gateway yet; verifying again later");
                return;
            }
            other => {
                self.give_up(payment, other.is_none()).await;
                return;
            }
        };
        let spec = ChargeSpec {
            reference: &payment.reference,
            amount_minor: payment.amount_minor,
            currency: payment.price_currency,
            token: &token,
            customer: customer.as_deref(),
        };
        let answer = self
            .payments
            .timed(GatewayOp::Charge, self.payments.gateway.charge(&spec))
            .await;
        self.settle(
            &payment.reference,
            answer,
            "auto top-up charge, sent again after no record",
        )
        .await;
    }

    /// Counts one more resend of `reference` and returns how many there have been.
    fn count_resend(&self, reference: &str) -> u32 {
        let mut resent = self.resent.lock();
        let count = resent.entry(reference.to_owned()).or_insert(0);
        *count += 1;
        *count
    }

    /// Gives up an intent verified absent at the gateway: nothing was taken, nothing will be.
    async fn give_up(&self, payment: &PaymentView, never_sent: bool) {
        let reason = if never_sent {
            "never sent: the rule was switched off or has no payment method"
        } else {
            "the gateway has no record of it after it was sent again"
        };
        let abandoned = Outcome::Declined {
            decline: Decline::Abandoned,
            reason: reason.into(),
        };
        self.settle(&payment.reference, Ok(abandoned), "auto top-up given up")
            .await;
    }
}
