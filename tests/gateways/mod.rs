//! Fake Paystack and Stripe servers for the payment tests: real HTTP on 127.0.0.1, the gateways'
//! own request and response formats, a record of every call, and programmable charge outcomes.

#![allow(dead_code)]

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use parking_lot::Mutex;
use serde_json::{json, Value};

/// One request the fake received.
#[derive(Debug, Clone)]
pub struct Call {
    pub method: String,
    pub path: String,
    pub query: String,
    pub authorization: String,
    pub idempotency_key: Option<String>,
    pub body: Vec<u8>,
}

impl Call {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or(Value::Null)
    }

    pub fn form(&self) -> HashMap<String, String> {
        url_decode_pairs(&String::from_utf8_lossy(&self.body))
    }
}

fn url_decode_pairs(text: &str) -> HashMap<String, String> {
    text.split('&')
        .filter(|p| !p.is_empty())
        .map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            (decode(k), decode(v))
        })
        .collect()
}

fn decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' => {
                if let Some(byte) = text
                    .get(i + 1..i + 3)
                    .and_then(|h| u8::from_str_radix(h, 16).ok())
                {
                    out.push(byte);
                    i += 2;
                } else {
                    out.push(b'%');
                }
            }
            other => out.push(other),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// What a charge does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChargeBehaviour {
    /// Succeeds for the amount asked.
    Succeed,
    /// Declined with these words (Paystack `gateway_response`, Stripe `decline_code`).
    Decline(&'static str),
    /// Succeeds at the gateway, but the answer comes only after this long (to kill creditd meanwhile).
    SucceedSlowly(Duration),
    /// Answers 500 and records nothing (an outage in front of the card network).
    ServerError,
}

/// A recorded transaction, for verify/search.
#[derive(Debug, Clone)]
pub struct Transaction {
    pub reference: String,
    pub amount: i64,
    pub currency: String,
    pub status: &'static str,
    pub reason: String,
    pub customer: String,
    pub token: String,
}

#[derive(Default)]
pub struct FakeState {
    pub calls: Vec<Call>,
    pub transactions: HashMap<String, Transaction>,
    pub behaviour: Option<ChargeBehaviour>,
    /// Stripe's idempotency: key → the answer given.
    pub idempotent_answers: HashMap<String, (u16, Value)>,
}

