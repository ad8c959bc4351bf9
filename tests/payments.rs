//! Payments end to end against fake Paystack and Stripe servers that speak the real request and
//! response formats on 127.0.0.1: checkout, webhooks (duplicate, forged, stale, mismatched),
//! automatic top-up, bounded retries under permanent declines, a kill between intent and
//! settlement, events to the tenant's application, and the sandbox flow driven like a browser.

mod gateways;
#[path = "common/process.rs"]
mod process;
#[path = "common/server.rs"]
mod server;

use std::sync::Arc;
use std::time::{Duration, Instant};

use creditd::client::{Client, Debit};
use creditd::config::{Config, Gateway as GatewayKind};
use creditd::engine::payments::AutoTopupRequest;
use creditd::engine::payments::PaymentStatus;
use creditd::engine::types::{Currency, Decline};
use creditd::engine::ProfileUpdate;
use creditd::engine::{Clock, Context, Engine, EngineOptions, ManualClock, Tenant};
use creditd::payments::signature::{hmac_sha512_hex, sign_timestamped, verify_timestamped};
use creditd::payments::topup::TopupWorker;
use creditd::payments::Payments;
use creditd::wal::memory::MemStorage;
use gateways::{ChargeBehaviour, Fake, PAYSTACK_SECRET, STRIPE_SECRET, STRIPE_WEBHOOK_SECRET};
use http::Method;
use process::Process;
use serde_json::{json, Value};
use server::{send_json, Server, ADMIN, PLATFORM, SERVICE};

/// The test keys, the gateway `gateway` (at `fake` when given) and a sweep every second.
fn config(dir: &std::path::Path, gateway: GatewayKind, fake: Option<&Fake>) -> Config {
    let mut config = server::config(dir);
    config.payments.gateway = gateway;
    config.payments.gateway_timeout_seconds = 10;
    config.payments.autotopup.sweep_every = creditd::config::Seconds(1);
    if let Some(fake) = fake {
        config.payments.paystack.base_url = fake.base_url.clone();
        config.payments.stripe.base_url = fake.base_url.clone();
    }
    config.payments.paystack.secret_key = PAYSTACK_SECRET.into();
    config.payments.stripe.secret_key = STRIPE_SECRET.into();
    config.payments.stripe.webhook_secret = STRIPE_WEBHOOK_SECRET.into();
    config
}

/// A server with [`config`] on a new temporary directory.
async fn start(gateway: GatewayKind, fake: Option<&Fake>) -> Server {
    start_in(tempfile::tempdir().unwrap(), gateway, fake).await
}

/// A server with [`config`] on `dir`, such as one [`Server::stop`] handed back.
async fn start_in(dir: tempfile::TempDir, gateway: GatewayKind, fake: Option<&Fake>) -> Server {
    let config = config(dir.path(), gateway, fake);
    Server::start_in(dir, config).await
}

impl Server {
    /// Points the tenant's events at `url`, signed with `secret`.
    async fn send_events_to(&self, url: &str, secret: &str) {
        let tenant = json!({"webhook_url": url, "webhook_secret": secret});
        let (status, _, _) = self
            .client(PLATFORM)
            .send(
                Method::PUT,
                "/v1/tenants/acme",
                Some(tenant.to_string().into_bytes()),
                None,
            )
            .await
            .unwrap();
        assert_eq!(status, 200);
    }

