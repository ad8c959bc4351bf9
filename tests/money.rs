//! The money semantics a new user walking the API meets, end to end over HTTP: currencies a
//! tenant defines and the 422 for any other, what every 402 says can be spent, chargebacks below
//! the floor repaid by the next top-up (balances, entries and the history agreeing), the daily
//! cap on a service key's grants across a restart, profiles that a login sync cannot wipe, an
//! automatic top-up rule waiting for a card and starting once one is saved, the bootstrap's
//! packages in display order and currency, and reservations listed open or shown closed.

#[path = "common/server.rs"]
mod server;

use std::time::{Duration, Instant};

use creditd::config::{Config, Seconds};
use http::Method;
use serde_json::{json, Value};
use server::{raw, Server, ADMIN, GLOBEX, PLATFORM, SERVICE};

fn slug(body: &Value) -> &str {
    body["type"]
        .as_str()
        .unwrap_or("")
        .rsplit('/')
        .next()
        .unwrap_or("")
}

/// `method path body` with `secret`: the status and the JSON answer.
async fn call(
    server: &Server,
    secret: &str,
    method: Method,
    path: &str,
    body: Value,
) -> (u16, Value) {
    let text = if body.is_null() {
        String::new()
    } else {
        body.to_string()
    };
    raw(&server.client(secret), method, path, &text).await
}

async fn ok(server: &Server, secret: &str, method: Method, path: &str, body: Value) -> Value {
    let (status, answer) = call(server, secret, method.clone(), path, body).await;
    assert!(
        (200..300).contains(&status),
        "{method} {path}: {status} {answer}"
    );
    answer
}

const USD: &str = r#"{"currencies":[{"code":"credits","decimals":0},{"code":"usd","decimals":2}]}"#;

async fn define_usd(server: &Server) -> Value {
    let body: Value = serde_json::from_str(USD).unwrap();
    ok(server, PLATFORM, Method::PUT, "/v1/tenants/acme", body).await
}

