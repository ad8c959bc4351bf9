//! `creditd loadgen` with a mix of operations (`--reserve-percent`, `--batch-percent`): every
//! operation it counts is applied exactly as counted, and every reservation it makes is captured.

#[path = "common/server.rs"]
mod server;

use std::sync::Arc;

use creditd::config::CoreThreads;
use creditd::engine::{Engine, SystemClock};
use creditd::wal::FsStorage;
use server::{Server, ADMIN, SERVICE};

/// On the shared workers (`server.core_threads = 0`); the test below runs the same mix on core
/// threads, the default.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mixed_load_spends_exactly_what_it_counts_and_leaves_no_hold_open() {
    let server =
        Server::start_with(|config| config.server.core_threads = CoreThreads::Count(0)).await;
    mixed_load(&server, 2).await;
    server.stop().await;
}

/// With `server.core_threads`, the connections' own threads sync the log when they run out of
/// work: the same mix is applied exactly, and the group commits are theirs, not the log writer
/// thread's (without the park hook it would take each batch, after up to 10 ms). With two core
/// threads, what one queues while the other syncs is synced by a core thread too, once that sync
/// ends: before it went to the writer thread, which then made half the batches or more.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn core_threads_sync_the_log_themselves_and_apply_the_mix_exactly() {
    for core_threads in [1, 2] {
        let (server, engine) = server_with_engine(|config| {
            config.server.core_threads = CoreThreads::Count(core_threads);
        })
        .await;
        let before = engine.wal().stats();
        mixed_load(&server, 8).await;
        let after = engine.wal().stats();
        let (led, batches) = (after.led - before.led, after.batches - before.batches);
        // Nearly all (every one, on a quiet machine): the writer thread takes only records
        // that waited a whole deadline, which a core thread starved of CPU can leave behind
        // (382 of 440 with two core threads while two other servers ran at full load on the
        // two cores). What this guards against, the writer thread syncing what one core thread
        // queued while the other synced, made half the batches or more.
        assert!(
            led * 4 >= batches * 3,
            "{core_threads} core threads: {led} of {batches} group commits were theirs"
        );
        server.stop().await;
    }
}

/// Runs the mix on `connections` connections against `server` and checks its accounting.
async fn mixed_load(server: &Server, connections: usize) {
    let amount = 3;
    let options = creditd::loadgen::LoadOptions {
        url: server.base.clone(),
        key: SERVICE.into(),
        connections,
        duration: 1,
        warmup: 0,
        rate: 0,
        users: 4,
        distribution: creditd::loadgen::Distribution::Uniform,
        zipf_exponent: 1.0,
        batch: 1,
        amount,
        idempotency_keys: true,
        skip_setup: false,
        setup_only: false,
        user_prefix: "mix".into(),
        pool: None,
        pool_daily_cap: None,
        admin_key: ADMIN.into(),
        mix: creditd::loadgen::MixOptions {
            reserve_percent: 40,
            batch_percent: 30,
            mix_batch: 5,
            report_every: 1,
        },
    };
    let report = creditd::loadgen::run(&options).await.unwrap();
    let render = report.render(&options);
    assert!(report.requests > 20, "{render}");
    assert_eq!(
        report.statuses[0], report.requests,
        "every answer 2xx: {render}"
    );
    // Batches of 5 carry more debits than operations; reservations and single debits one each.
    assert!(report.debits > report.requests, "{render}");
    let client = server.client(SERVICE);
    let mut spent = 0;
    for index in 0..options.users {
        let wallet = client.wallet(&format!("mix-{index}"), None).await.unwrap();
        assert_eq!(
            wallet.reserved, 0,
            "every reservation was captured: {wallet:?}"
        );
        spent += 1_000_000_000_000i64 - wallet.balance;
    }
    assert_eq!(spent, amount * report.debits as i64, "{render}");
    // The reservations went through their own routes, each captured.
    let metrics = metrics_text(&server.base).await;
    let captures = metrics
        .lines()
        .filter(|line| {
            line.starts_with("creditd_http_request_duration_seconds_count")
                && line.contains("/v1/reservations/{reservation_id}/capture")
                && line.contains("status=\"200\"")
        })
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>();
    assert!(captures > 0.0, "no capture was made: {metrics}");
}

/// Under 64 connections the log's writer thread makes the group commits; a request's own thread
/// syncs only when it is alone. A lead under concurrency hands the worker's tasks to another
/// thread (`block_in_place`) and syncs a batch of one: with a weaker test of "alone", more than
/// half of the requests here took on a sync (a quarter in a release build), and the runtime grew
/// to 150 threads.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_many_connections_the_writer_thread_makes_the_group_commits() {
    let (server, engine) = server_with_engine(|_| {}).await;
    let mut options = creditd::loadgen::LoadOptions {
        url: server.base.clone(),
        key: SERVICE.into(),
        connections: 64,
        duration: 2,
        warmup: 0,
        rate: 0,
        users: 100,
        distribution: creditd::loadgen::Distribution::Uniform,
        zipf_exponent: 1.0,
        batch: 1,
        amount: 1,
        idempotency_keys: false,
        skip_setup: false,
        setup_only: true,
        user_prefix: "many".into(),
        pool: None,
        pool_daily_cap: None,
        admin_key: ADMIN.into(),
        mix: creditd::loadgen::MixOptions {
            reserve_percent: 0,
            batch_percent: 0,
            mix_batch: 5,
            report_every: 1,
        },
    };
    creditd::loadgen::run(&options).await.unwrap();
    let before = engine.wal().stats();
    options.setup_only = false;
    options.skip_setup = true;
    let report = creditd::loadgen::run(&options).await.unwrap();
    let after = engine.wal().stats();
    let (leads, led, batches, records) = (
        after.leads - before.leads,
        after.led - before.led,
        after.batches - before.batches,
        after.records - before.records,
    );
    assert!(report.requests > 1000, "{}", report.render(&options));
    assert!(
        leads * 20 <= records,
        "{leads} of {records} requests took on a sync ({led} of {batches} group commits)"
    );
    server.stop().await;
}

/// A server around an engine the test holds, for the log's own figures ([`Engine::wal`]): the
/// metrics are the process's, shared by the tests of this file running at once.
async fn server_with_engine(
    adjust: impl FnOnce(&mut creditd::config::Config),
) -> (Server, Arc<Engine>) {
    let dir = tempfile::tempdir().unwrap();
    let mut config = server::config(dir.path());
    adjust(&mut config);
    let engine = Engine::open(
        config.engine_options(),
        Arc::new(FsStorage),
        Arc::new(SystemClock),
    )
    .unwrap();
    let server = Server::start_with_engine(config, Arc::clone(&engine), dir).await;
    (server, engine)
}

/// The server's `/metrics` text.
async fn metrics_text(base: &str) -> String {
    let client = creditd::client::Client::new(base, SERVICE).unwrap();
    let (_, _, body) = client
        .send(http::Method::GET, "/metrics", None, None)
        .await
        .unwrap();
    String::from_utf8_lossy(&body).into_owned()
}
