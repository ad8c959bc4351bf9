//! The routes the operators' dashboard leans on, over HTTP: the page and its files with their
//! Content-Security-Policy, `GET /v1/me`, the user listing `GET /v1/users` (prefix, cursor
//! paging, tenant isolation, bad queries) and the audit chain's status `GET /v1/audit/verify`,
//! intact and then with a record changed under the running server.

use http::Method;
use serde_json::{json, Value};

#[path = "common/server.rs"]
mod server;

use server::{send_json, Server, ADMIN, GLOBEX, PLATFORM, SERVICE};

/// The user ids of a `GET /v1/users` answer, and its cursor.
fn ids(page: &Value) -> (Vec<String>, Value) {
    let ids = page["users"]
        .as_array()
        .unwrap()
        .iter()
        .map(|user| user["user_id"].as_str().unwrap().to_owned())
        .collect();
    (ids, page["next_cursor"].clone())
}

#[tokio::test]
async fn the_page_and_its_files_are_served_with_a_strict_policy() {
    let server = Server::start().await;
    let http = reqwest::Client::new();
    for (path, kind) in [
        ("/dashboard", "text/html"),
        ("/dashboard/app.js", "text/javascript"),
        ("/dashboard/pages.js", "text/javascript"),
        ("/dashboard/style.css", "text/css"),
    ] {
        let answer = http
            .get(format!("{}{path}", server.base))
            .send()
            .await
            .unwrap();
        assert_eq!(answer.status(), 200, "{path}");
        let headers = answer.headers();
        assert!(
            headers["content-type"].to_str().unwrap().starts_with(kind),
            "{path}"
        );
        let policy = headers["content-security-policy"].to_str().unwrap();
        assert!(policy.contains("script-src 'self';"), "{policy}");
        assert!(!policy.contains("unsafe-inline"), "{policy}");
        assert_eq!(headers["x-content-type-options"], "nosniff");
    }
    let page = http
        .get(format!("{}/dashboard", server.base))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(page.contains(r#"<script type="module" src="/dashboard/app.js">"#));
    let missing = http
        .get(format!("{}/dashboard/secret.txt", server.base))
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), 404);
    assert_eq!(
        missing.headers()["content-type"],
        "application/problem+json"
    );
    server.stop().await;
}

#[tokio::test]
async fn me_names_the_key_its_role_and_the_tenant_it_acts_in() {
    let server = Server::start().await;
    let (status, me) = send_json(&server.client(SERVICE), Method::GET, "/v1/me", "").await;
    assert_eq!(status, 200, "{me}");
    assert_eq!(
        me,
        json!({"name": "acme-service", "role": "service", "tenant": "acme"})
    );
    let (_, me) = send_json(&server.client(ADMIN), Method::GET, "/v1/me", "").await;
    assert_eq!(me["role"], "admin");
    let (_, me) = send_json(&server.client(GLOBEX), Method::GET, "/v1/me", "").await;
    assert_eq!(me["tenant"], "globex");
    let platform = server.client(PLATFORM).in_tenant("globex").unwrap();
    let (status, me) = send_json(&platform, Method::GET, "/v1/me", "").await;
    assert_eq!(status, 200, "{me}");
    assert_eq!(
        (me["role"].as_str(), me["tenant"].as_str()),
        (Some("platform"), Some("globex"))
    );
    let stranger = server.client("not-a-key-of-this-server");
    let (status, problem) = send_json(&stranger, Method::GET, "/v1/me", "").await;
    assert_eq!(status, 401, "{problem}");
    server.stop().await;
}

