//! The Rust client (`creditd-client`) against the real binary: the recipe end to end (a user
//! synced, welcome credits, a feature gated by a debit, the 402, the portal and a checkout paid
//! on the sandbox page the way a browser pays it), each typed error a request can provoke, a
//! debit whose answer is lost when the server is SIGKILLed (a proxy between client and server
//! drops the answer, kills and restarts the server; the client's retry is charged once and
//! answered as a replay), signed notifications verified by the client, the reservation guard and
//! closure, the admin surface, and the example gateway of `clients/rust/examples/`.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use creditd::client::{
    verify_notification, verify_notification_with, Client, ClientError, Credit, Debit, Hold,
    Receipt, RetryPolicy, SignatureVerificationError, UserProfile, VerifyOptions,
};
use http::Method;
use serde_json::{json, Value};
use tempfile::TempDir;

#[path = "common/process.rs"]
mod process;
use process::{runtime, Process, ADMIN, SERVICE};

#[allow(dead_code)]
#[path = "../clients/rust/examples/gateway.rs"]
mod gateway;

/// The development platform key of the repository's `config.toml`.
const PLATFORM: &str = "dev-platform-secret-change-me";

fn start(overrides: &[(&str, &str)]) -> (TempDir, Process) {
    let dir = tempfile::tempdir().unwrap();
    let process = Process::start_with(dir.path(), overrides);
    (dir, process)
}

/// Sells `starter` (500 credits for 2,000.00 NGN) and prices the action `chat` at 10 credits.
async fn catalogue(admin: &Client) {
    let package =
        json!({"name": "Starter", "credits": 500, "price_minor": 200_000, "price_currency": "NGN"});
    admin
        .billing()
        .put_package("starter", &package)
        .await
        .unwrap();
    admin
        .billing()
        .put_action("chat", &json!({"cost": 10}))
        .await
        .unwrap();
}

#[test]
fn the_recipe_from_sign_up_to_a_paid_top_up() {
    let (_dir, server) = start(&[]);
    let (service, admin) = (server.client(), server.client_with(ADMIN));
    runtime().block_on(async {
        catalogue(&admin).await;
        // Sign-up: the user is synced (created), then synced again with a name (merged).
        let profile = UserProfile {
            email: Some("ada@example.com".into()),
            ..UserProfile::default()
        };
        let user = service.users().sync("ada", &profile).await.unwrap();
        assert_eq!((user.user_id.as_str(), user.wallet.balance), ("ada", 0));
        let named = UserProfile {
            name: Some("Ada".into()),
            ..UserProfile::default()
        };
        let user = service.users().sync("ada", &named).await.unwrap();
        assert_eq!(user.email.as_deref(), Some("ada@example.com"), "merged");
        assert_eq!(user.name.as_deref(), Some("Ada"));
        // Welcome credits.
        let welcome = service
            .wallets()
            .credit("ada", &Credit::amount(25), Some("welcome-ada"))
            .await
            .unwrap();
        assert_eq!((welcome.amount, welcome.balance), (25, 25));
        // A feature gated by a debit: one chat (10) passes, three more (30) do not.
        let spent = service
            .wallets()
            .debit("ada", &Debit::action("chat", 1), None)
            .await
            .unwrap();
        assert_eq!(
            (spent.charged, spent.balance, spent.replayed),
            (10, 15, false)
        );
        let refused = service
            .wallets()
            .debit("ada", &Debit::action("chat", 3), None)
            .await
            .unwrap_err();
        let ClientError::InsufficientCredits {
            balance,
            available,
            required,
            topup_url,
            ..
        } = &refused
        else {
            panic!("expected a 402, got {refused:?}");
        };
        assert_eq!((*balance, *available, *required), (15, 15, 30));
        assert_eq!(
            topup_url,
            &format!("{}/v1/billing/bootstrap/ada", server.base)
        );
        assert_eq!(refused.status(), Some(402));
        assert_eq!(refused.slug(), Some("insufficient-credits"));
        // The top-up: a portal link for the person, and the checkout it leads to.
        let portal = service.portal().create_session("ada", None).await.unwrap();
        assert!(
            portal.url.starts_with(&format!("{}/portal/", server.base)),
            "{portal:?}"
        );
        let bootstrap = service.billing().bootstrap("ada").await.unwrap();
        assert_eq!(bootstrap["available_packages"][0]["package_id"], "starter");
        let checkout = service
            .payments()
            .initialize("ada", "starter", "ada@example.com", None)
            .await
            .unwrap();
        assert_eq!(
            checkout.checkout_url,
            format!("{}/sandbox/checkout/{}", server.base, checkout.reference)
        );
        let pending = service.payments().get(&checkout.reference).await.unwrap();
        assert_eq!(pending.status, "pending");
        pay_like_a_browser(&checkout.checkout_url, &server.base).await;
        let wallet = wait_for_balance(&service, "ada", 515).await;
        assert_eq!(wallet.status, "healthy");
        let paid = service.payments().get(&checkout.reference).await.unwrap();
        assert_eq!((paid.status.as_str(), paid.credits), ("succeeded", 500));
        let payments = service.payments().list("ada", &[]).await.unwrap();
        assert_eq!(payments.payments[0].reference, checkout.reference);
        // Now the gated feature passes.
        let spent = service
            .wallets()
            .debit("ada", &Debit::action("chat", 3), None)
            .await
            .unwrap();
        assert_eq!(spent.balance, 485);
        let entries = service.wallets().entries("ada", &[]).await.unwrap();
        let kinds: Vec<&str> = entries.entries.iter().map(|e| e.kind.as_str()).collect();
        assert_eq!(kinds.len(), 4, "{kinds:?}");
        assert_eq!(entries.entries[0].balance_after, 485);
    });
}