#[tokio::test]
async fn a_write_in_a_currency_the_tenant_does_not_have_is_refused_naming_it() {
    let server = Server::start().await;
    ok(&server, SERVICE, Method::PUT, "/v1/users/ada", json!({})).await;
    ok(
        &server,
        ADMIN,
        Method::PUT,
        "/v1/packages/starter",
        json!({"name": "Starter", "credits": 500, "price_minor": 200_000, "price_currency": "NGN"}),
    )
    .await;
    let tenant = ok(
        &server,
        PLATFORM,
        Method::GET,
        "/v1/tenants/acme",
        Value::Null,
    )
    .await;
    assert_eq!(
        (&tenant["currencies"], &tenant["currencies_defined"]),
        (&json!([{"code": "credits", "decimals": 0}]), &json!(false))
    );
    // A mistyped currency is not an empty wallet: every write names it.
    let writes = [
        (
            SERVICE,
            Method::POST,
            "/v1/users/ada/credit",
            json!({"amount": 5, "currency": "usd"}),
        ),
        (
            SERVICE,
            Method::POST,
            "/v1/users/ada/debit",
            json!({"amount": 5, "currency": "usd"}),
        ),
        (
            SERVICE,
            Method::POST,
            "/v1/users/ada/debit",
            json!({"amount": 5, "currency": "usd", "dry_run": true}),
        ),
        (
            SERVICE,
            Method::POST,
            "/v1/users/ada/reservations",
            json!({"amount": 5, "currency": "usd"}),
        ),
        (
            ADMIN,
            Method::POST,
            "/v1/users/ada/revoke",
            json!({"amount": 5, "currency": "usd", "reason": "x"}),
        ),
        (
            ADMIN,
            Method::PUT,
            "/v1/users/ada/overdraft",
            json!({"overdraft_limit": 5, "currency": "usd"}),
        ),
        (
            ADMIN,
            Method::PUT,
            "/v1/actions/gpt",
            json!({"cost": 5, "currency": "usd"}),
        ),
        (
            ADMIN,
            Method::PUT,
            "/v1/packages/dollars",
            json!({"name": "D", "credits": 5, "price_minor": 5, "price_currency": "USD", "currency": "usd"}),
        ),
        (
            ADMIN,
            Method::PUT,
            "/v1/users/ada/auto-topup",
            json!({"threshold": 5, "package_id": "starter", "currency": "usd"}),
        ),
        (
            SERVICE,
            Method::GET,
            "/v1/users/ada/wallet?currency=usd",
            Value::Null,
        ),
        (
            SERVICE,
            Method::GET,
            "/v1/billing/bootstrap/ada?currency=usd",
            Value::Null,
        ),
    ];
    for (secret, method, path, body) in writes {
        let (status, problem) = call(&server, secret, method.clone(), path, body).await;
        assert_eq!(
            (status, slug(&problem), problem["currency"].as_str()),
            (422, "unknown-currency", Some("usd")),
            "{method} {path}: {problem}"
        );
        assert!(
            problem["detail"].as_str().unwrap().contains("usd"),
            "{problem}"
        );
    }
    let (_, problem) = call(
        &server,
        SERVICE,
        Method::POST,
        "/v1/users/ada/credit",
        json!({"amount": 5, "currency": "usd"}),
    )
    .await;
    assert_eq!(problem["currencies"], json!(["credits"]), "{problem}");
    let batch = ok(
        &server,
        SERVICE,
        Method::POST,
        "/v1/debits/batch",
        json!({"debits": [{"user_id": "ada", "amount": 1, "currency": "usd"}]}),
    )
    .await;
    assert_eq!(
        (&batch["results"][0]["status"], slug(&batch["results"][0])),
        (&json!(422), "unknown-currency"),
        "{batch}"
    );
    let user = ok(&server, SERVICE, Method::GET, "/v1/users/ada", Value::Null).await;
    assert_eq!(
        user["wallet"]["balances"].as_array().unwrap().len(),
        1,
        "{user}"
    );

    // Defined: usd with 2 decimals. The name is kept; amounts stay integers in cents.
    ok(
        &server,
        PLATFORM,
        Method::PUT,
        "/v1/tenants/acme",
        json!({"name": "Acme"}),
    )
    .await;
    let tenant = define_usd(&server).await;
    assert_eq!(
        (
            &tenant["name"],
            &tenant["currencies_defined"],
            &tenant["currencies"][1]
        ),
        (
            &json!("Acme"),
            &json!(true),
            &json!({"code": "usd", "decimals": 2})
        ),
        "{tenant}"
    );
    ok(
        &server,
        SERVICE,
        Method::POST,
        "/v1/users/ada/credit",
        json!({"amount": 150, "currency": "usd"}),
    )
    .await;
    let (status, problem) = call(
        &server,
        SERVICE,
        Method::POST,
        "/v1/users/ada/debit",
        json!({"amount": 200, "currency": "usd"}),
    )
    .await;
    assert_eq!(
        (status, slug(&problem)),
        (402, "insufficient-credits"),
        "{problem}"
    );
    assert_eq!(
        (
            &problem["currency"],
            &problem["required"],
            &problem["spendable"],
            &problem["detail"]
        ),
        (
            &json!("usd"),
            &json!(200),
            &json!(150),
            &json!("2.00 usd is required but only 1.50 can be spent")
        ),
        "{problem}"
    );
    assert!(
        problem["topup_url"]
            .as_str()
            .unwrap()
            .ends_with("/v1/billing/bootstrap/ada?currency=usd"),
        "{problem}"
    );
    // Currencies are added, never removed or rescaled; the default one is always there.
    for (body, status, expected) in [
        (
            json!({"currencies": [{"code": "credits", "decimals": 0}]}),
            409,
            "conflict",
        ),
        (
            json!({"currencies": [{"code": "credits", "decimals": 0}, {"code": "usd", "decimals": 3}]}),
            409,
            "conflict",
        ),
        (
            json!({"currencies": [{"code": "usd", "decimals": 2}]}),
            422,
            "invalid-request",
        ),
        (
            json!({"currencies": [{"code": "credits", "decimals": 0}, {"code": "credits", "decimals": 0}]}),
            422,
            "invalid-request",
        ),
        (
            json!({"currencies": [{"code": "credits", "decimals": 19}]}),
            422,
            "invalid-request",
        ),
        (
            json!({"currencies": [{"code": "not a code", "decimals": 0}]}),
            422,
            "invalid-request",
        ),
    ] {
        let (got, problem) = call(
            &server,
            PLATFORM,
            Method::PUT,
            "/v1/tenants/acme",
            body.clone(),
        )
        .await;
        assert_eq!(
            (got, slug(&problem)),
            (status, expected),
            "{body}: {problem}"
        );
    }
    // They survive a restart.
    let dir = server.stop().await;
    let config = server::config(dir.path());
    let server = Server::start_in(dir, config).await;
    let tenant = ok(
        &server,
        PLATFORM,
        Method::GET,
        "/v1/tenants/acme",
        Value::Null,
    )
    .await;
    assert_eq!(
        tenant["currencies"][1],
        json!({"code": "usd", "decimals": 2}),
        "{tenant}"
    );
    let wallet = ok(
        &server,
        SERVICE,
        Method::GET,
        "/v1/users/ada/wallet?currency=usd",
        Value::Null,
    )
    .await;
    assert_eq!(wallet["balance"], 150, "{wallet}");
    server.stop().await;
}

