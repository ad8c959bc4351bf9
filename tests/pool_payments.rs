//! Packages bought for a credit pool over HTTP: `initialize` with `pool_id` (admin keys), the
//! sandbox checkout paid like a browser pays it, Paystack webhooks delivered twice or in the
//! wrong amount, the payment and the pool's payments as the API shows them, the pool's ledger,
//! the revenue report and the audit, bad input, a restart that keeps it all, and a `kill -9` of
//! the process after which a paid payment, a pending one and their pool come back.

mod gateways;
#[path = "common/process.rs"]
mod process;
#[path = "common/server.rs"]
mod server;

use creditd::config::{Config, Gateway as GatewayKind};
use creditd::payments::signature::{hmac_sha512_hex, sign_timestamped};
use gateways::{Fake, PAYSTACK_SECRET, STRIPE_SECRET, STRIPE_WEBHOOK_SECRET};
use http::Method;
use serde_json::{json, Value};
use server::{raw, send_json, Server, ADMIN, SERVICE};

fn config(dir: &std::path::Path, gateway: GatewayKind, fake: Option<&Fake>) -> Config {
    let mut config = server::config(dir);
    config.payments.gateway = gateway;
    config.payments.gateway_timeout_seconds = 10;
    if let Some(fake) = fake {
        config.payments.paystack.base_url = fake.base_url.clone();
        config.payments.stripe.base_url = fake.base_url.clone();
    }
    config.payments.paystack.secret_key = PAYSTACK_SECRET.into();
    config.payments.stripe.secret_key = STRIPE_SECRET.into();
    config.payments.stripe.webhook_secret = STRIPE_WEBHOOK_SECRET.into();
    config
}

async fn start_in(dir: tempfile::TempDir, gateway: GatewayKind, fake: Option<&Fake>) -> Server {
    let config = config(dir.path(), gateway, fake);
    Server::start_in(dir, config).await
}

async fn call(server: &Server, key: &str, method: Method, path: &str, body: Value) -> (u16, Value) {
    let body = if body.is_null() {
        String::new()
    } else {
        body.to_string()
    };
    raw(&server.client(key), method, path, &body).await
}

async fn ok(server: &Server, key: &str, method: Method, path: &str, body: Value) -> Value {
    let (status, answer) = call(server, key, method, path, body).await;
    assert!((200..300).contains(&status), "{path}: {status} {answer}");
    answer
}

/// The pool `org` (credits), the package `starter` (500 credits for 2,000.00 NGN) and the user
/// `ada`, a member of the pool with an empty wallet.
async fn setup(server: &Server) {
    server.sell_starter_to_ada("Starter").await;
    ok(
        server,
        ADMIN,
        Method::PUT,
        "/v1/pools/org",
        json!({"name": "Org"}),
    )
    .await;
    ok(
        server,
        ADMIN,
        Method::PUT,
        "/v1/users/ada/pool",
        json!({"pool_id": "org"}),
    )
    .await;
}

/// Starts a checkout of `starter` for the pool `org`: its reference and checkout URL.
async fn initialize_for_pool(server: &Server) -> (String, String) {
    let body = json!({"pool_id": "org", "package_id": "starter", "email": "finance@example.com",
                      "metadata": {"po": "PO-9"}});
    let answer = ok(server, ADMIN, Method::POST, "/v1/payments/initialize", body).await;
    (
        answer["reference"].as_str().unwrap().to_owned(),
        answer["checkout_url"].as_str().unwrap().to_owned(),
    )
}

async fn pool_balance(server: &Server) -> i64 {
    let pool = ok(server, ADMIN, Method::GET, "/v1/pools/org", Value::Null).await;
    pool["balance"].as_i64().unwrap()
}

fn paystack_event(reference: &str, amount: i64, currency: &str) -> Vec<u8> {
    json!({
        "event": "charge.success",
        "data": {
            "id": 302961, "status": "success", "reference": reference, "amount": amount,
            "currency": currency, "gateway_response": "Approved",
            "customer": {"email": "finance@example.com"}
        }
    })
    .to_string()
    .into_bytes()
}