/// GETs the sandbox checkout page, reads its form and submits its Pay button as a browser does.
async fn pay_like_a_browser(checkout_url: &str, base: &str) {
    let browser = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::limited(3))
        .build()
        .unwrap();
    let html = browser
        .get(checkout_url)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let action = html
        .split("<form")
        .find(|form| form.contains("value=\"pay\""))
        .and_then(|form| form.split("action=\"").nth(1))
        .and_then(|rest| rest.split('"').next())
        .unwrap_or_else(|| panic!("no pay form in {html}"));
    let paid = browser
        .post(format!("{base}{action}"))
        .form(&[("action", "pay")])
        .send()
        .await
        .unwrap();
    assert!(paid.status().is_success(), "{}", paid.status());
}

async fn wait_for_balance(client: &Client, user: &str, balance: i64) -> creditd::client::Wallet {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let wallet = client.wallets().get(user, None).await.unwrap();
        if wallet.balance == balance {
            return wallet;
        }
        assert!(
            Instant::now() < deadline,
            "balance {wallet:?}, not {balance}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[test]
fn each_problem_surfaces_as_its_variant() {
    let (_dir, server) = start(&[
        ("CREDITD_LIMITS__SERVICE_KEY_GRANTS_PER_DAY", "100"),
        ("CREDITD_STREAMS__MAX_OPEN", "1"),
    ]);
    let (service, admin) = (server.client(), server.client_with(ADMIN));
    let address = server.address().to_owned();
    runtime().block_on(async {
        catalogue(&admin).await;
        service.put_user("u", None).await.unwrap();
        service.credit("u", 50, None, None).await.unwrap();
        let expect = |result: Result<Value, ClientError>,
                      is: fn(&ClientError) -> bool,
                      slug: &str,
                      status: u16| {
            let error = result.expect_err(slug);
            assert!(is(&error), "{slug}: {error:?}");
            assert_eq!((error.slug(), error.status()), (Some(slug), Some(status)));
            let problem = error.problem().unwrap();
            assert_eq!(
                problem.problem_type,
                format!("https://creditd.dev/problems/{slug}")
            );
            assert!(!problem.title.is_empty() && problem.body.is_object());
        };
        let as_value = |result: Result<Receipt, ClientError>| result.map(|_| Value::Null);
        expect(
            service
                .wallets()
                .get("ghost", None)
                .await
                .map(|_| Value::Null),
            |e| matches!(e, ClientError::UserNotFound(_)),
            "user-not-found",
            404,
        );
        expect(
            as_value(service.debit("u", &Debit::action("nope", 1), None).await),
            |e| matches!(e, ClientError::UnknownAction(_)),
            "unknown-action",
            422,
        );
        let mut in_xyz = Debit::amount(1);
        in_xyz.currency = Some("XYZ".into());
        expect(
            as_value(service.debit("u", &in_xyz, None).await),
            |e| matches!(e, ClientError::UnknownCurrency(_)),
            "unknown-currency",
            422,
        );
        service
            .debit("u", &Debit::amount(1), Some("k-1"))
            .await
            .unwrap();
        expect(
            as_value(service.debit("u", &Debit::amount(2), Some("k-1")).await),
            |e| matches!(e, ClientError::IdempotencyKeyReused(_)),
            "idempotency-key-reused",
            422,
        );
        expect(
            as_value(service.debit("u", &Debit::amount(0), None).await),
            |e| matches!(e, ClientError::InvalidRequest(_)),
            "invalid-request",
            422,
        );
        // Bad JSON, which the typed calls never send: the raw answer, mapped.
        let (status, headers, bytes) = service
            .send(Method::POST, "/v1/users/u/debit", Some(b"[1".to_vec()), None)
            .await
            .unwrap();
        expect(
            Err(ClientError::from_answer(status, &headers, &bytes)),
            |e| matches!(e, ClientError::InvalidRequest(_)),
            "malformed-request",
            400,
        );
        expect(
            as_value(service.wallets().credit("u", &Credit::amount(101), None).await),
            |e| matches!(e, ClientError::GrantCapExceeded(_)),
            "grant-cap-exceeded",
            403,
        );
        let held = service.reserve("u", 5, None, None).await.unwrap();
        let id = held.reservation_id.unwrap();
        service.capture(&id, Some(3), None).await.unwrap();
        expect(
            service
                .reservations()
                .capture(&id, None, None)
                .await
                .map(|_| Value::Null),
            |e| matches!(e, ClientError::ReservationClosed(_)),
            "reservation-closed",
            409,
        );
        expect(
            service
                .reservations()
                .capture("rsv_424242", None, None)
                .await
                .map(|_| Value::Null),
            |e| matches!(e, ClientError::ReservationNotFound(_)),
            "reservation-not-found",
            404,
        );
        expect(
            admin.pools().get("nope").await.map(|_| Value::Null),
            |e| matches!(e, ClientError::PoolNotFound(_)),
            "pool-not-found",
            404,
        );
        expect(
            service.billing().get_package("nope").await,
            |e| matches!(e, ClientError::PackageNotFound(_)),
            "package-not-found",
            404,
        );
        expect(
            Client::new(&server.base, "not-a-key")
                .unwrap()
                .me()
                .await
                .map(|_| Value::Null),
            |e| matches!(e, ClientError::Unauthorized(_)),
            "unauthorized",
            401,
        );
        expect(
            service.billing().put_action("chat", &json!({"cost": 1})).await,
            |e| matches!(e, ClientError::Forbidden(_)),
            "forbidden",
            403,
        );
        // A 503: the one stream allowed is open, so a second one is refused.
        let mut first = TcpStream::connect(&address).unwrap();
        write!(
            first,
            "GET /v1/users/u/wallet/stream HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {SERVICE}\r\n\r\n"
        )
        .unwrap();
        let mut head = String::new();
        BufReader::new(first.try_clone().unwrap())
            .read_line(&mut head)
            .unwrap();
        assert!(head.contains("200"), "{head}");
        let once = service.with_retry(RetryPolicy::none());
        let busy = once
            .request::<Value>(
                Method::GET,
                "/v1/users/u/wallet/stream",
                None::<&()>,
                None,
            )
            .await
            .unwrap_err();
        assert!(matches!(busy, ClientError::ServerBusy(_)), "{busy:?}");
        assert_eq!(busy.status(), Some(503));
        assert!(busy.is_retryable());
        drop(first);
        // Nothing above changed the wallet but the debit of 1 and the capture of 3.
        assert_eq!(service.wallet("u", None).await.unwrap().balance, 46);
    });
}

/// A TCP proxy in front of a creditd process. Armed, it drops the client's connection on the
/// first bytes of an answer, SIGKILLs the server, restarts it on the same data directory and
/// sends every later connection to the new process.
struct KillingProxy {
    address: String,
    armed: Arc<AtomicBool>,
    kills: Arc<AtomicU32>,
    upstream: Arc<Mutex<Option<Process>>>,
}

impl KillingProxy {
    fn start(server: Process, data_dir: PathBuf) -> KillingProxy {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let proxy = KillingProxy {
            address: format!("http://{}", listener.local_addr().unwrap()),
            armed: Arc::new(AtomicBool::new(false)),
            kills: Arc::new(AtomicU32::new(0)),
            upstream: Arc::new(Mutex::new(Some(server))),
        };
        let (armed, kills, upstream) = (
            Arc::clone(&proxy.armed),
            Arc::clone(&proxy.kills),
            Arc::clone(&proxy.upstream),
        );
        std::thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { return };
                let (armed, kills, upstream, dir) = (
                    Arc::clone(&armed),
                    Arc::clone(&kills),
                    Arc::clone(&upstream),
                    data_dir.clone(),
                );
                std::thread::spawn(move || relay(client, &armed, &kills, &upstream, &dir));
            }
        });
        proxy
    }
}

