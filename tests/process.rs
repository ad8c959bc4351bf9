//! Tests that run the real `creditd` binary: kill it with SIGKILL and SIGTERM, restart it on the
//! same data directory, and check what survived.

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
