//! The operators' dashboard in a real browser (headless Chromium through ChromeDriver, see
//! `tests/common/webdriver.rs`): an admin signs in with a key, finds a user and sees the balance,
//! grants credits with a reason and sees the balance change, types a bad price (then a position
//! out of range) into a package and sees the API's message next to the field, sees the usage chart drawn for the debits made, and
//! the audit log with its chain status; a service key sees no audit page, and a platform key
//! picks the tenant it acts in.
//!
//! With `CREDITD_SCREENSHOTS=1` it also saves a screenshot of each page into `docs/` (the README
//! shows them); without it nothing is written, so CI leaves them alone.

#[path = "common/server.rs"]
mod server;
#[path = "common/webdriver.rs"]
mod webdriver;

use creditd::config::Gateway;
use http::Method;
use serde_json::{json, Value};
use server::{send_json, Server, ADMIN, GLOBEX, PLATFORM, SERVICE};
use webdriver::Browser;

/// An integer as the page shows it (`1,234`).
fn grouped(n: i64) -> String {
    let digits = n.unsigned_abs().to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    if n < 0 {
        format!("-{out}")
    } else {
        out
    }
}

/// Saves the whole page as `docs/dashboard-{name}.png` when `CREDITD_SCREENSHOTS=1`: the window
/// is made as tall as the page (up to 2400 pixels), then put back.
async fn screenshot(browser: &Browser, name: &str, width: u32) {
    if std::env::var("CREDITD_SCREENSHOTS").is_ok_and(|v| v == "1") {
        let height = browser
            .script("return document.documentElement.scrollHeight", json!([]))
            .await
            .as_u64()
            .unwrap()
            .clamp(600, 2400);
        // The window's height includes what is not the page: grow it until the page fits.
        let mut window = height as u32;
        for _ in 0..3 {
            browser.resize(width, window).await;
            let inner = browser.script("return window.innerHeight", json!([])).await;
            let inner = inner.as_u64().unwrap() as u32;
            if inner >= height as u32 {
                break;
            }
            window += height as u32 - inner;
        }
        let png = browser.screenshot().await;
        assert!(png.starts_with(b"\x89PNG"), "not a PNG");
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("docs")
            .join(format!("dashboard-{name}.png"));
        std::fs::write(&path, png).unwrap();
        browser.resize(width, 900).await;
    }
}

async fn post(server: &Server, secret: &str, path: &str, body: Value) -> Value {
    let (status, answer) = send_json(
        &server.client(secret),
        Method::POST,
        path,
        &body.to_string(),
    )
    .await;
    assert!(status < 300, "{path}: {status} {answer}");
    answer
}

async fn put(server: &Server, secret: &str, path: &str, body: Value) -> Value {
    let (status, answer) =
        send_json(&server.client(secret), Method::PUT, path, &body.to_string()).await;
    assert!(status < 300, "{path}: {status} {answer}");
    answer
}

async fn balance(server: &Server, user: &str) -> i64 {
    let (_, wallet) = send_json(
        &server.client(SERVICE),
        Method::GET,
        &format!("/v1/users/{user}/wallet"),
        "",
    )
    .await;
    wallet["balance"].as_i64().unwrap()
}

