//! Credit pools over HTTP, against a real server whose history follows its log: a pool created,
//! credited (idempotently) and joined by a user with a daily cap; debits, a reservation and its
//! capture that take the wallet first and then the pool, as the answers, the wallet view, the
//! 402, the user's and the pool's ledgers, the usage report per pool and the audit show; who may
//! do what; bad input; and a restart that gives everything back.

use creditd::client::Client;
use http::Method;
use serde_json::{json, Value};

#[path = "common/server.rs"]
mod server;

use server::{config, send_json, Server, ADMIN, GLOBEX, SERVICE};

async fn call(client: &Client, method: Method, path: &str, body: Value) -> (u16, Value) {
    let body = if body.is_null() {
        String::new()
    } else {
        body.to_string()
    };
    send_json(client, method, path, &body).await
}

async fn ok(client: &Client, method: Method, path: &str, body: Value) -> Value {
    let (status, answer) = call(client, method, path, body).await;
    assert!((200..300).contains(&status), "{path}: {status} {answer}");
    answer
}

/// The problem `type`'s slug and the status.
fn problem(answer: &(u16, Value)) -> (u16, &str) {
    let slug = answer.1["type"]
        .as_str()
        .unwrap_or_else(|| panic!("not a problem: {answer:?}"))
        .trim_start_matches("https://creditd.dev/problems/");
    (answer.0, slug)
}

