//! An AI gateway metered by creditd, on plain hyper: `POST /v1/chat` with the caller's user id
//! in `X-User-Id` and a prompt as the body.
//!
//! For each request it holds the most a reply may cost, calls the model, and captures what the
//! reply really cost; a model error releases the hold, so a failed call costs nothing. A wallet
//! that cannot cover the hold gets a 402 before the model is called, with a link to creditd's
//! hosted top-up page.
//!
//! ```text
//! CREDITD_URL=http://127.0.0.1:8080 CREDITD_KEY=dev-service-secret-change-me \
//!   cargo run -p creditd-client --example gateway
//! curl -H 'X-User-Id: ada' -d 'hello there' http://127.0.0.1:3000/v1/chat
//! ```

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use creditd_client::{Client, ClientError, Hold};
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

/// The most one reply may cost, in credits: what is held before the model runs.
pub const MAX_REPLY_CREDITS: i64 = 100;

/// The model: a reply and the credits it cost, or why it failed.
pub type Model = dyn Fn(&str) -> Result<(String, i64), String> + Send + Sync;

/// The gateway's state: its creditd client and its model.
pub struct Gateway {
    /// A client with a service key.
    pub creditd: Client,
    /// The model behind the gateway.
    pub model: Arc<Model>,
}

/// A stand-in for a model: echoes the prompt, at one credit per word plus five per reply;
/// a prompt that says `fail` fails.
pub fn echo_model(prompt: &str) -> Result<(String, i64), String> {
    if prompt.contains("fail") {
        return Err("the model is unavailable".into());
    }
    let words = prompt.split_whitespace().count() as i64;
    Ok((
        format!("you said: {prompt}"),
        (5 + words).min(MAX_REPLY_CREDITS),
    ))
}

/// Serves `gateway` on `listener` until the task is dropped.
pub async fn serve(listener: TcpListener, gateway: Arc<Gateway>) -> std::io::Result<()> {
    loop {
        let (stream, _) = listener.accept().await?;
        let gateway = Arc::clone(&gateway);
        tokio::spawn(async move {
            let service = service_fn(move |request| {
                let gateway = Arc::clone(&gateway);
                async move { Ok::<_, Infallible>(handle(&gateway, request).await) }
            });
            let _ = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

/// Why a chat failed.
enum ChatError {
    Creditd(ClientError),
    Model(String),
}

impl From<ClientError> for ChatError {
    fn from(error: ClientError) -> ChatError {
        ChatError::Creditd(error)
    }
}

/// One request: hold, call the model, capture (or release), answer.
pub async fn handle(gateway: &Gateway, request: Request<Incoming>) -> Response<Full<Bytes>> {
    if request.uri().path() != "/v1/chat" || request.method() != http::Method::POST {
        return json(
            StatusCode::NOT_FOUND,
            serde_json::json!({"error": "not_found"}),
        );
    }
    let Some(user) = request
        .headers()
        .get("x-user-id")
        .and_then(|value| value.to_str().ok())
        .map(str::to_owned)
    else {
        return json(
            StatusCode::UNAUTHORIZED,
            serde_json::json!({"error": "no X-User-Id"}),
        );
    };
    let prompt = match request.into_body().collect().await {
        Ok(body) => String::from_utf8_lossy(&body.to_bytes()).into_owned(),
        Err(_) => {
            return json(
                StatusCode::BAD_REQUEST,
                serde_json::json!({"error": "body"}),
            )
        }
    };
    let model = Arc::clone(&gateway.model);
    let hold = Hold::amount(MAX_REPLY_CREDITS).ttl_seconds(120);
    let outcome = gateway
        .creditd
        .reservations()
        .with_reservation(&user, &hold, |_hold| async move {
            model(&prompt).map_err(ChatError::Model)
        })
        .await;
    match outcome {
        Ok(done) => {
            let capture = done.capture.as_ref();
            json(
                StatusCode::OK,
                serde_json::json!({
                    "reply": done.value,
                    "charged": capture.map_or(0, |c| c.charged),
                    "balance": capture.map(|c| c.balance),
                }),
            )
        }
        Err(ChatError::Creditd(ClientError::InsufficientCredits {
            available,
            required,
            ..
        })) => {
            // Send the person to creditd's hosted top-up page.
            let topup = gateway
                .creditd
                .portal()
                .create_session(&user, None)
                .await
                .map(|session| session.url)
                .ok();
            json(
                StatusCode::PAYMENT_REQUIRED,
                serde_json::json!({
                    "error": "insufficient_credits",
                    "available": available,
                    "required": required,
                    "topup_url": topup,
                }),
            )
        }
        Err(ChatError::Creditd(ClientError::UserNotFound(_))) => json(
            StatusCode::FORBIDDEN,
            serde_json::json!({"error": "unknown user"}),
        ),
        Err(ChatError::Creditd(other)) => json(
            StatusCode::SERVICE_UNAVAILABLE,
            serde_json::json!({"error": "billing unavailable", "detail": other.to_string()}),
        ),
        Err(ChatError::Model(message)) => json(
            StatusCode::BAD_GATEWAY,
            serde_json::json!({"error": "model", "detail": message}),
        ),
    }
}

fn json(status: StatusCode, body: serde_json::Value) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body.to_string())));
    *response.status_mut() = status;
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    response
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let url = std::env::var("CREDITD_URL").unwrap_or_else(|_| "http://127.0.0.1:8080".into());
    let key =
        std::env::var("CREDITD_KEY").unwrap_or_else(|_| "dev-service-secret-change-me".into());
    let listen: SocketAddr = std::env::var("GATEWAY_LISTEN")
        .unwrap_or_else(|_| "127.0.0.1:3000".into())
        .parse()?;
    let gateway = Arc::new(Gateway {
        creditd: Client::new(&url, &key)?,
        model: Arc::new(echo_model),
    });
    let listener = TcpListener::bind(listen).await?;
    println!("gateway on http://{}", listener.local_addr()?);
    serve(listener, gateway).await?;
    Ok(())
}
