//! Portal sessions over HTTP: the signed link, the page and its data, a checkout through the
//! sandbox that the page's stream sees settle, and links refused when changed, expired or asking
//! to return to an origin the configuration does not allow.

use std::time::{Duration, Instant};

use http::Method;
use serde_json::{json, Value};

#[path = "common/server.rs"]
mod server;

use server::{raw, send_json, Server, PLATFORM, SERVICE};

const APP: &str = "https://app.example.com";

async fn portal_server(ttl_seconds: u64) -> Server {
    let server = Server::start_with(|config| {
        config.streams.keepalive_seconds = 1;
        config.streams.portal_ttl_seconds = ttl_seconds;
        config.streams.portal_return_origins = vec![APP.into()];
    })
    .await;
    server.sell_starter_to_ada("Starter").await;
    server
}

/// A portal session for ada returning to `return_url`: its status and answer.
async fn session(server: &Server, return_url: Option<&str>) -> (u16, Value) {
    let body = match return_url {
        Some(url) => json!({ "return_url": url }).to_string(),
        None => String::new(),
    };
    send_json(
        &server.client(SERVICE),
        Method::POST,
        "/v1/users/ada/portal-sessions",
        &body,
    )
    .await
}

fn slug(body: &Value) -> &str {
    body["type"]
        .as_str()
        .unwrap_or("")
        .rsplit('/')
        .next()
        .unwrap()
}