#[tokio::test]
async fn a_member_spends_its_wallet_then_its_pool_and_every_view_says_so() {
    let server = Server::start().await;
    let (admin, service) = (server.client(ADMIN), server.client(SERVICE));

    // The pool, created then renamed; its currency cannot change.
    let (status, pool) = call(
        &admin,
        Method::PUT,
        "/v1/pools/acme-eng",
        json!({"name": "Engineering"}),
    )
    .await;
    assert_eq!(status, 201, "{pool}");
    assert_eq!(pool["balance"], 0);
    assert_eq!(pool["currency"], "credits");
    let (status, _) = call(
        &admin,
        Method::PUT,
        "/v1/pools/acme-eng",
        json!({"name": "Acme engineering"}),
    )
    .await;
    assert_eq!(status, 200);
    let usd = call(
        &admin,
        Method::PUT,
        "/v1/pools/acme-eng",
        json!({"currency": "usd"}),
    )
    .await;
    assert_eq!(problem(&usd), (409, "conflict"));

    // Credited by an admin, with a reason, once per idempotency key.
    let body = json!({"amount": 1000, "reason": "Q3 prepaid", "reference": "PO-2231"}).to_string();
    let (status, headers, bytes) = admin
        .send(
            Method::POST,
            "/v1/pools/acme-eng/credit",
            Some(body.clone().into_bytes()),
            Some("fund-q3"),
        )
        .await
        .unwrap();
    let credited: Value = serde_json::from_slice(&bytes).unwrap();
    assert_eq!(status, 200, "{credited}");
    assert_eq!(
        (credited["amount"].clone(), credited["balance"].clone()),
        (json!(1000), json!(1000))
    );
    assert!(credited["entry_id"].as_str().unwrap().starts_with("ent_"));
    assert!(headers.get("idempotent-replayed").is_none());
    let (_, headers, bytes) = admin
        .send(
            Method::POST,
            "/v1/pools/acme-eng/credit",
            Some(body.into_bytes()),
            Some("fund-q3"),
        )
        .await
        .unwrap();
    assert_eq!(headers.get("idempotent-replayed").unwrap(), "true");
    assert_eq!(serde_json::from_slice::<Value>(&bytes).unwrap(), credited);

    // ada has 30 of her own and may draw 100 a day.
    service.put_user("ada", None).await.unwrap();
    service.credit("ada", 30, None, None).await.unwrap();
    let membership = ok(
        &admin,
        Method::PUT,
        "/v1/users/ada/pool",
        json!({"pool_id": "acme-eng", "daily_cap": 100}),
    )
    .await;
    assert_eq!(
        membership,
        json!({"pool_id": "acme-eng", "currency": "credits", "daily_cap": 100,
               "drawn_today": 0, "available_to_user": 100})
    );

    // The wallet pays its 30, the pool 20.
    let debit = ok(
        &service,
        Method::POST,
        "/v1/users/ada/debit",
        json!({"amount": 50, "description": "batch job"}),
    )
    .await;
    assert_eq!(
        (
            debit["charged"].clone(),
            debit["from_wallet"].clone(),
            debit["from_pool"].clone(),
            debit["balance"].clone()
        ),
        (json!(50), json!(30), json!(20), json!(0))
    );
    let debit_entry = debit["entry_id"].as_str().unwrap().to_owned();
    let wallet = ok(&service, Method::GET, "/v1/users/ada/wallet", Value::Null).await;
    assert_eq!(wallet["pool"]["drawn_today"], 20);
    assert_eq!(wallet["pool"]["available_to_user"], 80);
    assert_eq!(
        (wallet["available"].clone(), wallet["spendable"].clone()),
        (json!(0), json!(80)),
        "what can be spent counts what the pool may still give"
    );
    // Past the cap: a 402 that says what the pool could still give; nothing written.
    let refused = call(
        &service,
        Method::POST,
        "/v1/users/ada/debit",
        json!({"amount": 81}),
    )
    .await;
    assert_eq!(problem(&refused), (402, "insufficient-credits"));
    assert_eq!(refused.1["pool_available"], 80);
    assert_eq!(refused.1["available"], 0);
    assert!(refused.1["topup_url"].is_string());
    // A reservation the pool holds, captured below it: the pool pays what was charged.
    let hold = ok(
        &service,
        Method::POST,
        "/v1/users/ada/reservations",
        json!({"amount": 30}),
    )
    .await;
    assert_eq!(
        (hold["from_wallet"].clone(), hold["from_pool"].clone()),
        (json!(0), json!(30))
    );
    let id = hold["reservation_id"].as_str().unwrap();
    let capture = ok(
        &service,
        Method::POST,
        &format!("/v1/reservations/{id}/capture"),
        json!({"amount": 10}),
    )
    .await;
    assert_eq!(
        (capture["from_pool"].clone(), capture["released"].clone()),
        (json!(10), json!(20))
    );
    // A non-member's answers say the same, with nothing from a pool.
    service.put_user("bob", None).await.unwrap();
    service.credit("bob", 5, None, None).await.unwrap();
    let plain = ok(
        &service,
        Method::POST,
        "/v1/users/bob/debit",
        json!({"amount": 2}),
    )
    .await;
    assert_eq!(
        (plain["from_wallet"].clone(), plain["from_pool"].clone()),
        (json!(2), json!(0))
    );
    let bob_refused = call(
        &service,
        Method::POST,
        "/v1/users/bob/debit",
        json!({"amount": 9}),
    )
    .await;
    assert!(
        bob_refused.1.get("pool_available").is_none(),
        "{bob_refused:?}"
    );

    let pool = ok(&admin, Method::GET, "/v1/pools/acme-eng", Value::Null).await;
    assert_eq!(
        pool,
        json!({"pool_id": "acme-eng", "name": "Acme engineering", "currency": "credits",
               "balance": 970, "reserved": 0, "available": 970, "members": 1, "drawn_today": 30})
    );
    let pools = ok(&admin, Method::GET, "/v1/pools", Value::Null).await;
    assert_eq!(pools["pools"], json!([pool]));
    let members = ok(
        &admin,
        Method::GET,
        "/v1/pools/acme-eng/members",
        Value::Null,
    )
    .await;
    assert_eq!(
        members["members"],
        json!([{"user_id": "ada", "daily_cap": 100, "drawn_today": 30}])
    );

    // The user's ledger has the wallet's part, and the pool's beside it.
    let entries = ok(&service, Method::GET, "/v1/users/ada/entries", Value::Null).await;
    let entry = entries["entries"]
        .as_array()
        .unwrap()
        .iter()
        .find(|entry| entry["entry_id"] == debit_entry.as_str())
        .unwrap_or_else(|| panic!("{entries}"));
    assert_eq!(
        (
            entry["amount"].clone(),
            entry["from_pool"].clone(),
            entry["pool_id"].clone()
        ),
        (json!(-30), json!(20), json!("acme-eng"))
    );
    // The pool's ledger: the credit and the two draws, newest first, summing to its balance.
    let ledger = ok(
        &admin,
        Method::GET,
        "/v1/pools/acme-eng/entries",
        Value::Null,
    )
    .await;
    let moves: Vec<(String, i64, Option<String>)> = ledger["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|entry| {
            (
                entry["kind"].as_str().unwrap().to_owned(),
                entry["amount"].as_i64().unwrap(),
                entry["user_id"].as_str().map(str::to_owned),
            )
        })
        .collect();
    assert_eq!(
        moves,
        [
            ("draw".to_owned(), -10, Some("ada".to_owned())),
            ("draw".to_owned(), -20, Some("ada".to_owned())),
            ("grant".to_owned(), 1000, None),
        ]
    );
    assert_eq!(ledger["entries"][1]["entry_id"], debit_entry.as_str());
    assert_eq!(ledger["entries"][0]["balance_after"], 970);
    let page = ok(
        &admin,
        Method::GET,
        "/v1/pools/acme-eng/entries?limit=2",
        Value::Null,
    )
    .await;
    let cursor = page["next_cursor"].as_str().unwrap().to_owned();
    let rest = ok(
        &admin,
        Method::GET,
        &format!("/v1/pools/acme-eng/entries?cursor={cursor}"),
        Value::Null,
    )
    .await;
    assert_eq!(rest["entries"].as_array().unwrap().len(), 1);

    // The usage report per pool counts what the pool paid, per member; the wallet currency's
    // counts the whole spends.
    let report = ok(
        &admin,
        Method::GET,
        "/v1/reports/usage?pool_id=acme-eng&group_by=user",
        Value::Null,
    )
    .await;
    assert_eq!(
        report["rows"],
        json!([{"key": "ada", "count": 2, "credits": 30, "quantity": 0}])
    );
    assert_eq!(
        (report["total_credits"].clone(), report["currency"].clone()),
        (json!(30), json!("credits"))
    );
    let whole = ok(
        &admin,
        Method::GET,
        "/v1/reports/usage?user_id=ada",
        Value::Null,
    )
    .await;
    assert_eq!(whole["total_credits"], 60);
    let missing = call(
        &admin,
        Method::GET,
        "/v1/reports/usage?pool_id=nope",
        Value::Null,
    )
    .await;
    assert_eq!(problem(&missing), (404, "pool-not-found"));
    let wrong = call(
        &admin,
        Method::GET,
        "/v1/reports/usage?pool_id=acme-eng&currency=usd",
        Value::Null,
    )
    .await;
    assert_eq!(problem(&wrong), (422, "invalid-request"));

    // Every change by hand is audited.
    let audit = ok(&admin, Method::GET, "/v1/audit", Value::Null).await;
    let actions: Vec<&str> = audit["records"]
        .as_array()
        .unwrap()
        .iter()
        .map(|record| record["action"].as_str().unwrap())
        .collect();
    for action in ["pool.put", "pool.credit.grant", "pool.member.set"] {
        assert!(actions.contains(&action), "{action} not in {actions:?}");
    }

    // A restart gives the pool and the membership back.
    let dir = server.stop().await;
    let restarted_config = config(dir.path());
    let server = Server::start_in(dir, restarted_config).await;
    let (admin, service) = (server.client(ADMIN), server.client(SERVICE));
    assert_eq!(
        ok(&admin, Method::GET, "/v1/pools/acme-eng", Value::Null).await,
        pool
    );
    let wallet = ok(&service, Method::GET, "/v1/users/ada/wallet", Value::Null).await;
    assert_eq!(wallet["pool"]["available_to_user"], 70);

    // The membership ends; ada's spends are her wallet's alone again.
    let deleted = ok(&admin, Method::DELETE, "/v1/users/ada/pool", Value::Null).await;
    assert_eq!(deleted, json!({"deleted": true}));
    let gone = call(&admin, Method::DELETE, "/v1/users/ada/pool", Value::Null).await;
    assert_eq!(problem(&gone), (404, "pool-member-not-found"));
    let gone = call(&service, Method::GET, "/v1/users/ada/pool", Value::Null).await;
    assert_eq!(problem(&gone), (404, "pool-member-not-found"));
    let wallet = ok(&service, Method::GET, "/v1/users/ada/wallet", Value::Null).await;
    assert!(wallet.get("pool").is_none(), "{wallet}");
    server.stop().await;
}