impl Drop for KillingProxy {
    /// The relay threads outlive the test; the server they hold must not.
    fn drop(&mut self) {
        if let Some(server) = self.upstream.lock().unwrap().take() {
            server.kill_9();
        }
    }
}

fn relay(
    client: TcpStream,
    armed: &AtomicBool,
    kills: &AtomicU32,
    upstream: &Mutex<Option<Process>>,
    data_dir: &std::path::Path,
) {
    // Waits here while a restart is under way.
    let address = upstream
        .lock()
        .unwrap()
        .as_ref()
        .map(|server| server.address().to_owned());
    let Some(Ok(mut server)) = address.map(TcpStream::connect) else {
        return;
    };
    let (mut from_client, mut to_server) =
        (client.try_clone().unwrap(), server.try_clone().unwrap());
    std::thread::spawn(move || {
        let _ = std::io::copy(&mut from_client, &mut to_server);
        let _ = to_server.shutdown(Shutdown::Write);
    });
    let mut to_client = client;
    let mut buffer = [0u8; 16 * 1024];
    loop {
        let read = match server.read(&mut buffer) {
            Ok(0) | Err(_) => break,
            Ok(read) => read,
        };
        if armed.swap(false, Ordering::SeqCst) {
            // The answer is lost: the client's connection closes, then the server dies.
            let _ = to_client.shutdown(Shutdown::Both);
            let mut upstream = upstream.lock().unwrap();
            upstream.take().unwrap().kill_9();
            kills.fetch_add(1, Ordering::SeqCst);
            *upstream = Some(Process::start(data_dir));
            return;
        }
        if to_client.write_all(&buffer[..read]).is_err() {
            break;
        }
    }
    let _ = to_client.shutdown(Shutdown::Both);
}