async fn paystack_webhook(server: &Server, body: &[u8]) -> (u16, Value) {
    let signature = hmac_sha512_hex(PAYSTACK_SECRET.as_bytes(), body);
    let response = reqwest::Client::new()
        .post(format!("{}/v1/webhooks/paystack", server.base))
        .header("x-paystack-signature", signature)
        .body(body.to_vec())
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

/// Waits (up to 10 s) until the history has what `path` lists under `field` `count` times.
async fn listed(server: &Server, path: &str, field: &str, count: usize) -> Vec<Value> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let answer = ok(server, ADMIN, Method::GET, path, Value::Null).await;
        let items = answer[field].as_array().cloned().unwrap_or_default();
        if items.len() >= count || std::time::Instant::now() > deadline {
            return items;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sandbox_checkout_for_a_pool_credits_the_pool_and_its_members_spend_it() {
    let server = start_in(tempfile::tempdir().unwrap(), GatewayKind::Sandbox, None).await;
    setup(&server).await;
    let (reference, checkout_url) = initialize_for_pool(&server).await;

    // The payment names its pool, not a user.
    let payment = ok(
        &server,
        ADMIN,
        Method::GET,
        &format!("/v1/payments/{reference}"),
        Value::Null,
    )
    .await;
    assert_eq!(payment["pool_id"], "org", "{payment}");
    assert_eq!(payment["user_id"], Value::Null, "{payment}");
    assert_eq!(
        (payment["status"].as_str(), payment["credits"].as_i64()),
        (Some("pending"), Some(500))
    );

    // Paid like a browser pays: the page's form, Pay, the redirect back.
    let browser = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::limited(3))
        .build()
        .unwrap();
    let html = browser
        .get(&checkout_url)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        html.contains("2,000.00 NGN") && html.contains("org"),
        "{html}"
    );
    let paid = browser
        .post(&checkout_url)
        .form(&[("action", "pay")])
        .send()
        .await
        .unwrap();
    assert_eq!(paid.status(), 200);
    assert!(paid
        .text()
        .await
        .unwrap()
        .contains("Paid — 500 credits added"));
    // A stale tab pays again: nothing more.
    browser
        .post(&checkout_url)
        .form(&[("action", "pay")])
        .send()
        .await
        .unwrap();
    assert_eq!(pool_balance(&server).await, 500);
    let wallet = ok(
        &server,
        SERVICE,
        Method::GET,
        "/v1/users/ada/wallet",
        Value::Null,
    )
    .await;
    assert_eq!(wallet["balance"], 0, "{wallet}");
    assert_eq!(wallet["pool"]["available_to_user"], 500, "{wallet}");

    // The member spends the pool's credits.
    let debit = ok(
        &server,
        SERVICE,
        Method::POST,
        "/v1/users/ada/debit",
        json!({"amount": 120}),
    )
    .await;
    assert_eq!(
        (debit["from_pool"].as_i64(), debit["from_wallet"].as_i64()),
        (Some(120), Some(0)),
        "{debit}"
    );
    assert_eq!(pool_balance(&server).await, 380);

    // The pool's payments, its ledger, the revenue report and the audit count it.
    let payments = listed(&server, "/v1/pools/org/payments", "payments", 1).await;
    assert_eq!(payments.len(), 1, "{payments:?}");
    assert_eq!(
        (
            payments[0]["reference"].as_str(),
            payments[0]["status"].as_str()
        ),
        (Some(reference.as_str()), Some("succeeded"))
    );
    assert_eq!(payments[0]["metadata"], json!({"po": "PO-9"}));
    let entries = listed(&server, "/v1/pools/org/entries", "entries", 2).await;
    let topup = entries
        .iter()
        .find(|e| e["kind"] == "topup")
        .expect("a topup entry");
    assert_eq!(
        (topup["amount"].as_i64(), topup["balance_after"].as_i64()),
        (Some(500), Some(500)),
        "{topup}"
    );
    assert_eq!(topup["reference"].as_str(), Some(reference.as_str()));
    assert_eq!(payments[0]["entry_id"], topup["entry_id"]);
    let revenue = ok(
        &server,
        ADMIN,
        Method::GET,
        "/v1/reports/revenue?group_by=package",
        Value::Null,
    )
    .await;
    let row = &revenue["rows"][0];
    assert_eq!(
        (
            row["key"].as_str(),
            row["count"].as_i64(),
            row["amount_minor"].as_i64(),
            row["credits_sold"].as_i64()
        ),
        (Some("starter"), Some(1), Some(200_000), Some(500)),
        "{revenue}"
    );
    let audit = listed(&server, "/v1/audit?limit=50", "records", 1).await;
    assert!(
        audit
            .iter()
            .any(|r| r["action"] == "pool.credit.payment" && r["target"] == "pool:org"),
        "{audit:?}"
    );
    // The user's own payments do not list the pool's.
    let mine = ok(
        &server,
        SERVICE,
        Method::GET,
        "/v1/users/ada/payments",
        Value::Null,
    )
    .await;
    assert_eq!(mine["payments"], json!([]));

    // A restart keeps the pool's payment, its target and its credits.
    let dir = server.stop().await;
    let server = start_in(dir, GatewayKind::Sandbox, None).await;
    assert_eq!(pool_balance(&server).await, 380);
    let payment = ok(
        &server,
        ADMIN,
        Method::GET,
        &format!("/v1/payments/{reference}"),
        Value::Null,
    )
    .await;
    assert_eq!(
        (payment["pool_id"].as_str(), payment["status"].as_str()),
        (Some("org"), Some("succeeded"))
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paystack_deliveries_credit_a_pool_once_and_only_in_the_packages_amount() {
    let paystack = gateways::paystack().await;
    let server = start_in(
        tempfile::tempdir().unwrap(),
        GatewayKind::Paystack,
        Some(&paystack),
    )
    .await;
    setup(&server).await;
    let (reference, _) = initialize_for_pool(&server).await;
    let sent = paystack.calls("/transaction/initialize")[0].json();
    assert_eq!(
        (sent["email"].as_str(), sent["reference"].as_str()),
        (Some("finance@example.com"), Some(reference.as_str()))
    );

    // Delivered three times: credited once.
    let event = paystack_event(&reference, 200_000, "NGN");
    let mut outcomes = Vec::new();
    for _ in 0..3 {
        let (status, answer) = paystack_webhook(&server, &event).await;
        assert_eq!(status, 200, "{answer}");
        outcomes.push(answer["outcome"].as_str().unwrap().to_owned());
    }
    assert_eq!(outcomes, ["credited", "duplicate", "duplicate"]);
    assert_eq!(pool_balance(&server).await, 500);

    // Paid the wrong amount: failed, nothing credited, and a later right amount cannot undo it.
    let (short, _) = initialize_for_pool(&server).await;
    let (_, answer) = paystack_webhook(&server, &paystack_event(&short, 100, "NGN")).await;
    assert_eq!(answer["outcome"], "failed");
    let (_, answer) = paystack_webhook(&server, &paystack_event(&short, 200_000, "USD")).await;
    assert_eq!(answer["outcome"], "duplicate");
    let payment = ok(
        &server,
        ADMIN,
        Method::GET,
        &format!("/v1/payments/{short}"),
        Value::Null,
    )
    .await;
    assert_eq!(
        (
            payment["status"].as_str(),
            payment["failure_reason"].as_str()
        ),
        (Some("failed"), Some("amount_mismatch")),
        "{payment}"
    );
    assert_eq!(pool_balance(&server).await, 500);
    let failed = listed(
        &server,
        "/v1/pools/org/payments?status=failed",
        "payments",
        1,
    )
    .await;
    assert_eq!(failed.len(), 1);
    assert_eq!(failed[0]["reference"].as_str(), Some(short.as_str()));
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pools_payment_needs_an_admin_one_target_an_email_and_the_pools_currency() {
    let server = start_in(tempfile::tempdir().unwrap(), GatewayKind::Sandbox, None).await;
    setup(&server).await;
    let platform =
        json!({"currencies": [{"code": "credits", "decimals": 0}, {"code": "usd", "decimals": 2}]});
    ok(
        &server,
        server::PLATFORM,
        Method::PUT,
        "/v1/tenants/acme",
        platform,
    )
    .await;
    ok(&server, ADMIN, Method::PUT, "/v1/packages/dollars",
       json!({"name": "Dollars", "credits": 500, "currency": "usd", "price_minor": 500, "price_currency": "USD"})).await;
    let before = ok(&server, ADMIN, Method::GET, "/v1/pools/org", Value::Null).await;
    let initialize = |key: &'static str, body: Value| {
        let server = &server;
        async move { call(server, key, Method::POST, "/v1/payments/initialize", body).await }
    };
    let email = "finance@example.com";
    let cases = [
        (
            SERVICE,
            json!({"pool_id": "org", "package_id": "starter", "email": email}),
            403,
            None,
        ),
        (
            ADMIN,
            json!({"pool_id": "org", "user_id": "ada", "package_id": "starter", "email": email}),
            422,
            Some("pool_id"),
        ),
        (
            ADMIN,
            json!({"package_id": "starter", "email": email}),
            422,
            Some("user_id"),
        ),
        (
            ADMIN,
            json!({"pool_id": "org", "package_id": "starter"}),
            422,
            Some("email"),
        ),
        (
            ADMIN,
            json!({"pool_id": "org", "package_id": "dollars", "email": email}),
            422,
            Some("package_id"),
        ),
        (
            ADMIN,
            json!({"pool_id": "nope", "package_id": "starter", "email": email}),
            404,
            None,
        ),
        (
            ADMIN,
            json!({"pool_id": "org", "package_id": "nope", "email": email}),
            404,
            None,
        ),
    ];
    for (key, body, status, field) in cases {
        let (got, problem) = initialize(key, body.clone()).await;
        assert_eq!(got, status, "{body}: {problem}");
        if let Some(field) = field {
            assert_eq!(problem["field"].as_str(), Some(field), "{body}: {problem}");
        }
    }
    // Nothing was written.
    assert_eq!(
        ok(&server, ADMIN, Method::GET, "/v1/pools/org", Value::Null).await,
        before
    );
    assert_eq!(
        listed(&server, "/v1/pools/org/payments", "payments", 0).await,
        Vec::<Value>::new()
    );
    // Another tenant's key sees no such pool; a service key may not list a pool's payments.
    let (status, _) = call(
        &server,
        server::GLOBEX,
        Method::GET,
        "/v1/pools/org/payments",
        Value::Null,
    )
    .await;
    assert_eq!(status, 403);
    let (status, _) = call(
        &server,
        ADMIN,
        Method::GET,
        "/v1/pools/nope/payments",
        Value::Null,
    )
    .await;
    assert_eq!(status, 404);
    // The user's form is unchanged.
    let (status, answer) = send_json(
        &server.client(SERVICE),
        Method::POST,
        "/v1/payments/initialize",
        &json!({"user_id": "ada", "package_id": "starter"}).to_string(),
    )
    .await;
    assert_eq!(status, 200, "{answer}");
    server.stop().await;
}

/// `POST` a form to the sandbox checkout page (what its Pay button sends): the status.
async fn press(base: &str, reference: &str, action: &str) -> u16 {
    let response = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
        .post(format!("{base}/sandbox/checkout/{reference}"))
        .form(&[("action", action)])
        .send()
        .await
        .unwrap();
    response.status().as_u16()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kill_9_keeps_a_pools_payments_and_their_credits() {
    let dir = tempfile::tempdir().unwrap();
    let first = tokio::task::block_in_place(|| process::Process::start(dir.path()));
    let admin = first.client_with(process::ADMIN);
    let post =
        |client: &creditd::client::Client, method: Method, path: &'static str, body: Value| {
            let client = client.clone();
            async move {
                let (status, answer) = raw(&client, method, path, &body.to_string()).await;
                assert!((200..300).contains(&status), "{path}: {status} {answer}");
                answer
            }
        };
    post(
        &admin,
        Method::PUT,
        "/v1/packages/starter",
        json!({"name": "Starter", "credits": 500, "price_minor": 200_000, "price_currency": "NGN"}),
    )
    .await;
    post(&admin, Method::PUT, "/v1/pools/org", json!({"name": "Org"})).await;
    let body = json!({"pool_id": "org", "package_id": "starter", "email": "finance@example.com"});
    let paid = post(
        &admin,
        Method::POST,
        "/v1/payments/initialize",
        body.clone(),
    )
    .await;
    let paid = paid["reference"].as_str().unwrap().to_owned();
    assert_eq!(press(&first.base, &paid, "pay").await, 303);
    let pending = post(&admin, Method::POST, "/v1/payments/initialize", body).await;
    let pending = pending["reference"].as_str().unwrap().to_owned();
    first.kill_9();

    let second = tokio::task::block_in_place(|| process::Process::start(dir.path()));
    let admin = second.client_with(process::ADMIN);
    let get = |path: String| {
        let admin = admin.clone();
        async move { raw(&admin, Method::GET, &path, "").await.1 }
    };
    assert_eq!(get("/v1/pools/org".into()).await["balance"], 500);
    let kept = get(format!("/v1/payments/{paid}")).await;
    assert_eq!(
        (kept["pool_id"].as_str(), kept["status"].as_str()),
        (Some("org"), Some("succeeded")),
        "{kept}"
    );
    let kept = get(format!("/v1/payments/{pending}")).await;
    assert_eq!(
        (kept["pool_id"].as_str(), kept["status"].as_str()),
        (Some("org"), Some("pending")),
        "{kept}"
    );
    // The pending one is paid after the restart; the paid one, paid again, adds nothing.
    assert_eq!(press(&second.base, &pending, "pay").await, 303);
    assert_eq!(press(&second.base, &paid, "pay").await, 303);
    assert_eq!(get("/v1/pools/org".into()).await["balance"], 1000);
    second.kill_9();
}

/// A Stripe event of `kind` about `object`, signed now with the webhook secret: body and header.
fn stripe_event(kind: &str, object: Value) -> (Vec<u8>, String) {
    let body =
        json!({"id": "evt_pool_1", "object": "event", "type": kind, "data": {"object": object}})
            .to_string()
            .into_bytes();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let signature = sign_timestamped(STRIPE_WEBHOOK_SECRET.as_bytes(), now, &body);
    (body, signature)
}

async fn stripe_webhook(server: &Server, (body, signature): (Vec<u8>, String)) -> Value {
    let response = reqwest::Client::new()
        .post(format!("{}/v1/webhooks/stripe", server.base))
        .header("stripe-signature", signature)
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    response.json().await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stripe_checkout_for_a_pool_credits_it_once_and_keys_replay_it() {
    let stripe = gateways::stripe().await;
    let server = start_in(
        tempfile::tempdir().unwrap(),
        GatewayKind::Stripe,
        Some(&stripe),
    )
    .await;
    setup(&server).await;
    // With an Idempotency-Key: the same request answers the same checkout; the key used for a
    // user's checkout is refused.
    let body = json!({"pool_id": "org", "package_id": "starter", "email": "finance@example.com"});
    let send = |body: Value| {
        let client = server.client(ADMIN);
        async move {
            let (status, _, bytes) = client
                .send(
                    Method::POST,
                    "/v1/payments/initialize",
                    Some(body.to_string().into_bytes()),
                    Some("pool-checkout-1"),
                )
                .await
                .unwrap();
            (
                status.as_u16(),
                serde_json::from_slice::<Value>(&bytes).unwrap(),
            )
        }
    };
    let (status, first) = send(body.clone()).await;
    assert_eq!(status, 200, "{first}");
    let (status, again) = send(body).await;
    assert_eq!((status, &again), (200, &first));
    let (status, reused) =
        send(json!({"user_id": "ada", "package_id": "starter", "email": "ada@example.com"})).await;
    assert_eq!(
        (status, reused["type"].as_str()),
        (
            422,
            Some("https://creditd.dev/problems/idempotency-key-reused")
        ),
        "{reused}"
    );
    assert_eq!(
        stripe.calls("/v1/checkout/sessions").len(),
        1,
        "one session"
    );
    let reference = first["reference"].as_str().unwrap().to_owned();
    assert!(first["checkout_url"]
        .as_str()
        .unwrap()
        .starts_with("https://checkout.stripe.test/"));

    // The session completes, then the intent's own event: credited once.
    let completed = stripe_event(
        "checkout.session.completed",
        json!({"object": "checkout.session", "client_reference_id": reference, "payment_status": "paid",
               "amount_total": 200_000, "currency": "ngn", "customer": "cus_1", "metadata": {"reference": reference}}),
    );
    assert_eq!(
        stripe_webhook(&server, completed).await["outcome"],
        "credited"
    );
    let succeeded = stripe_event(
        "payment_intent.succeeded",
        json!({"object": "payment_intent", "status": "succeeded", "amount_received": 200_000, "currency": "ngn",
               "customer": "cus_1", "payment_method": "pm_card_visa", "metadata": {"reference": reference}}),
    );
    assert_eq!(
        stripe_webhook(&server, succeeded).await["outcome"],
        "duplicate"
    );
    assert_eq!(pool_balance(&server).await, 500);
    // No user got the credits, nor the card.
    let wallet = ok(
        &server,
        SERVICE,
        Method::GET,
        "/v1/users/ada/wallet",
        Value::Null,
    )
    .await;
    assert_eq!(wallet["balance"], 0, "{wallet}");
    server.stop().await;
}
