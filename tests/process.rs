//! Tests that run the real `creditd` binary: kill it with SIGKILL and SIGTERM, restart it on the
//! same data directory, and check what survived; and read its `/metrics` as Prometheus would.

use std::process::Command;

use creditd::client::Debit;

#[path = "common/process.rs"]
mod process;

use process::{runtime, Process};

#[test]
fn idempotent_replay_survives_kill_9_and_restart() {
    let dir = tempfile::tempdir().unwrap();
    let runtime = runtime();
    let first = Process::start(dir.path());
    let client = first.client();
    let receipt = runtime.block_on(async {
        client.put_user("kim", None).await.unwrap();
        client
            .credit("kim", 100, None, Some("grant-1"))
            .await
            .unwrap();
        client
            .debit("kim", &Debit::amount(30), Some("order-77"))
            .await
            .unwrap()
    });
    assert!(!receipt.replayed);
    first.kill_9();

    let second = Process::start(dir.path());
    let client = second.client();
    runtime.block_on(async {
        let again = client
            .debit("kim", &Debit::amount(30), Some("order-77"))
            .await
            .unwrap();
        assert!(again.replayed, "the key's answer survived the crash");
        assert_eq!(
            (again.entry_id.clone(), again.balance, again.charged),
            (receipt.entry_id.clone(), 70, 30)
        );
        let reused = client
            .debit("kim", &Debit::amount(31), Some("order-77"))
            .await
            .unwrap_err();
        assert_eq!(reused.slug(), Some("idempotency-key-reused"));
        let credit_again = client
            .credit("kim", 100, None, Some("grant-1"))
            .await
            .unwrap();
        assert!(credit_again.replayed);
        assert_eq!(
            client.wallet("kim", None).await.unwrap().balance,
            70,
            "no effect twice"
        );
    });
    second.kill_9();
}

#[test]
fn graceful_shutdown_leaves_a_snapshot_and_a_clean_log() {
    let dir = tempfile::tempdir().unwrap();
    let runtime = runtime();
    let process = Process::start(dir.path());
    let client = process.client();
    runtime.block_on(async {
        for i in 0..20 {
            let user = format!("u{i}");
            client.put_user(&user, None).await.unwrap();
            client.credit(&user, 10, None, None).await.unwrap();
            client.debit(&user, &Debit::amount(3), None).await.unwrap();
        }
    });
    let status = process.terminate();
    assert!(status.success(), "SIGTERM must exit 0, got {status}");

    let snapshots: Vec<_> = std::fs::read_dir(dir.path().join("snapshots"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(snapshots.len(), 1, "{snapshots:?}");
    assert!(snapshots[0].to_string_lossy().ends_with(".snap"));
    let verify = Command::new(env!("CARGO_BIN_EXE_creditd"))
        .args(["wal", "verify", "--data-dir"])
        .arg(dir.path())
        .output()
        .unwrap();
    let report = String::from_utf8_lossy(&verify.stdout);
    assert!(verify.status.success(), "{report}");
    assert!(
        report.contains("0 problems, 0 notes"),
        "a clean log has no torn tail: {report}"
    );
    assert!(
        report.contains("+ 0 records"),
        "everything is in the final snapshot: {report}"
    );

    let restarted = Process::start(dir.path());
    let client = restarted.client();
    runtime.block_on(async {
        for i in 0..20 {
            assert_eq!(
                client.wallet(&format!("u{i}"), None).await.unwrap().balance,
                7
            );
        }
    });
    assert!(restarted.terminate().success());
}

#[test]
fn a_second_process_on_the_same_data_directory_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let first = Process::start(dir.path());
    let config = concat!(env!("CARGO_MANIFEST_DIR"), "/config.toml");
    let second = Command::new(env!("CARGO_BIN_EXE_creditd"))
        .args(["serve", "--config", config])
        .env("CREDITD_SERVER__LISTEN", "127.0.0.1:0")
        .env("CREDITD_STORAGE__DATA_DIR", dir.path())
        .output()
        .unwrap();
    assert!(!second.status.success());
    let message = String::from_utf8_lossy(&second.stderr);
    assert!(message.contains("another creditd process"), "{message}");
    first.kill_9();
}

/// Damage only the older (fallback) snapshot would need does not stop the start, but the operator
/// sees it: a `warning:` line on `/readyz` (still 200) and `creditd_recovery_fallback_problems`.
#[test]
fn readyz_and_metrics_say_when_the_fallback_snapshot_is_gone() {
    use creditd::engine::{Context, Engine, EngineOptions};
    let dir = tempfile::tempdir().unwrap();
    let options = EngineOptions {
        data_dir: dir.path().to_path_buf(),
        background: false,
        segment_bytes: 2048,
        ..EngineOptions::default()
    };
    let engine = Engine::open_dir(options.clone()).unwrap();
    let context = Context::actor("test");
    for round in 0..2 {
        for n in 0..40 {
            let name = format!("Acme {round} {n}");
            let (_, _, lsn) = engine
                .upsert_tenant("acme", Some(&name), None, &context)
                .unwrap();
            engine.wait_durable(lsn).unwrap();
        }
        engine.snapshot().unwrap();
    }
    // A crash, not a clean stop: a final snapshot would let the older segments go.
    drop(engine);
    let mut segments: Vec<_> = std::fs::read_dir(options.wal_dir())
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|e| e == "log"))
        .collect();
    segments.sort();
    assert!(segments.len() > 2, "{segments:?}");
    let oldest = &segments[0];
    let mut bytes = std::fs::read(oldest).unwrap();
    let at = bytes.len() - 20;
    bytes[at] ^= 1;
    std::fs::write(oldest, &bytes).unwrap();

    let server = Process::start(dir.path());
    let client = server.client();
    let runtime = runtime();
    let (readyz, metrics) = runtime.block_on(async {
        let (status, _, readyz) = client
            .send(http::Method::GET, "/readyz", None, None)
            .await
            .unwrap();
        assert_eq!(status, 200);
        let (_, _, metrics) = client
            .send(http::Method::GET, "/metrics", None, None)
            .await
            .unwrap();
        (
            String::from_utf8_lossy(&readyz).into_owned(),
            String::from_utf8_lossy(&metrics).into_owned(),
        )
    });
    assert!(readyz.starts_with("ready\n"), "{readyz}");
    assert!(
        readyz.contains("warning: the fallback snapshot cannot be recovered from: ")
            && readyz.contains(&oldest.display().to_string()),
        "{readyz}"
    );
    assert!(
        metrics
            .lines()
            .any(|line| line == "creditd_recovery_fallback_problems 1"),
        "{metrics}"
    );
    server.kill_9();
}

