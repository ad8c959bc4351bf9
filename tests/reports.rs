//! Usage and revenue reports over HTTP, against a real server whose history follows its log:
//! debits by action and by amount for two users, a capture, movements that are not usage, a
//! top-up paid through the sandbox; then every grouping, who may read what, and bad windows.

use http::Method;
use serde_json::{json, Value};

#[path = "common/server.rs"]
mod server;

use server::{send_json, Server, ADMIN, GLOBEX, PLATFORM, SERVICE};

/// `(key, count, credits, quantity)` of every row.
fn usage_rows(report: &Value) -> Vec<(Value, i64, i64, i64)> {
    report["rows"]
        .as_array()
        .unwrap_or_else(|| panic!("no rows: {report}"))
        .iter()
        .map(|row| {
            (
                row["key"].clone(),
                row["count"].as_i64().unwrap(),
                row["credits"].as_i64().unwrap(),
                row["quantity"].as_i64().unwrap(),
            )
        })
        .collect()
}

async fn get(client: &creditd::client::Client, path: &str) -> (u16, Value) {
    send_json(client, Method::GET, path, "").await
}

async fn post(client: &creditd::client::Client, path: &str, body: Value) -> Value {
    let (status, answer) = send_json(client, Method::POST, path, &body.to_string()).await;
    assert!((200..300).contains(&status), "{path}: {status} {answer}");
    answer
}

