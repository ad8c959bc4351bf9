//! The live balance stream against a real server: the view at once and after each change, in
//! LSN order; resuming from `Last-Event-ID`; stream tokens (expiry, which ends their streams, tampering, another user);
//! tenant isolation; a slow reader cut off while debits go on; the cap on open streams; a stop.

use std::time::{Duration, Instant};

use creditd::client::{BatchDebit, Debit};
use creditd::config::Config;
use http::Method;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[path = "common/server.rs"]
mod server;

use server::{raw, send_json, Server, ADMIN, GLOBEX, SERVICE};

/// One-second keep-alives, so that a test sees one soon.
fn quick(config: &mut Config) {
    config.streams.keepalive_seconds = 1;
}

/// What a stream sent: an event, or a keep-alive comment.
#[derive(Debug)]
enum Sent {
    Event {
        id: u64,
        view: Value,
    },
    KeepAlive,
    /// The last event of a stream opened with a token that expired.
    Expired(Value),
}

/// A stream read with reqwest.
struct Stream {
    response: reqwest::Response,
    buffer: String,
}

impl Stream {
    /// Opens `path` with `key` (none: the path carries a token) and `last_event_id`; the status
    /// and the answer (a stream on 200, else the problem).
    async fn open(
        server: &Server,
        path: &str,
        key: Option<&str>,
        last_event_id: Option<u64>,
    ) -> Result<Stream, (u16, Value)> {
        let mut request = reqwest::Client::new().get(format!("{}{path}", server.base));
        if let Some(key) = key {
            request = request.bearer_auth(key);
        }
        if let Some(id) = last_event_id {
            request = request.header("last-event-id", id.to_string());
        }
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        if status != 200 {
            let body = response.json().await.unwrap_or(Value::Null);
            return Err((status, body));
        }
        assert_eq!(
            response.headers()["content-type"],
            "text/event-stream",
            "a stream's type"
        );
        Ok(Stream {
            response,
            buffer: String::new(),
        })
    }

    /// ada's stream with the service key.
    async fn ada(server: &Server, last_event_id: Option<u64>) -> Stream {
        Stream::open(
            server,
            "/v1/users/ada/wallet/stream",
            Some(SERVICE),
            last_event_id,
        )
        .await
        .unwrap()
    }

    /// The next thing sent, within five seconds; `None` when the stream ended.
    async fn next(&mut self) -> Option<Sent> {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            if let Some(end) = self.buffer.find("\n\n") {
                let block: String = self.buffer.drain(..end + 2).collect();
                return Some(parse(&block));
            }
            let left = deadline.saturating_duration_since(Instant::now());
            let chunk = tokio::time::timeout(left, self.response.chunk())
                .await
                .expect("nothing sent within five seconds")
                .unwrap()?;
            self.buffer.push_str(std::str::from_utf8(&chunk).unwrap());
        }
    }

    /// The next event, skipping keep-alives, within ten seconds.
    async fn event(&mut self) -> (u64, Value) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            assert!(Instant::now() < deadline, "no event within ten seconds");
            match self.next().await.expect("the stream ended") {
                Sent::Event { id, view } => return (id, view),
                Sent::KeepAlive => {}
                Sent::Expired(data) => panic!("the stream's token expired: {data}"),
            }
        }
    }
}

fn parse(block: &str) -> Sent {
    if block.starts_with(':') {
        return Sent::KeepAlive;
    }
    let (mut id, mut data, mut event) = (None, None, None);
    for line in block.lines().filter(|line| !line.is_empty()) {
        match line.split_once(": ") {
            Some(("id", value)) => id = Some(value.parse().unwrap()),
            Some(("data", value)) => data = Some(serde_json::from_str(value).unwrap()),
            Some(("event", value)) => event = Some(value.to_owned()),
            _ => panic!("unexpected line {line:?}"),
        }
    }
    if event.as_deref() == Some("expired") {
        assert_eq!(id, None, "an expiry is not a view of the wallet");
        return Sent::Expired(data.unwrap());
    }
    assert_eq!(event.as_deref(), Some("wallet"));
    Sent::Event {
        id: id.unwrap(),
        view: data.unwrap(),
    }
}

