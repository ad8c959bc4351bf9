//! Black-box tests of the HTTP server under a hostile client (issue 8, items 3 and 4): floods of
//! idle connections, of oversized and unfinished headers, of slow bodies, and bodies past the
//! global budget. Each runs the real binary (so its memory is the server's alone, read from
//! `/proc/<pid>/status`), speaks raw HTTP/1.1 over loopback, and is bounded in time: every wait
//! has a timeout, and the flooding tasks end with the test.

use std::time::{Duration, Instant};

use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::task::JoinSet;

#[path = "common/process.rs"]
mod process;

use process::{Process, SERVICE};

/// The longest any one test may run; past it the test fails instead of hanging.
const TEST_DEADLINE: Duration = Duration::from_secs(90);

/// An answer read off the wire.
#[derive(Debug)]
struct Answer {
    status: u16,
    /// The head's header lines, names lowercased.
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, value)| value.as_str())
    }

    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or(Value::Null)
    }
}

/// Parses what a server sent on a connection it then closed.
fn parse_answer(bytes: &[u8]) -> Option<Answer> {
    let text = String::from_utf8_lossy(bytes);
    let (head, body) = text.split_once("\r\n\r\n")?;
    let mut lines = head.lines();
    let status = lines.next()?.split(' ').nth(1)?.parse().ok()?;
    let headers = lines
        .filter_map(|line| line.split_once(':'))
        .map(|(name, value)| (name.trim().to_ascii_lowercase(), value.trim().to_owned()))
        .collect();
    Some(Answer {
        status,
        headers,
        body: body.as_bytes().to_vec(),
    })
}

/// Sends `request` on a fresh connection (it should ask for `Connection: close`) and reads until
/// the server closes it, within `limit`.
async fn exchange(address: &str, request: &[u8], limit: Duration) -> Result<Answer, String> {
    let exchange = async {
        let mut stream = TcpStream::connect(address)
            .await
            .map_err(|e| format!("connect: {e}"))?;
        stream
            .write_all(request)
            .await
            .map_err(|e| format!("write: {e}"))?;
        let mut bytes = Vec::new();
        // A reset after the answer still leaves the answer readable.
        let _ = stream.read_to_end(&mut bytes).await;
        parse_answer(&bytes)
            .ok_or_else(|| format!("no answer: {:?}", String::from_utf8_lossy(&bytes)))
    };
    tokio::time::timeout(limit, exchange)
        .await
        .map_err(|_| format!("no answer within {limit:?}"))?
}

/// Like [`exchange`], from a thread of its own with blocking sockets: a prober is another
/// process, not slowed by the flood the test runs in its own runtime.
async fn exchange_apart(
    address: &str,
    request: Vec<u8>,
    limit: Duration,
) -> Result<Answer, String> {
    use std::io::{Read, Write};
    let address = address.to_owned();
    let probe = move || {
        let address = address.parse().map_err(|e| format!("{e}"))?;
        let mut stream = std::net::TcpStream::connect_timeout(&address, limit)
            .map_err(|e| format!("connect: {e}"))?;
        stream
            .set_read_timeout(Some(limit))
            .map_err(|e| e.to_string())?;
        stream
            .set_write_timeout(Some(limit))
            .map_err(|e| e.to_string())?;
        stream
            .write_all(&request)
            .map_err(|e| format!("write: {e}"))?;
        let mut bytes = Vec::new();
        let _ = stream.read_to_end(&mut bytes);
        parse_answer(&bytes)
            .ok_or_else(|| format!("no answer: {:?}", String::from_utf8_lossy(&bytes)))
    };
    tokio::task::spawn_blocking(probe)
        .await
        .map_err(|e| e.to_string())?
}

fn get(path: &str) -> Vec<u8> {
    format!("GET {path} HTTP/1.1\r\nHost: creditd\r\nConnection: close\r\n\r\n").into_bytes()
}

