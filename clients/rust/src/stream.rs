//! The live balance stream, `GET /v1/users/{id}/wallet/stream` (`text/event-stream`): an event
//! `wallet` with the wallet view at once and after every change of it, `id:` the log position it
//! covers. [`Wallets::stream`] opens it; [`WalletStream::next`] reads one event at a time; a
//! stream reopened with the last `id` seen ([`WalletStream::last_event_id`]) resumes after it.
//! Comment lines (the server's keep-alives) are skipped. No retries: a closed stream is reopened
//! by the caller, who knows whether it still wants it.

use bytes::Bytes;
use http::{header, Method};
use http_body_util::BodyExt;

use crate::client::{query, user_path};
use crate::error::ClientError;
use crate::groups::Wallets;
use crate::transport::StreamingBody;
use crate::types::Wallet;

/// Longest event accepted: a wallet view is far smaller; a peer sending more is not creditd.
const MAX_EVENT_BYTES: usize = 1 << 20;

/// One server-sent event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WalletEvent {
    /// Its `id:` (the log position the view covers), if it had one.
    pub id: Option<String>,
    /// Its `event:` (`wallet`), `message` if it named none.
    pub event: String,
    /// Its `data:` lines, joined by newlines.
    pub data: String,
}

impl WalletEvent {
    /// The wallet view a `wallet` event carries.
    pub fn wallet(&self) -> Result<Wallet, ClientError> {
        serde_json::from_str(&self.data)
            .map_err(|error| ClientError::Decode(format!("{error}: {}", self.data)))
    }
}

/// An open live balance stream.
#[derive(Debug)]
pub struct WalletStream {
    body: StreamingBody,
    buffer: Vec<u8>,
    last_event_id: Option<String>,
}

impl WalletStream {
    /// The next event; `None` once the server has closed the stream.
    pub async fn next(&mut self) -> Option<Result<WalletEvent, ClientError>> {
        loop {
            if let Some(end) = event_end(&self.buffer) {
                let block: Vec<u8> = self.buffer.drain(..end).collect();
                if let Some(event) = parse_event(&block) {
                    if event.id.is_some() {
                        self.last_event_id.clone_from(&event.id);
                    }
                    return Some(Ok(event));
                }
                continue;
            }
            if self.buffer.len() > MAX_EVENT_BYTES {
                return Some(Err(ClientError::Decode("an event past 1 MiB".into())));
            }
            match self.body.frame().await? {
                Ok(frame) => {
                    if let Ok(data) = frame.into_data() {
                        self.buffer.extend_from_slice(&data);
                    }
                }
                Err(error) => return Some(Err(ClientError::Transport(error))),
            }
        }
    }

    /// The `id` of the last event read: give it to [`Wallets::stream`] to resume after it.
    pub fn last_event_id(&self) -> Option<&str> {
        self.last_event_id.as_deref()
    }
}

/// Where the first complete event of `buffer` ends (past its blank line), if there is one.
fn event_end(buffer: &[u8]) -> Option<usize> {
    let lf = buffer
        .windows(2)
        .position(|w| w == b"\n\n")
        .map(|at| at + 2);
    let crlf = buffer
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|at| at + 4);
    match (lf, crlf) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// The event of one block, or `None` for a block of comments alone.
fn parse_event(block: &[u8]) -> Option<WalletEvent> {
    let text = String::from_utf8_lossy(block);
    let (mut id, mut event, mut data) = (None, None, Vec::new());
    for line in text.lines() {
        if line.is_empty() || line.starts_with(':') {
            continue;
        }
        let (field, value) = line.split_once(':').unwrap_or((line, ""));
        let value = value.strip_prefix(' ').unwrap_or(value);
        match field {
            "id" => id = Some(value.to_owned()),
            "event" => event = Some(value.to_owned()),
            "data" => data.push(value.to_owned()),
            _ => {}
        }
    }
    if data.is_empty() && event.is_none() {
        return None;
    }
    Some(WalletEvent {
        id,
        event: event.unwrap_or_else(|| "message".into()),
        data: data.join("\n"),
    })
}

impl Wallets<'_> {
    /// Opens the live balance stream of `user` (in `currency`, default the tenant's), resuming
    /// after `last_event_id` if given. The call's timeout covers the opening only.
    pub async fn stream(
        &self,
        user: &str,
        currency: Option<&str>,
        last_event_id: Option<&str>,
    ) -> Result<WalletStream, ClientError> {
        let client = self.client();
        let path = format!(
            "{}{}",
            user_path(user, "/wallet/stream"),
            query(&[("currency", currency)])
        );
        let mut request = client.build_request(&Method::GET, &path, None, None)?;
        let headers = request.headers_mut();
        headers.insert(
            header::ACCEPT,
            http::HeaderValue::from_static("text/event-stream"),
        );
        if let Some(id) = last_event_id {
            let id = http::HeaderValue::from_str(id)
                .map_err(|_| ClientError::Decode("bad Last-Event-ID".into()))?;
            headers.insert("last-event-id", id);
        }
        let opened = client.transport.open(request);
        let response = match tokio::time::timeout(client.timeout, opened).await {
            Err(_) => return Err(ClientError::Timeout(client.timeout)),
            Ok(answer) => answer.map_err(ClientError::Transport)?,
        };
        let (parts, body) = response.into_parts();
        if !parts.status.is_success() {
            let bytes = match tokio::time::timeout(client.timeout, body.collect()).await {
                Ok(Ok(collected)) => collected.to_bytes(),
                _ => Bytes::new(),
            };
            return Err(ClientError::from_answer(
                parts.status,
                &parts.headers,
                &bytes,
            ));
        }
        Ok(WalletStream {
            body,
            buffer: Vec::new(),
            last_event_id: last_event_id.map(str::to_owned),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_comments_and_line_endings() {
        let stream = b": keep-alive\n\nid: 7\nevent: wallet\ndata: {\"a\":1}\n\nid: 8\r\ndata: x\r\ndata: y\r\n\r\n";
        let first = event_end(stream).unwrap();
        assert_eq!(parse_event(&stream[..first]), None, "a comment alone");
        let rest = &stream[first..];
        let second = event_end(rest).unwrap();
        assert_eq!(
            parse_event(&rest[..second]),
            Some(WalletEvent {
                id: Some("7".into()),
                event: "wallet".into(),
                data: "{\"a\":1}".into()
            })
        );
        let rest = &rest[second..];
        let third = event_end(rest).unwrap();
        assert_eq!(third, rest.len());
        assert_eq!(
            parse_event(rest),
            Some(WalletEvent {
                id: Some("8".into()),
                event: "message".into(),
                data: "x\ny".into()
            })
        );
        assert_eq!(event_end(b"id: 9\ndata: partial\n"), None);
    }
}
