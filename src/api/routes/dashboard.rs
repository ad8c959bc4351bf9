//! The operators' dashboard (`/dashboard` and its files under `/dashboard/`): open routes that
//! serve the embedded files of [`crate::web::dashboard`]. The page asks for a key and calls the
//! API with it; nothing here reads state.

use bytes::Bytes;
use http::{header, HeaderValue, Response, StatusCode};
use http_body_util::Full;

use crate::api::call::{Answer, Open};
use crate::api::problem::Problem;
use crate::web::dashboard::{self, Asset, CONTENT_SECURITY_POLICY};

fn serve(asset: Asset) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from_static(asset.body)));
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(asset.content_type),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CONTENT_SECURITY_POLICY),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    *response.status_mut() = StatusCode::OK;
    response
}

/// `GET /dashboard`: the page.
pub async fn page(_: &Open<'_>) -> Answer {
    Ok(serve(dashboard::INDEX))
}

/// `GET /dashboard/{file}`: a stylesheet, script or icon of the page.
pub async fn file(open: &Open<'_>) -> Answer {
    dashboard::asset(&open.param)
        .map(serve)
        .ok_or_else(|| Problem::no_route(&format!("/dashboard/{}", open.param)))
}
