//! The audit log over HTTP and on disk: changes made by hand through a real server are listed by
//! `GET /v1/audit` with who made them and what they replaced, only to the tenant's admins; then,
//! with the server stopped, `creditd audit verify` passes the file untouched and names the first
//! bad record of a copy with a record changed, removed or swapped.

use std::path::Path;
use std::process::Command;

use http::Method;
use serde_json::{json, Value};

#[path = "common/server.rs"]
mod server;

use creditd::config::Role;
use server::{key, send_json, Server, ADMIN, GLOBEX, PLATFORM, SERVICE};

/// The admin key of tenant `globex`.
const GLOBEX_ADMIN: &str = "globex-admin-secret-0001";

/// Every record of the answer to `path`, with its page's cursor.
async fn audit(client: &creditd::client::Client, path: &str) -> (Vec<Value>, Value) {
    let (status, page) = send_json(client, Method::GET, path, "").await;
    assert_eq!(status, 200, "{path}: {page}");
    (
        page["records"].as_array().unwrap().clone(),
        page["next_cursor"].clone(),
    )
}

/// Runs `creditd audit verify` on the data directory `dir`: success, and what it printed.
fn verify(dir: &Path) -> (bool, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_creditd"))
        .args(["audit", "verify", "--data-dir"])
        .arg(dir)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.success(), text)
}

/// A copy of the data directory's history in a new directory, changed by `sql`.
fn tampered(history: &Path, sql: &str) -> tempfile::TempDir {
    let copy = tempfile::tempdir().unwrap();
    let path = copy.path().join(creditd::history::FILE_NAME);
    // Through SQLite, so that what its write-ahead file still holds comes along.
    let flags = rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY;
    rusqlite::Connection::open_with_flags(history, flags)
        .unwrap()
        .execute("VACUUM INTO ?1", [path.to_str().unwrap()])
        .unwrap();
    rusqlite::Connection::open(&path)
        .unwrap()
        .execute_batch(sql)
        .unwrap();
    copy
}