    async fn webhook(
        &self,
        gateway: &str,
        headers: &[(&str, String)],
        body: &[u8],
    ) -> (u16, Value) {
        let client = reqwest::Client::new();
        let mut request = client
            .post(format!("{}/v1/webhooks/{gateway}", self.base))
            .body(body.to_vec());
        for (name, value) in headers {
            request = request.header(*name, value);
        }
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    /// A Paystack webhook signed with the configured secret key.
    async fn paystack_webhook(&self, body: &[u8]) -> (u16, Value) {
        let signature = hmac_sha512_hex(PAYSTACK_SECRET.as_bytes(), body);
        self.webhook("paystack", &[("x-paystack-signature", signature)], body)
            .await
    }

    async fn balance(&self) -> i64 {
        self.client(SERVICE)
            .wallet("ada", None)
            .await
            .unwrap()
            .balance
    }
}

fn paystack_event(reference: &str, amount: i64, currency: &str) -> Vec<u8> {
    json!({
        "event": "charge.success",
        "data": {
            "id": 302961,
            "status": "success",
            "reference": reference,
            "amount": amount,
            "currency": currency,
            "gateway_response": "Approved",
            "customer": {"email": "ada@example.com"},
            "authorization": {"authorization_code": "AUTH_72btv547", "reusable": true, "card_type": "visa ", "last4": "4081"}
        }
    })
    .to_string()
    .into_bytes()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paystack_checkout_then_webhook_credits_exactly_once() {
    let paystack = gateways::paystack().await;
    let server = start(GatewayKind::Paystack, Some(&paystack)).await;
    server.sell_starter_to_ada("Starter").await;
    let (reference, checkout_url) = server.initialize().await;
    assert_eq!(
        checkout_url,
        format!("https://checkout.paystack.test/{reference}")
    );
    let initialize = &paystack.calls("/transaction/initialize")[0];
    assert_eq!(
        initialize.authorization,
        format!("Bearer {PAYSTACK_SECRET}")
    );
    let sent = initialize.json();
    assert_eq!(
        (
            sent["amount"].as_i64(),
            sent["currency"].as_str(),
            sent["reference"].as_str()
        ),
        (Some(200_000), Some("NGN"), Some(reference.as_str()))
    );
    assert_eq!(sent["email"], "ada@example.com");

    let body = paystack_event(&reference, 200_000, "NGN");
    for delivery in 0..3 {
        let (status, answer) = server.paystack_webhook(&body).await;
        assert_eq!(status, 200);
        assert_eq!(
            answer["outcome"],
            if delivery == 0 {
                "credited"
            } else {
                "duplicate"
            }
        );
    }
    assert_eq!(server.balance().await, 500);
    let payment = server
        .client(SERVICE)
        .send(
            Method::GET,
            &format!("/v1/payments/{reference}"),
            None,
            None,
        )
        .await
        .unwrap();
    let payment: Value = serde_json::from_slice(&payment.2).unwrap();
    assert_eq!(payment["status"], "succeeded");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_missing_and_mismatched_webhooks_credit_nothing() {
    let paystack = gateways::paystack().await;
    let server = start(GatewayKind::Paystack, Some(&paystack)).await;
    server.sell_starter_to_ada("Starter").await;
    let (reference, _) = server.initialize().await;
    let body = paystack_event(&reference, 200_000, "NGN");
    let forged = hmac_sha512_hex(b"sk_test_someone_else", &body);
    assert_eq!(
        server
            .webhook("paystack", &[("x-paystack-signature", forged)], &body)
            .await
            .0,
        401
    );
    assert_eq!(server.webhook("paystack", &[], &body).await.0, 401);
    let tampered = paystack_event(&reference, 2_000_000, "NGN");
    let signed_original = hmac_sha512_hex(PAYSTACK_SECRET.as_bytes(), &body);
    assert_eq!(
        server
            .webhook(
                "paystack",
                &[("x-paystack-signature", signed_original)],
                &tampered
            )
            .await
            .0,
        401
    );
    assert_eq!(
        server.webhook("stripe", &[], &body).await.0,
        404,
        "only the configured gateway's webhook exists"
    );

    // Signed, but the amount or the currency is not the package's: recorded as failed, no credit.
    let (short_reference, _) = server.initialize().await;
    let short = paystack_event(&short_reference, 100, "NGN");
    let (status, answer) = server.paystack_webhook(&short).await;
    assert_eq!((status, answer["outcome"].as_str()), (200, Some("failed")));
    let usd = paystack_event(&reference, 200_000, "USD");
    let (status, answer) = server.paystack_webhook(&usd).await;
    assert_eq!((status, answer["outcome"].as_str()), (200, Some("failed")));

    // An unknown reference is recorded and answered 200, so the gateway stops retrying.
    let stranger = paystack_event("cd_not_ours", 200_000, "NGN");
    let (status, answer) = server.paystack_webhook(&stranger).await;
    assert_eq!(
        (status, answer["outcome"].as_str()),
        (200, Some("unmatched"))
    );

    // Signed garbage is a 400, not a crash.
    let garbage = b"{not json".to_vec();
    let (status, _) = server.paystack_webhook(&garbage).await;
    assert_eq!(status, 400);
    assert_eq!(server.balance().await, 0);
    server.stop().await;
}

fn stripe_event(kind: &str, object: Value) -> Vec<u8> {
    json!({"id": "evt_test_1", "object": "event", "type": kind, "data": {"object": object}})
        .to_string()
        .into_bytes()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stripe_checkout_signatures_and_tolerance() {
    let stripe = gateways::stripe().await;
    let server = start(GatewayKind::Stripe, Some(&stripe)).await;
    server.sell_starter_to_ada("Starter").await;
    let (reference, checkout_url) = server.initialize().await;
    assert!(checkout_url.starts_with("https://checkout.stripe.test/c/pay/cs_test_"));
    let session = &stripe.calls("/v1/checkout/sessions")[0];
    let form = session.form();
    assert_eq!(session.idempotency_key.as_deref(), Some(reference.as_str()));
    assert_eq!(form["line_items[0][price_data][unit_amount]"], "200000");
    assert_eq!(form["line_items[0][price_data][currency]"], "ngn");
    assert_eq!(form["client_reference_id"], reference);
    assert_eq!(
        form["payment_intent_data[setup_future_usage]"],
        "off_session"
    );

    let completed = stripe_event(
        "checkout.session.completed",
        json!({"object": "checkout.session", "client_reference_id": reference, "payment_status": "paid", "amount_total": 200_000, "currency": "ngn", "customer": "cus_1", "metadata": {"reference": reference}}),
    );
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let stale = sign_timestamped(STRIPE_WEBHOOK_SECRET.as_bytes(), now - 301, &completed);
    assert_eq!(
        server
            .webhook("stripe", &[("stripe-signature", stale)], &completed)
            .await
            .0,
        401,
        "outside the 300 s tolerance"
    );
    let forged = sign_timestamped(b"whsec_other", now, &completed);
    assert_eq!(
        server
            .webhook("stripe", &[("stripe-signature", forged)], &completed)
            .await
            .0,
        401
    );
    // Several v1 signatures (a secret being rolled): any one that matches will do.
    let good = sign_timestamped(STRIPE_WEBHOOK_SECRET.as_bytes(), now, &completed);
    let rolled = format!(
        "t={now},v1={},{}",
        "ab".repeat(32),
        good.split_once(',').unwrap().1
    );
    assert!(verify_timestamped(
        STRIPE_WEBHOOK_SECRET.as_bytes(),
        Some(&rolled),
        &completed,
        now,
        300
    )
    .is_ok());
    let (status, answer) = server
        .webhook("stripe", &[("stripe-signature", rolled)], &completed)
        .await;
    assert_eq!(
        (status, answer["outcome"].as_str()),
        (200, Some("credited"))
    );
    assert_eq!(server.balance().await, 500);

    // The intent's own event arrives too: a duplicate, which still saves the card for later.
    let succeeded = stripe_event(
        "payment_intent.succeeded",
        json!({"object": "payment_intent", "status": "succeeded", "amount_received": 200_000, "currency": "ngn", "customer": "cus_1", "payment_method": "pm_card_visa", "metadata": {"reference": reference}}),
    );
    let signature = sign_timestamped(STRIPE_WEBHOOK_SECRET.as_bytes(), now, &succeeded);
    let (status, answer) = server
        .webhook("stripe", &[("stripe-signature", signature)], &succeeded)
        .await;
    assert_eq!(
        (status, answer["outcome"].as_str()),
        (200, Some("duplicate"))
    );
    assert_eq!(server.balance().await, 500);
    let ignored = stripe_event(
        "customer.created",
        json!({"object": "customer", "id": "cus_2"}),
    );
    let signature = sign_timestamped(STRIPE_WEBHOOK_SECRET.as_bytes(), now, &ignored);
    assert_eq!(
        server
            .webhook("stripe", &[("stripe-signature", signature)], &ignored)
            .await
            .1["outcome"],
        "ignored"
    );

    // The saved card pays an automatic top-up: off-session, with the reference as Idempotency-Key.
    switch_on_auto_topup(&server.client(ADMIN)).await;
    server
        .client(SERVICE)
        .debit("ada", &Debit::amount(450), None)
        .await
        .unwrap();
    wait_for(|| async { server.balance().await == 550 }).await;
    let charge = &stripe.calls("/v1/payment_intents")[0];
    let form = charge.form();
    assert_eq!(
        (
            form["customer"].as_str(),
            form["payment_method"].as_str(),
            form["off_session"].as_str()
        ),
        ("cus_1", "pm_card_visa", "true")
    );
    assert_eq!(
        charge.idempotency_key.as_deref(),
        Some(form["metadata[reference]"].as_str())
    );
    server.stop().await;
}

/// Sends `body` and returns the status with the JSON answer (a problem on failure).
async fn payment_status(server: &Server, reference: &str) -> Value {
    let (status, _, bytes) = server
        .client(SERVICE)
        .send(
            Method::GET,
            &format!("/v1/payments/{reference}"),
            None,
            None,
        )
        .await
        .unwrap();
    assert_eq!(status, 200);
    serde_json::from_slice(&bytes).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_declined_card_does_not_end_a_stripe_checkout_but_an_expired_session_does() {
    let stripe = gateways::stripe().await;
    let server = start(GatewayKind::Stripe, Some(&stripe)).await;
    server.sell_starter_to_ada("Starter").await;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let deliver = |body: Vec<u8>| {
        let signature = sign_timestamped(STRIPE_WEBHOOK_SECRET.as_bytes(), now, &body);
        let server = &server;
        async move {
            server
                .webhook("stripe", &[("stripe-signature", signature)], &body)
                .await
        }
    };

    // The payer's first card is declined inside the checkout; the second one pays.
    let (reference, _) = server.initialize().await;
    let failed = stripe_event(
        "payment_intent.payment_failed",
        json!({"object": "payment_intent", "status": "requires_payment_method", "last_payment_error": {"code": "card_declined", "decline_code": "insufficient_funds", "message": "Your card has insufficient funds."}, "metadata": {"reference": reference}}),
    );
    let (status, answer) = deliver(failed).await;
    assert_eq!((status, answer["outcome"].as_str()), (200, Some("ignored")));
    assert_eq!(
        payment_status(&server, &reference).await["status"],
        "pending"
    );
    let completed = stripe_event(
        "checkout.session.completed",
        json!({"object": "checkout.session", "client_reference_id": reference, "payment_status": "paid", "amount_total": 200_000, "currency": "ngn", "metadata": {"reference": reference}}),
    );
    let (status, answer) = deliver(completed).await;
    assert_eq!(
        (status, answer["outcome"].as_str()),
        (200, Some("credited"))
    );
    assert_eq!(server.balance().await, 500);

    // A session left to expire ends the payment unpaid; should a "completed" still come for it,
    // the money was taken after all, and it is credited, once.
    let (abandoned, _) = server.initialize().await;
    let expired = stripe_event(
        "checkout.session.expired",
        json!({"object": "checkout.session", "client_reference_id": abandoned, "payment_status": "unpaid", "metadata": {"reference": abandoned}}),
    );
    let (status, answer) = deliver(expired).await;
    assert_eq!((status, answer["outcome"].as_str()), (200, Some("failed")));
    let view = payment_status(&server, &abandoned).await;
    assert_eq!(
        (view["status"].as_str(), view["failure_reason"].as_str()),
        (Some("failed"), Some("abandoned"))
    );
    let late = stripe_event(
        "checkout.session.completed",
        json!({"object": "checkout.session", "client_reference_id": abandoned, "payment_status": "paid", "amount_total": 200_000, "currency": "ngn", "metadata": {"reference": abandoned}}),
    );
    let (status, answer) = deliver(late.clone()).await;
    assert_eq!(
        (status, answer["outcome"].as_str()),
        (200, Some("credited"))
    );
    let (status, answer) = deliver(late).await;
    assert_eq!(
        (status, answer["outcome"].as_str()),
        (200, Some("duplicate"))
    );
    assert_eq!(server.balance().await, 1000);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auto_topup_rules_are_validated_switched_off_and_deleted() {
    let server = start(GatewayKind::Sandbox, None).await;
    server.sell_starter_to_ada("Starter").await;
    let admin = server.client(ADMIN);
    let put = |body: &'static str| send_json(&admin, Method::PUT, "/v1/users/ada/auto-topup", body);
    let (status, problem) = put(r#"{"enabled":true,"threshold":100}"#).await;
    assert_eq!(status, 422, "{problem}");
    let (status, _) = put(r#"{"enabled":false}"#).await;
    assert_eq!(status, 404, "no rule to switch off");
    let (status, rule) = put(r#"{"threshold":100,"package_id":"starter"}"#).await;
    assert_eq!((status, rule["enabled"].as_bool()), (200, Some(true)));
    // The wallet is `low` under the rule's threshold, not only under limits.low_balance.
    let (status, _, _) = server
        .client(ADMIN)
        .send(
            Method::POST,
            "/v1/users/ada/credit",
            Some(br#"{"amount":50,"reason":"welcome"}"#.to_vec()),
            None,
        )
        .await
        .unwrap();
    assert!(status == 200 || status == 201, "{status}");
    let (_, _, bytes) = server
        .client(SERVICE)
        .send(Method::GET, "/v1/users/ada/wallet", None, None)
        .await
        .unwrap();
    let wallet: Value = serde_json::from_slice(&bytes).unwrap();
    assert_eq!(
        (
            wallet["status"].as_str(),
            wallet["auto_topup"]["threshold"].as_i64()
        ),
        (Some("low"), Some(100))
    );
    let (status, rule) = put(r#"{"enabled":false}"#).await;
    assert_eq!((status, rule["enabled"].as_bool()), (200, Some(false)));
    let (status, again) = put(r#"{"enabled":false}"#).await;
    assert_eq!((status, again["enabled"].as_bool()), (200, Some(false)));
    let delete = || async {
        admin
            .send(Method::DELETE, "/v1/users/ada/auto-topup", None, None)
            .await
            .unwrap()
            .0
    };
    assert_eq!(delete().await, 200);
    assert_eq!(delete().await, 404);
    server.stop().await;
}

/// Switches on `ada`'s automatic top-up: below 100 credits, buy `starter`.
async fn switch_on_auto_topup(admin: &Client) {
    let rule = br#"{"enabled":true,"threshold":100,"package_id":"starter"}"#.to_vec();
    admin
        .send(Method::PUT, "/v1/users/ada/auto-topup", Some(rule), None)
        .await
        .unwrap();
}

async fn wait_for<F, Fut>(mut condition: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + Duration::from_secs(20);
    while !condition().await {
        assert!(Instant::now() < deadline, "condition not met in time");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A receiver of the tenant's events that checks their signatures.
async fn event_receiver(secret: &'static str) -> (String, Arc<parking_lot::Mutex<Vec<Value>>>) {
    let open = Arc::new(std::sync::atomic::AtomicBool::new(true));
    event_receiver_with(secret, open, Arc::default()).await
}

/// An event receiver that answers 503 to every attempt (counted) while `open` is false.
async fn event_receiver_with(
    secret: &'static str,
    open: Arc<std::sync::atomic::AtomicBool>,
    refused: Arc<std::sync::atomic::AtomicUsize>,
) -> (String, Arc<parking_lot::Mutex<Vec<Value>>>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hooks", listener.local_addr().unwrap());
    let received: Arc<parking_lot::Mutex<Vec<Value>>> = Arc::default();
    let store = Arc::clone(&received);
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let (store, open, refused) =
                (Arc::clone(&store), Arc::clone(&open), Arc::clone(&refused));
            tokio::spawn(async move {
                let service = hyper::service::service_fn(
                    move |request: http::Request<hyper::body::Incoming>| {
                        let (store, open, refused) =
                            (Arc::clone(&store), Arc::clone(&open), Arc::clone(&refused));
                        async move {
                            use http_body_util::BodyExt;
                            let signature = request
                                .headers()
                                .get("creditd-signature")
                                .and_then(|v| v.to_str().ok())
                                .map(str::to_owned);
                            let body = request.into_body().collect().await.unwrap().to_bytes();
                            let now = std::time::SystemTime::now()
                                .duration_since(std::time::UNIX_EPOCH)
                                .unwrap()
                                .as_secs() as i64;
                            let status = if !open.load(std::sync::atomic::Ordering::SeqCst) {
                                refused.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                                503
                            } else if verify_timestamped(
                                secret.as_bytes(),
                                signature.as_deref(),
                                &body,
                                now,
                                300,
                            )
                            .is_ok()
                            {
                                store.lock().push(serde_json::from_slice(&body).unwrap());
                                200
                            } else {
                                401
                            };
                            let mut response =
                                http::Response::new(http_body_util::Full::new(bytes::Bytes::new()));
                            *response.status_mut() = http::StatusCode::from_u16(status).unwrap();
                            Ok::<_, std::convert::Infallible>(response)
                        }
                    },
                );
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    (url, received)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_undelivered_at_a_clean_stop_are_sent_after_the_restart() {
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    let open = Arc::new(AtomicBool::new(false));
    let refused = Arc::new(AtomicUsize::new(0));
    let (url, received) = event_receiver_with(
        "tenant-events-secret-0003",
        Arc::clone(&open),
        Arc::clone(&refused),
    )
    .await;
    let server = start(GatewayKind::Sandbox, None).await;
    server.sell_starter_to_ada("Starter").await;
    server
        .send_events_to(&url, "tenant-events-secret-0003")
        .await;
    let client = server.client(SERVICE);
    client.credit("ada", 1, None, None).await.unwrap();
    client.debit("ada", &Debit::amount(1), None).await.unwrap();
    // The endpoint refuses: the event waits to be tried again when the server stops.
    wait_for(|| async { refused.load(Ordering::SeqCst) >= 1 }).await;
    let dir = server.stop().await;
    let file = dir.path().join(creditd::notify::PENDING_FILE);
    let kept: Value = serde_json::from_slice(&std::fs::read(&file).unwrap()).unwrap();
    let depleted: Vec<&Value> = kept["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["type"] == "wallet.depleted")
        .collect();
    assert_eq!(depleted.len(), 1, "{kept}");
    let id = depleted[0]["body"]["id"].clone();
    assert_eq!(depleted[0]["body"]["data"]["user_id"], "ada");

    // Restarted while the endpoint still refuses, then stopped at once: kept again.
    let server = start_in(dir, GatewayKind::Sandbox, None).await;
    let dir = server.stop().await;
    let kept: Value = serde_json::from_slice(&std::fs::read(&file).unwrap()).unwrap();
    assert!(
        kept["events"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["body"]["id"] == id),
        "{kept}"
    );

    open.store(true, Ordering::SeqCst);
    let server = start_in(dir, GatewayKind::Sandbox, None).await;
    wait_for(|| async { received.lock().iter().any(|e| e["id"] == id) }).await;
    assert!(
        !file.exists(),
        "the kept events are sent once, not at every start"
    );
    let server_dir = server.stop().await;
    assert!(!server_dir
        .path()
        .join(creditd::notify::PENDING_FILE)
        .exists());
    let ids: Vec<Value> = received.lock().iter().map(|e| e["id"].clone()).collect();
    assert_eq!(ids.iter().filter(|seen| **seen == id).count(), 1, "{ids:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_whose_endpoint_hangs_does_not_hold_up_the_others() {
    const SPEND_TO_ZERO: [(&str, &[u8]); 2] = [
        ("/v1/users/ada/credit", br#"{"amount":1,"reason":"test"}"#),
        ("/v1/users/ada/debit", br#"{"amount":1}"#),
    ];
    let server = start(GatewayKind::Sandbox, None).await;
    // An endpoint that accepts connections and never answers.
    let hole = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let hole_url = format!("http://{}/hooks", hole.local_addr().unwrap());
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((stream, _)) = hole.accept().await {
            held.push(stream);
        }
    });
    let (good_url, received) = event_receiver("tenant-events-secret-0002").await;
    let platform = server.client(PLATFORM);
    for (tenant, url, secret) in [
        ("stuck", hole_url.as_str(), "tenant-events-secret-0001"),
        ("fine", good_url.as_str(), "tenant-events-secret-0002"),
    ] {
        let body = json!({"webhook_url": url, "webhook_secret": secret});
        let (status, _, _) = platform
            .send(
                Method::PUT,
                &format!("/v1/tenants/{tenant}"),
                Some(body.to_string().into_bytes()),
                None,
            )
            .await
            .unwrap();
        assert_eq!(status, 201);
        let client = platform.in_tenant(tenant).unwrap();
        client.put_user("ada", None).await.unwrap();
    }
    // Forty `wallet.depleted` events for the stuck tenant: more than every sending slot.
    let stuck = platform.in_tenant("stuck").unwrap();
    for _ in 0..40 {
        for (path, body) in SPEND_TO_ZERO {
            let (status, _, _) = stuck
                .send(Method::POST, path, Some(body.to_vec()), None)
                .await
                .unwrap();
            assert_eq!(status, 200, "{path}");
        }
    }
    let fine = platform.in_tenant("fine").unwrap();
    for (path, body) in SPEND_TO_ZERO {
        fine.send(Method::POST, path, Some(body.to_vec()), None)
            .await
            .unwrap();
    }
    // Well inside the 10 s the stuck tenant's requests wait before they time out.
    let deadline = Instant::now() + Duration::from_secs(5);
    while received.lock().is_empty() {
        assert!(
            Instant::now() < deadline,
            "the other tenant's event waited behind the stuck endpoint"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(received.lock()[0]["type"], "wallet.depleted");
    assert_eq!(received.lock()[0]["tenant_id"], "fine");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paystack_auto_topup_charges_the_saved_authorization_and_tells_the_tenant() {
    let paystack = gateways::paystack().await;
    let server = start(GatewayKind::Paystack, Some(&paystack)).await;
    server.sell_starter_to_ada("Starter").await;
    let (url, events) = event_receiver("tenant-events-secret-0001").await;
    server
        .send_events_to(&url, "tenant-events-secret-0001")
        .await;
    let (reference, _) = server.initialize().await;
    let body = paystack_event(&reference, 200_000, "NGN");
    server.paystack_webhook(&body).await;
    let rule =
        json!({"enabled": true, "threshold": 100, "package_id": "starter", "max_per_day": 2});
    let (status, _, answer) = server
        .client(ADMIN)
        .send(
            Method::PUT,
            "/v1/users/ada/auto-topup",
            Some(rule.to_string().into_bytes()),
            None,
        )
        .await
        .unwrap();
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&answer));
    server
        .client(SERVICE)
        .debit("ada", &Debit::amount(450), None)
        .await
        .unwrap();
    wait_for(|| async { server.balance().await == 550 }).await;
    let charges = paystack.calls("/transaction/charge_authorization");
    assert_eq!(charges.len(), 1);
    let sent = charges[0].json();
    assert_eq!(
        (
            sent["authorization_code"].as_str(),
            sent["email"].as_str(),
            sent["amount"].as_i64()
        ),
        (
            Some("AUTH_72btv547"),
            Some("ada@example.com"),
            Some(200_000)
        )
    );
    wait_for(|| async {
        events
            .lock()
            .iter()
            .any(|e| e["type"] == "topup.succeeded" && e["data"]["purpose"] == "auto_topup")
    })
    .await;
    let kinds: Vec<String> = events
        .lock()
        .iter()
        .map(|e| e["type"].as_str().unwrap().to_owned())
        .collect();
    assert!(
        kinds.contains(&"wallet.low_balance".to_owned()),
        "{kinds:?}"
    );
    let wallet = server
        .client(SERVICE)
        .send(Method::GET, "/v1/users/ada/wallet", None, None)
        .await
        .unwrap();
    let wallet: Value = serde_json::from_slice(&wallet.2).unwrap();
    assert_eq!(wallet["auto_topup"]["attempts_today"], 1);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hard_decline_switches_the_rule_off_and_the_tenant_hears_of_it() {
    let paystack = gateways::paystack().await;
    paystack.set_behaviour(ChargeBehaviour::Decline("Expired Card"));
    let server = start(GatewayKind::Paystack, Some(&paystack)).await;
    server.sell_starter_to_ada("Starter").await;
    let (url, events) = event_receiver("tenant-events-secret-0002").await;
    server
        .send_events_to(&url, "tenant-events-secret-0002")
        .await;
    let (reference, _) = server.initialize().await;
    let body = paystack_event(&reference, 200_000, "NGN");
    server.paystack_webhook(&body).await;
    switch_on_auto_topup(&server.client(ADMIN)).await;
    server
        .client(SERVICE)
        .debit("ada", &Debit::amount(450), None)
        .await
        .unwrap();
    wait_for(|| async {
        events
            .lock()
            .iter()
            .any(|e| e["type"] == "autotopup.disabled")
    })
    .await;
    let rule = server
        .client(SERVICE)
        .send(Method::GET, "/v1/users/ada/auto-topup", None, None)
        .await
        .unwrap();
    let rule: Value = serde_json::from_slice(&rule.2).unwrap();
    assert_eq!(
        (rule["enabled"].as_bool(), rule["disabled_reason"].as_str()),
        (Some(false), Some("Expired Card"))
    );
    // Sweeps keep running; a disabled rule is never charged again.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(paystack.calls("/transaction/charge_authorization").len(), 1);
    assert_eq!(server.balance().await, 50);
    server.stop().await;
}

/// An engine on a hand-driven clock with one user whose rule charges `AUTH_x` through the fake
/// Paystack, and a top-up worker driven by hand (its temporary directory kept alive).
fn topup_setup(
    paystack: &Fake,
    max_per_hour: u32,
) -> (
    Arc<Engine>,
    Arc<ManualClock>,
    Arc<Tenant>,
    TopupWorker,
    tempfile::TempDir,
) {
    let clock = Arc::new(ManualClock::new(1_700_000_000_000));
    let options = EngineOptions {
        data_dir: "/data".into(),
        background: false,
        shards: 8,
        ..EngineOptions::default()
    };
    let engine = Engine::open(
        options,
        Arc::new(MemStorage::new()),
        Arc::clone(&clock) as Arc<dyn creditd::engine::Clock>,
    )
    .unwrap();
    let admin = Context::actor("admin");
    let (tenant, _, _): (Arc<Tenant>, _, _) =
        engine.upsert_tenant("acme", None, None, &admin).unwrap();
    let terms = creditd::engine::PackageSpec {
        name: "Starter",
        credits: 500,
        currency: Currency::CREDITS,
        price_minor: 200_000,
        price_currency: Currency::new("NGN").unwrap(),
        active: true,
        position: 0,
    };
    engine
        .put_package(&tenant, "starter", &terms, &admin)
        .unwrap();
    engine
        .upsert_user(
            &tenant,
            "ada",
            ProfileUpdate {
                email: Some("ada@example.com"),
                name: None,
                metadata: None,
            },
            &admin,
        )
        .unwrap();
    let rule = AutoTopupRequest {
        user: "ada",
        currency: None,
        threshold: 100,
        package: "starter",
        payment_method: Some("AUTH_x"),
        max_per_day: 3,
    };
    engine.set_auto_topup(&tenant, &rule, &admin).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut config = config(dir.path(), GatewayKind::Paystack, Some(paystack));
    config.payments.autotopup.max_per_hour = max_per_hour;
    let payments = Arc::new(
        Payments::new(Arc::clone(&engine), &config.payments, "http://127.0.0.1:1").unwrap(),
    );
    let worker = TopupWorker::new(Arc::clone(&payments));
    (engine, clock, tenant, worker, dir)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_that_declines_every_charge_is_tried_a_bounded_number_of_times() {
    // Thirty simulated days, the worker sweeping every simulated minute, against a real fake
    // Paystack that declines every charge for lack of funds.
    let paystack = gateways::paystack().await;
    paystack.set_behaviour(ChargeBehaviour::Decline("Insufficient Funds"));
    let (engine, clock, tenant, worker, _dir) = topup_setup(&paystack, 2);
    let mut charges_per_day = std::collections::BTreeMap::<i64, usize>::new();
    let mut seen = 0;
    for _ in 0..(30 * 24 * 60) {
        clock.advance_ms(60_000);
        // What the sweep does, awaited, so each charge is counted on the day it was made.
        for trigger in engine.wallets_wanting_topup("sandbox") {
            worker.handle(trigger).await;
        }
        let total = paystack.calls("/transaction/charge_authorization").len();
        if total > seen {
            *charges_per_day
                .entry(clock.now_ms() / 86_400_000)
                .or_default() += total - seen;
            seen = total;
        }
    }
    let total = paystack.calls("/transaction/charge_authorization").len();
    assert!(
        charges_per_day.values().all(|&n| n <= 3),
        "{charges_per_day:?}"
    );
    assert!(total <= 3 * 31, "{total} charges in 30 days");
    assert!(total >= 30, "the rule keeps trying every day: {total}");
    assert_eq!(tenant.wallet("ada", None).unwrap().balance, 0);
    engine.check_invariants().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconciliation_sends_again_only_what_the_rule_still_wants() {
    let paystack = gateways::paystack().await;
    let (engine, clock, tenant, worker, _dir) = topup_setup(&paystack, 3);
    let policy = creditd::engine::payments::TopupPolicy::default();
    let plan = |gateway: &str| match engine
        .plan_auto_topup(&tenant, "ada", Currency::CREDITS, gateway, &policy)
        .unwrap()
    {
        creditd::engine::payments::TopupDecision::Charge(charge) => charge.reference,
        other => panic!("expected a charge, got {other:?}"),
    };
    let status = |reference: &str| engine.payment(reference).unwrap().status;
    let charges = || paystack.calls("/transaction/charge_authorization").len();
    let admin = Context::actor("admin");
    let rule = AutoTopupRequest {
        user: "ada",
        currency: None,
        threshold: 100,
        package: "starter",
        payment_method: Some("AUTH_x"),
        max_per_day: 3,
    };

    // An intent recorded, then the rule deleted before the charge went out (a crash between):
    // the gateway has no record, so nothing is sent, and once that has held for an hour (a
    // gateway's record may lag behind its charge) the intent ends abandoned.
    let first = plan("paystack");
    engine
        .delete_auto_topup(&tenant, "ada", None, &admin)
        .unwrap();
    clock.advance_ms(120_000);
    worker.reconcile_all(60_000).await;
    assert_eq!((charges(), status(&first)), (0, PaymentStatus::Pending));
    clock.advance_ms(3_600_000);
    worker.reconcile_all(60_000).await;
    assert_eq!(charges(), 0);
    assert!(matches!(
        status(&first),
        PaymentStatus::Failed {
            decline: Decline::Abandoned
        }
    ));

    // The rule set again is not stuck behind that intent. Its charge meets an outage: each
    // reconciliation verifies (no record), sends it again, and after MAX_RESENDS stops sending;
    // it gives the intent up an hour after it was made.
    engine.set_auto_topup(&tenant, &rule, &admin).unwrap();
    paystack.set_behaviour(ChargeBehaviour::ServerError);
    let second = plan("paystack");
    for round in 1..=4 {
        clock.advance_ms(120_000);
        worker.reconcile_all(60_000).await;
        assert_eq!(charges(), round.min(3), "round {round}");
    }
    assert_eq!(status(&second), PaymentStatus::Pending);
    clock.advance_ms(3_600_000);
    worker.reconcile_all(60_000).await;
    assert_eq!(charges(), 3);
    assert!(matches!(
        status(&second),
        PaymentStatus::Failed {
            decline: Decline::Abandoned
        }
    ));
    assert_eq!(
        paystack.calls("/transaction/verify/").len(),
        7,
        "one verify per reconciliation"
    );

    // An intent of another gateway (the configuration changed since) is not this gateway's to
    // verify or charge: it stays pending.
    clock.advance_ms(86_400_000);
    let foreign = plan("stripe");
    clock.advance_ms(120_000);
    worker.reconcile_all(60_000).await;
    assert_eq!(charges(), 3);
    assert_eq!(status(&foreign), PaymentStatus::Pending);
    assert_eq!(tenant.wallet("ada", None).unwrap().balance, 0);
    engine.check_invariants().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn initialize_takes_the_email_on_the_profile_when_none_is_given() {
    let paystack = gateways::paystack().await;
    let server = start(GatewayKind::Paystack, Some(&paystack)).await;
    server.sell_starter_to_ada("Starter").await;
    let service = server.client(SERVICE);
    let initialize = |user: &'static str| {
        let body = json!({"user_id": user, "package_id": "starter"}).to_string();
        let service = &service;
        async move { send_json(service, Method::POST, "/v1/payments/initialize", &body).await }
    };
    let (status, answer) = initialize("ada").await;
    assert_eq!(status, 200, "{answer}");
    let sent = paystack.calls("/transaction/initialize")[0].json();
    assert_eq!(sent["email"], "ada@example.com");

    service.put_user("bob", None).await.unwrap();
    let (status, problem) = initialize("bob").await;
    assert_eq!(
        (status, problem["field"].as_str()),
        (422, Some("email")),
        "{problem}"
    );
    let (status, problem) = initialize("nobody").await;
    assert_eq!(status, 404, "{problem}");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sandbox_flow_driven_like_a_browser() {
    let server = start(GatewayKind::Sandbox, None).await;
    server.sell_starter_to_ada("Starter").await;
    let (reference, checkout_url) = server.initialize().await;
    assert_eq!(
        checkout_url,
        format!("{}/sandbox/checkout/{reference}", server.base)
    );
    // A browser: GET the page, read its form, submit the Pay button, follow the redirect.
    let browser = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::limited(3))
        .build()
        .unwrap();
    let page = browser.get(&checkout_url).send().await.unwrap();
    assert_eq!(page.headers()["content-type"], "text/html; charset=utf-8");
    let html = page.text().await.unwrap();
    assert!(
        html.contains("2,000.00 NGN") && html.contains(">500<"),
        "{html}"
    );
    let action = html
        .split("action=\"")
        .nth(1)
        .unwrap()
        .split('"')
        .next()
        .unwrap();
    assert_eq!(action, format!("/sandbox/checkout/{reference}"));
    let result = browser
        .post(format!("{}{action}", server.base))
        .form(&[("action", "pay")])
        .send()
        .await
        .unwrap();
    assert_eq!(result.status(), 200);
    assert_eq!(result.url().as_str(), checkout_url, "303 back to the page");
    let html = result.text().await.unwrap();
    assert!(html.contains("Paid — 500 credits added"), "{html}");
    assert!(!html.contains("value=\"pay\""), "no Pay button once paid");
    // Pressing Pay again (a stale tab) changes nothing.
    browser
        .post(format!("{}{action}", server.base))
        .form(&[("action", "pay")])
        .send()
        .await
        .unwrap();
    assert_eq!(server.balance().await, 500);
    // Decline on another checkout: nothing credited, the page says so.
    let (declined, url) = server.initialize().await;
    let html = browser
        .post(&url)
        .form(&[("action", "decline")])
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(html.contains("Not paid"), "{html}");
    let payment = server
        .client(SERVICE)
        .send(Method::GET, &format!("/v1/payments/{declined}"), None, None)
        .await
        .unwrap();
    assert_eq!(
        serde_json::from_slice::<Value>(&payment.2).unwrap()["status"],
        "failed"
    );
    assert_eq!(server.balance().await, 500);
    // The paid checkout saved a sandbox card: automatic top-up works with no account anywhere.
    switch_on_auto_topup(&server.client(ADMIN)).await;
    server
        .client(SERVICE)
        .debit("ada", &Debit::amount(450), None)
        .await
        .unwrap();
    wait_for(|| async { server.balance().await == 550 }).await;
    // Unknown checkouts are a 404 page.
    assert_eq!(
        browser
            .get(format!("{}/sandbox/checkout/cd_nope", server.base))
            .send()
            .await
            .unwrap()
            .status(),
        404
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_admin_can_give_up_a_pending_payment_and_a_late_payment_still_credits() {
    let paystack = gateways::paystack().await;
    let server = start(GatewayKind::Paystack, Some(&paystack)).await;
    server.sell_starter_to_ada("Starter").await;
    let (reference, _) = server.initialize().await;
    let abandon = |key: &'static str, reference: String| {
        let client = server.client(key);
        async move {
            let path = format!("/v1/payments/{reference}/abandon");
            let (status, _, bytes) = client.send(Method::POST, &path, None, None).await.unwrap();
            (
                status.as_u16(),
                serde_json::from_slice::<Value>(&bytes).unwrap_or(Value::Null),
            )
        }
    };
    assert_eq!(abandon(SERVICE, reference.clone()).await.0, 403);
    assert_eq!(abandon(ADMIN, "cd_unknown".into()).await.0, 404);
    for _ in 0..2 {
        let (status, payment) = abandon(ADMIN, reference.clone()).await;
        assert_eq!(
            (
                status,
                payment["status"].as_str(),
                payment["failure_reason"].as_str()
            ),
            (200, Some("failed"), Some("abandoned")),
            "{payment}"
        );
    }
    // The gateway took the money after all: its report still credits the payment, once.
    let body = paystack_event(&reference, 200_000, "NGN");
    for expected in ["credited", "duplicate"] {
        let (status, answer) = server.paystack_webhook(&body).await;
        assert_eq!((status, answer["outcome"].as_str()), (200, Some(expected)));
    }
    assert_eq!(server.balance().await, 500);
    let (status, problem) = abandon(ADMIN, reference.clone()).await;
    assert_eq!(
        (status, problem["payment"]["status"].as_str()),
        (409, Some("succeeded"))
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn initialize_is_idempotent_by_key() {
    let paystack = gateways::paystack().await;
    let server = start(GatewayKind::Paystack, Some(&paystack)).await;
    server.sell_starter_to_ada("Starter").await;
    let body = json!({"user_id": "ada", "package_id": "starter", "email": "ada@example.com"})
        .to_string()
        .into_bytes();
    let client = server.client(SERVICE);
    let first = client
        .send(
            Method::POST,
            "/v1/payments/initialize",
            Some(body.clone()),
            Some("checkout-1"),
        )
        .await
        .unwrap();
    let second = client
        .send(
            Method::POST,
            "/v1/payments/initialize",
            Some(body.clone()),
            Some("checkout-1"),
        )
        .await
        .unwrap();
    assert_eq!((first.0.as_u16(), second.0.as_u16()), (200, 200));
    assert_eq!(first.2, second.2, "same reference and page");
    assert_eq!(second.1["idempotent-replayed"], "true");
    assert_eq!(
        paystack.calls("/transaction/initialize").len(),
        1,
        "the gateway was called once"
    );
    // Only the user and the package are compared: another e-mail or callback answers the first.
    let retouched = json!({"user_id": "ada", "package_id": "starter", "email": "a@example.org",
        "callback_url": "https://shop.example/paid"})
    .to_string()
    .into_bytes();
    let third = client
        .send(
            Method::POST,
            "/v1/payments/initialize",
            Some(retouched),
            Some("checkout-1"),
        )
        .await
        .unwrap();
    assert_eq!(third.0.as_u16(), 200);
    assert_eq!(first.2, third.2, "the first payment again");
    assert_eq!(third.1["idempotent-replayed"], "true");
    assert_eq!(paystack.calls("/transaction/initialize").len(), 1);
    let other = json!({"user_id": "ada", "package_id": "other", "email": "ada@example.com"})
        .to_string()
        .into_bytes();
    let reused = client
        .send(
            Method::POST,
            "/v1/payments/initialize",
            Some(other),
            Some("checkout-1"),
        )
        .await
        .unwrap();
    assert_eq!(reused.0.as_u16(), 422);
    server.stop().await;
}

/// A `creditd serve` process configured for the fake Paystack; killed when dropped.
fn start_process(data_dir: &std::path::Path, paystack: &Fake) -> Process {
    Process::start_with(
        data_dir,
        &[
            ("CREDITD_PAYMENTS__GATEWAY", "paystack"),
            ("CREDITD_PAYMENTS__PAYSTACK__SECRET_KEY", PAYSTACK_SECRET),
            ("CREDITD_PAYMENTS__PAYSTACK__BASE_URL", &paystack.base_url),
            ("CREDITD_PAYMENTS__AUTOTOPUP__SWEEP_EVERY", "1"),
        ],
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kill_between_intent_and_settlement_is_reconciled_to_one_credit() {
    let paystack = gateways::paystack().await;
    let dir = tempfile::tempdir().unwrap();
    let first = tokio::task::block_in_place(|| start_process(dir.path(), &paystack));
    let (service, admin) = (first.client(), first.client_with(process::ADMIN));
    admin
        .put_package("starter", "Starter", 500, 200_000, "NGN")
        .await
        .unwrap();
    service
        .put_user("ada", Some("ada@example.com"))
        .await
        .unwrap();
    let body = json!({"user_id": "ada", "package_id": "starter", "email": "ada@example.com"})
        .to_string()
        .into_bytes();
    let (_, _, answer) = service
        .send(Method::POST, "/v1/payments/initialize", Some(body), None)
        .await
        .unwrap();
    let reference = serde_json::from_slice::<Value>(&answer).unwrap()["reference"]
        .as_str()
        .unwrap()
        .to_owned();
    let event = paystack_event(&reference, 200_000, "NGN");
    let signature = hmac_sha512_hex(PAYSTACK_SECRET.as_bytes(), &event);
    let webhook = reqwest::Client::new()
        .post(format!("{}/v1/webhooks/paystack", first.base))
        .header("x-paystack-signature", signature)
        .body(event);
    assert_eq!(webhook.send().await.unwrap().status(), 200);
    switch_on_auto_topup(&admin).await;

    // The gateway takes the money at once but answers only after five seconds.
    paystack.set_behaviour(ChargeBehaviour::SucceedSlowly(Duration::from_secs(5)));
    service
        .debit("ada", &Debit::amount(450), None)
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while paystack
        .calls("/transaction/charge_authorization")
        .is_empty()
    {
        assert!(
            Instant::now() < deadline,
            "the top-up never reached the gateway"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    drop(first); // SIGKILL while creditd waits for the gateway's answer.
    assert_eq!(paystack.calls("/transaction/charge_authorization").len(), 1);

    // From now on, a second charge would succeed at once: it must never be made.
    paystack.set_behaviour(ChargeBehaviour::Succeed);
    let second = tokio::task::block_in_place(|| start_process(dir.path(), &paystack));
    let client = second.client();
    wait_for(|| async {
        client
            .wallet("ada", None)
            .await
            .map(|w| w.balance)
            .unwrap_or(0)
            == 550
    })
    .await;
    assert!(
        !paystack.calls("/transaction/verify/").is_empty(),
        "recovery asked the gateway"
    );
    tokio::time::sleep(Duration::from_millis(2500)).await; // a few sweeps later
    assert_eq!(
        paystack.calls("/transaction/charge_authorization").len(),
        1,
        "charged exactly once"
    );
    assert_eq!(
        client.wallet("ada", None).await.unwrap().balance,
        550,
        "credited exactly once"
    );
    let rule = client
        .send(Method::GET, "/v1/users/ada/auto-topup", None, None)
        .await
        .unwrap();
    assert_eq!(
        serde_json::from_slice::<Value>(&rule.2).unwrap()["pending_reference"],
        Value::Null
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn initialize_says_when_the_unusable_email_comes_from_the_profile() {
    let paystack = gateways::paystack().await;
    let server = start(GatewayKind::Paystack, Some(&paystack)).await;
    server.sell_starter_to_ada("Starter").await;
    let dir = server.stop().await;
    // A profile stored before PUT /v1/users checked addresses: the engine itself takes any text.
    let options = config(dir.path(), GatewayKind::Paystack, Some(&paystack)).engine_options();
    let engine = tokio::task::block_in_place(|| Engine::open_dir(options)).unwrap();
    let tenant = engine.tenant("acme").unwrap();
    let profile = ProfileUpdate {
        email: Some("old at example dot com"),
        name: None,
        metadata: None,
    };
    let (_, lsn) = engine
        .upsert_user(&tenant, "old", profile, &Context::actor("before"))
        .unwrap();
    engine.durable(lsn).await.unwrap();
    tokio::task::block_in_place(|| engine.shutdown()).unwrap();
    drop((tenant, engine));

    let server = start_in(dir, GatewayKind::Paystack, Some(&paystack)).await;
    let service = server.client(SERVICE);
    let initialize = |body: Value| {
        let service = &service;
        async move {
            send_json(
                service,
                Method::POST,
                "/v1/payments/initialize",
                &body.to_string(),
            )
            .await
        }
    };
    let (status, problem) = initialize(json!({"user_id": "old", "package_id": "starter"})).await;
    assert_eq!(
        (status, problem["field"].as_str()),
        (422, Some("email")),
        "{problem}"
    );
    let detail = problem["detail"].as_str().unwrap();
    assert!(
        detail.contains("profile") && detail.contains("sent no email"),
        "the detail must say the address comes from the profile: {detail}"
    );
    assert!(
        paystack.calls("/transaction/initialize").is_empty(),
        "the gateway never heard of it"
    );
    // The request's own address still wins over the profile's.
    let body = json!({"user_id": "old", "package_id": "starter", "email": "old@example.com"});
    let (status, answer) = initialize(body).await;
    assert_eq!(status, 200, "{answer}");
    // And a bad address the request did send is blamed on the request, not on the profile.
    let body = json!({"user_id": "ada", "package_id": "starter", "email": "nope"});
    let (status, problem) = initialize(body).await;
    assert_eq!(
        (status, problem["field"].as_str()),
        (422, Some("email")),
        "{problem}"
    );
    assert!(
        !problem["detail"].as_str().unwrap().contains("profile"),
        "{problem}"
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_signature_header_that_is_not_visible_ascii_is_malformed_not_missing() {
    let paystack = gateways::paystack().await;
    let stripe = gateways::stripe().await;
    for (kind, fake, gateway, header) in [
        (
            GatewayKind::Paystack,
            Some(&paystack),
            "paystack",
            "x-paystack-signature",
        ),
        (
            GatewayKind::Stripe,
            Some(&stripe),
            "stripe",
            "stripe-signature",
        ),
        (GatewayKind::Sandbox, None, "sandbox", "x-sandbox-signature"),
    ] {
        let server = start(kind, fake).await;
        let body = br#"{"event":"charge.success","data":{"reference":"cd_x"}}"#;
        // Bytes as sent on the wire: UTF-8 "é", and obs-text that is no UTF-8 at all.
        for value in [&b"\xc3\xa9"[..], b"t=1,v1=ab\xc3\xa9", b"\x80\xff"] {
            let response = reqwest::Client::new()
                .post(format!("{}/v1/webhooks/{gateway}", server.base))
                .header(header, http::HeaderValue::from_bytes(value).unwrap())
                .body(body.to_vec())
                .send()
                .await
                .unwrap();
            let status = response.status().as_u16();
            let problem: Value = response.json().await.unwrap();
            let detail = problem["detail"].as_str().unwrap_or("");
            assert_eq!(
                (status, problem["type"].as_str()),
                (401, Some("https://creditd.dev/problems/bad-signature")),
                "{gateway} {value:?}: {problem}"
            );
            assert!(
                detail.contains("malformed") && !detail.contains("missing"),
                "{gateway} {value:?}: a header that was sent is not missing: {detail}"
            );
        }
        // A header that was not sent is still reported missing.
        let (status, problem) = server.webhook(gateway, &[], body).await;
        assert_eq!(status, 401, "{problem}");
        assert!(
            problem["detail"].as_str().unwrap().contains("missing"),
            "{gateway}: {problem}"
        );
        server.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_metadata_given_to_initialize_comes_back_in_the_topup_events() {
    let server = start(GatewayKind::Sandbox, None).await;
    server.sell_starter_to_ada("Starter").await;
    let (url, events) = event_receiver("tenant-events-secret-0004").await;
    server
        .send_events_to(&url, "tenant-events-secret-0004")
        .await;
    let service = server.client(SERVICE);
    let initialize = |metadata: Value, key: &'static str| {
        let body = json!({"user_id": "ada", "package_id": "starter", "metadata": metadata});
        let service = service.clone();
        async move {
            let (status, _, answer) = service
                .send(
                    Method::POST,
                    "/v1/payments/initialize",
                    Some(body.to_string().into_bytes()),
                    Some(key),
                )
                .await
                .unwrap();
            let answer: Value = serde_json::from_slice(&answer).unwrap();
            (status.as_u16(), answer)
        }
    };
    let paid_metadata = json!({"order": "A-1", "lines": [{"sku": "x", "qty": 2}]});
    let (status, paid) = initialize(paid_metadata.clone(), "checkout-a-1").await;
    assert_eq!(status, 200, "{paid}");
    // The same key with other metadata is another request; with the same, a replay.
    let (status, problem) = initialize(json!({"order": "A-2"}), "checkout-a-1").await;
    assert_eq!(
        (status, problem["type"].as_str()),
        (
            422,
            Some("https://creditd.dev/problems/idempotency-key-reused")
        ),
        "{problem}"
    );
    let (status, again) = initialize(paid_metadata.clone(), "checkout-a-1").await;
    assert_eq!((status, &again["reference"]), (200, &paid["reference"]));
    let declined_metadata = json!({"order": "A-9"});
    let (status, declined) = initialize(declined_metadata.clone(), "checkout-a-9").await;
    assert_eq!(status, 200, "{declined}");

    let browser = reqwest::Client::new();
    for (answer, action) in [(&paid, "pay"), (&declined, "decline")] {
        let url = answer["checkout_url"].as_str().unwrap();
        let clicked = browser
            .post(url)
            .form(&[("action", action)])
            .send()
            .await
            .unwrap();
        assert!(clicked.status().is_success(), "{}", clicked.status());
    }
    let event = |kind: &'static str, reference: Value| {
        let events = Arc::clone(&events);
        move || {
            events
                .lock()
                .iter()
                .find(|e| e["type"] == kind && e["data"]["reference"] == reference)
                .cloned()
        }
    };
    let succeeded = event("topup.succeeded", paid["reference"].clone());
    let failed = event("topup.failed", declined["reference"].clone());
    wait_for(|| async { succeeded().is_some() && failed().is_some() }).await;
    let succeeded = succeeded().unwrap();
    assert_eq!(succeeded["data"]["metadata"], paid_metadata, "{succeeded}");
    assert_eq!(succeeded["data"]["credits"], 500);
    let failed = failed().unwrap();
    assert_eq!(failed["data"]["metadata"], declined_metadata, "{failed}");
    server.stop().await;
}
