//! The sandbox checkout page in a real browser: headless Chromium, driven through ChromeDriver's
//! WebDriver protocol (plain HTTP and JSON), loads the page and clicks Pay as a person would.
//!
//! Needs `chromium` and `chromedriver` (Debian: `apt-get install chromium chromium-driver`; `.ci/run`
//! installs them and sets `CREDITD_BROWSER_TESTS=1`, which turns their absence into a failure).
//! Without them, and without that variable, the test says so and does nothing.

#[path = "common/server.rs"]
mod server;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use creditd::config::Gateway;
use http::Method;
use serde_json::{json, Value};
use server::{Server, SERVICE};

const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

struct Browser {
    driver: Child,
    base: String,
    session: String,
    http: reqwest::Client,
    _profile: tempfile::TempDir,
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

fn find_program(name: &str) -> Option<std::path::PathBuf> {
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .map(|dir| std::path::Path::new(dir).join(name))
        .find(|path| path.is_file())
}

impl Browser {
    async fn start() -> Option<Browser> {
        let required = std::env::var("CREDITD_BROWSER_TESTS").is_ok_and(|v| v == "1");
        let (Some(driver), Some(chromium)) =
            (find_program("chromedriver"), find_program("chromium"))
        else {
            assert!(
                !required,
                "CREDITD_BROWSER_TESTS=1 but chromium or chromedriver is not installed"
            );
            eprintln!("browser test not run: install chromium and chromium-driver (CI does)");
            return None;
        };
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .ok()?
            .local_addr()
            .ok()?
            .port();
        let child = Command::new(driver)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .ok()?;
        let base = format!("http://127.0.0.1:{port}");
        let http = reqwest::Client::new();
        let deadline = Instant::now() + Duration::from_secs(20);
        while http.get(format!("{base}/status")).send().await.is_err() {
            assert!(Instant::now() < deadline, "chromedriver did not start");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let profile = tempfile::tempdir().ok()?;
        let capabilities = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": chromium,
                "args": [
                    "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-quic",
                    "--no-first-run", "--disable-background-networking", "--disable-component-update", "--disable-sync",
                    format!("--user-data-dir={}", profile.path().display()),
                ]
            }
        }}});
        let answer: Value = http
            .post(format!("{base}/session"))
            .json(&capabilities)
            .send()
            .await
            .ok()?
            .json()
            .await
            .ok()?;
        let session = answer["value"]["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no session: {answer}"))
            .to_owned();
        Some(Browser {
            driver: child,
            base,
            session,
            http,
            _profile: profile,
        })
    }

    async fn command(&self, method: Method, path: &str, body: Value) -> Value {
        self.try_command(method, path, body)
            .await
            .unwrap_or_else(|answer| panic!("webdriver {path}: {answer}"))
    }

    async fn try_command(&self, method: Method, path: &str, body: Value) -> Result<Value, Value> {
        let url = format!("{}/session/{}{path}", self.base, self.session);
        let request = if method == Method::GET {
            self.http.get(url)
        } else {
            self.http.post(url).json(&body)
        };
        let answer: Value = request.send().await.unwrap().json().await.unwrap();
        if answer["value"]["error"].is_null() {
            Ok(answer["value"].clone())
        } else {
            Err(answer)
        }
    }

    /// The text of an element once it reads `expected`: a click that submits a form returns before
    /// the next page has loaded, so the page is polled (an element of the old page goes stale).
    async fn wait_text(&self, css: &str, expected: &str) {
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut last = Value::Null;
        while Instant::now() < deadline {
            let found = self
                .try_command(
                    Method::POST,
                    "/element",
                    json!({"using": "css selector", "value": css}),
                )
                .await;
            if let Ok(element) = found.as_ref().map(|found| found[ELEMENT].clone()) {
                if let Some(element) = element.as_str() {
                    let path = format!("/element/{element}/text");
                    match self.try_command(Method::GET, &path, Value::Null).await {
                        Ok(text) if text == expected => return,
                        Ok(text) | Err(text) => last = text,
                    }
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("{css} never read {expected:?}; last {last}");
    }

    async fn open(&self, url: &str) {
        self.command(Method::POST, "/url", json!({ "url": url }))
            .await;
    }

    async fn element(&self, css: &str) -> String {
        let found = self
            .command(
                Method::POST,
                "/element",
                json!({"using": "css selector", "value": css}),
            )
            .await;
        found[ELEMENT]
            .as_str()
            .unwrap_or_else(|| panic!("no element {css}: {found}"))
            .to_owned()
    }

    async fn text(&self, css: &str) -> String {
        let element = self.element(css).await;
        self.command(
            Method::GET,
            &format!("/element/{element}/text"),
            Value::Null,
        )
        .await
        .as_str()
        .unwrap()
        .to_owned()
    }

    async fn click(&self, css: &str) {
        let element = self.element(css).await;
        self.command(
            Method::POST,
            &format!("/element/{element}/click"),
            json!({}),
        )
        .await;
    }

    /// Ends the session, which closes Chromium (killing the driver alone would leave it running).
    async fn quit(&self) {
        let _ = self
            .http
            .delete(format!("{}/session/{}", self.base, self.session))
            .send()
            .await;
    }

    async fn url(&self) -> String {
        self.command(Method::GET, "/url", Value::Null)
            .await
            .as_str()
            .unwrap()
            .to_owned()
    }
}

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