#[test]
fn a_debit_whose_answer_is_lost_in_a_crash_is_retried_and_charged_once() {
    let (dir, server) = start(&[]);
    let proxy = KillingProxy::start(server, dir.path().to_path_buf());
    let client = Client::new(&proxy.address, SERVICE).unwrap();
    runtime().block_on(async {
        client.put_user("kim", None).await.unwrap();
        client.credit("kim", 100, None, None).await.unwrap();
        proxy.armed.store(true, Ordering::SeqCst);
        let answered = client
            .request::<Receipt>(
                Method::POST,
                "/v1/users/kim/debit",
                Some(&Debit::amount(30)),
                None,
            )
            .await
            .unwrap();
        assert_eq!(
            proxy.kills.load(Ordering::SeqCst),
            1,
            "the server was killed"
        );
        assert!(answered.attempts >= 2, "{answered:?}");
        assert!(answered.replayed, "the retry got the stored answer");
        assert!(answered.idempotency_key.is_some());
        assert_eq!((answered.value.charged, answered.value.balance), (30, 70));
        // Charged once: by the restarted server's wallet and its ledger.
        assert_eq!(client.wallet("kim", None).await.unwrap().balance, 70);
        let entries = client.wallets().entries("kim", &[]).await.unwrap();
        let debits = entries.entries.iter().filter(|e| e.kind == "debit").count();
        assert_eq!(debits, 1, "{entries:?}");
        // The flat method reports the replay too, with a key of the caller's.
        proxy.armed.store(true, Ordering::SeqCst);
        let receipt = client
            .debit("kim", &Debit::amount(5), Some("order-9"))
            .await
            .unwrap();
        assert!(receipt.replayed);
        assert_eq!(proxy.kills.load(Ordering::SeqCst), 2);
        assert_eq!(client.wallet("kim", None).await.unwrap().balance, 65);
    });
}