#[tokio::test]
async fn every_402_says_what_can_be_spent_in_the_singular_and_with_an_overdraft() {
    let server = Server::start().await;
    for user in ["ada", "bob"] {
        ok(
            &server,
            SERVICE,
            Method::PUT,
            &format!("/v1/users/{user}"),
            json!({}),
        )
        .await;
    }
    ok(
        &server,
        SERVICE,
        Method::POST,
        "/v1/users/ada/credit",
        json!({"amount": 10}),
    )
    .await;
    ok(
        &server,
        ADMIN,
        Method::PUT,
        "/v1/users/ada/overdraft",
        json!({"overdraft_limit": 20}),
    )
    .await;
    ok(
        &server,
        SERVICE,
        Method::POST,
        "/v1/users/ada/debit",
        json!({"amount": 21}),
    )
    .await;
    let wallet = ok(
        &server,
        SERVICE,
        Method::GET,
        "/v1/users/ada/wallet",
        Value::Null,
    )
    .await;
    assert_eq!(
        (
            &wallet["available"],
            &wallet["overdraft_limit"],
            &wallet["spendable"],
            &wallet["balances"][0]["spendable"]
        ),
        (&json!(-11), &json!(20), &json!(9), &json!(9)),
        "{wallet}"
    );
    let detail = "50 credits are required but only 9 can be spent (-11 available, with an overdraft limit of 20)";
    for (path, body) in [
        ("/v1/users/ada/debit", json!({"amount": 50})),
        (
            "/v1/users/ada/debit",
            json!({"amount": 50, "dry_run": true}),
        ),
        ("/v1/users/ada/reservations", json!({"amount": 50})),
    ] {
        let (status, problem) = call(&server, SERVICE, Method::POST, path, body).await;
        assert_eq!(status, 402, "{problem}");
        assert_eq!(
            (
                &problem["detail"],
                &problem["currency"],
                &problem["available"],
                &problem["spendable"],
                &problem["required"],
                &problem["overdraft_limit"]
            ),
            (
                &json!(detail),
                &json!("credits"),
                &json!(-11),
                &json!(9),
                &json!(50),
                &json!(20)
            ),
            "{path}: {problem}"
        );
    }
    let batch = ok(
        &server,
        SERVICE,
        Method::POST,
        "/v1/debits/batch",
        json!({"debits": [{"user_id": "ada", "amount": 50}]}),
    )
    .await;
    assert_eq!(batch["results"][0]["detail"], detail, "{batch}");
    let (status, problem) = call(
        &server,
        SERVICE,
        Method::POST,
        "/v1/users/bob/debit",
        json!({"amount": 1}),
    )
    .await;
    assert_eq!(
        (status, problem["detail"].as_str()),
        (402, Some("1 credit is required but nothing can be spent")),
        "{problem}"
    );
    ok(
        &server,
        SERVICE,
        Method::POST,
        "/v1/users/bob/credit",
        json!({"amount": 1}),
    )
    .await;
    let (_, problem) = call(
        &server,
        SERVICE,
        Method::POST,
        "/v1/users/bob/debit",
        json!({"amount": 2}),
    )
    .await;
    assert_eq!(
        problem["detail"], "2 credits are required but only 1 can be spent",
        "{problem}"
    );
    server.stop().await;
}

