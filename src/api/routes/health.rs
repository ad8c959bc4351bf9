//! The operations routes, open and served on reserved connection slots too: `/livez`, `/readyz`
//! (and `/healthz`, the same), `/metrics`; and the OpenAPI document at `/openapi.yaml`.

use std::sync::atomic::Ordering;

use http::StatusCode;

use crate::api::call::{Answer, Open};
use crate::api::problem::Problem;
use crate::api::response::text_response;
use crate::api::OPENAPI_YAML;

/// `GET /livez`: 200 while the process runs.
pub async fn livez(_: &Open<'_>) -> Answer {
    Ok(text_response(
        StatusCode::OK,
        "text/plain; charset=utf-8",
        "ok\n",
    ))
}

/// `GET /readyz` and `GET /healthz`: 200 once recovery is done and the log is writable, 503
/// otherwise (poisoned, closed, or shutting down).
pub async fn ready(open: &Open<'_>) -> Answer {
    let state = open.state;
    if state.is_ready() {
        // Ready, but an operator should know when the older snapshot could no longer be
        // recovered from: one line per problem recovery found.
        let problems = &state.engine.recovery_report().fallback_problems;
        let mut text = String::from("ready\n");
        for problem in problems {
            text.push_str("warning: the fallback snapshot cannot be recovered from: ");
            text.push_str(problem);
            text.push('\n');
        }
        return Ok(text_response(
            StatusCode::OK,
            "text/plain; charset=utf-8",
            text,
        ));
    }
    let detail = match state.engine.wal().poison_reason() {
        Some(reason) => format!("the write-ahead log is poisoned: {reason}"),
        None if !state.accepting.load(Ordering::Acquire) => "shutting down".to_owned(),
        None => "the write-ahead log is closed".to_owned(),
    };
    Err(Problem::unavailable("not-ready", detail))
}

/// `GET /metrics`: the Prometheus text format.
pub async fn metrics(open: &Open<'_>) -> Answer {
    let text = open.state.prometheus.render();
    Ok(text_response(
        StatusCode::OK,
        "text/plain; version=0.0.4; charset=utf-8",
        text,
    ))
}

/// `GET /openapi.yaml`.
pub async fn openapi(_: &Open<'_>) -> Answer {
    Ok(text_response(
        StatusCode::OK,
        "application/yaml",
        OPENAPI_YAML,
    ))
}
