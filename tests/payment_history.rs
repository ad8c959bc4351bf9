//! The payment history over HTTP: `GET /v1/users/{id}/payments` against a real server whose
//! history thread follows its log, with checkouts settled through the sandbox's page (the same
//! path as a gateway's webhook). A payment is listed at once with the metadata `initialize` was
//! given, then with where it ended: succeeded with the entry `/entries` lists for its credit, or
//! failed. Status filters, stable pages, 422s for bad queries, 404 for another tenant, and a
//! payment the engine has forgotten (`payments.retention`) that the history still lists.

use std::sync::Arc;

use creditd::config::Seconds;
use creditd::engine::{Clock, Engine, EngineOptions, ManualClock};
use creditd::wal::FsStorage;
use http::Method;
use serde_json::{json, Value};

#[path = "common/server.rs"]
mod server;

use server::{send_json, Server, ADMIN, GLOBEX, SERVICE};

const DAY_MS: i64 = 86_400_000;

impl Server {
    /// Starts a checkout of `starter` for `ada` with `metadata` (none when null): its reference.
    async fn checkout_with(&self, metadata: Value) -> String {
        let mut body = json!({"user_id": "ada", "package_id": "starter"});
        if !metadata.is_null() {
            body["metadata"] = metadata;
        }
        let (status, answer) = send_json(
            &self.client(SERVICE),
            Method::POST,
            "/v1/payments/initialize",
            &body.to_string(),
        )
        .await;
        assert_eq!(status, 200, "{answer}");
        answer["reference"].as_str().unwrap().to_owned()
    }

    /// Presses Pay (or Decline) on the sandbox's checkout page.
    async fn click(&self, reference: &str, action: &str) {
        let response = reqwest::Client::new()
            .post(format!("{}/sandbox/checkout/{reference}", self.base))
            .form(&[("action", action)])
            .send()
            .await
            .unwrap();
        assert!(
            response.status().is_success() || response.status().is_redirection(),
            "{}",
            response.status()
        );
    }

    /// `GET /v1/users/ada/payments?<query>` with the service key: it must answer 200.
    async fn payments(&self, query: &str) -> Value {
        let path = format!("/v1/users/ada/payments?{query}");
        let (status, page) = send_json(&self.client(SERVICE), Method::GET, &path, "").await;
        assert_eq!(status, 200, "{query}: {page}");
        page
    }
}

