//! Answers whose body is written as it comes: the server-sent events of a live balance stream.
//!
//! Handlers answer `Response<Full<Bytes>>`, and most answers are that. A streaming handler puts a
//! [`Handoff`] holding the receiving end of a bounded channel into the answer's extensions;
//! [`into_body`] turns such an answer into one whose body is that channel ([`EventBody`]). hyper
//! polls the body as the connection can take bytes, so the channel's bound is what a slow reader
//! may hold up, and the sender finds it full instead of waiting.

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::Response;
use http_body_util::{Either, Full};
use hyper::body::{Body, Frame};
use parking_lot::Mutex;
use tokio::sync::mpsc;

use super::connections::{Slot, Streaming};

/// The body of every answer: whole, or streamed.
pub type ApiBody = Either<Full<Bytes>, EventBody>;

/// A body read from a channel until its sender is dropped.
#[derive(Debug)]
pub struct EventBody {
    receiver: mpsc::Receiver<Bytes>,
    /// Keeps the connection from counting as waiting for a request head while the body lasts.
    _streaming: Streaming,
}

impl Body for EventBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        context: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.receiver
            .poll_recv(context)
            .map(|chunk| chunk.map(|bytes| Ok(Frame::data(bytes))))
    }
}

/// The receiving end of a streamed body, carried in an answer's extensions (which must be
/// `Clone`, hence the shared slot).
#[derive(Debug, Clone)]
pub struct Handoff(Arc<Mutex<Option<mpsc::Receiver<Bytes>>>>);

impl Handoff {
    /// A handoff of `receiver`.
    pub fn new(receiver: mpsc::Receiver<Bytes>) -> Handoff {
        Handoff(Arc::new(Mutex::new(Some(receiver))))
    }
}

/// The answer with its final body: the handed-off channel if there is one, else the whole body.
/// A streamed body holds `slot` as streaming until it ends.
pub fn into_body(response: Response<Full<Bytes>>, slot: &Arc<Slot>) -> Response<ApiBody> {
    let (mut parts, body) = response.into_parts();
    if let Some(handoff) = parts.extensions.remove::<Handoff>() {
        if let Some(receiver) = handoff.0.lock().take() {
            let body = EventBody {
                receiver,
                _streaming: slot.begin_stream(),
            };
            return Response::from_parts(parts, Either::Right(body));
        }
    }
    Response::from_parts(parts, Either::Left(body))
}