/// Writes the usage every test below reads: 45 credits in six spends, and one top-up.
async fn spend(server: &Server) {
    let service = server.client(SERVICE);
    let admin = server.client(ADMIN);
    for (action, cost) in [("gpt", 3), ("image", 10)] {
        let (status, answer) = send_json(
            &admin,
            Method::PUT,
            &format!("/v1/actions/{action}"),
            &json!({ "cost": cost }).to_string(),
        )
        .await;
        assert_eq!(status, 201, "{answer}");
    }
    for user in ["ada", "bob"] {
        service.put_user(user, None).await.unwrap();
        service.credit(user, 1000, None, None).await.unwrap();
    }
    let debit = |user: &str| format!("/v1/users/{user}/debit");
    // ada: gpt ×2 twice (12), image ×1 (10), 5 by amount.
    for _ in 0..2 {
        post(
            &service,
            &debit("ada"),
            json!({"action": "gpt", "quantity": 2}),
        )
        .await;
    }
    post(
        &service,
        &debit("ada"),
        json!({"action": "image", "quantity": 1}),
    )
    .await;
    post(&service, &debit("ada"), json!({"amount": 5})).await;
    // bob: gpt ×1 (3), and image ×2 reserved (20) then captured at 15.
    post(
        &service,
        &debit("bob"),
        json!({"action": "gpt", "quantity": 1}),
    )
    .await;
    let hold = post(
        &service,
        "/v1/users/bob/reservations",
        json!({"action": "image", "quantity": 2}),
    )
    .await;
    let id = hold["reservation_id"].as_str().unwrap();
    post(
        &service,
        &format!("/v1/reservations/{id}/capture"),
        json!({"amount": 15}),
    )
    .await;
    // Not usage: a revoke, a released reservation, a grant.
    post(
        &admin,
        "/v1/users/bob/revoke",
        json!({"amount": 7, "reason": "refunded elsewhere"}),
    )
    .await;
    let hold = post(&service, "/v1/users/ada/reservations", json!({"amount": 4})).await;
    let id = hold["reservation_id"].as_str().unwrap();
    post(
        &service,
        &format!("/v1/reservations/{id}/release"),
        json!({}),
    )
    .await;
    // A top-up of `starter` (500 credits for 2,000.00 NGN), paid on the sandbox page.
    server.sell_starter_to_ada("Starter").await;
    let (reference, _) = server.initialize().await;
    let paid = reqwest::Client::new()
        .post(format!("{}/sandbox/checkout/{reference}", server.base))
        .form(&[("action", "pay")])
        .send()
        .await
        .unwrap();
    assert!(paid.status().is_success(), "{}", paid.status());
    let (_, payment) = get(&service, &format!("/v1/payments/{reference}")).await;
    assert_eq!(payment["status"], "succeeded", "{payment}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn usage_and_revenue_by_every_grouping() {
    let server = Server::start().await;
    spend(&server).await;
    let admin = server.client(ADMIN);

    let (status, by_action) = get(&admin, "/v1/reports/usage?group_by=action").await;
    assert_eq!(status, 200, "{by_action}");
    assert_eq!(
        usage_rows(&by_action),
        [
            (json!("gpt"), 3, 15, 5),
            (json!("image"), 2, 25, 3),
            (Value::Null, 1, 5, 0),
        ]
    );
    assert_eq!(by_action["total_credits"], 45);
    assert_eq!(by_action["currency"], "credits");
    let (from, to) = (
        by_action["from"].as_str().unwrap().to_owned(),
        by_action["to"].as_str().unwrap().to_owned(),
    );
    assert!(to.ends_with(":00:00.000Z"), "{to}");

    // The default grouping is by action, and the default window the one it named.
    let path = format!("/v1/reports/usage?from={from}&to={to}");
    let (status, same) = get(&admin, &path).await;
    assert_eq!(status, 200, "{same}");
    assert_eq!(same, by_action);

    let (_, by_user) = get(&admin, "/v1/reports/usage?group_by=user").await;
    assert_eq!(
        usage_rows(&by_user),
        [(json!("ada"), 4, 27, 5), (json!("bob"), 2, 18, 3)]
    );
    assert_eq!(by_user["total_credits"], 45);

    let (_, by_day) = get(&admin, "/v1/reports/usage?group_by=day").await;
    let rows = usage_rows(&by_day);
    assert!(
        (1..=2).contains(&rows.len()),
        "one day (two at midnight): {by_day}"
    );
    assert!(rows[0].0.as_str().unwrap().ends_with("T00:00:00.000Z"));
    assert_eq!(rows.iter().map(|row| row.1).sum::<i64>(), 6);
    assert_eq!(by_day["total_credits"], 45);

    let (_, by_hour) = get(&admin, "/v1/reports/usage?group_by=hour").await;
    let rows = usage_rows(&by_hour);
    assert!((1..=2).contains(&rows.len()), "{by_hour}");
    assert!(rows[0].0.as_str().unwrap().ends_with(":00:00.000Z"));
    assert_eq!(rows.iter().map(|row| row.2).sum::<i64>(), 45);

    // One user, read by the admin or by a service key.
    let (_, ada) = get(&admin, "/v1/reports/usage?group_by=action&user_id=ada").await;
    assert_eq!(
        usage_rows(&ada),
        [
            (json!("gpt"), 2, 12, 4),
            (json!("image"), 1, 10, 1),
            (Value::Null, 1, 5, 0),
        ]
    );
    let service = server.client(SERVICE);
    let (status, bob) = get(&service, "/v1/reports/usage?group_by=user&user_id=bob").await;
    assert_eq!(status, 200, "{bob}");
    assert_eq!(usage_rows(&bob), [(json!("bob"), 2, 18, 3)]);
    assert_eq!(bob["total_credits"], 18);

    // Another wallet currency: nothing spent in it.
    let (status, usd) = get(&admin, "/v1/reports/usage?currency=usd").await;
    assert_eq!(status, 200, "{usd}");
    assert_eq!(usage_rows(&usd), []);
    assert_eq!(
        (usd["currency"].as_str(), usd["total_credits"].as_i64()),
        (Some("usd"), Some(0))
    );

    // A window that ends before anything was spent.
    let (_, empty) = get(
        &admin,
        "/v1/reports/usage?from=2020-01-01T00:00:00Z&to=2020-01-02T00:00:00Z",
    )
    .await;
    assert_eq!(usage_rows(&empty), []);

    // Revenue: the sandbox top-up.
    let (status, by_package) = get(&admin, "/v1/reports/revenue?group_by=package").await;
    assert_eq!(status, 200, "{by_package}");
    assert_eq!(
        by_package["rows"],
        json!([{"key": "starter", "count": 1, "amount_minor": 200_000, "currency": "NGN",
                "credits_sold": 500}])
    );
    let (_, by_currency) = get(&admin, "/v1/reports/revenue?group_by=currency").await;
    assert_eq!(
        by_currency["rows"],
        json!([{"key": "NGN", "count": 1, "amount_minor": 200_000, "currency": "NGN",
                "credits_sold": 500}])
    );
    let (_, by_day) = get(&admin, "/v1/reports/revenue?group_by=day").await;
    let rows = by_day["rows"].as_array().unwrap();
    assert_eq!(rows.len(), 1, "{by_day}");
    assert!(rows[0]["key"].as_str().unwrap().ends_with("T00:00:00.000Z"));
    assert_eq!(rows[0]["amount_minor"], 200_000);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn who_may_read_what() {
    let server = Server::start().await;
    spend(&server).await;
    let service = server.client(SERVICE);

    // A service key reads one user's usage, never the tenant's, never revenue.
    let (status, problem) = get(&service, "/v1/reports/usage?group_by=user").await;
    assert_eq!(status, 403, "{problem}");
    assert_eq!(problem["type"], "https://creditd.dev/problems/forbidden");
    let (status, ada) = get(&service, "/v1/reports/usage?user_id=ada").await;
    assert_eq!(status, 200, "{ada}");
    assert_eq!(ada["total_credits"], 27);
    let (status, problem) = get(&service, "/v1/reports/revenue").await;
    assert_eq!(status, 403, "{problem}");

    // A user that is not the tenant's: 404, whoever asks.
    let (status, problem) = get(&service, "/v1/reports/usage?user_id=nobody").await;
    assert_eq!(status, 404, "{problem}");
    let globex = server.client(GLOBEX);
    let (status, problem) = get(&globex, "/v1/reports/usage?user_id=ada").await;
    assert_eq!(status, 404, "{problem}");
    assert_eq!(
        problem["type"],
        "https://creditd.dev/problems/user-not-found"
    );

    // Another tenant's reports hold none of these numbers.
    let platform = server.client(PLATFORM).in_tenant("globex").unwrap();
    for path in [
        "/v1/reports/usage?group_by=action",
        "/v1/reports/usage?group_by=user",
        "/v1/reports/usage?group_by=hour",
        "/v1/reports/revenue?group_by=package",
    ] {
        let (status, report) = get(&platform, path).await;
        assert_eq!(status, 200, "{path}: {report}");
        assert_eq!(report["rows"], json!([]), "{path}");
    }
    // The platform key in its own tenant sees them.
    let (_, acme) = get(&server.client(PLATFORM), "/v1/reports/usage").await;
    assert_eq!(acme["total_credits"], 45);
    server.stop().await;
}

#[tokio::test]
async fn bad_windows_and_parameters_are_problems() {
    let server = Server::start().await;
    let admin = server.client(ADMIN);
    for (query, slug) in [
        (
            "from=2026-02-02T00:00:00Z&to=2026-02-01T00:00:00Z",
            "invalid-window",
        ),
        (
            "from=2026-02-01T00:00:00Z&to=2026-02-01T00:00:00Z",
            "invalid-window",
        ),
        (
            "from=2026-02-01T00:30:00Z&to=2026-02-02T00:00:00Z",
            "invalid-window",
        ),
        (
            "from=2026-02-01T00:00:00Z&to=2026-02-02T00:00:00.001Z",
            "invalid-window",
        ),
        (
            "from=2016-02-01T00:00:00Z&to=2026-02-01T00:00:00Z",
            "invalid-window",
        ),
        ("from=yesterday", "invalid-request"),
        ("to=2026-02-31T00:00:00Z", "invalid-request"),
        ("group_by=week", "invalid-request"),
        ("currency=not%20one", "invalid-request"),
        ("colour=blue", "invalid-request"),
    ] {
        for report in ["usage", "revenue"] {
            if report == "revenue" && query.starts_with("currency") {
                continue;
            }
            let path = format!("/v1/reports/{report}?{query}");
            let (status, headers, body) = admin.send(Method::GET, &path, None, None).await.unwrap();
            assert_eq!(status, 422, "{path}");
            assert_eq!(
                headers["content-type"], "application/problem+json",
                "{path}"
            );
            let problem: Value = serde_json::from_slice(&body).unwrap();
            assert_eq!(
                problem["type"],
                format!("https://creditd.dev/problems/{slug}"),
                "{path}: {problem}"
            );
        }
    }
    // The detail of an unaligned time names the hours around it.
    let (_, problem) = get(&admin, "/v1/reports/usage?from=2026-02-01T00:30:00Z").await;
    let detail = problem["detail"].as_str().unwrap();
    assert!(
        detail.contains("2026-02-01T00:00:00.000Z") && detail.contains("2026-02-01T01:00:00.000Z"),
        "{detail}"
    );
    assert_eq!(problem["field"], "from");
    server.stop().await;
}

#[tokio::test]
async fn reports_need_the_history() {
    let server = Server::start_with(|config| config.history.enabled = false).await;
    let (status, problem) = get(&server.client(ADMIN), "/v1/reports/usage").await;
    assert_eq!(status, 503, "{problem}");
    assert_eq!(
        problem["type"],
        "https://creditd.dev/problems/history-disabled"
    );
    server.stop().await;
}
