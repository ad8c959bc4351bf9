//! The hosted top-up page in a real browser: open a portal session, buy a package through the
//! sandbox checkout and watch the balance rise without a reload; a changed or expired link is
//! refused; the page renews its stream token when it expires. With `CREDITD_SCREENSHOTS=1` it also writes `docs/portal.png` (desktop) and
//! `docs/portal-phone.png` (phone width).

#[path = "common/server.rs"]
mod server;
#[path = "common/webdriver.rs"]
mod webdriver;

use std::time::Duration;

use creditd::client::Debit;
use creditd::config::Gateway;
use http::Method;
use serde_json::json;
use server::{send_json, Server, ADMIN, SERVICE};
use webdriver::Browser;

/// How long the test's portal links are valid.
const TTL_SECONDS: u64 = 8;

fn screenshots() -> bool {
    std::env::var("CREDITD_SCREENSHOTS").is_ok_and(|value| value == "1")
}

async fn save(browser: &Browser, name: &str) {
    if screenshots() {
        // Let the gauge's transition finish.
        tokio::time::sleep(Duration::from_millis(900)).await;
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("docs")
            .join(name);
        std::fs::write(path, browser.screenshot().await).unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_person_tops_up_on_the_portal_and_sees_the_balance_rise_without_a_reload() {
    let Some(browser) = Browser::start().await else {
        return;
    };
    let server = Server::start_with(|config| {
        config.payments.gateway = Gateway::Sandbox;
        config.streams.portal_ttl_seconds = TTL_SECONDS;
    })
    .await;
    server.sell_starter_to_ada("Starter").await;
    let admin = server.client(ADMIN);
    admin
        .put_package("pro", "Pro", 2_000, 700_000, "NGN")
        .await
        .unwrap();
    // A first top-up by hand and some use, so that the page has a gauge and activity to show.
    send_json(
        &admin,
        Method::POST,
        "/v1/users/ada/credit",
        &json!({"amount": 500, "kind": "topup", "reason": "welcome pack", "description": "Welcome pack"}).to_string(),
    )
    .await;
    let service = server.client(SERVICE);
    for amount in [60, 40, 50] {
        service
            .debit("ada", &Debit::amount(amount), None)
            .await
            .unwrap();
    }
    // The page lists activity from the history, which follows the log a moment behind.
    for _ in 0..100 {
        let (_, listed) = send_json(&service, Method::GET, "/v1/users/ada/entries", "").await;
        if listed["entries"]
            .as_array()
            .is_some_and(|entries| entries.len() == 4)
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let created = std::time::Instant::now();
    let (status, answer) =
        send_json(&service, Method::POST, "/v1/users/ada/portal-sessions", "").await;
    assert_eq!(status, 200, "{answer}");
    let url = answer["url"].as_str().unwrap().to_owned();

    browser.resize(1100, 1000).await;
    browser.open(&url).await;
    browser.wait_text("#balance", "350 credits").await;
    browser.wait_text("#live", "live").await;
    browser.wait_text("#status", "Healthy").await;
    browser
        .wait_text("#gauge-text", "70 % of last top-up (500 credits)")
        .await;
    save(&browser, "portal.png").await;
    browser.resize(390, 1100).await;
    save(&browser, "portal-phone.png").await;
    browser.resize(1100, 1000).await;

    // Buy: the checkout opens in a new window; pay there; the portal's balance rises by itself.
    let portal_window = browser.windows().await[0].clone();
    browser.click("button[data-package='starter']").await;
    let mut checkout = None;
    for _ in 0..100 {
        checkout = browser
            .windows()
            .await
            .into_iter()
            .find(|w| *w != portal_window);
        if checkout.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    browser
        .switch_to(&checkout.expect("the checkout opened"))
        .await;
    browser.wait_text("#status", "Waiting for payment").await;
    browser.click("#pay").await;
    browser
        .wait_text("#status", "Paid — 500 credits added")
        .await;
    browser.switch_to(&portal_window).await;
    browser.wait_text("#balance", "850 credits").await;
    assert_eq!(service.wallet("ada", None).await.unwrap().balance, 850);

    // A changed link: refused with a page that says so. An expired one too.
    let mut changed = url.clone();
    let last = changed.pop().unwrap();
    changed.push(if last == '0' { '1' } else { '0' });
    browser.open(&changed).await;
    browser.wait_text("h1", "This link is not valid").await;
    let expiry = created + Duration::from_secs(TTL_SECONDS) + Duration::from_millis(1100);
    tokio::time::sleep(expiry.saturating_duration_since(std::time::Instant::now())).await;
    browser.open(&url).await;
    browser.wait_text("h1", "This link has expired").await;
    browser.quit().await;
    server.stop().await;
}

/// The page's live balance outlives its stream token: the server ends the stream with `expired`
/// when the token lapses, and the page opens the next one at once with a token from its session
/// (not after the seconds a failed reconnect would take).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_renews_its_stream_token_when_the_stream_expires() {
    let Some(browser) = Browser::start().await else {
        return;
    };
    let server = Server::start_with(|config| {
        config.streams.token_ttl_seconds = 2;
        config.streams.portal_ttl_seconds = 120;
    })
    .await;
    server.sell_starter_to_ada("Starter").await;
    let service = server.client(SERVICE);
    send_json(
        &server.client(ADMIN),
        Method::POST,
        "/v1/users/ada/credit",
        &json!({"amount": 100, "reason": "welcome"}).to_string(),
    )
    .await;
    let (status, answer) =
        send_json(&service, Method::POST, "/v1/users/ada/portal-sessions", "").await;
    assert_eq!(status, 200, "{answer}");
    browser.open(answer["url"].as_str().unwrap()).await;
    browser.wait_text("#balance", "100 credits").await;
    browser.wait_text("#live", "live").await;
    let cut = || async {
        let metrics = reqwest::get(format!("{}/metrics", server.base))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        metrics
            .lines()
            .find(|line| line.starts_with("creditd_streams_cut_total{reason=\"token_expired\"}"))
            .and_then(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    // Two lifetimes of a token: the page's stream expired at least once, and was renewed.
    for round in 1..=2 {
        tokio::time::sleep(Duration::from_millis(2_600)).await;
        assert!(
            cut().await >= f64::from(round),
            "the stream expired {round} times"
        );
        service
            .debit("ada", &Debit::amount(10), None)
            .await
            .unwrap();
        let expected = format!("{} credits", 100 - 10 * round);
        let deadline = std::time::Instant::now() + Duration::from_millis(2_500);
        loop {
            let shown = browser.text("#balance").await;
            if shown == expected {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "round {round}: the page shows {shown:?}, not {expected:?}: no live stream"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    browser.quit().await;
    server.stop().await;
}
