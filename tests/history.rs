//! The ledger history over HTTP: `GET /v1/users/{id}/entries` against a real server whose history
//! thread follows its log. Every write answered is listed at once (read your writes), pages are
//! cut by entry id and stay stable while writes go on, filters narrow the list, bad queries get a
//! 422 and another tenant's key sees nothing.

use http::Method;
use serde_json::Value;

#[path = "common/server.rs"]
mod server;

use server::{send_json, Server, ADMIN, GLOBEX, SERVICE};

fn ids(page: &Value) -> Vec<String> {
    page["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|entry| entry["entry_id"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test]
async fn every_answered_write_is_listed_newest_first_in_stable_pages() {
    let server = Server::start().await;
    let service = server.client(SERVICE);
    let admin = server.client(ADMIN);
    service.put_user("ada", None).await.unwrap();
    let (status, _) = send_json(
        &admin,
        Method::PUT,
        "/v1/actions/gpt",
        r#"{"cost":3,"description":"a model call"}"#,
    )
    .await;
    assert_eq!(status, 201);
    let (status, credit) = send_json(
        &service,
        Method::POST,
        "/v1/users/ada/credit",
        r#"{"amount":100,"description":"welcome","metadata":{"campaign":"launch"}}"#,
    )
    .await;
    assert_eq!(status, 200, "{credit}");
    let mut written = vec![credit["entry_id"].as_str().unwrap().to_owned()];
    for _ in 0..4 {
        let (status, debit) = send_json(
            &service,
            Method::POST,
            "/v1/users/ada/debit",
            r#"{"action":"gpt","quantity":2,"reference":"req-7"}"#,
        )
        .await;
        assert_eq!(status, 200, "{debit}");
        written.push(debit["entry_id"].as_str().unwrap().to_owned());
    }
    // Read your writes: no wait, every answered write is there, newest first.
    let (status, all) = send_json(&service, Method::GET, "/v1/users/ada/entries", "").await;
    assert_eq!(status, 200, "{all}");
    let newest_first: Vec<String> = written.iter().rev().cloned().collect();
    assert_eq!(ids(&all), newest_first);
    let debit = &all["entries"][0];
    assert_eq!(debit["kind"], "debit");
    assert_eq!(debit["amount"], -6);
    assert_eq!(debit["balance_after"], 100 - 4 * 6);
    assert_eq!(debit["action"], "gpt");
    assert_eq!(debit["quantity"], 2);
    assert_eq!(debit["reference"], "req-7");
    assert_eq!(debit["actor"], "acme-service");
    assert!(debit["created_at"].as_str().unwrap().ends_with('Z'));
    let credit = &all["entries"][4];
    assert_eq!(credit["kind"], "grant");
    assert_eq!(credit["metadata"]["campaign"], "launch");
    assert_eq!(credit["description"], "welcome");
    assert_eq!(all["next_cursor"], Value::Null);

    // Pages of two; a write between pages lands before the first, never inside a later one.
    let (_, first) = send_json(&service, Method::GET, "/v1/users/ada/entries?limit=2", "").await;
    assert_eq!(ids(&first), newest_first[..2]);
    let cursor = first["next_cursor"].as_str().unwrap().to_owned();
    service
        .credit("ada", 1, None, None)
        .await
        .expect("a write between pages");
    let path = format!("/v1/users/ada/entries?limit=2&cursor={cursor}");
    let (_, second) = send_json(&service, Method::GET, &path, "").await;
    assert_eq!(ids(&second), newest_first[2..4]);
    let path = format!(
        "/v1/users/ada/entries?limit=2&cursor={}",
        second["next_cursor"].as_str().unwrap()
    );
    let (_, third) = send_json(&service, Method::GET, &path, "").await;
    assert_eq!(ids(&third), newest_first[4..]);
    assert_eq!(third["next_cursor"], Value::Null);

    // Filters.
    let (_, grants) = send_json(
        &service,
        Method::GET,
        "/v1/users/ada/entries?kind=grant",
        "",
    )
    .await;
    assert_eq!(grants["entries"].as_array().unwrap().len(), 2);
    let (_, by_action) = send_json(
        &service,
        Method::GET,
        "/v1/users/ada/entries?action=gpt",
        "",
    )
    .await;
    assert_eq!(ids(&by_action), newest_first[..4]);
    let (_, future) = send_json(
        &service,
        Method::GET,
        "/v1/users/ada/entries?from=2999-01-01T00:00:00Z",
        "",
    )
    .await;
    assert!(future["entries"].as_array().unwrap().is_empty());
    server.stop().await;
}

#[tokio::test]
async fn bad_queries_are_refused_and_other_tenants_see_nothing() {
    let server = Server::start().await;
    let service = server.client(SERVICE);
    service.put_user("ada", None).await.unwrap();
    service.credit("ada", 5, None, None).await.unwrap();
    for query in [
        "limit=0",
        "limit=1000000000",
        "limit=ten",
        "cursor=nonsense",
        "cursor=ent_0",
        "kind=gift",
        "from=yesterday",
        "from=2026-02-01T00:00:00Z&to=2026-01-01T00:00:00Z",
        "currency=not%20one",
        "colour=blue",
    ] {
        let path = format!("/v1/users/ada/entries?{query}");
        let (status, problem) = send_json(&service, Method::GET, &path, "").await;
        assert_eq!(status, 422, "{query}: {problem}");
        assert!(
            problem["type"]
                .as_str()
                .unwrap()
                .starts_with("https://creditd.dev/problems/"),
            "{query}: {problem}"
        );
    }
    // A cursor that is not one of ada's entries: bob's, or an entry id no write answered with.
    service.put_user("bob", None).await.unwrap();
    let bobs = service.credit("bob", 5, None, None).await.unwrap();
    let bobs = bobs.entry_id.expect("an entry");
    for cursor in [bobs.as_str(), "ent_999999999"] {
        let path = format!("/v1/users/ada/entries?cursor={cursor}");
        let (status, problem) = send_json(&service, Method::GET, &path, "").await;
        assert_eq!(status, 422, "{cursor}: {problem}");
        assert_eq!(problem["field"], "cursor", "{problem}");
    }
    let globex = server.client(GLOBEX);
    let (status, problem) = send_json(&globex, Method::GET, "/v1/users/ada/entries", "").await;
    assert_eq!(status, 404, "{problem}");
    assert_eq!(
        problem["type"],
        "https://creditd.dev/problems/user-not-found"
    );
    let (status, _) = send_json(&service, Method::GET, "/v1/users/nobody/entries", "").await;
    assert_eq!(status, 404);
    server.stop().await;
}