#[tokio::test]
async fn pools_are_the_admins_and_bad_input_changes_nothing() {
    let server = Server::start().await;
    let (admin, service) = (server.client(ADMIN), server.client(SERVICE));
    ok(&admin, Method::PUT, "/v1/pools/org", Value::Null).await;
    service.put_user("ada", None).await.unwrap();
    // A service key reads a user's membership, nothing else of pools.
    for (method, path, body) in [
        (Method::GET, "/v1/pools", Value::Null),
        (Method::GET, "/v1/pools/org", Value::Null),
        (Method::PUT, "/v1/pools/org", json!({})),
        (
            Method::POST,
            "/v1/pools/org/credit",
            json!({"amount": 1, "reason": "x"}),
        ),
        (Method::GET, "/v1/pools/org/members", Value::Null),
        (Method::GET, "/v1/pools/org/entries", Value::Null),
        (Method::PUT, "/v1/users/ada/pool", json!({"pool_id": "org"})),
        (Method::DELETE, "/v1/users/ada/pool", Value::Null),
    ] {
        let answer = call(&service, method.clone(), path, body).await;
        assert_eq!(problem(&answer), (403, "forbidden"), "{method} {path}");
    }
    // Another tenant sees none of this tenant's pools or users.
    let globex = server.client(GLOBEX);
    let foreign = call(&globex, Method::GET, "/v1/users/ada/pool", Value::Null).await;
    assert_eq!(problem(&foreign), (404, "user-not-found"));
    // Bad input: a clear problem each time, and the pool stays as it was.
    for (method, path, body, expected) in [
        (
            Method::POST,
            "/v1/pools/org/credit",
            json!({"amount": 5}),
            (422, "invalid-request"),
        ),
        (
            Method::POST,
            "/v1/pools/org/credit",
            json!({"amount": 5, "reason": "  "}),
            (422, "invalid-request"),
        ),
        (
            Method::POST,
            "/v1/pools/org/credit",
            json!({"amount": 0, "reason": "x"}),
            (422, "invalid-request"),
        ),
        (
            Method::POST,
            "/v1/pools/org/credit",
            json!({"amount": 5, "reason": "x", "extra": 1}),
            (422, "invalid-request"),
        ),
        (
            Method::POST,
            "/v1/pools/nope/credit",
            json!({"amount": 5, "reason": "x"}),
            (404, "pool-not-found"),
        ),
        (
            Method::PUT,
            "/v1/pools/bad%2Fid",
            json!({}),
            (422, "invalid-request"),
        ),
        (
            Method::PUT,
            "/v1/pools/org",
            json!({"currency": "not a code"}),
            (422, "invalid-request"),
        ),
        (
            Method::PUT,
            "/v1/users/ada/pool",
            json!({"pool_id": "nope"}),
            (404, "pool-not-found"),
        ),
        (
            Method::PUT,
            "/v1/users/ada/pool",
            json!({"pool_id": "org", "daily_cap": -1}),
            (422, "invalid-request"),
        ),
        (
            Method::PUT,
            "/v1/users/ada/pool",
            json!({"daily_cap": 5}),
            (422, "invalid-request"),
        ),
        (
            Method::PUT,
            "/v1/users/nobody/pool",
            json!({"pool_id": "org"}),
            (404, "user-not-found"),
        ),
        (
            Method::GET,
            "/v1/pools/nope",
            Value::Null,
            (404, "pool-not-found"),
        ),
        (
            Method::GET,
            "/v1/pools/nope/entries",
            Value::Null,
            (404, "pool-not-found"),
        ),
        (
            Method::GET,
            "/v1/pools/org/entries?limit=0",
            Value::Null,
            (422, "invalid-request"),
        ),
        (
            Method::GET,
            "/v1/pools?x=1",
            Value::Null,
            (422, "invalid-request"),
        ),
    ] {
        let answer = call(&admin, method.clone(), path, body).await;
        assert_eq!(problem(&answer), expected, "{method} {path}: {answer:?}");
    }
    let pool = ok(&admin, Method::GET, "/v1/pools/org", Value::Null).await;
    assert_eq!(
        (pool["balance"].clone(), pool["members"].clone()),
        (json!(0), json!(0))
    );
    server.stop().await;
}