fn authorized(method: &str, path: &str, body: &str) -> Vec<u8> {
    format!(
        "{method} {path} HTTP/1.1\r\nHost: creditd\r\nAuthorization: Bearer {SERVICE}\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// The value of one series in the server's `/metrics`.
async fn metric(address: &str, series: &str) -> f64 {
    let answer = exchange_apart(address, get("/metrics"), Duration::from_secs(5))
        .await
        .unwrap();
    let text = String::from_utf8_lossy(&answer.body);
    text.lines()
        .find_map(|line| line.strip_prefix(series)?.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {series} in /metrics"))
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

fn run(test: impl std::future::Future<Output = ()>) {
    runtime().block_on(async {
        tokio::time::timeout(TEST_DEADLINE, test)
            .await
            .expect("the test ran past its deadline");
    });
}

/// A header block of `bytes` bytes in one header, unfinished (no blank line after it).
fn unfinished_head(bytes: usize) -> Vec<u8> {
    let mut head = b"GET /livez HTTP/1.1\r\nHost: creditd\r\nX-Filler: ".to_vec();
    head.resize(head.len() + bytes, b'a');
    head
}

/// Sends `head` on a fresh connection, then holds the connection open without finishing it
/// until the task is aborted. What the server sends back is read and dropped.
async fn hold_unfinished(address: String, head: std::sync::Arc<Vec<u8>>) {
    let Ok(stream) = TcpStream::connect(&address).await else {
        return;
    };
    let (mut reader, mut writer) = stream.into_split();
    let drain = tokio::spawn(async move {
        let mut sink = [0u8; 4096];
        while matches!(reader.read(&mut sink).await, Ok(n) if n > 0) {}
    });
    // The server may answer 431 and close long before all of it is sent.
    let _ = writer.write_all(&head).await;
    let _ = drain.await;
    // Closed by the server (or never): keep the write half open until aborted.
    std::future::pending::<()>().await;
}

#[test]
fn a_header_over_the_limit_gets_431_not_200() {
    let dir = tempfile::tempdir().unwrap();
    let server = Process::start(dir.path());
    let address = server.address().to_owned();
    run(async {
        // The hostile client's request: 1000 KiB in one header. Before the limit, 200.
        let mut request = unfinished_head(1000 * 1024);
        request.extend_from_slice(b"\r\nConnection: close\r\n\r\n");
        let stream = TcpStream::connect(&address).await.unwrap();
        let (mut reader, mut writer) = stream.into_split();
        let sending = tokio::spawn(async move {
            let _ = writer.write_all(&request).await;
            writer
        });
        let mut bytes = Vec::new();
        let read = tokio::time::timeout(Duration::from_secs(10), reader.read_to_end(&mut bytes));
        let _ = read
            .await
            .expect("the server must answer or close within 10 s");
        let answer = parse_answer(&bytes).expect("an answer before the close");
        assert_eq!(answer.status, 431, "{answer:?}");
        // hyper answers it before any request exists: no problem+json, an empty body.
        assert_eq!(answer.header("content-length"), Some("0"), "{answer:?}");
        assert!(answer.body.is_empty());
        drop(sending.await);

        // Just under the default 16 KiB: served.
        let mut request = unfinished_head(15 * 1024);
        request.extend_from_slice(b"\r\nConnection: close\r\n\r\n");
        let answer = exchange(&address, &request, Duration::from_secs(5))
            .await
            .unwrap();
        assert_eq!(answer.status, 200);
        let refused = "creditd_http_connections_refused_total{reason=\"header_too_large\"}";
        assert_eq!(metric(&address, refused).await, 1.0);
    });
}

/// The server's resident memory must stay under this while 300 connections each try to send
/// 1000 KiB of unfinished headers (and 300 more hold heads just under the limit). Before the
/// header limit, hyper buffered up to 1 MiB per connection: the peak passed 300 MiB here.
const HEADER_FLOOD_RSS_BUDGET_KIB: u64 = 96 * 1024;

#[test]
fn a_header_flood_stays_within_its_memory_budget_and_livez_answers() {
    let dir = tempfile::tempdir().unwrap();
    let server = Process::start(dir.path());
    let address = server.address().to_owned();
    let before_kib = server.memory_kib("VmRSS");
    let mut livez = Err(String::from("not asked"));
    run(async {
        let mut flood = JoinSet::new();
        // Heads just under the limit, held: what a connection may cost for as long as the
        // header timeout allows.
        let under = std::sync::Arc::new(unfinished_head(15 * 1024));
        for _ in 0..300 {
            flood.spawn(hold_unfinished(
                address.clone(),
                std::sync::Arc::clone(&under),
            ));
        }
        // The hostile client's: 1000 KiB each, never finished.
        let over = std::sync::Arc::new(unfinished_head(1000 * 1024));
        for _ in 0..300 {
            flood.spawn(hold_unfinished(
                address.clone(),
                std::sync::Arc::clone(&over),
            ));
        }
        // Let the flood arrive: 300 MiB over loopback takes well under this.
        tokio::time::sleep(Duration::from_secs(3)).await;
        livez = exchange_apart(&address, get("/livez"), Duration::from_secs(2)).await;
        flood.abort_all();
    });
    let peak_kib = server.memory_kib("VmHWM");
    eprintln!("header flood: VmRSS before {before_kib} KiB, peak {peak_kib} KiB");
    assert!(
        peak_kib < HEADER_FLOOD_RSS_BUDGET_KIB,
        "the server's resident peak was {peak_kib} KiB, over the budget of {HEADER_FLOOD_RSS_BUDGET_KIB} KiB"
    );
    let livez = livez.expect("/livez during the flood");
    assert_eq!(livez.status, 200);
}

/// Keeps `count` idle connections open (nothing sent), opening a new one whenever the server
/// closes one, until aborted: the issue's flood of idle connections reopened as they are closed.
async fn idle_flood(address: String, count: usize) {
    let mut open = JoinSet::new();
    loop {
        while open.len() < count {
            let address = address.clone();
            open.spawn(async move {
                if let Ok(mut stream) = TcpStream::connect(&address).await {
                    let mut byte = [0u8; 1];
                    // Returns when the server closes the connection.
                    let _ = stream.read(&mut byte).await;
                } else {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            });
        }
        let _ = open.join_next().await;
    }
}

#[test]
fn a_connection_flood_leaves_health_probes_and_the_api_answered() {
    let dir = tempfile::tempdir().unwrap();
    // A small limit and the default 10 s header timeout: each idle connection could hold its
    // slot for 10 s, and before this change the probes queued behind them in the backlog.
    let server = Process::start_with(
        dir.path(),
        &[
            ("CREDITD_SERVER__MAX_CONNECTIONS", "64"),
            ("CREDITD_SERVER__RESERVED_CONNECTIONS", "4"),
        ],
    );
    let address = server.address().to_owned();
    run(async {
        let flood = tokio::spawn(idle_flood(address.clone(), 300));
        tokio::time::sleep(Duration::from_secs(1)).await;
        let started = Instant::now();
        for probe in 0..12 {
            let path = if probe % 2 == 0 { "/livez" } else { "/readyz" };
            let answer = match exchange_apart(&address, get(path), Duration::from_secs(2)).await {
                Ok(answer) => answer,
                Err(error) => {
                    // What the server did meanwhile, if it still answers.
                    let metrics = exchange_apart(&address, get("/metrics"), Duration::from_secs(2))
                        .await
                        .map(|answer| String::from_utf8_lossy(&answer.body).into_owned())
                        .unwrap_or_default();
                    let refusals: Vec<&str> = metrics
                        .lines()
                        .filter(|line| line.starts_with("creditd_http_connections"))
                        .collect();
                    panic!("probe {probe} ({path}) during the flood: {error}; {refusals:?}")
                }
            };
            assert_eq!(answer.status, 200, "probe {probe} ({path}): {answer:?}");
        }
        // The API too: an idle connection is closed to make room for this one. A connection
        // that arrives while every regular slot holds a connection whose task has not run yet
        // gets a reserved slot and `503 server-busy`; a client retries that, as it retries any
        // 503 with Retry-After, and is served once an idle connection can be closed.
        let mut answer = None;
        for _ in 0..20 {
            let wallet = authorized("GET", "/v1/users/nobody/wallet", "");
            let got = exchange_apart(&address, wallet, Duration::from_secs(2))
                .await
                .expect("an API request during the flood");
            if got.status != 503 {
                answer = Some(got);
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let answer = answer.expect("the API answered other than 503 within 20 tries");
        assert_eq!(answer.status, 404, "{answer:?}");
        eprintln!(
            "12 probes and an API call answered in {:?} during the flood",
            started.elapsed()
        );
        // The counters only grow: read them once the flood is gone, so that this connection is
        // not itself shed as the longest idle.
        flood.abort();
        let _ = flood.await;
        let shed = "creditd_http_connections_refused_total{reason=\"shed_idle\"}";
        let full = "creditd_http_connections_refused_total{reason=\"full\"}";
        let (shed, full) = (metric(&address, shed).await, metric(&address, full).await);
        eprintln!("connections shed: {shed}, refused at once: {full}");
        assert!(
            shed + full >= 236.0,
            "the flood's surplus was shed or refused"
        );
    });
}

/// Opens a connection that sends the head of a webhook (an open route) and one byte of its
/// declared body, then stalls: a request in progress, reading its body, until the body timeout.
async fn stalled_body(address: &str, declared: usize) -> TcpStream {
    let mut stream = TcpStream::connect(address).await.unwrap();
    let head = format!(
        "POST /v1/webhooks/sandbox HTTP/1.1\r\nHost: creditd\r\nContent-Length: {declared}\r\n\r\n{{"
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    stream
}

#[test]
fn probes_get_reserved_slots_when_every_connection_has_a_request_in_progress() {
    let dir = tempfile::tempdir().unwrap();
    let server = Process::start_with(
        dir.path(),
        &[
            ("CREDITD_SERVER__MAX_CONNECTIONS", "8"),
            ("CREDITD_SERVER__RESERVED_CONNECTIONS", "2"),
            ("CREDITD_SERVER__BODY_READ_TIMEOUT_SECONDS", "30"),
        ],
    );
    let address = server.address().to_owned();
    run(async {
        let mut stalled = Vec::new();
        for _ in 0..8 {
            stalled.push(stalled_body(&address, 100).await);
        }
        // Let the server start reading every one of them.
        tokio::time::sleep(Duration::from_millis(500)).await;
        for path in ["/livez", "/readyz", "/metrics", "/livez"] {
            let answer = exchange(&address, &get(path), Duration::from_secs(2))
                .await
                .unwrap_or_else(|error| panic!("{path} with every slot busy: {error}"));
            assert_eq!(answer.status, 200, "{path}: {answer:?}");
        }
        // Anything else on a reserved slot: 503 and the connection closed.
        let wallet = authorized("GET", "/v1/users/nobody/wallet", "");
        let answer = exchange(&address, &wallet, Duration::from_secs(2))
            .await
            .unwrap();
        assert_eq!(answer.status, 503, "{answer:?}");
        assert_eq!(answer.header("retry-after"), Some("1"));
        assert_eq!(answer.header("connection"), Some("close"));
        assert_eq!(
            answer.json()["type"],
            "https://creditd.dev/problems/server-busy"
        );
        let refused = "creditd_http_connections_refused_total{reason=\"reserved_slot\"}";
        assert_eq!(metric(&address, refused).await, 1.0);
        drop(stalled);
    });
}

#[test]
fn a_body_past_the_budget_gets_503_before_it_is_read_and_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let server = Process::start_with(
        dir.path(),
        &[
            ("CREDITD_SERVER__MAX_BODY_BYTES", "65536"),
            ("CREDITD_SERVER__BODY_BUDGET_BYTES", "65536"),
            ("CREDITD_SERVER__BODY_READ_TIMEOUT_SECONDS", "30"),
        ],
    );
    let address = server.address().to_owned();
    let client = server.client();
    run(async {
        client.put_user("kim", None).await.unwrap();
        client.credit("kim", 100, None, None).await.unwrap();
        // A stalled body declares the whole budget, and the server claims it before reading.
        let hog = stalled_body(&address, 65536).await;
        tokio::time::sleep(Duration::from_millis(300)).await;

        // Only the head of a debit: the answer comes without the body ever being sent.
        let head = format!(
            "POST /v1/users/kim/debit HTTP/1.1\r\nHost: creditd\r\nAuthorization: Bearer {SERVICE}\r\n\
             Content-Length: 14\r\nIdempotency-Key: order-1\r\n\r\n"
        );
        let answer = exchange(&address, head.as_bytes(), Duration::from_secs(2))
            .await
            .expect("503 without the body");
        assert_eq!(answer.status, 503, "{answer:?}");
        assert_eq!(answer.header("retry-after"), Some("1"));
        assert_eq!(answer.header("connection"), Some("close"));
        assert_eq!(
            answer.header("content-type"),
            Some("application/problem+json")
        );
        let problem = answer.json();
        assert_eq!(problem["type"], "https://creditd.dev/problems/server-busy");
        assert!(
            problem["detail"]
                .as_str()
                .unwrap()
                .contains("server.body_budget_bytes"),
            "{problem}"
        );
        // A chunked body has no length to claim up front: it is refused at its first chunk.
        let chunked = format!(
            "POST /v1/users/kim/debit HTTP/1.1\r\nHost: creditd\r\nAuthorization: Bearer {SERVICE}\r\n\
             Transfer-Encoding: chunked\r\nConnection: close\r\n\r\nc\r\n{{\"amount\":5}}\r\n0\r\n\r\n"
        );
        let answer = exchange(&address, chunked.as_bytes(), Duration::from_secs(2))
            .await
            .unwrap();
        assert_eq!(answer.status, 503, "{answer:?}");
        assert_eq!(
            answer.json()["type"],
            "https://creditd.dev/problems/server-busy"
        );
        assert_eq!(client.wallet("kim", None).await.unwrap().balance, 100);

        // The budget comes back when the stalled request ends (here: its client goes away), and
        // the same keyed debit then runs once.
        drop(hog);
        let debit = authorized("POST", "/v1/users/kim/debit", r#"{"amount":5}"#);
        let mut debit = String::from_utf8(debit).unwrap();
        debit = debit.replacen(
            "Connection: close",
            "Connection: close\r\nIdempotency-Key: order-1",
            1,
        );
        let deadline = Instant::now() + Duration::from_secs(5);
        let answer = loop {
            let answer = exchange(&address, debit.as_bytes(), Duration::from_secs(2))
                .await
                .unwrap();
            if answer.status != 503 || Instant::now() > deadline {
                break answer;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        assert_eq!(answer.status, 200, "{answer:?}");
        assert_eq!(client.wallet("kim", None).await.unwrap().balance, 95);
        // At least the one above; the retries may have met the budget before the hog let go.
        let refused = "creditd_http_connections_refused_total{reason=\"body_budget\"}";
        assert!(metric(&address, refused).await >= 1.0);
    });
}