/// Adds `user` to the server's tenant `acme` with `credits`.
async fn user_with(server: &Server, user: &str, credits: i64) {
    server.client(SERVICE).put_user(user, None).await.unwrap();
    if credits > 0 {
        server
            .client(ADMIN)
            .credit(user, credits, Some("seed"), None)
            .await
            .unwrap();
    }
}

async fn debit(server: &Server, user: &str, amount: i64) {
    server
        .client(SERVICE)
        .debit(user, &Debit::amount(amount), None)
        .await
        .unwrap();
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
async fn a_stream_sends_the_view_at_once_then_after_every_change_in_lsn_order() {
    let server = Server::start_with(quick).await;
    user_with(&server, "ada", 100).await;
    let mut stream = Stream::ada(&server, None).await;
    let (first_id, view) = stream.event().await;
    assert_eq!(view["balance"], 100);
    assert_eq!(view["user_id"], "ada");
    assert_eq!(view["status"], "healthy");
    let wallet: Value = send_json(
        &server.client(SERVICE),
        Method::GET,
        "/v1/users/ada/wallet",
        "",
    )
    .await
    .1;
    assert_eq!(view, wallet, "the same view as GET /wallet");

    // Debits, a hold and its release: each change shows, ids rise, balances follow.
    let mut expected = vec![];
    for amount in [10, 20, 30] {
        debit(&server, "ada", amount).await;
        expected.push(100 - [10, 30, 60][expected.len()]);
        let mut last = first_id;
        loop {
            let (id, view) = stream.event().await;
            assert!(id > last, "ids rise: {id} after {last}");
            last = id;
            if view["balance"] == *expected.last().unwrap() {
                break;
            }
        }
    }
    let hold = server
        .client(SERVICE)
        .reserve("ada", 15, None, None)
        .await
        .unwrap();
    let (held_id, view) = stream.event().await;
    assert_eq!(
        (view["balance"].as_i64(), view["reserved"].as_i64()),
        (Some(40), Some(15))
    );
    assert_eq!(view["available"], 25);
    server
        .client(SERVICE)
        .release(hold.reservation_id.as_deref().unwrap())
        .await
        .unwrap();
    let (released_id, view) = stream.event().await;
    assert!(released_id > held_id);
    assert_eq!(
        (view["reserved"].as_i64(), view["available"].as_i64()),
        (Some(0), Some(40))
    );

    // Another user's change wakes nobody here: the next thing sent is a keep-alive.
    user_with(&server, "bob", 50).await;
    debit(&server, "bob", 5).await;
    assert!(matches!(stream.next().await, Some(Sent::KeepAlive)));
    server.stop().await;
}

#[tokio::test]
async fn a_stream_outlives_the_header_read_timeout() {
    // The connection of a stream waits for no request head while the stream lasts: a deadline
    // that counted from its answer's head would close it after 1 s, plus 1 s to finish writing.
    let server = Server::start_with(|config: &mut Config| {
        quick(config);
        config.server.header_read_timeout_seconds = 1;
    })
    .await;
    user_with(&server, "ada", 100).await;
    let mut stream = Stream::ada(&server, None).await;
    let (first_id, _) = stream.event().await;
    let opened = Instant::now();
    while opened.elapsed() < Duration::from_millis(3500) {
        match stream.next().await {
            Some(Sent::KeepAlive) => {}
            other => panic!("only keep-alives while nothing changes: {other:?}"),
        }
    }
    debit(&server, "ada", 7).await;
    let (id, view) = stream.event().await;
    assert!(id > first_id);
    assert_eq!(view["balance"], 93);
    server.stop().await;
}

#[tokio::test]
async fn a_resume_sends_the_view_only_if_it_changed_since_the_last_event_id() {
    let server = Server::start_with(quick).await;
    user_with(&server, "ada", 100).await;
    let mut stream = Stream::ada(&server, None).await;
    let (seen, _) = stream.event().await;
    drop(stream);

    // Nothing changed since `seen`: nothing but keep-alives.
    let mut resumed = Stream::ada(&server, Some(seen)).await;
    assert!(matches!(resumed.next().await, Some(Sent::KeepAlive)));
    drop(resumed);

    // A change while away: the resume sends the view at once, with a later id.
    debit(&server, "ada", 7).await;
    let mut resumed = Stream::ada(&server, Some(seen)).await;
    let (id, view) = resumed.event().await;
    assert!(id > seen);
    assert_eq!(view["balance"], 93);

    // A Last-Event-ID that is not an LSN is a 400.
    let mut request = reqwest::Client::new()
        .get(format!("{}/v1/users/ada/wallet/stream", server.base))
        .bearer_auth(SERVICE);
    request = request.header("last-event-id", "yesterday");
    assert_eq!(request.send().await.unwrap().status().as_u16(), 400);
    drop(resumed);
    server.stop().await;
}

#[tokio::test]
async fn a_stop_ends_the_streams_and_after_a_restart_a_resume_goes_on_from_the_same_lsns() {
    let server = Server::start_with(quick).await;
    user_with(&server, "ada", 100).await;
    debit(&server, "ada", 1).await;
    let mut stream = Stream::ada(&server, None).await;
    let (seen, _) = stream.event().await;
    let started = Instant::now();
    let dir = server.stop().await;
    assert!(stream.next().await.is_none(), "the stream ends at the stop");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "the stop did not wait out its grace for the stream"
    );
    let mut config = server::config(dir.path());
    quick(&mut config);
    let server = Server::start_in(dir, config).await;
    // The log goes on across the restart, and so do its LSNs. Nothing of ada's changed since
    // `seen`: a resume sends keep-alives, or, when the restart itself wrote records before the
    // hub began to follow (so it cannot tell), the same view again.
    let mut resumed = Stream::ada(&server, Some(seen)).await;
    match resumed.next().await {
        Some(Sent::KeepAlive) => {}
        Some(Sent::Event { id, view }) => {
            assert!(id >= seen);
            assert_eq!(view["balance"], 99);
        }
        Some(Sent::Expired(data)) => panic!("a keyed stream expired: {data}"),
        None => panic!("the stream ended"),
    }
    drop(resumed);
    // A change since: the view at once. An id from past the end of this log: the view at once.
    debit(&server, "ada", 1).await;
    for last_event_id in [seen, u64::MAX / 2] {
        let mut resumed = Stream::ada(&server, Some(last_event_id)).await;
        let (id, view) = resumed.event().await;
        assert!(id > seen);
        assert_eq!(view["balance"], 98);
    }
    server.stop().await;
}

