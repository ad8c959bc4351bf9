//! Building answers: JSON, plain text and empty bodies, with their `Content-Type`. Errors are
//! [`Problem`]s and render themselves.

use bytes::Bytes;
use http::{header, HeaderValue, Response, StatusCode};
use http_body_util::Full;
use serde::Serialize;

use super::problem::Problem;

/// A JSON answer.
pub fn json_response<T: Serialize + ?Sized>(
    status: StatusCode,
    value: &T,
) -> Response<Full<Bytes>> {
    json_bytes_response(status, serde_json::to_vec(value))
}

/// A JSON answer whose bytes are already written (or the error that stopped their writing).
pub fn json_bytes_response(
    status: StatusCode,
    bytes: Result<Vec<u8>, serde_json::Error>,
) -> Response<Full<Bytes>> {
    match bytes {
        Ok(bytes) => {
            let mut response = Response::new(Full::new(Bytes::from(bytes)));
            *response.status_mut() = status;
            response.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
            response
        }
        Err(error) => Problem::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "Internal error",
            error.to_string(),
        )
        .response(),
    }
}

/// A text answer of the given type.
pub fn text_response(
    status: StatusCode,
    content_type: &'static str,
    text: impl Into<Bytes>,
) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(text.into()));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

/// An answer without a body.
pub fn empty_response(status: StatusCode) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::new()));
    *response.status_mut() = status;
    response
}
