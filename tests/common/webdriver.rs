//! A small WebDriver client for the browser tests: headless Chromium driven through ChromeDriver's
//! WebDriver protocol (plain HTTP and JSON). [`Browser::start`] finds `chromium` and
//! `chromedriver` on the `PATH`; without them it returns `None` (the test then says so and does
//! nothing) unless `CREDITD_BROWSER_TESTS=1`, which `.ci/run` sets and which turns their absence
//! into a failure. Used by `tests/browser.rs` and `tests/browser_dashboard.rs`.
#![allow(dead_code)]

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use http::Method;
use serde_json::{json, Value};

pub const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

pub struct Browser {
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

pub fn find_program(name: &str) -> Option<std::path::PathBuf> {
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .map(|dir| std::path::Path::new(dir).join(name))
        .find(|path| path.is_file())
}

impl Browser {
    pub async fn start() -> Option<Browser> {
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
                    "--no-first-run", "--window-size=1280,900", "--hide-scrollbars", "--force-device-scale-factor=1", "--disable-background-networking", "--disable-component-update", "--disable-sync",
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

    pub async fn command(&self, method: Method, path: &str, body: Value) -> Value {
        self.try_command(method, path, body)
            .await
            .unwrap_or_else(|answer| panic!("webdriver {path}: {answer}"))
    }

    pub async fn try_command(
        &self,
        method: Method,
        path: &str,
        body: Value,
    ) -> Result<Value, Value> {
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
    pub async fn wait_text(&self, css: &str, expected: &str) {
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

    pub async fn open(&self, url: &str) {
        self.command(Method::POST, "/url", json!({ "url": url }))
            .await;
    }

    pub async fn element(&self, css: &str) -> String {
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

    pub async fn text(&self, css: &str) -> String {
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

    pub async fn click(&self, css: &str) {
        let element = self.element(css).await;
        self.command(
            Method::POST,
            &format!("/element/{element}/click"),
            json!({}),
        )
        .await;
    }

    /// Ends the session, which closes Chromium (killing the driver alone would leave it running).
    pub async fn quit(&self) {
        let _ = self
            .http
            .delete(format!("{}/session/{}", self.base, self.session))
            .send()
            .await;
    }

    pub async fn url(&self) -> String {
        self.command(Method::GET, "/url", Value::Null)
            .await
            .as_str()
            .unwrap()
            .to_owned()
    }

    /// Types `text` into the element (after clearing it).
    pub async fn fill(&self, css: &str, text: &str) {
        let element = self.element(css).await;
        self.command(
            Method::POST,
            &format!("/element/{element}/clear"),
            json!({}),
        )
        .await;
        self.command(
            Method::POST,
            &format!("/element/{element}/value"),
            json!({ "text": text }),
        )
        .await;
    }

    /// The value of the element's attribute, if it has it.
    pub async fn attribute(&self, css: &str, name: &str) -> Option<String> {
        let element = self.element(css).await;
        self.command(
            Method::GET,
            &format!("/element/{element}/attribute/{name}"),
            Value::Null,
        )
        .await
        .as_str()
        .map(str::to_owned)
    }

    /// The value of the element's DOM property (such as an input's `value`).
    pub async fn property(&self, css: &str, name: &str) -> Value {
        let element = self.element(css).await;
        self.command(
            Method::GET,
            &format!("/element/{element}/property/{name}"),
            Value::Null,
        )
        .await
    }

    /// Whether the element is shown.
    pub async fn displayed(&self, css: &str) -> bool {
        let element = self.element(css).await;
        self.command(
            Method::GET,
            &format!("/element/{element}/displayed"),
            Value::Null,
        )
        .await
        .as_bool()
        .unwrap()
    }

    /// Runs `script` (a function body; `arguments` holds `args`) in the page: its result.
    pub async fn script(&self, script: &str, args: Value) -> Value {
        self.command(
            Method::POST,
            "/execute/sync",
            json!({ "script": script, "args": args }),
        )
        .await
    }

    /// Polls `script` until it returns something other than null, false or an empty string (10 s).
    pub async fn wait_for(&self, what: &str, script: &str, args: Value) -> Value {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let value = self.script(script, args.clone()).await;
            let done =
                !matches!(&value, Value::Null | Value::Bool(false)) && value.as_str() != Some("");
            if done {
                return value;
            }
            assert!(Instant::now() < deadline, "{what}: never happened");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Resizes the window.
    pub async fn resize(&self, width: u32, height: u32) {
        self.command(
            Method::POST,
            "/window/rect",
            json!({ "width": width, "height": height }),
        )
        .await;
    }

    /// The handles of the open windows.
    pub async fn windows(&self) -> Vec<String> {
        let handles = self
            .command(Method::GET, "/window/handles", Value::Null)
            .await;
        handles
            .as_array()
            .unwrap()
            .iter()
            .map(|handle| handle.as_str().unwrap().to_owned())
            .collect()
    }

    /// Makes `handle` the window commands go to.
    pub async fn switch_to(&self, handle: &str) {
        self.command(Method::POST, "/window", json!({ "handle": handle }))
            .await;
    }

    /// A PNG of the viewport.
    pub async fn screenshot(&self) -> Vec<u8> {
        let encoded = self.command(Method::GET, "/screenshot", Value::Null).await;
        base64_decode(encoded.as_str().unwrap())
    }
}

/// Standard base64 (with padding), as WebDriver sends screenshots.
fn base64_decode(text: &str) -> Vec<u8> {
    let value = |c: u8| match c {
        b'A'..=b'Z' => c - b'A',
        b'a'..=b'z' => c - b'a' + 26,
        b'0'..=b'9' => c - b'0' + 52,
        b'+' => 62,
        b'/' => 63,
        _ => panic!("not base64: {c}"),
    };
    let bytes: Vec<u8> = text
        .bytes()
        .filter(|c| *c != b'=' && !c.is_ascii_whitespace())
        .collect();
    let mut out = Vec::with_capacity(bytes.len() * 3 / 4);
    for chunk in bytes.chunks(4) {
        let mut bits = 0u32;
        for (i, c) in chunk.iter().enumerate() {
            bits |= u32::from(value(*c)) << (18 - 6 * i);
        }
        let [_, a, b, c] = bits.to_be_bytes();
        out.extend_from_slice(&[a, b, c][..chunk.len() - 1]);
    }
    out
}

#[test]
fn base64_is_decoded() {
    assert_eq!(base64_decode("aGVsbG8="), b"hello");
    assert_eq!(base64_decode("aGk="), b"hi");
    assert_eq!(base64_decode("YWJj"), b"abc");
}