#[tokio::test]
async fn users_are_listed_by_prefix_in_pages_within_the_tenant() {
    let server = Server::start().await;
    let service = server.client(SERVICE);
    for user in ["bob", "ann-3", "ann-1", "zed", "ann-2", "ann-10"] {
        service.put_user(user, None).await.unwrap();
    }
    service.credit("ann-2", 70, None, None).await.unwrap();
    server
        .client(GLOBEX)
        .put_user("ann-globex", None)
        .await
        .unwrap();

    let (status, page) = send_json(&service, Method::GET, "/v1/users", "").await;
    assert_eq!(status, 200, "{page}");
    let (all, cursor) = ids(&page);
    assert_eq!(all, ["ann-1", "ann-10", "ann-2", "ann-3", "bob", "zed"]);
    assert_eq!(
        cursor,
        Value::Null,
        "a page that is not full ends the listing"
    );

    let path = "/v1/users?prefix=ann-&limit=2";
    let (_, first) = send_json(&service, Method::GET, path, "").await;
    let (first_ids, cursor) = ids(&first);
    assert_eq!(first_ids, ["ann-1", "ann-10"]);
    assert_eq!(cursor, "ann-10");
    let (_, second) = send_json(
        &service,
        Method::GET,
        &format!("{path}&cursor={}", cursor.as_str().unwrap()),
        "",
    )
    .await;
    let (second_ids, cursor) = ids(&second);
    assert_eq!(second_ids, ["ann-2", "ann-3"]);
    assert_eq!(second["users"][0]["wallet"]["balance"], 70);
    let (_, third) = send_json(
        &service,
        Method::GET,
        &format!("{path}&cursor={}", cursor.as_str().unwrap()),
        "",
    )
    .await;
    assert_eq!(ids(&third), (vec![], Value::Null));

    let (_, globex) = send_json(&server.client(GLOBEX), Method::GET, "/v1/users", "").await;
    assert_eq!(ids(&globex).0, ["ann-globex"]);
    let (_, none) = send_json(&service, Method::GET, "/v1/users?prefix=ann-g", "").await;
    assert_eq!(ids(&none).0, Vec::<String>::new());

    for (query, field) in [
        ("limit=0", Some("limit")),
        ("limit=100000", Some("limit")),
        ("limit=ten", Some("limit")),
        ("cursor=", Some("cursor")),
        ("colour=blue", None),
    ] {
        let (status, problem) =
            send_json(&service, Method::GET, &format!("/v1/users?{query}"), "").await;
        assert_eq!(status, 422, "{query}: {problem}");
        assert_eq!(problem["field"].as_str(), field, "{query}: {problem}");
    }
    server.stop().await;
}

#[tokio::test]
async fn the_audit_chain_status_is_intact_then_names_a_changed_record() {
    let server = Server::start().await;
    let admin = server.client(ADMIN);
    admin
        .put_package("starter", "Starter", 500, 200_000, "NGN")
        .await
        .unwrap();

    let (status, problem) =
        send_json(&server.client(SERVICE), Method::GET, "/v1/audit/verify", "").await;
    assert_eq!(status, 403, "{problem}");
    let (status, chain) = send_json(&admin, Method::GET, "/v1/audit/verify", "").await;
    assert_eq!(status, 200, "{chain}");
    assert_eq!(chain["status"], "intact", "{chain}");
    // The chain is one for all tenants: it counts their records too; one more change, one more.
    let before = chain["records"].as_u64().unwrap();
    assert!(before >= 1, "{chain}");
    admin
        .put_package("large", "Large", 5_000, 1_500_000, "NGN")
        .await
        .unwrap();
    let (_, chain) = send_json(&admin, Method::GET, "/v1/audit/verify", "").await;
    assert_eq!(chain["status"], "intact", "{chain}");
    assert_eq!(chain["records"].as_u64(), Some(before + 1), "{chain}");
    let (_, listed) = send_json(&admin, Method::GET, "/v1/audit", "").await;
    assert_eq!(
        chain["last_hash"], listed["records"][0]["hash"],
        "the head is the newest record's hash"
    );
    let (status, problem) = send_json(&admin, Method::GET, "/v1/audit/verify?x=1", "").await;
    assert_eq!(status, 422, "{problem}");

    // A record changed behind the server's back, through SQLite as any other writer would.
    let history = server.data_dir().join(creditd::history::FILE_NAME);
    let connection = rusqlite::Connection::open(&history).unwrap();
    connection
        .busy_timeout(std::time::Duration::from_secs(5))
        .unwrap();
    connection
        .execute(
            r#"UPDATE audit SET after = '{"price_minor":1}' WHERE seq = 1"#,
            [],
        )
        .unwrap();
    drop(connection);
    let (status, chain) = send_json(&admin, Method::GET, "/v1/audit/verify", "").await;
    assert_eq!(status, 200, "{chain}");
    assert_eq!(chain["status"], "broken", "{chain}");
    assert_eq!(chain["broken_at_seq"], 1, "{chain}");
    assert_eq!(chain["damage"], "changed", "{chain}");
    server.stop().await;
}