#[tokio::test]
async fn stream_tokens_open_one_users_stream_until_they_expire() {
    let server = Server::start_with(|config| {
        quick(config);
        config.streams.token_ttl_seconds = 3;
    })
    .await;
    user_with(&server, "ada", 100).await;
    user_with(&server, "bob", 100).await;
    let new_token = || async {
        let (status, answer) = send_json(
            &server.client(SERVICE),
            Method::POST,
            "/v1/users/ada/stream-tokens",
            "",
        )
        .await;
        assert_eq!(status, 200, "{answer}");
        assert!(answer["expires_at"].as_str().unwrap().ends_with('Z'));
        answer["token"].as_str().unwrap().to_owned()
    };
    let token = new_token().await;
    let opened = Instant::now();

    let path = format!("/v1/users/ada/wallet/stream?token={token}");
    let mut stream = Stream::open(&server, &path, None, None).await.unwrap();
    assert_eq!(stream.event().await.1["balance"], 100);
    // A stream opened with a key, beside it: a key does not expire.
    let mut keyed = Stream::ada(&server, None).await;
    assert_eq!(keyed.event().await.1["balance"], 100);

    // For another user: 403. Changed: 401. Without key or token: 401.
    let other = format!("/v1/users/bob/wallet/stream?token={token}");
    let (status, body) = Stream::open(&server, &other, None, None)
        .await
        .err()
        .unwrap();
    assert_eq!((status, slug(&body)), (403, "forbidden"));
    let last = token.pop_last_hex();
    let tampered = format!("/v1/users/ada/wallet/stream?token={last}");
    let (status, body) = Stream::open(&server, &tampered, None, None)
        .await
        .err()
        .unwrap();
    assert_eq!((status, slug(&body)), (401, "invalid-token"));
    let (status, _) = Stream::open(&server, "/v1/users/ada/wallet/stream", None, None)
        .await
        .err()
        .unwrap();
    assert_eq!(status, 401);
    // A token for an unknown user is refused before it is made.
    let (status, _) = raw(
        &server.client(SERVICE),
        Method::POST,
        "/v1/users/nobody/stream-tokens",
        "",
    )
    .await;
    assert_eq!(status, 404);

    // The token expires (within its 3 s, whole seconds): its stream says so in a last event
    // and ends.
    let expired = loop {
        match stream
            .next()
            .await
            .expect("the stream ended without saying why")
        {
            Sent::Expired(data) => break data,
            Sent::KeepAlive => {}
            Sent::Event { view, .. } => panic!("no change was made: {view}"),
        }
    };
    let lived = opened.elapsed();
    assert!(lived <= Duration::from_millis(4500), "lived {lived:?}");
    assert_eq!(expired["reason"], "token-expired", "{expired}");
    assert!(expired["expires_at"].as_str().unwrap().ends_with('Z'));
    assert!(
        stream.next().await.is_none(),
        "the stream ends after `expired`"
    );
    // The expired token opens nothing: 401, told apart from a bad one.
    let (status, body) = Stream::open(&server, &path, None, None)
        .await
        .err()
        .unwrap();
    assert_eq!((status, slug(&body)), (401, "token-expired"));
    // The keyed stream goes on; a new token opens a new stream (what the portal page does).
    debit(&server, "ada", 1).await;
    assert_eq!(keyed.event().await.1["balance"], 99);
    let renewed = format!("/v1/users/ada/wallet/stream?token={}", new_token().await);
    let mut stream = Stream::open(&server, &renewed, None, None).await.unwrap();
    assert_eq!(stream.event().await.1["balance"], 99);
    drop((stream, keyed));
    server.stop().await;
}

