//! The sandbox checkout page in a real browser: headless Chromium, driven through ChromeDriver's
//! WebDriver protocol (plain HTTP and JSON), loads the page and clicks Pay as a person would.
//!
//! Needs `chromium` and `chromedriver` (Debian: `apt-get install chromium chromium-driver`; `.ci/run`
//! installs them and sets `CREDITD_BROWSER_TESTS=1`, which turns their absence into a failure).
//! Without them, and without that variable, the test says so and does nothing.

#[path = "common/server.rs"]
mod server;
#[path = "common/webdriver.rs"]
mod webdriver;

use creditd::config::Gateway;
use server::{Server, SERVICE};
use webdriver::Browser;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_person_pays_on_the_sandbox_checkout_page() {
    let Some(browser) = Browser::start().await else {
        return;
    };
    let server = Server::start_with(|config| config.payments.gateway = Gateway::Sandbox).await;
    server.sell_starter_to_ada("Starter pack").await;
    let (_, checkout_url) = server.initialize().await;
    let service = server.client(SERVICE);

    browser.open(&checkout_url).await;
    assert_eq!(browser.text("h1").await, "Starter pack");
    assert_eq!(browser.text("#price").await, "2,000.00 NGN");
    assert_eq!(browser.text("#status").await, "Waiting for payment");
    browser.click("#pay").await;
    browser
        .wait_text("#status", "Paid — 500 credits added")
        .await;
    assert_eq!(
        browser.url().await,
        checkout_url,
        "back on the page after paying"
    );
    assert_eq!(service.wallet("ada", None).await.unwrap().balance, 500);
    browser.quit().await;

    server.stop().await;
}
