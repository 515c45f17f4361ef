//! MQTT over WebSocket (`listeners.ws`) and over secure WebSocket (`listeners.wss`, TLS first):
//! the HTTP upgrade on `listeners.ws_path` with the `mqtt` subprotocol, then the connection is
//! a byte stream of binary messages, one or more MQTT packets to a message or a packet across
//! several, as MQTT 5.0 section 6 allows. The session code above cannot tell it from TCP.
//!
//! A request for another path gets 404; a client that offers subprotocols without `mqtt` gets
//! 400 (one that offers none is served, as Mosquitto and EMQX do). A text message closes the
//! connection; pings are answered by the WebSocket layer.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::{Buf, Bytes};
use futures::{Sink, Stream};
use tidewater_actors::seams::{Clock, Connection, Listener};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::handshake::server::{Callback, ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::http::{HeaderValue, StatusCode};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};

use crate::upgrade::{self, Handshake, Upgrade};

/// Wraps `inner` so that what it accepts is MQTT over WebSocket on `path`; a message may hold
/// at most `max_message` bytes.
pub fn listener(
    protocol: &'static str,
    inner: Box<dyn Listener>,
    path: Arc<str>,
    max_message: usize,
    timeout: Duration,
    clock: Arc<dyn Clock>,
) -> Box<dyn Listener> {
    let upgrade: Upgrade = Arc::new(move |connection| {
        let path = Arc::clone(&path);
        Box::pin(async move {
            let config =
                WebSocketConfig::default().max_message_size(Some(max_message)).max_frame_size(Some(max_message));
            let ws = tokio_tungstenite::accept_hdr_async_with_config(connection, Upgrading(path), Some(config))
                .await
                .map_err(|e| e.to_string())?;
            Ok((Box::new(WsBytes { ws, pending: Bytes::new(), unflushed: false }) as Box<dyn Connection>, None))
        })
    });
    let handshake = Handshake { protocol, layer: "websocket", timeout, timeout_key: "mqtt.connect_timeout_ms" };
    upgrade::listener(inner, handshake, upgrade, clock)
}

/// Checks the upgrade request's path and subprotocols; the answer names `mqtt` when the client
/// offered it.
struct Upgrading(Arc<str>);

impl Callback for Upgrading {
    fn on_request(self, request: &Request, response: Response) -> Result<Response, ErrorResponse> {
        answer(&self.0, request, response)
    }
}

#[allow(clippy::result_large_err)] // the answer tungstenite's Callback gives back
fn answer(path: &str, request: &Request, mut response: Response) -> Result<Response, ErrorResponse> {
    let refuse = |status: StatusCode, why: &str| {
        let mut refused = ErrorResponse::new(Some(why.to_string()));
        *refused.status_mut() = status;
        refused
    };
    if request.uri().path() != path {
        return Err(refuse(StatusCode::NOT_FOUND, "MQTT over WebSocket is served on listeners.ws_path"));
    }
    let offered: Vec<&str> = request
        .headers()
        .get_all("sec-websocket-protocol")
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .map(str::trim)
        .collect();
    if let Some(mqtt) = offered.iter().find(|name| name.eq_ignore_ascii_case("mqtt")) {
        // the answer names the subprotocol as the client spelled it (RFC 6455 section 4.2.2)
        let name = HeaderValue::from_str(mqtt).unwrap_or(HeaderValue::from_static("mqtt"));
        response.headers_mut().insert("sec-websocket-protocol", name);
    } else if !offered.is_empty() {
        return Err(refuse(StatusCode::BAD_REQUEST, "the WebSocket subprotocol must be mqtt"));
    }
    Ok(response)
}

/// A WebSocket as a byte stream.
struct WsBytes {
    ws: WebSocketStream<Box<dyn Connection>>,
    /// the rest of the last binary message, not yet read
    pending: Bytes,
    /// a message is buffered in the WebSocket layer and not yet on the socket
    unflushed: bool,
}

fn broken(error: WsError) -> io::Error {
    match error {
        WsError::Io(error) => error,
        other => io::Error::other(other),
    }
}

impl WsBytes {
    /// Moves what the WebSocket layer buffered onto the socket. Writers above never flush (a
    /// TCP socket needs no flush), so every write and read drives this.
    fn poll_drain(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.unflushed {
            ready!(Pin::new(&mut self.ws).poll_flush(cx)).map_err(broken)?;
            self.unflushed = false;
        }
        Poll::Ready(Ok(()))
    }
}

impl AsyncRead for WsBytes {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        // a pending flush makes progress while the connection waits to read; its error shows
        // on the next write
        if let Poll::Ready(Err(_)) = this.poll_drain(cx) {
            this.unflushed = false;
        }
        loop {
            if !this.pending.is_empty() {
                let n = buf.remaining().min(this.pending.len());
                buf.put_slice(&this.pending[..n]);
                this.pending.advance(n);
                return Poll::Ready(Ok(()));
            }
            match ready!(Pin::new(&mut this.ws).poll_next(cx)) {
                Some(Ok(Message::Binary(data))) => this.pending = data,
                Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => {}
                Some(Ok(Message::Text(_))) => {
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        "MQTT over WebSocket takes binary messages, not text",
                    )));
                }
                // the end of the stream, as a TCP FIN
                Some(Ok(Message::Close(_))) | None => return Poll::Ready(Ok(())),
                Some(Err(error)) => return Poll::Ready(Err(broken(error))),
            }
        }
    }
}

impl AsyncWrite for WsBytes {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        ready!(this.poll_drain(cx))?;
        ready!(Pin::new(&mut this.ws).poll_ready(cx)).map_err(broken)?;
        Pin::new(&mut this.ws).start_send(Message::Binary(Bytes::copy_from_slice(data))).map_err(broken)?;
        this.unflushed = true;
        // on its way now if the socket takes it; else the next write or read carries on
        if let Poll::Ready(result) = this.poll_drain(cx) {
            result?;
        }
        Poll::Ready(Ok(data.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        this.unflushed = true;
        this.poll_drain(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().ws).poll_close(cx).map_err(broken)
    }
}