/// An endpoint that records each notification: its `Creditd-Signature` and its raw body.
fn notification_listener() -> (String, mpsc::Receiver<(String, Vec<u8>)>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/hooks", listener.local_addr().unwrap());
    let (sender, receiver) = mpsc::channel();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { return };
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let (mut signature, mut length) = (String::new(), 0usize);
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line).unwrap_or(0) == 0 {
                    break;
                }
                let line = line.trim_end();
                if line.is_empty() {
                    break;
                }
                if let Some((name, value)) = line.split_once(':') {
                    match name.trim().to_ascii_lowercase().as_str() {
                        "creditd-signature" => signature = value.trim().to_owned(),
                        "content-length" => length = value.trim().parse().unwrap(),
                        _ => {}
                    }
                }
            }
            let mut body = vec![0u8; length];
            reader.read_exact(&mut body).unwrap();
            let _ = stream
                .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n");
            let _ = sender.send((signature, body));
        }
    });
    (url, receiver)
}

#[test]
fn notifications_from_the_server_verify_and_tampered_or_stale_ones_do_not() {
    const SECRET: &str = "whsec-client-sdk-test-0001";
    let (_dir, server) = start(&[]);
    let (url, received) = notification_listener();
    let service = server.client();
    let platform = server.client_with(PLATFORM);
    runtime().block_on(async {
        platform
            .tenants()
            .put(
                "default",
                &json!({"webhook_url": url, "webhook_secret": SECRET}),
            )
            .await
            .unwrap();
        service.put_user("nell", None).await.unwrap();
        service.credit("nell", 10, None, None).await.unwrap();
        service
            .debit("nell", &Debit::amount(10), None)
            .await
            .unwrap();
    });
    let (signature, body) = loop {
        let (signature, body) = received
            .recv_timeout(Duration::from_secs(20))
            .expect("a notification");
        if serde_json::from_slice::<Value>(&body).unwrap()["type"] == "wallet.depleted" {
            break (signature, body);
        }
    };
    let notification = verify_notification(&body, Some(&signature), SECRET).unwrap();
    assert_eq!(notification.kind, "wallet.depleted");
    assert_eq!(notification.tenant_id, "default");
    assert_eq!(notification.data["user_id"], "nell");
    let mut tampered = body.clone();
    let at = tampered.len() / 2;
    tampered[at] ^= 0x01;
    assert_eq!(
        verify_notification(&tampered, Some(&signature), SECRET),
        Err(SignatureVerificationError::Mismatch)
    );
    assert_eq!(
        verify_notification(&body, Some(&signature), "another-secret-0000"),
        Err(SignatureVerificationError::Mismatch)
    );
    let timestamp: i64 = signature
        .split(',')
        .find_map(|part| part.strip_prefix("t="))
        .unwrap()
        .parse()
        .unwrap();
    let later = VerifyOptions {
        now: Some(timestamp + 301),
        ..VerifyOptions::default()
    };
    assert!(matches!(
        verify_notification_with(&body, Some(&signature), SECRET, later),
        Err(SignatureVerificationError::Stale { .. })
    ));
    assert_eq!(
        verify_notification(&body, None, SECRET),
        Err(SignatureVerificationError::Missing)
    );
}

