//! Admission control under overload: past `server.max_in_flight_requests` keyed requests in
//! progress, a keyed request is answered 503 `server-busy` with `Retry-After` at once and changes
//! nothing, while probes are still answered; once a place is free, requests pass again. On the
//! shared workers and on core threads (the default), where the thread stuck in the held sync
//! takes no new connection: the shared workers answer them.

use std::sync::Arc;
use std::time::Duration;

use creditd::client::Debit;
use creditd::config::CoreThreads;
use creditd::engine::{Engine, EngineOptions, SystemClock};
use creditd::wal::FsStorage;
use http::Method;
use serde_json::Value;

#[path = "common/server.rs"]
mod server;
#[path = "common/sync_gate.rs"]
mod sync_gate;

use server::{Server, SERVICE};
use sync_gate::GatedStorage;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_the_in_flight_limit_keyed_requests_are_refused_at_once_and_probes_answered() {
    for core_threads in [
        CoreThreads::Count(0),
        CoreThreads::Auto,
        CoreThreads::Count(2),
    ] {
        refused_while_a_sync_is_held(core_threads).await;
    }
}

async fn refused_while_a_sync_is_held(core_threads: CoreThreads) {
    let dir = tempfile::tempdir().unwrap();
    let mut config = server::config(dir.path());
    config.server.max_in_flight_requests = 1;
    config.server.core_threads = core_threads;
    let (storage, gate) = GatedStorage::new(Arc::new(FsStorage));
    let options = EngineOptions {
        background: false,
        ..config.engine_options()
    };
    let engine = Engine::open(options, Arc::new(storage), Arc::new(SystemClock)).unwrap();
    let server = Server::start_with_engine(config, Arc::clone(&engine), dir).await;
    let service = server.client(SERVICE);
    service.put_user("p", None).await.unwrap();
    service.credit("p", 10, None, None).await.unwrap();

    // A debit whose sync is held at the gate keeps the one place.
    gate.close();
    let held = tokio::spawn({
        let service = service.clone();
        async move { service.debit("p", &Debit::amount(1), None).await }
    });
    let waiting = Arc::clone(&gate);
    tokio::task::spawn_blocking(move || waiting.wait_for_a_sync())
        .await
        .unwrap()
        .unwrap();
    let lsn_before = engine.wal().next_lsn();
    // On a core thread, the held sync is its park hook's: once it has run 10 ms, new
    // connections stop going to that thread.
    tokio::time::sleep(Duration::from_millis(50)).await;

    // A client of its own, so a new connection: `service` may hold a second idle connection
    // from before the hold (its pool does not always have the first back in time for the next
    // request), placed on the thread now stuck in the sync, which would answer nothing on it.
    let service = server.client(SERVICE);
    let body = br#"{"amount":1}"#.to_vec();
    let refused = service.send(Method::POST, "/v1/users/p/debit", Some(body), None);
    let (status, headers, answer) = tokio::time::timeout(Duration::from_secs(10), refused)
        .await
        .unwrap_or_else(|_| panic!("{core_threads:?}: no answer while the sync is held"))
        .unwrap();
    let answer: Value = serde_json::from_slice(&answer).unwrap();
    assert_eq!(status.as_u16(), 503, "{core_threads:?}: {answer}");
    assert!(
        answer["type"].as_str().unwrap().ends_with("/server-busy"),
        "{answer}"
    );
    assert_eq!(headers.get("retry-after").unwrap(), "1");
    assert_eq!(
        engine.wal().next_lsn(),
        lsn_before,
        "a refused request writes nothing"
    );
    // A read is keyed too: refused as well. A probe is not.
    let (status, _, _) = service
        .send(Method::GET, "/v1/users/p/wallet", None, None)
        .await
        .unwrap();
    assert_eq!(status.as_u16(), 503);
    let (status, _, _) = service
        .send(Method::GET, "/livez", None, None)
        .await
        .unwrap();
    assert_eq!(status.as_u16(), 200);

    gate.open();
    let debited = tokio::time::timeout(Duration::from_secs(30), held)
        .await
        .expect("the held debit finishes once its sync passes")
        .unwrap()
        .unwrap();
    assert_eq!(debited.balance, 9);
    // The place is free again.
    let again = service.debit("p", &Debit::amount(1), None).await.unwrap();
    assert_eq!(again.balance, 8);
    server.stop().await;
}