/// A tenant with something to look at: packages, priced actions, users, spending, a sale.
async fn populate(server: &Server) -> i64 {
    server.sell_starter_to_ada("Starter pack").await;
    put(
        server,
        ADMIN,
        "/v1/packages/pro",
        json!({"name": "Pro pack", "credits": 5000, "price_minor": 1_500_000, "price_currency": "NGN"}),
    )
    .await;
    for (action, cost, description) in [
        ("chat", 3, "One chat completion"),
        ("image", 20, "One generated image"),
        ("search", 1, "One web search"),
    ] {
        put(
            server,
            ADMIN,
            &format!("/v1/actions/{action}"),
            json!({"cost": cost, "description": description}),
        )
        .await;
    }
    for (user, name, email) in [
        ("ada", "Ada Lovelace", "ada@example.com"),
        ("adam", "Adam Smith", "adam@example.com"),
        ("grace", "Grace Hopper", "grace@example.com"),
        ("linus", "Linus Torvalds", "linus@example.com"),
    ] {
        put(
            server,
            SERVICE,
            &format!("/v1/users/{user}"),
            json!({"name": name, "email": email}),
        )
        .await;
    }
    post(
        server,
        ADMIN,
        "/v1/users/ada/credit",
        json!({"amount": 1000, "reason": "welcome credits"}),
    )
    .await;
    post(
        server,
        ADMIN,
        "/v1/users/grace/credit",
        json!({"amount": 300, "reason": "welcome credits"}),
    )
    .await;
    let mut used = 0;
    for (user, action, times, cost) in [
        ("ada", "chat", 7, 3),
        ("ada", "image", 2, 20),
        ("grace", "search", 12, 1),
        ("grace", "chat", 3, 3),
    ] {
        for _ in 0..times {
            post(
                server,
                SERVICE,
                &format!("/v1/users/{user}/debit"),
                json!({"action": action}),
            )
            .await;
            used += cost;
        }
    }
    post(
        server,
        SERVICE,
        "/v1/users/ada/reservations",
        json!({"amount": 50, "ttl_seconds": 3600}),
    )
    .await;
    // A sale through the sandbox checkout, for the revenue chart and the payments table.
    let (reference, _) = server.initialize().await;
    let paid = reqwest::Client::new()
        .post(format!("{}/sandbox/checkout/{reference}", server.base))
        .header("content-type", "application/x-www-form-urlencoded")
        .body("action=pay")
        .send()
        .await
        .unwrap();
    assert!(paid.status().is_success() || paid.status().is_redirection());
    used
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_uses_the_dashboard() {
    let Some(browser) = Browser::start().await else {
        return;
    };
    let server = Server::start_with(|config| config.payments.gateway = Gateway::Sandbox).await;
    let used = populate(&server).await;
    let dashboard = format!("{}/dashboard", server.base);

    // Sign in: a wrong key is refused on the form, the admin key opens the Users page.
    browser.open(&dashboard).await;
    assert_eq!(browser.text("h1").await, "Sign in");
    browser.fill("#signin-key", "not-a-key").await;
    browser.click("#signin-submit").await;
    browser
        .wait_text("#signin-error", "This key is not known to the server.")
        .await;
    browser.fill("#signin-key", ADMIN).await;
    browser.click("#signin-submit").await;
    browser.wait_text("#who-name", "acme-admin").await;
    assert_eq!(browser.text("#who-tenant").await, "acme");
    assert!(browser.displayed("#users-title").await);
    let stored = browser
        .script("return sessionStorage.getItem('creditd.key')", json!([]))
        .await;
    assert_eq!(stored, ADMIN, "the key lives in session storage");
    let local = browser
        .script("return localStorage.length", json!([]))
        .await;
    assert_eq!(local, 0, "nothing in local storage");

    // Find a user and see the balance.
    browser.fill("#user-search", "ad").await;
    browser.click("#user-search-submit").await;
    browser
        .wait_for(
            "the search lists ada and adam only",
            "const ids = [...document.querySelectorAll('.user-row')].map(b => b.dataset.user); \
             return ids.join(',') === 'ada,adam';",
            json!([]),
        )
        .await;
    browser.click(r#".user-row[data-user="ada"]"#).await;
    let before = balance(&server, "ada").await;
    browser.wait_text("#balance", &grouped(before)).await;
    assert_eq!(browser.text("#user-id").await, "ada");
    browser
        .wait_for(
            "the ledger, the open hold and the payment (its price in NGN) are listed",
            "return document.querySelectorAll('#entries tbody tr').length >= 10 && \
             document.querySelector('#holds tbody td.num')?.textContent === '50' && \
             document.querySelector('#payments tbody')?.textContent.includes('starter') && \
             document.querySelector('#payments tbody')?.textContent.includes('NGN');",
            json!([]),
        )
        .await;

    // Grant with a reason and see the balance change.
    browser.fill("#grant-amount", "250").await;
    browser.fill("#grant-reason", "").await;
    browser.click("#grant-submit").await;
    browser
        .wait_text(
            "#grant-reason-error",
            "Say why: the reason goes to the audit log.",
        )
        .await;
    assert_eq!(balance(&server, "ada").await, before, "nothing was sent");
    browser.fill("#grant-reason", "Support ticket 4411").await;
    browser.click("#grant-submit").await;
    browser.wait_text("#balance", &grouped(before + 250)).await;
    assert_eq!(balance(&server, "ada").await, before + 250);
    browser
        .wait_text(
            "#user-message",
            &format!(
                "Granted 250 credits. Balance now {}.",
                grouped(before + 250)
            ),
        )
        .await;
    browser
        .wait_for(
            "the grant heads the ledger with its reason",
            "const row = document.querySelector('#entries tbody tr'); \
             return row && row.textContent.includes('+250') && row.textContent.includes('Support ticket 4411');",
            json!([]),
        )
        .await;
    screenshot(&browser, "users", 1280).await;

    // Billing: a bad price is refused by the API, whose message shows next to the field.
    send_json(
        &server.client(ADMIN),
        Method::PUT,
        "/v1/pools/org",
        &json!({"name": "Org"}).to_string(),
    )
    .await;
    browser.click(r#"#nav a[data-page="billing"]"#).await;
    browser
        .wait_for(
            "the packages are listed",
            "return document.querySelector('[aria-label=\"Edit package starter\"]');",
            json!([]),
        )
        .await;
    browser
        .click(r#"[aria-label="Edit package starter"]"#)
        .await;
    assert_eq!(
        browser.property("#package-name", "value").await,
        "Starter pack"
    );
    browser.fill("#package-price", "-5").await;
    browser.click("#package-submit").await;
    let (status, problem) = send_json(
        &server.client(ADMIN),
        Method::PUT,
        "/v1/packages/starter",
        &json!({"name": "Starter pack", "credits": 500, "price_minor": -5, "price_currency": "NGN", "active": true})
            .to_string(),
    )
    .await;
    assert_eq!(status, 422, "{problem}");
    assert_eq!(problem["field"], "price_minor", "{problem}");
    let detail = problem["detail"].as_str().unwrap();
    browser.wait_text("#package-price-error", detail).await;
    assert_eq!(
        browser
            .attribute("#package-price", "aria-invalid")
            .await
            .as_deref(),
        Some("true")
    );
    let (_, package) = send_json(
        &server.client(ADMIN),
        Method::GET,
        "/v1/packages/starter",
        "",
    )
    .await;
    assert_eq!(
        package["price_minor"], 200_000,
        "the bad price changed nothing"
    );
    // A good price saves, and the table shows it.
    browser.fill("#package-price", "250000").await;
    browser.click("#package-submit").await;
    browser
        .wait_for(
            "the new price is listed",
            "return document.querySelector('#packages tbody').textContent.includes('2,500.00 NGN');",
            json!([]),
        )
        .await;
    assert_eq!(browser.text("#package-price-error").await, "");
    // The position: the API's refusal of one out of range shows next to it; a good one saves.
    assert_eq!(browser.property("#package-position", "value").await, "0");
    browser.fill("#package-position", "5000000000").await;
    browser.click("#package-submit").await;
    let (status, problem) = send_json(
        &server.client(ADMIN),
        Method::PUT,
        "/v1/packages/starter",
        &json!({"name": "Starter pack", "credits": 500, "price_minor": 250_000, "price_currency": "NGN", "active": true, "position": 5_000_000_000u64})
            .to_string(),
    )
    .await;
    assert_eq!(
        (status, problem["field"].as_str()),
        (422, Some("position")),
        "{problem}"
    );
    let position_detail = problem["detail"].as_str().unwrap();
    browser
        .wait_text("#package-position-error", position_detail)
        .await;
    assert_eq!(
        browser
            .attribute("#package-position", "aria-invalid")
            .await
            .as_deref(),
        Some("true")
    );
    browser.fill("#package-position", "3").await;
    browser.click("#package-submit").await;
    browser
        .wait_for(
            "the package is saved",
            "return document.getElementById('package-form-title').textContent.startsWith('Saved');",
            json!([]),
        )
        .await;
    let (_, package) = send_json(
        &server.client(ADMIN),
        Method::GET,
        "/v1/packages/starter",
        "",
    )
    .await;
    assert_eq!(
        (
            package["position"].as_i64(),
            package["price_minor"].as_i64()
        ),
        (Some(3), Some(250_000)),
        "{package}"
    );
    assert_eq!(browser.text("#package-position-error").await, "");
    browser.fill("#package-price", "-5").await;
    browser.click("#package-submit").await;
    browser.wait_text("#package-price-error", detail).await;
    // A package bought for a pool: a bad e-mail is the API's to refuse, beside the field; then
    // the checkout starts, and its page names the pool.
    browser
        .click(r#"[aria-label="Buy a package for pool org"]"#)
        .await;
    assert_eq!(browser.property("#pool-buy-pool", "value").await, "org");
    browser.fill("#pool-buy-package", "starter").await;
    browser.fill("#pool-buy-email", "not-an-address").await;
    browser.click("#pool-buy-submit").await;
    let (status, problem) = send_json(
        &server.client(ADMIN),
        Method::POST,
        "/v1/payments/initialize",
        &json!({"pool_id": "org", "package_id": "starter", "email": "not-an-address"}).to_string(),
    )
    .await;
    assert_eq!(
        (status, problem["field"].as_str()),
        (422, Some("email")),
        "{problem}"
    );
    browser
        .wait_text("#pool-buy-email-error", problem["detail"].as_str().unwrap())
        .await;
    browser.fill("#pool-buy-email", "finance@example.com").await;
    browser.click("#pool-buy-submit").await;
    let link = browser
        .wait_for(
            "the checkout link",
            "const a = document.getElementById('pool-buy-link'); return a && a.href;",
            json!([]),
        )
        .await;
    let page = reqwest::get(link.as_str().unwrap())
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        page.contains("For the credit pool") && page.contains(">org<"),
        "{page}"
    );
    screenshot(&browser, "billing", 1280).await;

    // Reports: the usage chart draws one bar per hour, and the bars add up to what was spent.
    browser.click(r#"#nav a[data-page="reports"]"#).await;
    browser.click("#report-window").await;
    browser
        .script(
            "const s = document.getElementById('report-window'); s.value = '24'; return true;",
            json!([]),
        )
        .await;
    browser.click("#report-submit").await;
    let bars = browser
        .wait_for(
            "the usage chart is drawn",
            "const bars = [...document.querySelectorAll('#chart-usage-time svg rect.bar')]; \
             return bars.length === 24 ? bars.map(b => Number(b.getAttribute('data-value'))) : null;",
            json!([]),
        )
        .await;
    let values: Vec<i64> = bars
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_i64().unwrap())
        .collect();
    assert_eq!(values.iter().sum::<i64>(), used, "{values:?}");
    assert_eq!(
        *values.last().unwrap(),
        used,
        "all of it this hour: {values:?}"
    );
    let by_action = browser
        .wait_for(
            "the usage by action is drawn",
            "const bars = [...document.querySelectorAll('#chart-usage-action svg rect.bar')]; \
             return bars.length ? bars.map(b => b.querySelector('title').textContent) : null;",
            json!([]),
        )
        .await;
    assert_eq!(
        by_action,
        json!([
            "image: 40 credits · 2×",
            "chat: 30 credits · 10×",
            "search: 12 credits · 12×"
        ]),
        "largest first"
    );
    browser
        .wait_for(
            "the revenue by package is drawn",
            "const bar = document.querySelector('#chart-revenue svg rect.bar title'); \
             return bar && bar.textContent === 'starter: 2,000.00 NGN · 1 sold';",
            json!([]),
        )
        .await;
    screenshot(&browser, "reports", 1280).await;

    // The audit log, with the chain's status and the grant made above.
    browser.click(r#"#nav a[data-page="audit"]"#).await;
    browser.wait_text("#chain-status", "chain intact").await;
    browser
        .wait_for(
            "the grant is in the audit table",
            "return [...document.querySelectorAll('#audit tbody tr')].some(r => \
             r.textContent.includes('credit.grant') && r.textContent.includes('Support ticket 4411'));",
            json!([]),
        )
        .await;
    screenshot(&browser, "audit", 1280).await;

    // At phone width the page still reads: nothing wider than the screen.
    browser.resize(390, 844).await;
    browser.click(r#"#nav a[data-page="users"]"#).await;
    browser.wait_text("#balance", &grouped(before + 250)).await;
    let overflow = browser
        .script(
            "return document.documentElement.scrollWidth - document.documentElement.clientWidth",
            json!([]),
        )
        .await;
    assert_eq!(overflow, 0, "the page scrolls sideways at phone width");
    screenshot(&browser, "phone", 390).await;
    browser.resize(1280, 900).await;

    // A service key: no audit page, no revoke, no package form.
    browser.click("#sign-out").await;
    browser.wait_text("h1", "Sign in").await;
    let stored = browser
        .script("return sessionStorage.getItem('creditd.key')", json!([]))
        .await;
    assert_eq!(stored, Value::Null, "signing out forgets the key");
    browser.fill("#signin-key", SERVICE).await;
    browser.click("#signin-submit").await;
    browser.wait_text("#who-role", "service").await;
    assert!(!browser.displayed(r#"#nav a[data-page="audit"]"#).await);
    assert!(browser.displayed(r#"#nav a[data-page="users"]"#).await);
    assert!(!browser.displayed("#revoke-form").await);
    assert!(!browser.displayed("#package-form").await);

    // A platform key picks the tenant it acts in; the pages then show that tenant's users.
    put(
        &server,
        GLOBEX,
        "/v1/users/hedy",
        json!({"name": "Hedy Lamarr"}),
    )
    .await;
    browser.click("#sign-out").await;
    browser.wait_text("h1", "Sign in").await;
    browser.fill("#signin-key", PLATFORM).await;
    browser.click("#signin-submit").await;
    browser.wait_text("#who-role", "platform").await;
    browser
        .wait_for(
            "the platform key's own tenant is listed first",
            "return document.querySelector('.user-row')?.dataset.user === 'ada';",
            json!([]),
        )
        .await;
    browser
        .click(r#"#tenant-select option[value="globex"]"#)
        .await;
    browser
        .wait_for(
            "globex's users, and only them",
            "const ids = [...document.querySelectorAll('.user-row')].map(b => b.dataset.user); \
             return ids.join(',') === 'hedy';",
            json!([]),
        )
        .await;
    assert_eq!(browser.property("#tenant-select", "value").await, "globex");

    browser.quit().await;
    server.stop().await;
}
