//! The TypeScript and Python SDKs' own test suites (`clients/typescript`, `clients/python`), each
//! run against a real `creditd serve`: this package's binary, handed to them as `CREDITD_BIN`.
//!
//! They need Node.js 18+ and Python 3.9+. The first run installs each SDK's development
//! dependencies where the SDK keeps them (`npm ci` into `clients/typescript/node_modules`, a
//! virtualenv at `clients/python/.venv`), from the npm registry and PyPI. Without Node.js or
//! Python a suite says so and passes, unless `CREDITD_SDK_TESTS=1` (which `.ci/run` sets) makes
//! their absence a failure.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn required() -> bool {
    std::env::var("CREDITD_SDK_TESTS").is_ok_and(|value| value == "1")
}

/// Whether `program --version` runs; if not, the suite is skipped (or fails when required).
fn available(program: &str) -> bool {
    let found = Command::new(program)
        .arg("--version")
        .output()
        .is_ok_and(|output| output.status.success());
    if !found {
        assert!(
            !required(),
            "CREDITD_SDK_TESTS=1 but `{program}` is not installed"
        );
        eprintln!(
            "skipped: `{program}` is not installed (set CREDITD_SDK_TESTS=1 to fail instead)"
        );
    }
    found
}

fn modified(path: &Path) -> Option<std::time::SystemTime> {
    std::fs::metadata(path)
        .and_then(|meta| meta.modified())
        .ok()
}

/// Runs a command in `dir`, and fails the test with its output when it fails.
fn run(dir: &Path, program: &str, args: &[&str]) -> Output {
    let output = Command::new(program)
        .args(args)
        .current_dir(dir)
        .env("CREDITD_BIN", env!("CARGO_BIN_EXE_creditd"))
        .output()
        .unwrap_or_else(|error| panic!("cannot run {program}: {error}"));
    assert!(
        output.status.success(),
        "`{program} {}` in {} failed ({}):\n--- stdout\n{}\n--- stderr\n{}",
        args.join(" "),
        dir.display(),
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr),
    );
    output
}

#[test]
fn the_typescript_sdk_passes_its_suite_against_a_real_server() {
    if !available("node") || !available("npm") {
        return;
    }
    let dir = root().join("clients/typescript");
    // `npm ci` when the installed tree is missing or older than the lock file.
    let installed = modified(&dir.join("node_modules/.package-lock.json"));
    if installed.is_none() || installed < modified(&dir.join("package-lock.json")) {
        run(&dir, "npm", &["ci", "--no-audit", "--no-fund"]);
    }
    let output = run(&dir, "npm", &["test"]);
    eprintln!("{}", String::from_utf8_lossy(&output.stdout));
}

#[test]
fn the_python_sdk_passes_its_suite_against_a_real_server() {
    if !available("python3") {
        return;
    }
    let dir = root().join("clients/python");
    let python = dir.join(".venv/bin/python");
    if !python.exists() {
        run(&dir, "python3", &["-m", "venv", ".venv"]);
    }
    // A no-op when everything is installed; picks up a changed pyproject.toml otherwise.
    run(
        &dir,
        python.to_str().unwrap(),
        &[
            "-m",
            "pip",
            "install",
            "-q",
            "--disable-pip-version-check",
            "-e",
            ".[test]",
        ],
    );
    let output = run(&dir, python.to_str().unwrap(), &["-m", "pytest", "-q"]);
    eprintln!("{}", String::from_utf8_lossy(&output.stdout));
}