#[tokio::test]
async fn a_portal_checkout_settles_and_the_pages_stream_sees_the_balance_rise() {
    let server = portal_server(900).await;
    let (status, answer) = session(&server, Some(&format!("{APP}/billing?done=1"))).await;
    assert_eq!(status, 200, "{answer}");
    let url = answer["url"].as_str().unwrap().to_owned();
    assert!(
        url.starts_with(&format!("{}/portal/", server.base)),
        "{url}"
    );
    assert!(!url.contains(SERVICE), "the link carries no key");
    let http = reqwest::Client::new();

    let page = http.get(&url).send().await.unwrap();
    assert_eq!(page.status(), 200);
    assert!(page.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/html"));
    let html = page.text().await.unwrap();
    assert!(
        html.contains("id=\"balance\"") && !html.contains("<script src"),
        "embedded, no CDN"
    );

    let data: Value = http
        .get(format!("{url}/data"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(data["user_id"], "ada");
    assert_eq!(data["wallet"]["balance"], 0);
    assert_eq!(data["wallet"]["status"], "empty");
    assert_eq!(data["packages"][0]["package_id"], "starter");
    assert_eq!(data["return_url"], format!("{APP}/billing?done=1"));

    // The page's stream, opened with the stream token the data gave.
    let token = data["stream_token"].as_str().unwrap();
    let mut stream = http
        .get(format!(
            "{}/v1/users/ada/wallet/stream?token={token}",
            server.base
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(stream.status(), 200);

    // Buy: a checkout for ada at the sandbox, returning to the app.
    let bought = http
        .post(format!("{url}/checkout"))
        .json(&json!({"package_id": "starter"}))
        .send()
        .await
        .unwrap();
    assert_eq!(bought.status(), 200);
    let bought: Value = bought.json().await.unwrap();
    let checkout_url = bought["checkout_url"].as_str().unwrap().to_owned();
    let reference = bought["reference"].as_str().unwrap().to_owned();
    let (_, payment) = send_json(
        &server.client(SERVICE),
        Method::GET,
        &format!("/v1/payments/{reference}"),
        "",
    )
    .await;
    assert_eq!(payment["user_id"], "ada");
    let paid = http
        .post(&checkout_url)
        .form(&[("action", "pay")])
        .send()
        .await
        .unwrap();
    assert_eq!(paid.status(), 200);

    // The stream shows 0, then 500 once the payment settled.
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut seen = String::new();
    loop {
        assert!(Instant::now() < deadline, "the balance never rose: {seen}");
        let chunk = tokio::time::timeout(Duration::from_secs(5), stream.chunk())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        seen.push_str(std::str::from_utf8(&chunk).unwrap());
        if seen.contains("\"balance\":500") {
            break;
        }
    }
    assert!(seen.contains("\"balance\":0"), "{seen}");
    server.stop().await;
}

#[tokio::test]
async fn a_changed_or_expired_link_is_refused_and_return_urls_stay_on_allowed_origins() {
    let server = portal_server(1).await;
    let http = reqwest::Client::new();
    let (_, answer) = session(&server, None).await;
    let url = answer["url"].as_str().unwrap().to_owned();
    assert_eq!(http.get(&url).send().await.unwrap().status(), 200);

    // Changed: 403, a page that says so, and no data or checkout.
    let mut changed = url.clone();
    let last = changed.pop().unwrap();
    changed.push(if last == '0' { '1' } else { '0' });
    let refused = http.get(&changed).send().await.unwrap();
    assert_eq!(refused.status(), 403);
    assert!(refused.text().await.unwrap().contains("not valid"));
    let data = http.get(format!("{changed}/data")).send().await.unwrap();
    assert_eq!(data.status(), 403);
    let checkout = http
        .post(format!("{changed}/checkout"))
        .json(&json!({"package_id": "starter"}))
        .send()
        .await
        .unwrap();
    assert_eq!(checkout.status(), 403);

    // A portal link is not a stream token.
    let token = url.rsplit('/').next().unwrap();
    let stream = http
        .get(format!(
            "{}/v1/users/ada/wallet/stream?token={token}",
            server.base
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(stream.status(), 401);

    // Expired: 410.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let expired = http.get(&url).send().await.unwrap();
    assert_eq!(expired.status(), 410);
    assert!(expired.text().await.unwrap().contains("expired"));

    // Return URLs: absolute http(s) on an allowed origin only.
    for bad in [
        "https://evil.example.net/",
        "/relative",
        "javascript:alert(1)",
        "https://app.example.com.evil.net/",
        "https://user@evil.example.net/",
    ] {
        let (status, body) = session(&server, Some(bad)).await;
        assert_eq!((status, slug(&body)), (422, "invalid-return-url"), "{bad}");
    }
    let (status, _) = raw(
        &server.client(SERVICE),
        Method::POST,
        "/v1/users/nobody/portal-sessions",
        "",
    )
    .await;
    assert_eq!(status, 404);
    server.stop().await;
}

/// `PUT /v1/tenants/{id}` with `portal_return_origins`, as the platform key sends it.
async fn put_origins(server: &Server, origins: Value) -> (u16, Value) {
    send_json(
        &server.client(PLATFORM),
        Method::PUT,
        "/v1/tenants/acme",
        &json!({ "portal_return_origins": origins }).to_string(),
    )
    .await
}

#[tokio::test]
async fn a_tenants_own_return_origins_replace_the_servers_and_outlive_a_restart() {
    let server = portal_server(60).await;
    // Bad lists: 422 naming the bad origin, and nothing changes.
    let too_many: Vec<String> = (0..17)
        .map(|i| format!("https://a{i}.example.com"))
        .collect();
    for (bad, named) in [
        (
            json!(["https://billing.example.org/return"]),
            Some("https://billing.example.org/return"),
        ),
        (
            json!(["https://ok.example.org", "billing.example.org"]),
            Some("billing.example.org"),
        ),
        (
            json!(["https://billing.example.org?x=1"]),
            Some("https://billing.example.org?x=1"),
        ),
        (
            json!(["https://billing.example.org#x"]),
            Some("https://billing.example.org#x"),
        ),
        (
            json!(["mailto:billing@example.org"]),
            Some("mailto:billing@example.org"),
        ),
        (json!(too_many), None),
    ] {
        let (status, problem) = put_origins(&server, bad.clone()).await;
        assert_eq!(status, 422, "{bad}: {problem}");
        assert_eq!(problem["field"], "portal_return_origins", "{problem}");
        if let Some(named) = named {
            assert_eq!(problem["value"], named, "{problem}");
            assert!(
                problem["detail"].as_str().unwrap().contains(named),
                "{problem}"
            );
        }
    }
    let (_, tenants) = send_json(&server.client(PLATFORM), Method::GET, "/v1/tenants", "").await;
    let acme = |tenants: &Value| {
        tenants["tenants"]
            .as_array()
            .unwrap()
            .iter()
            .find(|t| t["tenant_id"] == "acme")
            .cloned()
            .unwrap()
    };
    assert_eq!(acme(&tenants)["portal_return_origins"], json!([]));
    // The server's default applies while the tenant has none.
    assert_eq!(
        session(&server, Some("https://app.example.com/billing"))
            .await
            .0,
        200
    );
    assert_eq!(
        session(&server, Some("https://billing.example.org/"))
            .await
            .0,
        422
    );

    // The tenant's own: they replace the server's default.
    let (status, tenant) = put_origins(
        &server,
        json!(["https://Billing.Example.org/", "http://localhost:3000"]),
    )
    .await;
    assert_eq!(status, 200, "{tenant}");
    assert_eq!(
        tenant["portal_return_origins"],
        json!(["https://billing.example.org", "http://localhost:3000"])
    );
    assert_eq!(
        session(&server, Some("https://billing.example.org/thanks?x=1"))
            .await
            .0,
        200
    );
    assert_eq!(
        session(&server, Some("http://localhost:3000/")).await.0,
        200
    );
    let (status, problem) = session(&server, Some("https://app.example.com/billing")).await;
    assert_eq!((status, slug(&problem)), (422, "invalid-return-url"));
    assert!(
        problem["detail"]
            .as_str()
            .unwrap()
            .contains("the tenant's portal_return_origins"),
        "{problem}"
    );

    // Audited like the tenant's other settings.
    let (_, audit) = send_json(
        &server.client(server::ADMIN),
        Method::GET,
        "/v1/audit?limit=20",
        "",
    )
    .await;
    let record = audit["records"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["action"] == "tenant.portal_return_origins")
        .cloned();
    let record = match record {
        Some(record) => record,
        None => {
            // The audit follows the log a moment behind.
            tokio::time::sleep(Duration::from_millis(500)).await;
            let (_, audit) = send_json(
                &server.client(server::ADMIN),
                Method::GET,
                "/v1/audit?limit=20",
                "",
            )
            .await;
            audit["records"]
                .as_array()
                .unwrap()
                .iter()
                .find(|r| r["action"] == "tenant.portal_return_origins")
                .cloned()
                .expect("an audit record")
        }
    };
    assert_eq!(record["target"], "tenant:acme");

    // Kept across a restart; `[]` gives the server's default back.
    let dir = server.stop().await;
    let config = {
        let mut config = server::config(dir.path());
        config.streams.portal_return_origins = vec![APP.into()];
        config
    };
    let server = Server::start_in(dir, config).await;
    let (_, tenants) = send_json(&server.client(PLATFORM), Method::GET, "/v1/tenants", "").await;
    assert_eq!(
        acme(&tenants)["portal_return_origins"],
        json!(["https://billing.example.org", "http://localhost:3000"])
    );
    assert_eq!(
        session(&server, Some("https://billing.example.org/"))
            .await
            .0,
        200
    );
    let (status, tenant) = put_origins(&server, json!([])).await;
    assert_eq!(
        (status, tenant["portal_return_origins"].clone()),
        (200, json!([]))
    );
    assert_eq!(
        session(&server, Some("https://app.example.com/billing"))
            .await
            .0,
        200
    );
    assert_eq!(
        session(&server, Some("https://billing.example.org/"))
            .await
            .0,
        422
    );
    server.stop().await;
}