#[tokio::test]
async fn a_chargeback_goes_below_the_floor_and_the_next_top_up_repays_it_first() {
    let server = Server::start().await;
    server.sell_starter_to_ada("Starter").await;
    ok(
        &server,
        SERVICE,
        Method::POST,
        "/v1/users/ada/credit",
        json!({"amount": 100}),
    )
    .await;
    let hold = ok(
        &server,
        SERVICE,
        Method::POST,
        "/v1/users/ada/reservations",
        json!({"amount": 20}),
    )
    .await;
    let (status, problem) = call(
        &server,
        ADMIN,
        Method::POST,
        "/v1/users/ada/revoke",
        json!({"amount": 200, "reason": "charged back"}),
    )
    .await;
    assert_eq!(status, 402, "a plain revoke keeps to the floor: {problem}");
    let chargeback = ok(
        &server,
        ADMIN,
        Method::POST,
        "/v1/users/ada/revoke",
        json!({"amount": 200, "reason": "charged back", "allow_negative": true}),
    )
    .await;
    assert_eq!(
        (
            &chargeback["kind"],
            &chargeback["balance"],
            &chargeback["available"]
        ),
        (&json!("chargeback"), &json!(-100), &json!(-120)),
        "{chargeback}"
    );
    let (status, problem) = call(
        &server,
        SERVICE,
        Method::POST,
        "/v1/users/ada/debit",
        json!({"amount": 1}),
    )
    .await;
    assert_eq!(
        (status, problem["detail"].as_str()),
        (
            402,
            Some("1 credit is required but nothing can be spent (-120 available)")
        ),
        "{problem}"
    );
    // The hold can still be captured within what it holds.
    let id = hold["reservation_id"].as_str().unwrap();
    ok(
        &server,
        SERVICE,
        Method::POST,
        &format!("/v1/reservations/{id}/capture"),
        json!({"amount": 15}),
    )
    .await;
    // A top-up of 500 repays the 115 of debt first.
    let (reference, _) = server.initialize().await;
    let pay = reqwest::Client::new()
        .post(format!("{}/sandbox/checkout/{reference}", server.base))
        .form(&[("action", "pay")])
        .send()
        .await
        .unwrap();
    assert!(pay.status().is_success() || pay.status().is_redirection());
    let wallet = ok(
        &server,
        SERVICE,
        Method::GET,
        "/v1/users/ada/wallet",
        Value::Null,
    )
    .await;
    assert_eq!(
        (
            &wallet["balance"],
            &wallet["available"],
            &wallet["spendable"]
        ),
        (&json!(385), &json!(385), &json!(385)),
        "{wallet}"
    );
    // The ledger agrees with the wallet: kinds in order, each balance the one before plus its
    // amount.
    let (entries, status) = wait_for_entries(&server, 4).await;
    assert_eq!(status, 200);
    let kinds: Vec<&str> = entries
        .iter()
        .rev()
        .map(|e| e["kind"].as_str().unwrap())
        .collect();
    assert_eq!(
        kinds,
        ["grant", "chargeback", "capture", "topup"],
        "{entries:?}"
    );
    let mut balance = 0;
    for entry in entries.iter().rev() {
        balance += entry["amount"].as_i64().unwrap();
        assert_eq!(entry["balance_after"], balance, "{entry}");
    }
    assert_eq!(balance, 385);
    assert_eq!(entries[2]["actor"], "acme-admin");
    let audit = ok(&server, ADMIN, Method::GET, "/v1/audit", Value::Null).await;
    let actions: Vec<&str> = audit["records"]
        .as_array()
        .unwrap()
        .iter()
        .map(|record| record["action"].as_str().unwrap())
        .collect();
    assert!(actions.contains(&"wallet.chargeback"), "{actions:?}");
    // A restart rebuilds the same wallet (recovery checks the invariants, debt marks included).
    let dir = server.stop().await;
    let config = server::config(dir.path());
    let server = Server::start_in(dir, config).await;
    let wallet = ok(
        &server,
        SERVICE,
        Method::GET,
        "/v1/users/ada/wallet",
        Value::Null,
    )
    .await;
    assert_eq!(wallet["balance"], 385, "{wallet}");
    server.stop().await;
}

