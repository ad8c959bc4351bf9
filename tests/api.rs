//! Black-box tests of the HTTP API: real servers on 127.0.0.1:0, spoken to over TCP with the typed
//! client and with raw requests.

use std::sync::Arc;
use std::time::Duration;

use creditd::client::{BatchDebit, Client, ClientError, Debit, RetryPolicy};
use creditd::config::Config;
use creditd::engine::{Engine, EngineOptions, SystemClock};
use creditd::wal::memory::{FaultPoint, FaultyStorage};
use creditd::wal::FsStorage;
use http::Method;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[path = "common/server.rs"]
mod server;

use server::{raw, Server, ADMIN, GLOBEX, PLATFORM, SERVICE};

/// Short read timeouts and a small body limit, so that the tests reach them.
fn limits(config: &mut Config) {
    config.server.header_read_timeout_seconds = 1;
    config.server.body_read_timeout_seconds = 1;
    config.server.max_body_bytes = 64 * 1024;
}

fn slug(body: &Value) -> &str {
    body["type"]
        .as_str()
        .unwrap_or("")
        .rsplit('/')
        .next()
        .unwrap_or("")
}

#[tokio::test]
async fn the_seed_flow_end_to_end() {
    let server = Server::start_with(limits).await;
    let service = server.client(SERVICE);
    let admin = server.client(ADMIN);
    let user = service
        .put_user("user-1", Some("ada@example.com"))
        .await
        .unwrap();
    assert_eq!(user.wallet.balance, 0);
    assert_eq!(user.wallet.status, "empty");
    let welcome = service.credit("user-1", 20, None, None).await.unwrap();
    assert_eq!((welcome.amount, welcome.balance), (20, 20));
    let debit = service
        .debit("user-1", &Debit::amount(5), None)
        .await
        .unwrap();
    assert_eq!((debit.charged, debit.balance, debit.available), (5, 15, 15));
    assert!(debit.entry_id.unwrap().starts_with("ent_"));
    admin
        .put_package("starter", "Starter", 500, 200_000, "NGN")
        .await
        .unwrap();
    admin
        .put_package("old", "Old", 10, 100, "NGN")
        .await
        .unwrap();
    raw(
        &admin,
        Method::PUT,
        "/v1/packages/old",
        r#"{"name":"Old","credits":10,"price_minor":100,"price_currency":"NGN","active":false}"#,
    )
    .await;
    let bootstrap = service.bootstrap("user-1").await.unwrap();
    let packages = bootstrap["available_packages"].as_array().unwrap();
    assert_eq!(packages.len(), 1, "only active packages: {bootstrap}");
    assert_eq!(packages[0]["package_id"], "starter");
    assert_eq!(bootstrap["wallet"]["balance"], 15);
    match service.debit("user-1", &Debit::amount(100), None).await {
        Err(ClientError::InsufficientCredits {
            balance,
            available,
            required,
            topup_url,
            ..
        }) => {
            assert_eq!((balance, available, required), (15, 15, 100));
            assert_eq!(
                topup_url,
                format!("{}/v1/billing/bootstrap/user-1", server.base)
            );
        }
        other => panic!("expected 402, got {other:?}"),
    }
    assert_eq!(service.wallet("user-1", None).await.unwrap().balance, 15);
    server.stop().await;
}