/// A token with its last hex digit changed.
trait Tamper {
    fn pop_last_hex(&self) -> String;
}

impl Tamper for String {
    fn pop_last_hex(&self) -> String {
        let mut changed = self.clone();
        let last = changed.pop().unwrap();
        changed.push(if last == '0' { '1' } else { '0' });
        changed
    }
}

#[tokio::test]
async fn another_tenants_key_finds_no_such_user_and_its_changes_wake_nobody_here() {
    let server = Server::start_with(quick).await;
    user_with(&server, "ada", 100).await;
    let (status, body) = Stream::open(&server, "/v1/users/ada/wallet/stream", Some(GLOBEX), None)
        .await
        .err()
        .unwrap();
    assert_eq!((status, slug(&body)), (404, "user-not-found"));
    // globex's own ada is another wallet.
    let globex = server.client(GLOBEX);
    globex.put_user("ada", None).await.unwrap();
    let mut theirs = Stream::open(&server, "/v1/users/ada/wallet/stream", Some(GLOBEX), None)
        .await
        .unwrap();
    assert_eq!(theirs.event().await.1["balance"], 0);
    let mut ours = Stream::ada(&server, None).await;
    assert_eq!(ours.event().await.1["balance"], 100);
    debit(&server, "ada", 10).await;
    assert_eq!(ours.event().await.1["balance"], 90);
    assert!(matches!(theirs.next().await, Some(Sent::KeepAlive)));
    drop((ours, theirs));
    server.stop().await;
}