/// `/metrics` as Prometheus reads it: every family has a `# HELP` and a `# TYPE` line (a name
/// used without being described is exported with no help, which `promtool check metrics`
/// reports), every sample belongs to a declared family, counters and only counters end in
/// `_total`, every family is one `creditd::metrics::names` declares, and the standard process
/// metrics are there. A check in Rust, so that it runs where promtool is not installed.
#[test]
fn every_metric_family_has_help_and_type_and_the_process_metrics_are_exported() {
    use std::collections::{BTreeMap, BTreeSet};
    use std::time::{Duration, Instant};

    use creditd::metrics::names;

    let dir = tempfile::tempdir().unwrap();
    let server = Process::start(dir.path());
    let client = server.client();
    let runtime = runtime();
    let text = runtime.block_on(async {
        // Some traffic, so that the series created on first use (request latency by route,
        // method and status) are exported too.
        client.put_user("kim", None).await.unwrap();
        client.credit("kim", 100, None, None).await.unwrap();
        client.debit("kim", &Debit::amount(30), None).await.unwrap();
        let (status, _, _) = client
            .send(http::Method::GET, "/no/such/route", None, None)
            .await
            .unwrap();
        assert_eq!(status, 404);
        // The process metrics are set by the upkeep task, whose first run is just after start-up
        // and may come after the server is ready.
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let (status, _, body) = client
                .send(http::Method::GET, "/metrics", None, None)
                .await
                .unwrap();
            assert_eq!(status, 200);
            let text = String::from_utf8(body.to_vec()).unwrap();
            if text
                .lines()
                .any(|line| line.starts_with("process_open_fds "))
                || Instant::now() > deadline
            {
                break text;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    });

    let mut help = BTreeSet::new();
    let mut types = BTreeMap::new();
    let mut samples = BTreeMap::new();
    for line in text.lines().filter(|line| !line.is_empty()) {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let (name, _) = rest.split_once(' ').unwrap_or((rest, ""));
            assert!(help.insert(name), "two # HELP lines for {name}");
        } else if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap();
            assert!(
                types.insert(name, kind).is_none(),
                "two # TYPE lines for {name}"
            );
        } else if !line.starts_with('#') {
            let name = line.split(['{', ' ']).next().unwrap();
            let value = line.rsplit(' ').next().unwrap();
            samples.insert(name, value.parse::<f64>().unwrap());
        }
    }
    for name in samples.keys() {
        let family = types.contains_key(name).then_some(*name).or_else(|| {
            let base = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|suffix| name.strip_suffix(suffix))?;
            matches!(types.get(base), Some(&"histogram" | &"summary")).then_some(base)
        });
        assert!(
            family.is_some(),
            "sample {name} belongs to no # TYPE family"
        );
    }
    let declared: BTreeSet<&str> = names::ALL.iter().chain(names::PROCESS).copied().collect();
    for (name, kind) in &types {
        assert!(help.contains(name), "{name} ({kind}) has no # HELP line");
        assert!(declared.contains(name), "{name} is not in metrics::names");
        assert_eq!(
            *kind == "counter",
            name.ends_with("_total"),
            "{name} is a {kind}"
        );
    }
    for name in &help {
        assert!(types.contains_key(name), "{name} has # HELP but no # TYPE");
    }
    for name in ["process_resident_memory_bytes", "process_open_fds"] {
        let value = samples.get(name).copied();
        assert!(value.is_some_and(|v| v > 0.0), "{name}: {value:?}\n{text}");
    }
    server.kill_9();
}