#[tokio::test]
async fn every_error_status_is_problem_json() {
    let server = Server::start_with(limits).await;
    let service = server.client(SERVICE);
    let admin = server.client(ADMIN);
    service.put_user("u", None).await.unwrap();
    service.credit("u", 10, None, None).await.unwrap();

    let nobody = Client::new(&server.base, "not-a-key-at-all-xxxx").unwrap();
    let (status, body) = raw(&nobody, Method::GET, "/v1/users/u/wallet", "").await;
    assert_eq!((status, slug(&body)), (401, "unauthorized"));
    let (status, _, _) = reqwest_like(
        &server.base,
        "GET /v1/users/u/wallet HTTP/1.1\r\nHost: x\r\n\r\n",
    )
    .await;
    assert_eq!(status, 401, "no Authorization header");

    let (status, body) = raw(&service, Method::PUT, "/v1/actions/search", r#"{"cost":1}"#).await;
    assert_eq!((status, slug(&body)), (403, "forbidden"));
    let (status, body) = raw(&admin, Method::PUT, "/v1/tenants/new", "{}").await;
    assert_eq!((status, slug(&body)), (403, "forbidden"));

    let (status, body) = raw(
        &service,
        Method::POST,
        "/v1/users/ghost/debit",
        r#"{"amount":1}"#,
    )
    .await;
    assert_eq!((status, slug(&body)), (404, "user-not-found"));
    let (status, body) = raw(&service, Method::GET, "/v1/nothing/here", "").await;
    assert_eq!((status, slug(&body)), (404, "not-found"));
    let (status, body) = raw(
        &service,
        Method::POST,
        "/v1/reservations/rsv_999/capture",
        "{}",
    )
    .await;
    assert_eq!((status, slug(&body)), (404, "reservation-not-found"));
    let (status, body) = raw(
        &service,
        Method::POST,
        "/v1/reservations/banana/release",
        "",
    )
    .await;
    assert_eq!((status, slug(&body)), (404, "reservation-not-found"));
    let (status, body) = raw(&service, Method::DELETE, "/v1/users/u", "").await;
    assert_eq!((status, slug(&body)), (405, "method-not-allowed"));

    let (status, body) = raw(
        &service,
        Method::POST,
        "/v1/users/u/debit",
        r#"{"amount":11}"#,
    )
    .await;
    assert_eq!((status, slug(&body)), (402, "insufficient-credits"));

    let reservation = service.reserve("u", 2, None, None).await.unwrap();
    let id = reservation.reservation_id.unwrap();
    service.release(&id).await.unwrap();
    let (status, body) = raw(
        &service,
        Method::POST,
        &format!("/v1/reservations/{id}/capture"),
        "{}",
    )
    .await;
    assert_eq!((status, slug(&body)), (409, "reservation-closed"));
    assert_eq!(body["closed_as"], "released");

    for (body, expected) in [
        (r#"{"amount":0}"#, "invalid-request"),
        (r#"{"amount":-3}"#, "invalid-request"),
        (r#"{"amount":1.5}"#, "invalid-request"),
        (r#"{"amount":"7"}"#, "invalid-request"),
        (r#"{"amount":1,"action":"x"}"#, "invalid-request"),
        (r#"{}"#, "invalid-request"),
        (r#"{"ammount":1}"#, "invalid-request"),
        (r#"{"action":"no-such-action"}"#, "unknown-action"),
        (r#"{"amount":9223372036854775807}"#, "invalid-request"),
        (
            r#"{"amount":1,"currency":"not a currency"}"#,
            "invalid-request",
        ),
    ] {
        let (status, problem) = raw(&service, Method::POST, "/v1/users/u/debit", body).await;
        assert_eq!(
            (status, slug(&problem)),
            (422, expected),
            "{body}: {problem}"
        );
    }
    for body in ["{", "not json", "[1,2", "\u{0}"] {
        let (status, problem) = raw(&service, Method::POST, "/v1/users/u/debit", body).await;
        assert_eq!(
            (status, slug(&problem)),
            (400, "malformed-request"),
            "{body:?}"
        );
    }
    let key = Some("same-key");
    service.debit("u", &Debit::amount(1), key).await.unwrap();
    let reused = service
        .debit("u", &Debit::amount(2), key)
        .await
        .unwrap_err();
    assert_eq!(
        (reused.status(), reused.slug()),
        (Some(422), Some("idempotency-key-reused"))
    );

    let huge = format!(
        r#"{{"amount":1,"description":"{}"}}"#,
        "x".repeat(100 * 1024)
    );
    let (status, problem) = raw(&service, Method::POST, "/v1/users/u/debit", &huge).await;
    assert_eq!((status, slug(&problem)), (413, "payload-too-large"));

    // Nothing above changed the balance except the one keyed debit.
    assert_eq!(service.wallet("u", None).await.unwrap().balance, 9);
    server.stop().await;
}

/// Sends raw bytes over a fresh TCP connection; returns status, headers text and body.
async fn reqwest_like(base: &str, request: &str) -> (u16, String, String) {
    let address = base.trim_start_matches("http://");
    let mut stream = tokio::net::TcpStream::connect(address).await.unwrap();
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(3), async {
        let mut buffer = [0u8; 4096];
        loop {
            match stream.read(&mut buffer).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    answer.extend_from_slice(&buffer[..n]);
                    let text = String::from_utf8_lossy(&answer);
                    if let Some((head, body)) = text.split_once("\r\n\r\n") {
                        let length = head.lines().find_map(|l| {
                            l.to_ascii_lowercase()
                                .strip_prefix("content-length: ")
                                .map(|v| v.trim().parse::<usize>().unwrap_or(0))
                        });
                        if length.is_some_and(|length| body.len() >= length) {
                            break;
                        }
                    }
                }
            }
        }
    })
    .await;
    let text = String::from_utf8_lossy(&answer).into_owned();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    (status, head.to_owned(), body.to_owned())
}

#[tokio::test]
async fn tenants_are_isolated() {
    let server = Server::start_with(limits).await;
    let acme = server.client(SERVICE);
    let globex = server.client(GLOBEX);
    acme.put_user("shared", None).await.unwrap();
    acme.credit("shared", 50, None, None).await.unwrap();
    let hold = acme
        .reserve("shared", 5, None, None)
        .await
        .unwrap()
        .reservation_id
        .unwrap();
    // Globex cannot see or touch Acme's user or reservation: they are absent for it.
    assert_eq!(
        globex.wallet("shared", None).await.unwrap_err().slug(),
        Some("user-not-found")
    );
    assert_eq!(
        globex
            .debit("shared", &Debit::amount(1), None)
            .await
            .unwrap_err()
            .slug(),
        Some("user-not-found")
    );
    assert_eq!(
        globex.capture(&hold, None, None).await.unwrap_err().slug(),
        Some("reservation-not-found")
    );
    // The same id in Globex is a different user.
    globex.put_user("shared", None).await.unwrap();
    assert_eq!(globex.wallet("shared", None).await.unwrap().balance, 0);
    // A service key may not switch tenants; a platform key may.
    let sneaky = acme.in_tenant("globex").unwrap();
    assert_eq!(
        sneaky.wallet("shared", None).await.unwrap_err().status(),
        Some(403)
    );
    let platform = server.client(PLATFORM);
    platform
        .put_tenant("initech", Some("Initech"))
        .await
        .unwrap();
    let in_globex = platform.in_tenant("globex").unwrap();
    assert_eq!(in_globex.wallet("shared", None).await.unwrap().balance, 0);
    assert_eq!(
        platform
            .in_tenant("nope")
            .unwrap()
            .wallet("x", None)
            .await
            .unwrap_err()
            .slug(),
        Some("tenant-not-found")
    );
    assert_eq!(acme.wallet("shared", None).await.unwrap().available, 45);
    let (status, tenants) = raw(&platform, Method::GET, "/v1/tenants", "").await;
    assert_eq!(status, 200);
    let ids: Vec<&str> = tenants["tenants"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["tenant_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, vec!["acme", "globex", "initech"]);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_concurrent_debits_on_fifty_credits() {
    let server = Server::start_with(limits).await;
    let service = server.client(SERVICE);
    service.put_user("hot", None).await.unwrap();
    service.credit("hot", 50, None, None).await.unwrap();
    let mut tasks = Vec::new();
    for i in 0..100 {
        let client = service.clone();
        tasks.push(tokio::spawn(async move {
            client
                .debit("hot", &Debit::amount(1), Some(&format!("d-{i}")))
                .await
        }));
    }
    let mut ok = 0;
    let mut refused = 0;
    for task in tasks {
        match task.await.unwrap() {
            Ok(_) => ok += 1,
            Err(ClientError::InsufficientCredits { .. }) => refused += 1,
            Err(other) => panic!("{other}"),
        }
    }
    assert_eq!((ok, refused), (50, 50));
    assert_eq!(service.wallet("hot", None).await.unwrap().balance, 0);
    server.stop().await;
}

#[tokio::test]
async fn reservations_over_http() {
    let server = Server::start_with(limits).await;
    let service = server.client(SERVICE);
    service.put_user("r", None).await.unwrap();
    service.credit("r", 20, None, None).await.unwrap();
    let hold = service.reserve("r", 10, Some(60), None).await.unwrap();
    assert_eq!(hold.available, 10);
    let id = hold.reservation_id.unwrap();
    let (status, view) = raw(&service, Method::GET, &format!("/v1/reservations/{id}"), "").await;
    assert_eq!((status, view["state"].as_str()), (200, Some("open")));
    let extended = service.extend(&id, 120).await.unwrap();
    assert_eq!(extended["reservation_id"], id.as_str());
    let capture = service.capture(&id, Some(12), None).await.unwrap();
    assert_eq!(
        (capture.charged, capture.released, capture.balance),
        (12, 0, 8)
    );
    let (_, view) = raw(&service, Method::GET, &format!("/v1/reservations/{id}"), "").await;
    assert_eq!(view["state"], "captured");
    let mut dry = Debit::amount(8);
    dry.dry_run = true;
    let answer = service.debit("r", &dry, None).await.unwrap();
    assert_eq!((answer.balance, answer.entry_id), (0, None));
    assert_eq!(service.wallet("r", None).await.unwrap().balance, 8);
    server.stop().await;
}

#[tokio::test]
async fn batch_debits_apply_each_on_its_own() {
    let server = Server::start_with(limits).await;
    let service = server.client(SERVICE);
    for user in ["a", "b"] {
        service.put_user(user, None).await.unwrap();
        service.credit(user, 3, None, None).await.unwrap();
    }
    let item = |user: &str, amount, key: Option<&str>| BatchDebit {
        user_id: user.into(),
        amount,
        idempotency_key: key.map(Into::into),
    };
    let batch = vec![
        item("a", 2, Some("k1")),
        item("a", 2, None),
        item("b", 1, None),
        item("ghost", 1, None),
        item("b", 0, None),
    ];
    let results = service.batch_debit(&batch, None).await.unwrap();
    let statuses: Vec<i64> = results
        .iter()
        .map(|r| r["status"].as_i64().unwrap())
        .collect();
    assert_eq!(statuses, vec![200, 402, 200, 404, 422]);
    // A debited item carries exactly these fields.
    assert!(results[0]["entry_id"].as_str().unwrap().starts_with("ent_"));
    assert_eq!(
        results[0],
        serde_json::json!({
            "status": 200, "user_id": "a", "entry_id": results[0]["entry_id"].clone(),
            "charged": 2, "from_wallet": 2, "from_pool": 0, "balance": 1, "available": 1,
            "replayed": false,
        })
    );
    assert_eq!(
        results[1]["topup_url"],
        format!("{}/v1/billing/bootstrap/a", server.base)
    );
    // The keyed item replays; the others run again.
    let again = service.batch_debit(&batch[..1], None).await.unwrap();
    assert_eq!(again[0]["replayed"], true);
    assert_eq!(again[0]["entry_id"], results[0]["entry_id"]);
    assert_eq!(service.wallet("a", None).await.unwrap().balance, 1);
    let (status, body) = raw(
        &service,
        Method::POST,
        "/v1/debits/batch",
        r#"{"debits":[]}"#,
    )
    .await;
    assert_eq!((status, slug(&body)), (422, "invalid-request"));
    server.stop().await;
}

#[tokio::test]
async fn headers_health_metrics_and_openapi() {
    let server = Server::start_with(limits).await;
    let (status, head, _) = reqwest_like(
        &server.base,
        "GET /livez HTTP/1.1\r\nHost: x\r\nX-Request-Id: trace-42\r\n\r\n",
    )
    .await;
    assert_eq!(status, 200);
    assert!(
        head.to_ascii_lowercase().contains("x-request-id: trace-42"),
        "{head}"
    );
    let (_, head, _) = reqwest_like(&server.base, "GET /livez HTTP/1.1\r\nHost: x\r\n\r\n").await;
    assert!(
        head.to_ascii_lowercase().contains("x-request-id: "),
        "a request id is generated: {head}"
    );
    let service = server.client(SERVICE);
    service.put_user("m", None).await.unwrap();
    service.credit("m", 1, None, None).await.unwrap();
    service.debit("m", &Debit::amount(1), None).await.unwrap();
    let _ = service.debit("m", &Debit::amount(1), None).await;
    let (_, _, metrics) =
        reqwest_like(&server.base, "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n").await;
    for name in [
        "creditd_debits_total{outcome=\"ok\"}",
        "creditd_debits_total{outcome=\"insufficient\"}",
        "creditd_credits_total{kind=\"grant\"}",
        "creditd_http_request_duration_seconds_bucket{route=\"/v1/users/{user_id}/debit\",method=\"POST\",status=\"200\"",
        "creditd_wal_fsync_duration_seconds_bucket",
        "creditd_wal_batch_records_bucket",
        "creditd_wal_written_bytes_total",
        "creditd_autotopup_total",
    ] {
        assert!(metrics.contains(name), "missing {name} in\n{metrics}");
    }
    assert!(!metrics.contains("user_id=\"m\""), "no user ids in labels");
    let (status, _, yaml) = reqwest_like(
        &server.base,
        "GET /openapi.yaml HTTP/1.1\r\nHost: x\r\n\r\n",
    )
    .await;
    assert_eq!(status, 200);
    assert!(
        yaml.starts_with("openapi: 3.1"),
        "{}",
        &yaml[..yaml.len().min(80)]
    );
    server.stop().await;
}

#[test]
fn openapi_covers_every_route() {
    let yaml = creditd::api::OPENAPI_YAML;
    for (_, method, template) in creditd::api::router::ROUTES {
        if *method == "ANY" {
            continue;
        }
        let path_line = format!("\n  {template}:");
        let start = yaml
            .find(&path_line)
            .unwrap_or_else(|| panic!("{template} is not in docs/openapi.yaml"));
        let rest = &yaml[start + path_line.len()..];
        let end = rest.find("\n  /").unwrap_or(rest.len());
        let operation = format!("\n    {}:", method.to_ascii_lowercase());
        assert!(
            rest[..end].contains(&operation),
            "{method} {template} is not in docs/openapi.yaml"
        );
    }
}

#[tokio::test]
async fn slow_headers_are_cut_off() {
    let server = Server::start_with(limits).await;
    let address = server.base.trim_start_matches("http://").to_owned();
    let mut stream = tokio::net::TcpStream::connect(&address).await.unwrap();
    stream
        .write_all(b"GET /livez HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    let mut buffer = [0u8; 256];
    // The header-read timeout is 1 s in this configuration: the server answers 408 or closes.
    let read = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buffer)).await;
    let closed = matches!(read, Ok(Ok(0)) | Ok(Err(_)))
        || matches!(read, Ok(Ok(n)) if String::from_utf8_lossy(&buffer[..n]).contains("408"));
    assert!(
        closed,
        "a connection that never finishes its headers must be dropped: {read:?}"
    );
    server.stop().await;
}

/// Reads what the server sends on `stream` until it closes the connection, within `within`;
/// panics if it is still open then.
async fn read_until_closed(stream: &mut tokio::net::TcpStream, within: Duration) -> String {
    let mut sent = Vec::new();
    let mut buffer = [0u8; 1024];
    let deadline = tokio::time::Instant::now() + within;
    loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut buffer)).await {
            Ok(Ok(0) | Err(_)) => return String::from_utf8_lossy(&sent).into_owned(),
            Ok(Ok(n)) => sent.extend_from_slice(&buffer[..n]),
            Err(_) => panic!(
                "still open after {within:?}; sent {:?}",
                String::from_utf8_lossy(&sent)
            ),
        }
    }
}

#[tokio::test]
async fn a_kept_alive_connection_gets_the_header_read_timeout_for_each_head() {
    let server = Server::start_with(limits).await;
    let address = server.base.trim_start_matches("http://").to_owned();
    // Part of a second head, sent after the first request was answered: cut off like a first.
    let mut slow = tokio::net::TcpStream::connect(&address).await.unwrap();
    slow.write_all(b"GET /livez HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut buffer = [0u8; 1024];
    let n = slow.read(&mut buffer).await.unwrap();
    assert!(String::from_utf8_lossy(&buffer[..n]).starts_with("HTTP/1.1 200"));
    tokio::time::sleep(Duration::from_millis(600)).await;
    slow.write_all(b"GET /livez HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    let started = std::time::Instant::now();
    let sent = read_until_closed(&mut slow, Duration::from_secs(5)).await;
    assert!(sent.is_empty(), "nothing answers half a head: {sent:?}");
    // The second head's wait began with the first answer, 0.6 s before it started to come.
    let waited = started.elapsed();
    assert!(
        waited < Duration::from_millis(900),
        "closed after {waited:?}"
    );

    // A connection that sends nothing after its answer is closed as well.
    let mut idle = tokio::net::TcpStream::connect(&address).await.unwrap();
    idle.write_all(b"GET /livez HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let started = std::time::Instant::now();
    let sent = read_until_closed(&mut idle, Duration::from_secs(5)).await;
    assert!(sent.starts_with("HTTP/1.1 200"), "{sent:?}");
    assert!(started.elapsed() >= Duration::from_millis(900));

    // One that keeps sending requests is not: a request every 0.4 s for 2.5 s, each answered
    // on the same connection.
    let mut steady = tokio::net::TcpStream::connect(&address).await.unwrap();
    let started = std::time::Instant::now();
    let mut answered = 0;
    while started.elapsed() < Duration::from_millis(2500) {
        steady
            .write_all(b"GET /livez HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let n = steady.read(&mut buffer).await.unwrap();
        assert!(
            String::from_utf8_lossy(&buffer[..n]).starts_with("HTTP/1.1 200"),
            "answer {answered} on a connection that keeps sending"
        );
        answered += 1;
        tokio::time::sleep(Duration::from_millis(400)).await;
    }
    assert!(answered >= 5);
    server.stop().await;
}

#[tokio::test]
async fn slow_bodies_are_cut_off_even_on_open_routes() {
    let server = Server::start_with(limits).await;
    let address = server.base.trim_start_matches("http://").to_owned();
    for path in ["/v1/webhooks/sandbox", "/v1/users/ada/credit"] {
        let mut stream = tokio::net::TcpStream::connect(&address).await.unwrap();
        let head = format!(
            "POST {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {SERVICE}\r\n\
             Content-Length: 100\r\n\r\n{{"
        );
        stream.write_all(head.as_bytes()).await.unwrap();
        // The body-read timeout is 1 s here: a 408 problem, then the connection is closed.
        let mut answer = Vec::new();
        let read =
            tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut answer)).await;
        assert!(read.is_ok(), "{path}: the connection must be closed");
        let answer = String::from_utf8_lossy(&answer);
        assert!(answer.starts_with("HTTP/1.1 408"), "{path}: {answer}");
        assert!(answer.contains("application/problem+json"), "{answer}");
        assert!(answer.contains("request-timeout"), "{answer}");
    }
    server.stop().await;
}

#[tokio::test]
async fn a_body_that_comes_in_parts_within_the_timeout_is_read_whole() {
    let server = Server::start_with(limits).await;
    let service = server.client(SERVICE);
    service.put_user("late", None).await.unwrap();
    server
        .client(ADMIN)
        .credit("late", 10, Some("seed"), None)
        .await
        .unwrap();
    let address = server.base.trim_start_matches("http://").to_owned();
    let mut stream = tokio::net::TcpStream::connect(&address).await.unwrap();
    let body = r#"{"amount":3}"#;
    let head = format!(
        "POST /v1/users/late/debit HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {SERVICE}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    // The head and half the body, then the rest 0.4 s later (the body-read timeout is 1 s).
    stream
        .write_all(format!("{head}{}", &body[..5]).as_bytes())
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(400)).await;
    stream.write_all(&body.as_bytes()[5..]).await.unwrap();
    let mut buffer = [0u8; 2048];
    let n = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buffer))
        .await
        .unwrap()
        .unwrap();
    let answer = String::from_utf8_lossy(&buffer[..n]);
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.contains(r#""balance":7"#), "{answer}");
    server.stop().await;
}

/// The log never stores 64 zero bytes in a row (on disk they could pass for a sector that was
/// never written, and a damaged record for a torn one); a description of NUL characters, which
/// JSON can carry, is refused with 422 and charges nothing.
#[tokio::test]
async fn a_long_run_of_nul_characters_is_refused_and_changes_nothing() {
    let server = Server::start_with(limits).await;
    let service = server.client(SERVICE);
    service.put_user("nul", None).await.unwrap();
    service.credit("nul", 10, None, None).await.unwrap();
    let nuls = "\\u0000".repeat(100);
    let body = format!(r#"{{"amount":3,"description":"{nuls}"}}"#);
    let (status, problem) = raw(&service, Method::POST, "/v1/users/nul/debit", &body).await;
    assert_eq!(
        (status, slug(&problem)),
        (422, "invalid-request"),
        "{problem}"
    );
    assert!(
        problem["detail"].as_str().unwrap().contains("NUL"),
        "{problem}"
    );
    // A few NULs are stored like any other character.
    let few = "\\u0000".repeat(8);
    let body = format!(r#"{{"amount":3,"description":"a{few}b"}}"#);
    let (status, answer) = raw(&service, Method::POST, "/v1/users/nul/debit", &body).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(service.wallet("nul", None).await.unwrap().balance, 7);
    server.stop().await;
}

#[tokio::test]
async fn bodies_that_are_not_objects_are_refused_and_change_nothing() {
    let server = Server::start_with(limits).await;
    let service = server.client(SERVICE);
    service
        .put_user("ada", Some("ada@example.com"))
        .await
        .unwrap();
    service.credit("ada", 10, None, None).await.unwrap();
    let (status, hold) = raw(
        &service,
        Method::POST,
        "/v1/users/ada/reservations",
        r#"{"amount":4}"#,
    )
    .await;
    assert_eq!(status, 201, "{hold}");
    let capture = format!(
        "/v1/reservations/{}/capture",
        hold["reservation_id"].as_str().unwrap()
    );
    // serde would fill each of these structs from an array, field by field.
    let attempts = [
        (Method::POST, "/v1/users/ada/debit", "[5]"),
        (Method::POST, "/v1/users/ada/credit", "[5]"),
        (Method::POST, "/v1/users/ada/debit", "5"),
        (Method::POST, capture.as_str(), "[2]"),
        (Method::POST, capture.as_str(), "[]"),
        (Method::PUT, "/v1/users/ada", r#"["eve@example.com","Eve"]"#),
        (
            Method::POST,
            "/v1/debits/batch",
            r#"{"debits":[["ada",null,1]]}"#,
        ),
    ];
    for (method, path, body) in attempts {
        let (status, problem) = raw(&service, method.clone(), path, body).await;
        assert_eq!(
            (status, slug(&problem)),
            (422, "invalid-request"),
            "{method} {path} {body}: {problem}"
        );
    }
    let wallet = service.wallet("ada", None).await.unwrap();
    assert_eq!((wallet.balance, wallet.available), (10, 6));
    let (_, user) = raw(&service, Method::GET, "/v1/users/ada", "").await;
    assert_eq!(user["email"], "ada@example.com");
    // Objects still work, batches included.
    let (status, batch) = raw(
        &service,
        Method::POST,
        "/v1/debits/batch",
        r#"{"debits":[{"user_id":"ada","amount":1}]}"#,
    )
    .await;
    assert_eq!(
        (status, batch["results"][0]["status"].as_u64()),
        (200, Some(200)),
        "{batch}"
    );
    server.stop().await;
}

#[tokio::test]
async fn deeply_nested_metadata_is_refused_naming_the_field_and_changes_nothing() {
    let server = Server::start_with(limits).await;
    let service = server.client(SERVICE);
    service.put_user("ada", None).await.unwrap();
    service.credit("ada", 10, None, None).await.unwrap();
    let nested = |depth: usize| format!("{}{}", "[".repeat(depth), "]".repeat(depth));
    // The hostile client's 5 000 nested arrays: 10 000 bytes, under limits.max_metadata_bytes,
    // and not built by the API (a raw value), so serde_json's own depth limit never saw them.
    let deep = nested(5000);
    let attempts = [
        (
            Method::PUT,
            "/v1/users/ada",
            format!(r#"{{"metadata":{deep}}}"#),
        ),
        (
            Method::POST,
            "/v1/users/ada/debit",
            format!(r#"{{"amount":1,"metadata":{deep}}}"#),
        ),
        (
            Method::POST,
            "/v1/users/ada/credit",
            format!(r#"{{"amount":1,"metadata":{{"a":{}}}}}"#, nested(32)),
        ),
    ];
    for (method, path, body) in &attempts {
        let (status, problem) = raw(&service, method.clone(), path, body).await;
        assert_eq!(
            (status, slug(&problem), problem["field"].as_str()),
            (422, "invalid-request", Some("metadata")),
            "{method} {path}: {problem}"
        );
    }
    let batch = format!(r#"{{"debits":[{{"user_id":"ada","amount":1,"metadata":{deep}}}]}}"#);
    let (status, answer) = raw(&service, Method::POST, "/v1/debits/batch", &batch).await;
    assert_eq!(status, 200);
    assert_eq!(answer["results"][0]["status"], 422, "{answer}");
    assert_eq!(answer["results"][0]["field"], "metadata", "{answer}");
    assert_eq!(service.wallet("ada", None).await.unwrap().balance, 10);
    let (_, user) = raw(&service, Method::GET, "/v1/users/ada", "").await;
    assert_eq!(user["metadata"], Value::Null, "{user}");
    // At the limit it is kept, and the answer that carries it back is still readable by a parser
    // that stops at 128 levels.
    let body = format!(r#"{{"metadata":{}}}"#, nested(32));
    let (status, _) = raw(&service, Method::PUT, "/v1/users/ada", &body).await;
    assert_eq!(status, 200);
    let (status, user) = raw(&service, Method::GET, "/v1/users/ada", "").await;
    assert_eq!((status, user["metadata"].is_array()), (200, true), "{user}");
    server.stop().await;
}

#[tokio::test]
async fn a_refused_tenant_change_creates_nothing() {
    let server = Server::start_with(limits).await;
    let platform = server.client(PLATFORM);
    let secret = "tenant-secret-0123456789";
    for url in [
        "https://",
        "ftp://example.com/x",
        "https://example.com/\\u00a0h",
    ] {
        let body = format!(r#"{{"name":"New","webhook_url":"{url}","webhook_secret":"{secret}"}}"#);
        let (status, problem) = raw(&platform, Method::PUT, "/v1/tenants/newco", &body).await;
        assert_eq!(
            (status, problem["field"].as_str()),
            (422, Some("webhook_url")),
            "{url}"
        );
    }
    let (status, problem) = raw(
        &platform,
        Method::PUT,
        "/v1/tenants/newco",
        r#"{"webhook_url":"https://example.com/hooks"}"#,
    )
    .await;
    assert_eq!(status, 422, "{problem}");
    let (status, _) = raw(&platform, Method::GET, "/v1/tenants/newco", "").await;
    assert_eq!(status, 404, "no tenant was created by the refused requests");
    let body =
        format!(r#"{{"webhook_url":"https://example.com/hooks","webhook_secret":"{secret}"}}"#);
    let (status, tenant) = raw(&platform, Method::PUT, "/v1/tenants/newco", &body).await;
    assert_eq!(
        (status, tenant["webhook_url"].as_str()),
        (201, Some("https://example.com/hooks"))
    );
    server.stop().await;
}

#[tokio::test]
async fn garbage_never_crashes_the_server() {
    let server = Server::start_with(limits).await;
    let service = server.client(SERVICE);
    service.put_user("g", None).await.unwrap();
    let mut seed = 7u64;
    let paths = [
        "/v1/users/g/debit",
        "/v1/users/g/credit",
        "/v1/users/g/reservations",
        "/v1/debits/batch",
        "/v1/users/g",
        "/v1/reservations/rsv_1/capture",
    ];
    for round in 0..300 {
        seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let length = (seed >> 33) as usize % 200;
        let bytes: Vec<u8> = (0..length)
            .map(|i| (seed.rotate_left(i as u32 % 64) >> 7) as u8)
            .collect();
        let method = if round % 3 == 0 {
            Method::PUT
        } else {
            Method::POST
        };
        let (status, _, body) = service
            .send(method, paths[round % paths.len()], Some(bytes), None)
            .await
            .unwrap();
        assert!(status.is_client_error(), "garbage got {status}");
        let problem: Value = serde_json::from_slice(&body).unwrap();
        assert!(problem["type"]
            .as_str()
            .unwrap()
            .starts_with("https://creditd.dev/problems/"));
    }
    assert_eq!(service.wallet("g", None).await.unwrap().balance, 0);
    server.stop().await;
}

/// A debit queued when the fsync fails is answered "outcome unknown" (500), not "refused": its
/// record may be on disk. A request after the failure is refused (503): nothing of it is written.
/// After the restart, a retry with the same key learns the outcome; here the writer cut the failed
/// batch off the log, so the retry executes once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_fsync_answers_outcome_unknown_then_refuses_and_a_keyed_retry_learns_the_outcome()
{
    let dir = tempfile::tempdir().unwrap();
    let mut config = server::config(dir.path());
    limits(&mut config);
    let faulty = FaultyStorage::new(Arc::new(FsStorage));
    let options = EngineOptions {
        background: false,
        ..config.engine_options()
    };
    let engine = Engine::open(
        options.clone(),
        Arc::new(faulty.clone()),
        Arc::new(SystemClock),
    )
    .unwrap();
    let server = Server::start_with_engine(config.clone(), engine, dir).await;
    // Each answer as the server gave it: the client's retries would wait out the 503s.
    let service = server.client(SERVICE).with_retry(RetryPolicy::none());
    service.put_user("p", None).await.unwrap();
    service.credit("p", 10, None, None).await.unwrap();
    faulty.fail_from(FaultPoint::Sync, 1);
    let failed = service
        .debit("p", &Debit::amount(1), Some("doomed"))
        .await
        .unwrap_err();
    assert_eq!(
        (failed.status(), failed.slug()),
        (Some(500), Some("write-outcome-unknown"))
    );
    // The same key before the restart: still not known to be durable, still unknown.
    let again = service
        .debit("p", &Debit::amount(1), Some("doomed"))
        .await
        .unwrap_err();
    assert_eq!(again.slug(), Some("write-outcome-unknown"));
    let refused = service.credit("p", 1, None, None).await.unwrap_err();
    assert_eq!(
        (refused.status(), refused.slug()),
        (Some(503), Some("log-unavailable"))
    );
    let (status, body) = raw(&service, Method::GET, "/readyz", "").await;
    assert_eq!((status, slug(&body)), (503, "not-ready"));
    assert!(body["detail"].as_str().unwrap().contains("poisoned"));
    // Shutting down cannot flush a poisoned log: the server says so instead of exiting cleanly.
    let (result, dir) = server.shut_down().await;
    assert!(
        matches!(result, Err(creditd::server::ServerError::Shutdown(_))),
        "{result:?}"
    );

    let engine = Engine::open(options, Arc::new(FsStorage), Arc::new(SystemClock)).unwrap();
    let server = Server::start_with_engine(config, engine, dir).await;
    let service = server.client(SERVICE);
    assert_eq!(service.wallet("p", None).await.unwrap().balance, 10);
    let retried = service
        .debit("p", &Debit::amount(1), Some("doomed"))
        .await
        .unwrap();
    assert_eq!((retried.balance, retried.replayed), (9, false));
    let replayed = service
        .debit("p", &Debit::amount(1), Some("doomed"))
        .await
        .unwrap();
    assert_eq!((replayed.balance, replayed.replayed), (9, true));
    server.stop().await;
}

#[tokio::test]
async fn health_checks_answer_while_recovery_runs() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let (finish, finished) = tokio::sync::oneshot::channel::<u32>();
    let recovering = tokio::spawn(async move {
        let server = creditd::config::ServerConfig::default();
        creditd::api::serve_while_recovering(&listener, &server, async { finished.await.unwrap() })
            .await
    });
    let client = Client::new(&base, SERVICE).unwrap();
    let (status, _, _) = client
        .send(Method::GET, "/livez", None, None)
        .await
        .unwrap();
    assert_eq!(status, 200);
    let (status, _, _) = client
        .send(Method::HEAD, "/livez", None, None)
        .await
        .unwrap();
    assert_eq!(status, 200);
    for path in ["/readyz", "/v1/users/x/wallet"] {
        let (status, headers, body) = client.send(Method::GET, path, None, None).await.unwrap();
        let body: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(
            (status.as_u16(), slug(&body)),
            (503, "recovering"),
            "{path}"
        );
        assert_eq!(headers["retry-after"], "1");
    }
    finish.send(7).unwrap();
    assert_eq!(recovering.await.unwrap(), 7);
}

/// Every string in a JSON document, member names included.
fn json_strings(value: &Value, out: &mut Vec<String>) {
    match value {
        Value::String(text) => out.push(text.clone()),
        Value::Array(items) => items.iter().for_each(|item| json_strings(item, out)),
        Value::Object(members) => {
            for (name, member) in members {
                out.push(name.clone());
                json_strings(member, out);
            }
        }
        _ => {}
    }
}

#[tokio::test]
async fn no_problem_quotes_a_control_character_from_the_path() {
    let server = Server::start_with(limits).await;
    server.client(SERVICE).put_user("u", None).await.unwrap();
    // Percent-encoded controls in every kind of path parameter, and raw C1 controls (which http
    // lets through as UTF-8) in a parameter and in a path no route matches.
    let cases = [
        ("GET", "/v1/users/%00", ""),
        ("PUT", "/v1/users/%00", "{}"),
        ("GET", "/v1/users/a%0Ab/wallet", ""),
        ("POST", "/v1/users/a%0Db/debit", r#"{"amount":1}"#),
        ("GET", "/v1/reservations/rsv_%00", ""),
        ("GET", "/v1/actions/%1B%5B31m", ""),
        ("GET", "/v1/packages/%7F", ""),
        ("GET", "/v1/billing/bootstrap/%00", ""),
        ("GET", "/v1/tenants/%00", ""),
        ("GET", "/v1/payments/%00", ""),
        ("POST", "/v1/webhooks/%00", "{}"),
        ("POST", "/v1/webhooks/sandbox%0A", "{}"),
        ("GET", "/sandbox/checkout/%00", ""),
        ("GET", "/v1/users/%C2%85", ""),
        ("GET", "/v1/users/\u{85}", ""),
        ("GET", "/v1/nothing/\u{9f}/here", ""),
    ];
    for (method, path, body) in cases {
        let request = format!(
            "{method} {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {PLATFORM}\r\n\
             Content-Length: {}\r\n\r\n{body}",
            body.len()
        );
        let (status, _, text) = reqwest_like(&server.base, &request).await;
        let problem: Value = serde_json::from_str(&text)
            .unwrap_or_else(|error| panic!("{method} {path:?}: {error}: {text:?}"));
        assert_eq!(
            (status, slug(&problem)),
            (400, "malformed-request"),
            "{method} {path:?}: {problem}"
        );
        let mut strings = Vec::new();
        json_strings(&problem, &mut strings);
        for string in strings {
            assert!(
                !string.chars().any(char::is_control),
                "{method} {path:?} answered a control character: {string:?}"
            );
        }
    }
    // A percent-encoded character that is not a control is still only an unknown user.
    let (status, body) = raw(
        &server.client(SERVICE),
        Method::GET,
        "/v1/users/caf%C3%A9",
        "",
    )
    .await;
    assert_eq!((status, slug(&body)), (404, "user-not-found"));
    server.stop().await;
}

#[tokio::test]
async fn put_user_refuses_an_email_initialize_would_refuse_and_changes_nothing() {
    let server = Server::start_with(limits).await;
    let service = server.client(SERVICE);
    let (status, body) = raw(
        &service,
        Method::PUT,
        "/v1/users/ada",
        r#"{"email":"ada@example.com","name":"Ada"}"#,
    )
    .await;
    assert_eq!(status, 201, "{body}");
    let long = format!("{}@example.com", "x".repeat(250));
    for email in [
        "not an address",
        "ada",
        "@",
        "",
        "ada@exa mple.com",
        "ada@example.com\u{0}",
        long.as_str(),
    ] {
        let body = serde_json::json!({"email": email, "name": "Someone else"}).to_string();
        for user in ["ada", "newcomer"] {
            let (status, problem) =
                raw(&service, Method::PUT, &format!("/v1/users/{user}"), &body).await;
            assert_eq!(
                (status, slug(&problem), problem["field"].as_str()),
                (422, "invalid-request", Some("email")),
                "{user} {email:?}: {problem}"
            );
        }
    }
    let (status, user) = raw(&service, Method::GET, "/v1/users/ada", "").await;
    assert_eq!(
        (status, user["email"].as_str(), user["name"].as_str()),
        (200, Some("ada@example.com"), Some("Ada")),
        "{user}"
    );
    let (status, _) = raw(&service, Method::GET, "/v1/users/newcomer", "").await;
    assert_eq!(status, 404, "a refused profile creates no user");
    // What initialize takes is still taken: surrounding whitespace aside, and no address at all.
    let (status, body) = raw(
        &service,
        Method::PUT,
        "/v1/users/ada",
        r#"{"email":" ada@example.org "}"#,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    // An absent address is kept; `null` removes it.
    let (status, body) = raw(&service, Method::PUT, "/v1/users/ada", "{}").await;
    assert_eq!(
        (status, body["email"].as_str()),
        (200, Some(" ada@example.org ")),
        "{body}"
    );
    let (status, body) = raw(&service, Method::PUT, "/v1/users/ada", r#"{"email":null}"#).await;
    assert_eq!((status, &body["email"]), (200, &Value::Null), "{body}");
    server.stop().await;
}

#[tokio::test]
async fn a_request_id_that_breaks_the_rule_is_replaced_as_the_openapi_says() {
    let server = Server::start_with(limits).await;
    let at_limit = "y".repeat(128);
    let too_long = "x".repeat(129);
    for (sent, echoed) in [
        ("trace-42", true),
        (at_limit.as_str(), true),
        ("has space", false),
        (too_long.as_str(), false),
        ("caf\u{e9}", false),
        ("", false),
    ] {
        let request = format!("GET /livez HTTP/1.1\r\nHost: x\r\nX-Request-Id: {sent}\r\n\r\n");
        let (status, head, _) = reqwest_like(&server.base, &request).await;
        assert_eq!(status, 200, "a request id is never refused: {sent:?}");
        let id = head
            .lines()
            .find_map(|line| {
                let (name, value) = line.split_once(':')?;
                name.eq_ignore_ascii_case("x-request-id")
                    .then(|| value.trim().to_owned())
            })
            .unwrap_or_else(|| panic!("no X-Request-Id: {head}"));
        if echoed {
            assert_eq!(id, sent);
        } else {
            let generated = id.split_once('-').is_some_and(|(prefix, number)| {
                prefix.len() == 8
                    && [prefix, number].iter().all(|part| {
                        !part.is_empty()
                            && part
                                .bytes()
                                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
                    })
            });
            assert!(
                generated,
                "{sent:?} was answered {id:?}, not a generated id"
            );
        }
    }
    // The document describes that, instead of a pattern that says a bad id would be refused.
    let yaml = creditd::api::OPENAPI_YAML;
    let start = yaml
        .find("\n    XRequestId:\n      name: X-Request-Id")
        .expect("the XRequestId parameter");
    let block: String = yaml[start + 1..]
        .lines()
        .enumerate()
        .take_while(|(index, line)| {
            *index == 0 || !line.starts_with("    ") || line.starts_with("     ")
        })
        .map(|(_, line)| format!("{line}\n"))
        .collect();
    for claim in ["pattern:", "minLength:", "maxLength:"] {
        assert!(!block.contains(claim), "{claim} in\n{block}");
    }
    assert!(block.contains("replaced by a generated"), "{block}");
    server.stop().await;
}