/// A fake gateway server.
pub struct Fake {
    pub base_url: String,
    pub state: Arc<Mutex<FakeState>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Fake {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Fake {
    pub fn set_behaviour(&self, behaviour: ChargeBehaviour) {
        self.state.lock().behaviour = Some(behaviour);
    }

    pub fn calls(&self, path_prefix: &str) -> Vec<Call> {
        self.state
            .lock()
            .calls
            .iter()
            .filter(|c| c.path.starts_with(path_prefix))
            .cloned()
            .collect()
    }

    pub fn transaction(&self, reference: &str) -> Option<Transaction> {
        self.state.lock().transactions.get(reference).cloned()
    }
}

type Handler = fn(&Arc<Mutex<FakeState>>, &Call) -> (u16, Value, Option<Duration>);

async fn start(handler: Handler) -> Fake {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base_url = format!("http://{}", listener.local_addr().unwrap());
    let state: Arc<Mutex<FakeState>> = Arc::default();
    let served = Arc::clone(&state);
    let task = tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let state = Arc::clone(&served);
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |request: Request<Incoming>| {
                    let state = Arc::clone(&state);
                    async move {
                        let (parts, body) = request.into_parts();
                        let body = body
                            .collect()
                            .await
                            .map(|b| b.to_bytes().to_vec())
                            .unwrap_or_default();
                        let header = |name: &str| {
                            parts
                                .headers
                                .get(name)
                                .and_then(|v| v.to_str().ok())
                                .map(str::to_owned)
                        };
                        let call = Call {
                            method: parts.method.to_string(),
                            path: parts.uri.path().to_owned(),
                            query: parts.uri.query().unwrap_or("").to_owned(),
                            authorization: header("authorization").unwrap_or_default(),
                            idempotency_key: header("idempotency-key"),
                            body,
                        };
                        state.lock().calls.push(call.clone());
                        let (status, value, delay) = handler(&state, &call);
                        if let Some(delay) = delay {
                            tokio::time::sleep(delay).await;
                        }
                        let mut response = Response::new(Full::new(Bytes::from(
                            serde_json::to_vec(&value).unwrap(),
                        )));
                        *response.status_mut() = StatusCode::from_u16(status).unwrap();
                        response
                            .headers_mut()
                            .insert("content-type", "application/json".parse().unwrap());
                        Ok::<_, Infallible>(response)
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    Fake {
        base_url,
        state,
        task,
    }
}

pub const PAYSTACK_SECRET: &str = "sk_test_paystack_0123456789";
pub const STRIPE_SECRET: &str = "sk_test_stripe_0123456789";
pub const STRIPE_WEBHOOK_SECRET: &str = "whsec_test_0123456789";

/// A fake Paystack: `/transaction/initialize`, `/transaction/charge_authorization`,
/// `/transaction/verify/{reference}`, all behind `Authorization: Bearer <secret>`.
pub async fn paystack() -> Fake {
    start(|state, call| {
        if call.authorization != format!("Bearer {PAYSTACK_SECRET}") {
            return (401, json!({"status": false, "message": "Invalid key"}), None);
        }
        let body = call.json();
        match (call.method.as_str(), call.path.as_str()) {
            ("POST", "/transaction/initialize") => {
                let reference = body["reference"].as_str().unwrap_or("").to_owned();
                let url = format!("https://checkout.paystack.test/{reference}");
                (200, json!({"status": true, "message": "Authorization URL created", "data": {"authorization_url": url, "access_code": "ac_1", "reference": reference}}), None)
            }
            ("POST", "/transaction/charge_authorization") => {
                let mut state = state.lock();
                let reference = body["reference"].as_str().unwrap_or("").to_owned();
                if state.transactions.contains_key(&reference) {
                    return (400, json!({"status": false, "message": "Duplicate Transaction Reference"}), None);
                }
                let behaviour = state.behaviour.clone().unwrap_or(ChargeBehaviour::Succeed);
                let (status, reason, delay) = match behaviour {
                    ChargeBehaviour::ServerError => {
                        return (500, json!({"status": false, "message": "An error occurred"}), None)
                    }
                    ChargeBehaviour::Succeed => ("success", "Approved".to_owned(), None),
                    ChargeBehaviour::Decline(words) => ("failed", words.to_owned(), None),
                    ChargeBehaviour::SucceedSlowly(delay) => ("success", "Approved".to_owned(), Some(delay)),
                };
                let transaction = Transaction {
                    reference: reference.clone(),
                    amount: body["amount"].as_i64().unwrap_or(0),
                    currency: body["currency"].as_str().unwrap_or("NGN").to_owned(),
                    status,
                    reason: reason.clone(),
                    customer: body["email"].as_str().unwrap_or("").to_owned(),
                    token: body["authorization_code"].as_str().unwrap_or("").to_owned(),
                };
                state.transactions.insert(reference.clone(), transaction.clone());
                (200, json!({"status": true, "message": "Charge attempted", "data": paystack_transaction(&transaction)}), delay)
            }
            ("GET", path) if path.starts_with("/transaction/verify/") => {
                let reference = &path["/transaction/verify/".len()..];
                match state.lock().transactions.get(reference) {
                    Some(transaction) => (200, json!({"status": true, "message": "Verification successful", "data": paystack_transaction(transaction)}), None),
                    None => (400, json!({"status": false, "message": "Transaction reference not found"}), None),
                }
            }
            _ => (404, json!({"status": false, "message": "not found"}), None),
        }
    })
    .await
}

pub fn paystack_transaction(transaction: &Transaction) -> Value {
    json!({
        "status": transaction.status,
        "reference": transaction.reference,
        "amount": transaction.amount,
        "currency": transaction.currency,
        "gateway_response": transaction.reason,
        "customer": {"email": transaction.customer},
        "authorization": {"authorization_code": transaction.token, "reusable": true, "card_type": "visa", "last4": "4081"},
    })
}

/// A fake Stripe: `/v1/checkout/sessions`, `/v1/payment_intents`, `/v1/payment_intents/search`,
/// form-encoded, honouring `Idempotency-Key`.
pub async fn stripe() -> Fake {
    start(|state, call| {
        if call.authorization != format!("Bearer {STRIPE_SECRET}") {
            return (401, json!({"error": {"type": "invalid_request_error", "message": "Invalid API Key"}}), None);
        }
        if let Some(key) = &call.idempotency_key {
            if let Some((status, value)) = state.lock().idempotent_answers.get(key) {
                return (*status, value.clone(), None);
            }
        }
        let form = call.form();
        let (status, value, delay) = match (call.method.as_str(), call.path.as_str()) {
            ("POST", "/v1/checkout/sessions") => {
                let id = format!("cs_test_{}", form.get("client_reference_id").cloned().unwrap_or_default());
                (200, json!({"id": id, "object": "checkout.session", "url": format!("https://checkout.stripe.test/c/pay/{id}")}), None)
            }
            ("POST", "/v1/payment_intents") => {
                let mut guard = state.lock();
                let reference = form.get("metadata[reference]").cloned().unwrap_or_default();
                let behaviour = guard.behaviour.clone().unwrap_or(ChargeBehaviour::Succeed);
                let amount: i64 = form.get("amount").and_then(|a| a.parse().ok()).unwrap_or(0);
                let currency = form.get("currency").cloned().unwrap_or_default();
                let (status, reason, delay) = match behaviour {
                    ChargeBehaviour::ServerError => {
                        return (500, json!({"error": {"type": "api_error", "message": "An error occurred"}}), None)
                    }
                    ChargeBehaviour::Succeed => ("succeeded", String::new(), None),
                    ChargeBehaviour::Decline(code) => ("requires_payment_method", code.to_owned(), None),
                    ChargeBehaviour::SucceedSlowly(delay) => ("succeeded", String::new(), Some(delay)),
                };
                let transaction = Transaction {
                    reference: reference.clone(),
                    amount,
                    currency,
                    status,
                    reason: reason.clone(),
                    customer: form.get("customer").cloned().unwrap_or_default(),
                    token: form.get("payment_method").cloned().unwrap_or_default(),
                };
                guard.transactions.insert(reference, transaction.clone());
                drop(guard);
                if status == "succeeded" {
                    (200, stripe_intent(&transaction), delay)
                } else {
                    (402, json!({"error": {"type": "card_error", "code": "card_declined", "decline_code": reason, "message": format!("Your card was declined: {reason}"), "payment_intent": stripe_intent(&transaction)}}), None)
                }
            }
            ("GET", "/v1/payment_intents/search") => {
                let query = url_decode_pairs(&call.query);
                let wanted = query.get("query").cloned().unwrap_or_default();
                let data: Vec<Value> = state
                    .lock()
                    .transactions
                    .values()
                    .filter(|t| wanted == format!("metadata['reference']:'{}'", t.reference))
                    .map(stripe_intent)
                    .collect();
                (200, json!({"object": "search_result", "data": data}), None)
            }
            _ => (404, json!({"error": {"type": "invalid_request_error", "message": "no such route"}}), None),
        };
        if let Some(key) = &call.idempotency_key {
            state.lock().idempotent_answers.insert(key.clone(), (status, value.clone()));
        }
        (status, value, delay)
    })
    .await
}

pub fn stripe_intent(transaction: &Transaction) -> Value {
    json!({
        "id": format!("pi_{}", transaction.reference),
        "object": "payment_intent",
        "status": transaction.status,
        "amount": transaction.amount,
        "amount_received": if transaction.status == "succeeded" { transaction.amount } else { 0 },
        "currency": transaction.currency,
        "customer": transaction.customer,
        "payment_method": transaction.token,
        "metadata": {"reference": transaction.reference},
        "last_payment_error": if transaction.reason.is_empty() { Value::Null } else { json!({"code": "card_declined", "decline_code": transaction.reason, "message": transaction.reason}) },
    })
}