#[tokio::test]
async fn the_cap_refuses_one_stream_too_many_until_one_closes() {
    let server = Server::start_with(|config| {
        quick(config);
        config.streams.max_open = 2;
    })
    .await;
    user_with(&server, "ada", 100).await;
    let first = Stream::ada(&server, None).await;
    let _second = Stream::ada(&server, None).await;
    let (status, body) = Stream::open(&server, "/v1/users/ada/wallet/stream", Some(SERVICE), None)
        .await
        .err()
        .unwrap();
    assert_eq!((status, slug(&body)), (503, "streams-full"));
    drop(first);
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match Stream::open(&server, "/v1/users/ada/wallet/stream", Some(SERVICE), None).await {
            Ok(_) => break,
            Err((503, _)) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(other) => panic!("the slot was not freed: {other:?}"),
        }
    }
    server.stop().await;
}

/// The value of `creditd_streams_cut_total{reason="slow_reader"}` in `/metrics`.
async fn slow_readers_cut(server: &Server) -> f64 {
    let (_, _, bytes) = server
        .client(SERVICE)
        .send(Method::GET, "/metrics", None, None)
        .await
        .unwrap();
    let text = String::from_utf8(bytes.to_vec()).unwrap();
    text.lines()
        .find(|line| line.starts_with("creditd_streams_cut_total{reason=\"slow_reader\"}"))
        .and_then(|line| line.rsplit(' ').next())
        .map_or(0.0, |value| value.parse().unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reader_that_does_not_read_is_cut_off_while_debits_go_on() {
    let server = Server::start_with(|config| {
        quick(config);
        config.streams.buffer_events = 2;
        config.server.send_buffer_bytes = 4096;
    })
    .await;
    user_with(&server, "ada", 1_000_000).await;
    let before = slow_readers_cut(&server).await;
    // A reader with a small receive buffer that sends its request and never reads.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let address = server.base.trim_start_matches("http://").parse().unwrap();
    let mut connection = socket.connect(address).await.unwrap();
    let request = format!(
        "GET /v1/users/ada/wallet/stream HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {SERVICE}\r\n\r\n"
    );
    connection.write_all(request.as_bytes()).await.unwrap();

    // Debits in batches, every one applied, until the server has cut the reader off.
    let service = server.client(SERVICE);
    let batch: Vec<BatchDebit> = (0..20)
        .map(|_| BatchDebit {
            user_id: "ada".into(),
            amount: 1,
            idempotency_key: None,
        })
        .collect();
    // Four writers, each in batches, every debit applied, until the server has cut the reader
    // off.
    let deadline = Instant::now() + Duration::from_secs(30);
    let cut = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writers: Vec<_> = (0..4)
        .map(|_| {
            let (service, batch, cut) = (service.clone(), batch.clone(), cut.clone());
            tokio::spawn(async move {
                let mut debited = 0i64;
                while !cut.load(std::sync::atomic::Ordering::Acquire) {
                    let results = service.batch_debit(&batch, None).await.unwrap();
                    assert!(results.iter().all(|result| result["status"] == 200));
                    debited += results.len() as i64;
                }
                debited
            })
        })
        .collect();
    while slow_readers_cut(&server).await <= before {
        assert!(
            Instant::now() < deadline,
            "the slow reader was never cut off"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    cut.store(true, std::sync::atomic::Ordering::Release);
    let mut debited = 0;
    for writer in writers {
        debited += writer.await.unwrap();
    }
    let wallet = service.wallet("ada", None).await.unwrap();
    assert_eq!(wallet.balance, 1_000_000 - debited);

    // What the reader finds when it reads at last: events, then the end of the body.
    let mut received = Vec::new();
    let mut chunk = vec![0u8; 64 * 1024];
    let ended = loop {
        match tokio::time::timeout(Duration::from_secs(5), connection.read(&mut chunk)).await {
            Ok(Ok(0)) | Err(_) => break false,
            Ok(Ok(read)) => {
                received.extend_from_slice(&chunk[..read]);
                if received.ends_with(b"\r\n0\r\n\r\n") {
                    break true;
                }
            }
            Ok(Err(error)) => panic!("{error}"),
        }
    };
    let text = String::from_utf8_lossy(&received);
    assert!(
        text.starts_with("HTTP/1.1 200"),
        "{}",
        &text[..text.len().min(200)]
    );
    assert!(text.contains("event: wallet"));
    assert!(ended, "the body ended (chunked terminator)");
    server.stop().await;
}