#[tokio::test]
async fn changes_by_hand_are_audited_and_a_tampered_chain_is_named() {
    let server = Server::start_with(|config| {
        let globex = key("globex-admin", GLOBEX_ADMIN, Role::Admin, "globex");
        config.auth.keys.push(globex);
    })
    .await;
    let service = server.client(SERVICE);
    let admin = server.client(ADMIN);
    let platform = server.client(PLATFORM);
    service.put_user("ada", None).await.unwrap();
    let writes = [
        (
            &admin,
            Method::POST,
            "/v1/users/ada/credit",
            json!({"amount": 100, "reason": "welcome"}),
        ),
        (
            &service,
            Method::POST,
            "/v1/users/ada/debit",
            json!({"amount": 30}),
        ),
        (
            &admin,
            Method::POST,
            "/v1/users/ada/revoke",
            json!({"amount": 20, "reason": "fraud"}),
        ),
        (&admin, Method::PUT, "/v1/actions/gpt", json!({"cost": 3})),
        (&admin, Method::PUT, "/v1/actions/gpt", json!({"cost": 4})),
        (
            &admin,
            Method::PUT,
            "/v1/packages/starter",
            json!({"name": "Starter", "credits": 500, "price_minor": 200_000, "price_currency": "NGN"}),
        ),
        (
            &admin,
            Method::PUT,
            "/v1/users/ada/auto-topup",
            json!({"threshold": 10, "package_id": "starter", "max_per_day": 2}),
        ),
        (
            &admin,
            Method::PUT,
            "/v1/users/ada/overdraft",
            json!({"overdraft_limit": 25}),
        ),
        (
            &platform,
            Method::PUT,
            "/v1/tenants/acme",
            json!({"name": "Acme Corp", "webhook_url": "https://acme.example/hooks",
                   "webhook_secret": "whsec-0123456789abcdef"}),
        ),
    ];
    for (client, method, path, body) in writes {
        let (status, answer) = send_json(client, method, path, &body.to_string()).await;
        assert!((200..300).contains(&status), "{path}: {answer}");
    }

    // Read your writes: every change is listed at once, newest first.
    let (records, cursor) = audit(&admin, "/v1/audit").await;
    assert_eq!(cursor, Value::Null);
    let actions: Vec<&str> = records
        .iter()
        .map(|r| r["action"].as_str().unwrap())
        .collect();
    assert_eq!(
        actions,
        [
            "tenant.webhook",
            "tenant.upsert",
            "overdraft.set",
            "auto_topup.set",
            "package.put",
            "action.put",
            "action.put",
            "wallet.revoke",
            "credit.grant",
            "tenant.upsert",
        ],
        "{records:#?}"
    );
    let seqs: Vec<u64> = records.iter().map(|r| r["seq"].as_u64().unwrap()).collect();
    assert!(seqs.windows(2).all(|pair| pair[0] > pair[1]), "{seqs:?}");
    for record in &records {
        let hash = record["hash"].as_str().unwrap();
        assert_eq!(hash.len(), 64);
        assert!(hash
            .bytes()
            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()));
        assert!(record["at"].as_str().unwrap().ends_with('Z'));
    }
    let [webhook, renamed, overdraft, rule, package, second_put, first_put, revoke, grant, created] =
        &records[..]
    else {
        unreachable!()
    };
    assert_eq!(created["actor"], "system");
    assert_eq!(created["target"], "tenant:acme");
    assert_eq!(created["before"], Value::Null);
    assert_eq!(
        (grant["actor"].as_str(), grant["target"].as_str()),
        (Some("acme-admin"), Some("user:ada"))
    );
    assert_eq!(grant["before"]["balance"], 0);
    assert_eq!(grant["after"]["balance"], 100);
    assert_eq!(grant["after"]["amount"], 100);
    assert_eq!(grant["after"]["description"], "welcome");
    // The usage debit in between is not audited, but the revoke's before counts it.
    assert_eq!(revoke["before"]["balance"], 70);
    assert_eq!(revoke["after"]["balance"], 50);
    assert_eq!(revoke["after"]["amount"], -20);
    assert_eq!(revoke["after"]["description"], "fraud");
    assert_eq!(first_put["target"], "action:gpt");
    assert_eq!(first_put["before"], Value::Null);
    assert_eq!(second_put["before"], first_put["after"]);
    assert_eq!(second_put["after"]["cost"], 4);
    assert_eq!(package["target"], "package:starter");
    assert_eq!(package["after"]["price_minor"], 200_000);
    assert_eq!(rule["after"]["package_id"], "starter");
    assert_eq!(rule["after"]["enabled"], true);
    assert_eq!(overdraft["after"]["overdraft_limit"], 25);
    assert_eq!(renamed["actor"], "platform");
    assert_eq!(renamed["before"], created["after"]);
    assert_eq!(renamed["after"]["name"], "Acme Corp");
    assert_eq!(webhook["target"], "tenant:acme");
    assert_eq!(webhook["after"]["url"], "https://acme.example/hooks");
    assert!(
        !webhook.to_string().contains("whsec-0123456789abcdef"),
        "{webhook}"
    );
    assert_eq!(
        webhook["after"]["secret_sha256_prefix"]
            .as_str()
            .unwrap()
            .len(),
        8
    );

    // Pages, filters.
    let (page, cursor) = audit(&admin, "/v1/audit?limit=4").await;
    assert_eq!(page[..], records[..4]);
    let (rest, _) = audit(
        &admin,
        &format!("/v1/audit?cursor={}", cursor.as_str().unwrap()),
    )
    .await;
    assert_eq!(rest[..], records[4..]);
    let (by_platform, _) = audit(&admin, "/v1/audit?actor=platform").await;
    assert_eq!(by_platform[..], records[..2]);
    let (future, _) = audit(&admin, "/v1/audit?from=2999-01-01T00:00:00Z").await;
    assert!(future.is_empty());
    let (past, _) = audit(&admin, "/v1/audit?to=2000-01-01T00:00:00Z").await;
    assert!(past.is_empty());

    // Admins only; another tenant's admin sees its own records, none of acme's.
    let (status, problem) = send_json(&service, Method::GET, "/v1/audit", "").await;
    assert_eq!(status, 403, "{problem}");
    let (globex, _) = audit(&server.client(GLOBEX_ADMIN), "/v1/audit").await;
    assert!(!globex.is_empty());
    for record in &globex {
        assert_eq!(record["target"], "tenant:globex", "{record}");
        assert!(!records.contains(record));
    }
    let (status, _) = send_json(&server.client(GLOBEX), Method::GET, "/v1/audit", "").await;
    assert_eq!(status, 403);
    for query in [
        "limit=0",
        "limit=1001",
        "limit=ten",
        "cursor=nonsense",
        "cursor=0",
        "from=yesterday",
        "from=2026-02-01T00:00:00Z&to=2026-01-01T00:00:00Z",
        "colour=blue",
    ] {
        let (status, problem) =
            send_json(&admin, Method::GET, &format!("/v1/audit?{query}"), "").await;
        assert_eq!(status, 422, "{query}: {problem}");
        assert_eq!(
            problem["type"], "https://creditd.dev/problems/invalid-request",
            "{query}"
        );
    }

    // On disk: the whole chain (both tenants) checks out, and tampering is named.
    let total = records.len() + globex.len();
    let seq_of = |record: &Value| record["seq"].as_u64().unwrap();
    let dir = server.stop().await;
    let history = dir.path().join(creditd::history::FILE_NAME);
    let (ok, said) = verify(dir.path());
    assert!(ok, "{said}");
    assert!(
        said.starts_with(&format!("audit chain ok: {total} records, last hash ")),
        "{said}"
    );
    let changed = tampered(
        &history,
        &format!(
            r#"UPDATE audit SET after = '{{"balance":1000000}}' WHERE seq = {}"#,
            seq_of(grant)
        ),
    );
    let (ok, said) = verify(changed.path());
    assert!(!ok);
    assert!(
        said.contains(&format!("broken at seq {} ", seq_of(grant))),
        "{said}"
    );
    assert!(said.trim_end().ends_with(": changed"), "{said}");
    let removed = tampered(
        &history,
        &format!("DELETE FROM audit WHERE seq = {}", seq_of(revoke)),
    );
    let (ok, said) = verify(removed.path());
    assert!(!ok);
    assert!(
        said.contains(&format!("broken at seq {} ", seq_of(revoke))),
        "{said}"
    );
    assert!(said.trim_end().ends_with(": missing"), "{said}");
    let (a, b) = (seq_of(first_put), seq_of(package));
    let swapped = tampered(
        &history,
        &format!(
            "UPDATE audit SET seq = -1 WHERE seq = {a};
             UPDATE audit SET seq = {a} WHERE seq = {b};
             UPDATE audit SET seq = {b} WHERE seq = -1;"
        ),
    );
    let (ok, said) = verify(swapped.path());
    assert!(!ok);
    assert!(said.contains(&format!("broken at seq {a} ")), "{said}");
    assert!(said.trim_end().ends_with(": out of order"), "{said}");
    let (ok, said) = verify(tempfile::tempdir().unwrap().path());
    assert!(!ok);
    assert!(said.contains("no history database"), "{said}");
}