#[test]
fn reservations_settle_through_the_closure_and_the_guard() {
    let (_dir, server) = start(&[]);
    let service = server.client();
    runtime().block_on(async {
        service.put_user("rae", None).await.unwrap();
        service.credit("rae", 100, None, None).await.unwrap();
        let reservations = service.reservations();
        let observer = service.clone();
        // Held 40, the work cost 12: 12 charged, the rest back.
        let done = reservations
            .with_reservation("rae", &Hold::amount(40), |hold| async move {
                assert_eq!(hold.reservation.amount, 40);
                let wallet = observer.wallet("rae", None).await?;
                assert_eq!((wallet.reserved, wallet.available), (40, 60));
                hold.extend(600).await?;
                Ok::<_, ClientError>(("answer", 12))
            })
            .await
            .unwrap();
        assert_eq!(done.value, "answer");
        assert_eq!(done.capture.as_ref().unwrap().charged, 12);
        let wallet = service.wallet("rae", None).await.unwrap();
        assert_eq!((wallet.balance, wallet.reserved), (88, 0));
        // The work fails: released, nothing charged.
        let failed = reservations
            .with_reservation("rae", &Hold::amount(40), |_| async {
                Err::<((), i64), _>(ClientError::Decode("the model failed".into()))
            })
            .await
            .unwrap_err();
        assert_eq!(failed, ClientError::Decode("the model failed".into()));
        let wallet = service.wallet("rae", None).await.unwrap();
        assert_eq!((wallet.balance, wallet.reserved), (88, 0));
        // A cost of 0 releases.
        let free = reservations
            .with_reservation("rae", &Hold::amount(10), |_| async {
                Ok::<_, ClientError>(((), 0))
            })
            .await
            .unwrap();
        assert!(free.capture.is_none());
        // Too little for the hold: a 402 before the work runs.
        let ran = AtomicBool::new(false);
        let refused = reservations
            .with_reservation("rae", &Hold::amount(500), |_| async {
                ran.store(true, Ordering::SeqCst);
                Ok::<_, ClientError>(((), 1))
            })
            .await
            .unwrap_err();
        assert!(matches!(
            refused,
            ClientError::InsufficientCredits { required: 500, .. }
        ));
        assert!(!ran.load(Ordering::SeqCst), "the work never ran");
        // The guard: captured explicitly, or released when dropped.
        let mut guard = reservations
            .hold("rae", &Hold::amount(20), None)
            .await
            .unwrap();
        assert_eq!(guard.capture(Some(5)).await.unwrap().charged, 5);
        drop(guard);
        let guard = reservations
            .hold("rae", &Hold::amount(20), None)
            .await
            .unwrap();
        assert_eq!(service.wallet("rae", None).await.unwrap().reserved, 20);
        drop(guard);
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let wallet = service.wallet("rae", None).await.unwrap();
            if wallet.reserved == 0 {
                assert_eq!(wallet.balance, 83, "the dropped hold charged nothing");
                break;
            }
            assert!(
                Instant::now() < deadline,
                "the dropped guard did not release"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let open = reservations.list_open("rae").await.unwrap();
        assert_eq!(
            open["reservations"].as_array().map(Vec::len),
            Some(0),
            "{open}"
        );
    });
}

#[test]
fn the_admin_and_platform_surface() {
    let (_dir, server) = start(&[]);
    let (service, admin) = (server.client(), server.client_with(ADMIN));
    let platform = server.client_with(PLATFORM);
    runtime().block_on(async {
        catalogue(&admin).await;
        let health = service.health();
        assert!(health.live().await.unwrap() && health.ready().await.unwrap());
        assert!(health.metrics().await.unwrap().contains("creditd_debits_total"));
        assert!(health.openapi().await.unwrap().contains("/v1/users/{user_id}/debit"));
        let me = service.me().await.unwrap();
        assert_eq!((me.role.as_str(), me.tenant.as_str()), ("service", "default"));
        for user in ["org-a", "org-b", "other"] {
            service
                .users()
                .put(user, &UserProfile::default())
                .await
                .unwrap();
        }
        let page = service.users().list(Some("org-"), None, None).await.unwrap();
        let ids: Vec<&str> = page.users.iter().map(|u| u.user_id.as_str()).collect();
        assert_eq!(ids, ["org-a", "org-b"]);
        assert_eq!(service.users().get("other").await.unwrap().user_id, "other");
        // A pool that org-a draws on once its wallet is empty.
        let pool = admin.pools().put("team", &json!({"name": "Team"})).await.unwrap();
        assert_eq!((pool.pool_id.as_str(), pool.balance), ("team", 0));
        let funded = admin.pools().credit("team", 1000, "seed", None).await.unwrap();
        assert_eq!(funded.balance, 1000);
        admin
            .pools()
            .set_member("org-a", "team", Some(300))
            .await
            .unwrap();
        let member = service.pools().get_member("org-a").await.unwrap();
        assert_eq!((member.daily_cap, member.available_to_user), (Some(300), 300));
        let drawn = service
            .debit("org-a", &Debit::amount(50), None)
            .await
            .unwrap();
        assert_eq!((drawn.from_wallet, drawn.from_pool), (0, 50));
        assert_eq!(admin.pools().get("team").await.unwrap().balance, 950);
        assert_eq!(admin.pools().list(&[]).await.unwrap()["pools"][0]["pool_id"], "team");
        assert!(admin.pools().members("team", &[]).await.unwrap().is_object());
        assert!(admin.pools().entries("team", &[]).await.unwrap().is_object());
        admin.pools().remove_member("org-a").await.unwrap();
        // Revoke and overdraft (admin), a stream token (service).
        service.credit("org-b", 40, None, None).await.unwrap();
        let revoked = admin
            .wallets()
            .revoke("org-b", 15, "refund", None)
            .await
            .unwrap();
        assert_eq!(revoked.balance, 25);
        admin
            .wallets()
            .set_overdraft("org-b", 10, None)
            .await
            .unwrap();
        let wallet = service.wallets().get("org-b", None).await.unwrap();
        assert_eq!((wallet.overdraft_limit, wallet.spendable), (10, 35));
        let token = service.wallets().stream_token("org-b").await.unwrap();
        assert!(!token.token.is_empty());
        assert!(service
            .wallets()
            .stream_url("org-b", &token.token)
            .starts_with(&format!("{}/v1/users/org-b/wallet/stream?token=", server.base)));
        // The live balance stream: the view at once, then after each change.
        let mut stream = service.wallets().stream("org-b", None, None).await.unwrap();
        let first = stream.next().await.unwrap().unwrap();
        assert_eq!(first.event, "wallet");
        assert_eq!(first.wallet().unwrap().balance, 25);
        service.credit("org-b", 5, None, None).await.unwrap();
        let next = stream.next().await.unwrap().unwrap();
        assert_eq!(next.wallet().unwrap().balance, 30);
        assert_eq!(stream.last_event_id(), next.id.as_deref());
        assert!(next.id.is_some() && next.id != first.id);
        drop(stream);
        // The catalogue and an auto top-up rule.
        let actions = service.billing().list_actions().await.unwrap();
        assert_eq!(actions["actions"][0]["action"], "chat", "{actions}");
        assert_eq!(service.billing().get_action("chat").await.unwrap()["cost"], 10);
        assert_eq!(
            service.billing().get_package("starter").await.unwrap()["credits"],
            500
        );
        assert!(service.billing().list_packages().await.unwrap().is_object());
        let rule = json!({"enabled": true, "threshold": 20, "package_id": "starter", "payment_method": "pm_card_visa"});
        admin.billing().put_auto_topup("org-b", &rule).await.unwrap();
        let stored = service.billing().get_auto_topup("org-b").await.unwrap();
        assert_eq!(stored["threshold"], 20, "{stored}");
        admin.billing().delete_auto_topup("org-b").await.unwrap();
        admin.billing().delete_action("chat").await.unwrap();
        assert!(matches!(
            service.debit("org-b", &Debit::action("chat", 1), None).await,
            Err(ClientError::UnknownAction(_))
        ));
        // Reports and the audit log.
        let usage = admin
            .reports()
            .usage(&[("group_by", "user")])
            .await
            .unwrap();
        assert!(usage["rows"].is_array(), "{usage}");
        let revenue = admin.reports().revenue(&[]).await.unwrap();
        assert!(revenue["rows"].is_array(), "{revenue}");
        let audit = admin.audit().list(&[("limit", "100")]).await.unwrap();
        let records = audit["records"].as_array().unwrap();
        assert!(records.len() >= 5, "{audit}");
        assert!(admin.audit().verify().await.unwrap().is_object());
        // Tenants, and a platform key acting in one.
        let tenants = platform.tenants().list().await.unwrap();
        assert!(tenants.to_string().contains("\"default\""), "{tenants}");
        assert!(platform.tenants().get("default").await.unwrap().is_object());
        let acting = platform.in_tenant("default").unwrap();
        assert_eq!(acting.me().await.unwrap().tenant, "default");
        assert_eq!(
            acting.wallets().get("org-b", None).await.unwrap().balance,
            30
        );
    });
}

#[test]
fn the_example_gateway_meters_each_chat_and_sends_a_402_to_the_portal() {
    let (_dir, server) = start(&[]);
    let service = server.client();
    runtime().block_on(async {
        service.put_user("gia", None).await.unwrap();
        service.credit("gia", 120, None, None).await.unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let calls = Arc::new(AtomicU32::new(0));
        let counted = Arc::clone(&calls);
        let model = move |prompt: &str| {
            counted.fetch_add(1, Ordering::SeqCst);
            gateway::echo_model(prompt)
        };
        let state = Arc::new(gateway::Gateway {
            creditd: service.clone(),
            model: Arc::new(model),
        });
        let serving = tokio::spawn(gateway::serve(listener, state));
        let http = reqwest::Client::new();
        let chat = |user: &'static str, prompt: &'static str| {
            http.post(format!("http://{address}/v1/chat"))
                .header("x-user-id", user)
                .body(prompt)
                .send()
        };
        // Three words: 5 + 3 credits, though 100 were held.
        let answer = chat("gia", "hello there friend").await.unwrap();
        assert_eq!(answer.status(), 200);
        let body: Value = answer.json().await.unwrap();
        assert_eq!(
            (body["charged"].as_i64(), body["balance"].as_i64()),
            (Some(8), Some(112))
        );
        assert_eq!(body["reply"], "you said: hello there friend");
        // The model fails: 502, the hold released, nothing charged.
        let answer = chat("gia", "please fail").await.unwrap();
        assert_eq!(answer.status(), 502);
        let wallet = service.wallet("gia", None).await.unwrap();
        assert_eq!((wallet.balance, wallet.reserved), (112, 0));
        // Under the hold's 100: a 402 with the portal link, and the model is not called.
        service
            .debit("gia", &Debit::amount(20), None)
            .await
            .unwrap();
        let before = calls.load(Ordering::SeqCst);
        let answer = chat("gia", "one more").await.unwrap();
        assert_eq!(answer.status(), 402);
        let body: Value = answer.json().await.unwrap();
        assert_eq!(
            (body["available"].as_i64(), body["required"].as_i64()),
            (Some(92), Some(100))
        );
        let topup = body["topup_url"].as_str().unwrap();
        assert!(
            topup.starts_with(&format!("{}/portal/", server.base)),
            "{body}"
        );
        assert_eq!(
            calls.load(Ordering::SeqCst),
            before,
            "the model was not called"
        );
        assert_eq!(chat("nobody", "hi").await.unwrap().status(), 403);
        assert_eq!(service.wallet("gia", None).await.unwrap().balance, 92);
        serving.abort();
    });
}

#[test]
fn a_package_bought_for_a_pool_credits_the_pool_its_members_spend() {
    let (_dir, server) = start(&[]);
    let (service, admin) = (server.client(), server.client_with(ADMIN));
    runtime().block_on(async {
        catalogue(&admin).await;
        admin
            .pools()
            .put("research", &json!({"name": "Research"}))
            .await
            .unwrap();
        let refused = service
            .payments()
            .initialize_for_pool("research", "starter", "ops@example.com", None)
            .await
            .unwrap_err();
        assert_eq!(refused.slug(), Some("forbidden"), "{refused:?}");
        let checkout = admin
            .payments()
            .initialize_for_pool("research", "starter", "ops@example.com", None)
            .await
            .unwrap();
        pay_like_a_browser(&checkout.checkout_url, &server.base).await;
        let paid = admin.payments().get(&checkout.reference).await.unwrap();
        assert_eq!(paid.status, "succeeded");
        assert_eq!(
            (paid.pool_id.as_deref(), paid.user_id.as_deref()),
            (Some("research"), None)
        );
        assert_eq!(admin.pools().get("research").await.unwrap().balance, 500);
        let listed = admin
            .pools()
            .payments("research", &[("status", "succeeded")])
            .await
            .unwrap();
        assert_eq!(listed.payments.len(), 1);
        assert_eq!(listed.payments[0].reference, checkout.reference);
        service.put_user("bo", None).await.unwrap();
        admin
            .pools()
            .set_member("bo", "research", None)
            .await
            .unwrap();
        let spent = service
            .wallets()
            .debit("bo", &Debit::amount(120), None)
            .await
            .unwrap();
        assert_eq!((spent.from_wallet, spent.from_pool), (0, 120));
        assert_eq!(admin.pools().get("research").await.unwrap().balance, 380);
    });
}