/// `creditd loadgen --pool`: every user a member of one pool, its own wallet left empty, so
/// every debit of the run is paid by the pool, exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_load_generator_draws_every_debit_on_the_pool() {
    let server = Server::start().await;
    let options = creditd::loadgen::LoadOptions {
        url: server.base.clone(),
        key: SERVICE.into(),
        connections: 2,
        duration: 1,
        warmup: 0,
        rate: 0,
        users: 5,
        distribution: creditd::loadgen::Distribution::Uniform,
        zipf_exponent: 1.0,
        batch: 1,
        amount: 3,
        idempotency_keys: false,
        skip_setup: false,
        setup_only: false,
        user_prefix: "lgp".into(),
        pool: Some("lg-pool".into()),
        pool_daily_cap: None,
        admin_key: ADMIN.into(),
        mix: Default::default(),
    };
    let report = creditd::loadgen::run(&options).await.unwrap();
    assert!(report.requests > 0, "{}", report.render(&options));
    assert_eq!(
        report.statuses[0],
        report.requests,
        "every debit succeeded: {}",
        report.render(&options)
    );
    let admin = server.client(ADMIN);
    let pool = ok(&admin, Method::GET, "/v1/pools/lg-pool", Value::Null).await;
    assert_eq!(pool["members"], 5);
    let paid = 1_000_000_000_000_000i64 - pool["balance"].as_i64().unwrap();
    assert_eq!(
        paid,
        3 * report.requests as i64,
        "the pool paid every debit"
    );
    let wallet = ok(
        &server.client(SERVICE),
        Method::GET,
        "/v1/users/lgp-0/wallet",
        Value::Null,
    )
    .await;
    assert_eq!(wallet["balance"], 0, "the member's own wallet paid nothing");
    server.stop().await;
}