/// `ada`'s entries that move the balance, newest first, once the history holds `count` of them.
async fn wait_for_entries(server: &Server, count: usize) -> (Vec<Value>, u16) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (status, body) = call(
            server,
            SERVICE,
            Method::GET,
            "/v1/users/ada/entries",
            Value::Null,
        )
        .await;
        let entries = body["entries"].as_array().cloned().unwrap_or_default();
        // The release of a hold moves no balance and has no balance_after: left out.
        let moved: Vec<Value> = entries
            .into_iter()
            .filter(|entry| !entry["balance_after"].is_null())
            .collect();
        if moved.len() >= count || Instant::now() > deadline {
            return (moved, status);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn small_grant_cap(config: &mut Config) {
    config.limits.service_key_grants_per_day = 100;
}

#[tokio::test]
async fn a_service_key_grants_at_most_its_daily_cap_even_after_a_restart() {
    let server = Server::start_with(small_grant_cap).await;
    ok(&server, SERVICE, Method::PUT, "/v1/users/ada", json!({})).await;
    ok(
        &server,
        SERVICE,
        Method::POST,
        "/v1/users/ada/credit",
        json!({"amount": 60}),
    )
    .await;
    ok(
        &server,
        SERVICE,
        Method::POST,
        "/v1/users/ada/credit",
        json!({"amount": 40}),
    )
    .await;
    let (status, problem) = call(
        &server,
        SERVICE,
        Method::POST,
        "/v1/users/ada/credit",
        json!({"amount": 1}),
    )
    .await;
    assert_eq!(
        (status, slug(&problem)),
        (403, "grant-cap-exceeded"),
        "{problem}"
    );
    assert_eq!(
        (
            &problem["cap"],
            &problem["granted_today"],
            &problem["requested"],
            &problem["currency"]
        ),
        (&json!(100), &json!(100), &json!(1), &json!("credits")),
        "{problem}"
    );
    // Admin grants are not capped, and still need a reason.
    let (status, _) = call(
        &server,
        ADMIN,
        Method::POST,
        "/v1/users/ada/credit",
        json!({"amount": 1000}),
    )
    .await;
    assert_eq!(status, 422);
    ok(
        &server,
        ADMIN,
        Method::POST,
        "/v1/users/ada/credit",
        json!({"amount": 1000, "reason": "goodwill"}),
    )
    .await;
    // Another tenant's service key has its own day.
    ok(&server, GLOBEX, Method::PUT, "/v1/users/ada", json!({})).await;
    ok(
        &server,
        GLOBEX,
        Method::POST,
        "/v1/users/ada/credit",
        json!({"amount": 100}),
    )
    .await;
    // The cap is derived from the log: a restart does not give it back.
    let dir = server.stop().await;
    let mut config = server::config(dir.path());
    small_grant_cap(&mut config);
    let server = Server::start_in(dir, config).await;
    let (status, problem) = call(
        &server,
        SERVICE,
        Method::POST,
        "/v1/users/ada/credit",
        json!({"amount": 1}),
    )
    .await;
    assert_eq!(
        (status, &problem["granted_today"]),
        (403, &json!(100)),
        "{problem}"
    );
    let wallet = ok(
        &server,
        SERVICE,
        Method::GET,
        "/v1/users/ada/wallet",
        Value::Null,
    )
    .await;
    assert_eq!(wallet["balance"], 1100);
    server.stop().await;
}

#[tokio::test]
async fn a_login_sync_never_wipes_a_profile_and_patch_merges() {
    let server = Server::start().await;
    let created = ok(&server, SERVICE, Method::PUT, "/v1/users/ada", json!({"email": "ada@example.com", "name": "Ada", "metadata": {"plan": "free", "seats": 2}})).await;
    assert_eq!(created["name"], "Ada");
    // What a sync at each login sends: the address alone.
    let synced = ok(
        &server,
        SERVICE,
        Method::PUT,
        "/v1/users/ada",
        json!({"email": "ada@new.example"}),
    )
    .await;
    assert_eq!(
        (&synced["email"], &synced["name"], &synced["metadata"]),
        (
            &json!("ada@new.example"),
            &json!("Ada"),
            &json!({"plan": "free", "seats": 2})
        ),
        "{synced}"
    );
    let patched = ok(
        &server,
        SERVICE,
        Method::PATCH,
        "/v1/users/ada",
        json!({"metadata": {"plan": "pro", "seats": null}}),
    )
    .await;
    assert_eq!(
        (&patched["name"], &patched["metadata"]),
        (&json!("Ada"), &json!({"plan": "pro"})),
        "{patched}"
    );
    let patched = ok(
        &server,
        SERVICE,
        Method::PATCH,
        "/v1/users/ada",
        json!({"name": null}),
    )
    .await;
    assert_eq!(
        (&patched["name"], &patched["email"]),
        (&Value::Null, &json!("ada@new.example"))
    );
    // PUT replaces the metadata document it is given.
    let put = ok(
        &server,
        SERVICE,
        Method::PUT,
        "/v1/users/ada",
        json!({"metadata": {"x": 1}}),
    )
    .await;
    assert_eq!(put["metadata"], json!({"x": 1}));
    // An address that is set must be one; PATCH does not create users.
    let (status, problem) = call(
        &server,
        SERVICE,
        Method::PATCH,
        "/v1/users/ada",
        json!({"email": "not an address"}),
    )
    .await;
    assert_eq!(
        (status, problem["field"].as_str()),
        (422, Some("email")),
        "{problem}"
    );
    let (status, problem) = call(
        &server,
        SERVICE,
        Method::PATCH,
        "/v1/users/bob",
        json!({"name": "Bob"}),
    )
    .await;
    assert_eq!(
        (status, slug(&problem)),
        (404, "user-not-found"),
        "{problem}"
    );
    let user = ok(&server, SERVICE, Method::GET, "/v1/users/ada", Value::Null).await;
    assert_eq!(user["email"], "ada@new.example");
    let (status, _) = call(
        &server,
        SERVICE,
        Method::DELETE,
        "/v1/users/ada",
        Value::Null,
    )
    .await;
    assert_eq!(status, 405);
    server.stop().await;
}

fn slow_sweep(config: &mut Config) {
    // The card's arrival, not the sweep, must start the rule.
    config.payments.autotopup.sweep_every = Seconds(3600);
}

#[tokio::test]
async fn a_rule_without_a_card_waits_visibly_and_starts_once_one_is_saved() {
    let server = Server::start_with(slow_sweep).await;
    server.sell_starter_to_ada("Starter").await;
    let rule = ok(
        &server,
        ADMIN,
        Method::PUT,
        "/v1/users/ada/auto-topup",
        json!({"threshold": 1000, "package_id": "starter"}),
    )
    .await;
    assert_eq!(
        (&rule["state"], &rule["enabled"]),
        (&json!("needs_payment_method"), &json!(true)),
        "{rule}"
    );
    let wallet = ok(
        &server,
        SERVICE,
        Method::GET,
        "/v1/users/ada/wallet",
        Value::Null,
    )
    .await;
    assert_eq!(
        wallet["auto_topup"]["state"], "needs_payment_method",
        "{wallet}"
    );
    // The first checkout saves the card: 500 credits, still under 1000, so the rule charges it.
    let (reference, _) = server.initialize().await;
    reqwest::Client::new()
        .post(format!("{}/sandbox/checkout/{reference}", server.base))
        .form(&[("action", "pay")])
        .send()
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let wallet = ok(
            &server,
            SERVICE,
            Method::GET,
            "/v1/users/ada/wallet",
            Value::Null,
        )
        .await;
        if wallet["balance"] == 1000 {
            assert_eq!(wallet["auto_topup"]["state"], "active", "{wallet}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the rule did not start: {wallet}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let switched_off = ok(
        &server,
        ADMIN,
        Method::PUT,
        "/v1/users/ada/auto-topup",
        json!({"enabled": false}),
    )
    .await;
    assert_eq!(switched_off["state"], "disabled");
    server.stop().await;
}

#[tokio::test]
async fn bootstrap_shows_packages_in_position_order_and_in_the_asked_currency() {
    let server = Server::start().await;
    define_usd(&server).await;
    ok(&server, SERVICE, Method::PUT, "/v1/users/ada", json!({})).await;
    for (id, credits, currency, position, active) in [
        ("a-big", 5000, "credits", 2, true),
        ("b-small", 500, "credits", 1, true),
        ("c-dollars", 1000, "usd", 0, true),
        ("d-gone", 100, "credits", 0, false),
    ] {
        let body = json!({"name": id, "credits": credits, "currency": currency, "price_minor": 100, "price_currency": "NGN", "position": position, "active": active});
        let package = ok(
            &server,
            ADMIN,
            Method::PUT,
            &format!("/v1/packages/{id}"),
            body,
        )
        .await;
        assert_eq!(package["position"], position);
    }
    ok(
        &server,
        ADMIN,
        Method::PUT,
        "/v1/actions/gpt",
        json!({"cost": 3}),
    )
    .await;
    ok(
        &server,
        ADMIN,
        Method::PUT,
        "/v1/actions/call",
        json!({"cost": 5, "currency": "usd"}),
    )
    .await;
    let ids = |bootstrap: &Value| -> Vec<String> {
        bootstrap["available_packages"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["package_id"].as_str().unwrap().to_owned())
            .collect()
    };
    let all = ok(
        &server,
        SERVICE,
        Method::GET,
        "/v1/billing/bootstrap/ada",
        Value::Null,
    )
    .await;
    assert_eq!(ids(&all), ["c-dollars", "b-small", "a-big"], "{all}");
    assert_eq!(all["wallet"]["currency"], "credits");
    let usd = ok(
        &server,
        SERVICE,
        Method::GET,
        "/v1/billing/bootstrap/ada?currency=usd",
        Value::Null,
    )
    .await;
    assert_eq!(ids(&usd), ["c-dollars"], "{usd}");
    assert_eq!(
        (&usd["wallet"]["currency"], &usd["actions"][0]["action"]),
        (&json!("usd"), &json!("call"))
    );
    assert_eq!(usd["actions"].as_array().unwrap().len(), 1);
    let credits = ok(
        &server,
        SERVICE,
        Method::GET,
        "/v1/billing/bootstrap/ada?currency=credits",
        Value::Null,
    )
    .await;
    assert_eq!(ids(&credits), ["b-small", "a-big"], "{credits}");
    let list = ok(&server, SERVICE, Method::GET, "/v1/packages", Value::Null).await;
    assert_eq!(list["packages"][0]["package_id"], "c-dollars", "{list}");
    let (status, _) = call(
        &server,
        SERVICE,
        Method::GET,
        "/v1/billing/bootstrap/ada?currency=eur",
        Value::Null,
    )
    .await;
    assert_eq!(status, 422);
    server.stop().await;
}

#[tokio::test]
async fn open_reservations_are_listed_and_a_closed_one_keeps_its_amount() {
    let server = Server::start().await;
    ok(&server, SERVICE, Method::PUT, "/v1/users/ada", json!({})).await;
    ok(
        &server,
        SERVICE,
        Method::POST,
        "/v1/users/ada/credit",
        json!({"amount": 100}),
    )
    .await;
    let mut ids = Vec::new();
    for amount in [20, 10, 30] {
        let hold = ok(
            &server,
            SERVICE,
            Method::POST,
            "/v1/users/ada/reservations",
            json!({"amount": amount}),
        )
        .await;
        ids.push(hold["reservation_id"].as_str().unwrap().to_owned());
    }
    ok(
        &server,
        SERVICE,
        Method::POST,
        &format!("/v1/reservations/{}/capture", ids[0]),
        json!({"amount": 5}),
    )
    .await;
    ok(
        &server,
        SERVICE,
        Method::POST,
        &format!("/v1/reservations/{}/release", ids[1]),
        Value::Null,
    )
    .await;
    check_reservations(&server, &ids).await;
    let dir = server.stop().await;
    let config = server::config(dir.path());
    let server = Server::start_in(dir, config).await;
    check_reservations(&server, &ids).await;
    let (status, problem) = call(
        &server,
        SERVICE,
        Method::GET,
        "/v1/users/nobody/reservations",
        Value::Null,
    )
    .await;
    assert_eq!((status, slug(&problem)), (404, "user-not-found"));
    let (status, _) = call(
        &server,
        SERVICE,
        Method::GET,
        "/v1/users/ada/reservations?state=closed",
        Value::Null,
    )
    .await;
    assert!(status == 400 || status == 422, "{status}");
    server.stop().await;
}

/// The first of `ids` captured (5 of 20), the second released (10), the third open (30).
async fn check_reservations(server: &Server, ids: &[String]) {
    let captured = ok(
        server,
        SERVICE,
        Method::GET,
        &format!("/v1/reservations/{}", ids[0]),
        Value::Null,
    )
    .await;
    assert_eq!(
        (
            &captured["state"],
            &captured["amount"],
            &captured["currency"]
        ),
        (&json!("captured"), &json!(20), &json!("credits")),
        "{captured}"
    );
    let released = ok(
        server,
        SERVICE,
        Method::GET,
        &format!("/v1/reservations/{}", ids[1]),
        Value::Null,
    )
    .await;
    assert_eq!(
        (&released["state"], &released["amount"]),
        (&json!("released"), &json!(10))
    );
    let list = ok(
        server,
        SERVICE,
        Method::GET,
        "/v1/users/ada/reservations",
        Value::Null,
    )
    .await;
    let open = list["reservations"].as_array().unwrap();
    assert_eq!(open.len(), 1, "{list}");
    assert_eq!(
        (
            &open[0]["reservation_id"],
            &open[0]["amount"],
            &open[0]["state"]
        ),
        (&json!(ids[2]), &json!(30), &json!("open"))
    );
    assert!(open[0]["expires_at"].is_string());
}