fn references(page: &Value) -> Vec<String> {
    page["payments"]
        .as_array()
        .unwrap()
        .iter()
        .map(|payment| payment["reference"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn payments_are_listed_newest_first_with_their_metadata_and_how_they_ended() {
    let server = Server::start().await;
    server.sell_starter_to_ada("Starter").await;
    let service = server.client(SERVICE);
    let metadata = json!({"order": "A-1", "lines": [{"sku": "x", "qty": 2}]});
    let paid = server.checkout_with(metadata.clone()).await;

    // Pending, with its metadata, at once (read your writes).
    let page = server.payments("").await;
    assert_eq!(references(&page), [paid.as_str()]);
    let pending = &page["payments"][0];
    assert_eq!(pending["status"], "pending");
    assert_eq!(pending["metadata"], metadata);
    assert_eq!(
        (&pending["package_id"], &pending["credits"]),
        (&json!("starter"), &json!(500))
    );
    assert_eq!(
        (&pending["amount_minor"], &pending["price_currency"]),
        (&json!(200_000), &json!("NGN"))
    );
    assert_eq!(
        (
            &pending["currency"],
            &pending["gateway"],
            &pending["purpose"]
        ),
        (&json!("credits"), &json!("sandbox"), &json!("checkout"))
    );
    assert!(pending["created_at"].as_str().unwrap().ends_with('Z'));
    assert!(pending.get("settled_at").is_none(), "{pending}");
    assert!(pending.get("entry_id").is_none(), "{pending}");
    assert!(pending["checkout_url"]
        .as_str()
        .unwrap()
        .ends_with(&format!("/sandbox/checkout/{paid}")));
    // GET /v1/payments/{reference} answers it too.
    let path = format!("/v1/payments/{paid}");
    let (status, payment) = send_json(&service, Method::GET, &path, "").await;
    assert_eq!(status, 200, "{payment}");
    assert_eq!(payment["metadata"], metadata);

    // Paid through the sandbox: succeeded, with the entry `/entries` lists for the top-up.
    server.click(&paid, "pay").await;
    let page = server.payments("").await;
    let succeeded = &page["payments"][0];
    assert_eq!(succeeded["status"], "succeeded", "{succeeded}");
    assert!(succeeded["settled_at"].as_str().unwrap().ends_with('Z'));
    assert_eq!(succeeded["metadata"], metadata);
    let (_, topups) = send_json(
        &service,
        Method::GET,
        "/v1/users/ada/entries?kind=topup",
        "",
    )
    .await;
    assert_eq!(topups["entries"].as_array().unwrap().len(), 1, "{topups}");
    assert_eq!(succeeded["entry_id"], topups["entries"][0]["entry_id"]);
    assert_eq!(topups["entries"][0]["amount"], 500);

    // Declined: failed, nothing credited.
    let declined = server.checkout_with(Value::Null).await;
    server.click(&declined, "decline").await;
    let open = server.checkout_with(json!({"order": "A-3"})).await;
    let page = server.payments("").await;
    assert_eq!(
        references(&page),
        [open.as_str(), declined.as_str(), paid.as_str()]
    );
    let failed = &page["payments"][1];
    assert_eq!(failed["status"], "failed", "{failed}");
    assert!(failed["settled_at"].is_string(), "{failed}");
    assert!(failed.get("entry_id").is_none(), "{failed}");
    assert!(
        ["soft_decline", "hard_decline", "abandoned"]
            .contains(&failed["failure_reason"].as_str().unwrap()),
        "{failed}"
    );
    assert_eq!(failed["metadata"], Value::Null, "present, and null");
    assert_eq!(page["next_cursor"], Value::Null);

    // Filters.
    for (status, expected) in [
        ("pending", &open),
        ("succeeded", &paid),
        ("failed", &declined),
    ] {
        let page = server.payments(&format!("status={status}")).await;
        assert_eq!(references(&page), [expected.as_str()], "{status}");
    }

    // Pages of one; a payment started between pages lands before the first, never inside a
    // later one.
    let first = server.payments("limit=1").await;
    assert_eq!(references(&first), [open.as_str()]);
    let cursor = first["next_cursor"].as_str().unwrap().to_owned();
    assert!(cursor.starts_with("pay_"), "{cursor}");
    let newer = server.checkout_with(Value::Null).await;
    let second = server.payments(&format!("limit=1&cursor={cursor}")).await;
    assert_eq!(references(&second), [declined.as_str()]);
    let cursor = second["next_cursor"].as_str().unwrap();
    let third = server.payments(&format!("limit=1&cursor={cursor}")).await;
    assert_eq!(references(&third), [paid.as_str()]);
    let cursor = third["next_cursor"].as_str().unwrap();
    let last = server.payments(&format!("limit=1&cursor={cursor}")).await;
    assert!(references(&last).is_empty());
    assert_eq!(last["next_cursor"], Value::Null);
    let all = server.payments("limit=10").await;
    assert_eq!(references(&all), [newer, open, declined, paid]);
    server.stop().await;
}

#[tokio::test]
async fn bad_queries_and_metadata_are_refused_and_other_tenants_see_nothing() {
    let server = Server::start().await;
    server.sell_starter_to_ada("Starter").await;
    let service = server.client(SERVICE);
    for query in [
        "limit=0",
        "limit=1001",
        "limit=ten",
        "cursor=nonsense",
        "cursor=pay_0",
        "cursor=ent_5",
        "status=refunded",
        "status=",
        "colour=blue",
    ] {
        let path = format!("/v1/users/ada/payments?{query}");
        let (status, problem) = send_json(&service, Method::GET, &path, "").await;
        assert_eq!(status, 422, "{query}: {problem}");
        assert_eq!(
            problem["type"], "https://creditd.dev/problems/invalid-request",
            "{query}: {problem}"
        );
    }
    let (_, problem) = send_json(
        &service,
        Method::GET,
        "/v1/users/ada/payments?status=refunded",
        "",
    )
    .await;
    assert_eq!(problem["field"], "status");

    // Metadata must be a JSON object; nothing is recorded otherwise.
    for metadata in [json!([1, 2]), json!("text"), json!(7), json!(true)] {
        let body = json!({"user_id": "ada", "package_id": "starter", "metadata": metadata});
        let (status, problem) = send_json(
            &service,
            Method::POST,
            "/v1/payments/initialize",
            &body.to_string(),
        )
        .await;
        assert_eq!(status, 422, "{metadata}: {problem}");
        assert_eq!(problem["field"], "metadata", "{problem}");
    }
    // `null` is none.
    server.checkout_with(Value::Null).await;
    let body = json!({"user_id": "ada", "package_id": "starter", "metadata": null});
    let (status, answer) = send_json(
        &service,
        Method::POST,
        "/v1/payments/initialize",
        &body.to_string(),
    )
    .await;
    assert_eq!(status, 200, "{answer}");
    let page = server.payments("").await;
    assert_eq!(page["payments"].as_array().unwrap().len(), 2, "{page}");
    assert!(page["payments"]
        .as_array()
        .unwrap()
        .iter()
        .all(|payment| payment["metadata"].is_null()));

    let globex = server.client(GLOBEX);
    let (status, problem) = send_json(&globex, Method::GET, "/v1/users/ada/payments", "").await;
    assert_eq!(status, 404, "{problem}");
    assert_eq!(
        problem["type"],
        "https://creditd.dev/problems/user-not-found"
    );
    let (status, _) = send_json(&service, Method::GET, "/v1/users/nobody/payments", "").await;
    assert_eq!(status, 404);
    // An admin key of the tenant reads it too.
    let (status, _) = send_json(
        &server.client(ADMIN),
        Method::GET,
        "/v1/users/ada/payments",
        "",
    )
    .await;
    assert_eq!(status, 200);
    server.stop().await;
}

#[tokio::test]
async fn with_the_history_off_the_list_is_503() {
    let server = Server::start_with(|config| config.history.enabled = false).await;
    server.sell_starter_to_ada("Starter").await;
    let (status, problem) = send_json(
        &server.client(SERVICE),
        Method::GET,
        "/v1/users/ada/payments",
        "",
    )
    .await;
    assert_eq!(status, 503, "{problem}");
    assert_eq!(
        problem["type"],
        "https://creditd.dev/problems/history-disabled"
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_payment_the_engine_forgot_after_its_retention_is_still_listed() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = server::config(dir.path());
    config.payments.retention = Seconds(3 * 86_400);
    let clock = Arc::new(ManualClock::new(1_700_000_000_000));
    let options = EngineOptions {
        background: false,
        ..config.engine_options()
    };
    let engine = Engine::open(
        options,
        Arc::new(FsStorage),
        Arc::clone(&clock) as Arc<dyn Clock>,
    )
    .unwrap();
    let server = Server::start_with_engine(config, Arc::clone(&engine), dir).await;
    server.sell_starter_to_ada("Starter").await;
    let metadata = json!({"order": "A-old"});
    let reference = server.checkout_with(metadata.clone()).await;
    server.click(&reference, "pay").await;

    // Four days later the maintenance pass forgets the settled payment.
    clock.advance_ms(4 * DAY_MS);
    engine.purge_expired(clock.now_ms());
    let path = format!("/v1/payments/{reference}");
    let (status, problem) = send_json(&server.client(SERVICE), Method::GET, &path, "").await;
    assert_eq!(status, 404, "{problem}");

    let page = server.payments("").await;
    assert_eq!(references(&page), [reference]);
    let payment = &page["payments"][0];
    assert_eq!(payment["status"], "succeeded");
    assert_eq!(payment["metadata"], metadata);
    assert!(payment["entry_id"].as_str().unwrap().starts_with("ent_"));
    server.stop().await;
}
