//! HTTP client for plain-`http://` endpoints (S3-compatible servers on the
//! same host or LAN) that ACKs every read at once (`TCP_QUICKACK`).
//!
//! Garage and s3s-fs (hyper servers without `TCP_NODELAY`) write a GET's
//! headers and body as two small segments; Nagle holds the body until the
//! headers are ACKed, and on a pooled connection Linux delays that ACK by
//! 40 ms, so every GET took ≈ 44 ms instead of ≈ 1 ms. The SDK's client
//! already sets `TCP_NODELAY`, which only affects what we send, and offers
//! no hook on the socket, hence this small hyper client. HTTPS endpoints
//! keep the SDK's default client.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use aws_sdk_s3::primitives::SdkBody;
use aws_smithy_runtime_api::client::http::{
    HttpClient, HttpConnector, HttpConnectorFuture, HttpConnectorSettings, SharedHttpClient,
    SharedHttpConnector,
};
use aws_smithy_runtime_api::client::orchestrator::{HttpRequest, HttpResponse};
use aws_smithy_runtime_api::client::result::ConnectorError;
use aws_smithy_runtime_api::client::runtime_components::RuntimeComponents;
use hyper::rt::{Read, ReadBufCursor, Write};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::{Connected, Connection, HttpConnector as Tcp};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::TcpStream;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

pub(crate) fn client(connect_timeout: Duration, read_timeout: Duration) -> SharedHttpClient {
    let client = Client::builder(TokioExecutor::new())
        .pool_timer(TokioTimer::new())
        .build(connector(connect_timeout));
    SharedHttpClient::new(Quick(SharedHttpConnector::new(Adapter {
        client,
        read_timeout,
    })))
}

/// One connection pool for every operation (timeouts are the store's).
#[derive(Debug)]
struct Quick(SharedHttpConnector);

impl HttpClient for Quick {
    fn http_connector(
        &self,
        _: &HttpConnectorSettings,
        _: &RuntimeComponents,
    ) -> SharedHttpConnector {
        self.0.clone()
    }
}

#[derive(Debug)]
struct Adapter {
    client: Client<Connector, SdkBody>,
    read_timeout: Duration,
}

impl HttpConnector for Adapter {
    fn call(&self, request: HttpRequest) -> HttpConnectorFuture {
        let request = match request.try_into_http1x() {
            Ok(r) => r,
            Err(e) => return HttpConnectorFuture::ready(Err(ConnectorError::user(e.into()))),
        };
        let (response, limit) = (self.client.request(request), self.read_timeout);
        HttpConnectorFuture::new(async move {
            let response = tokio::time::timeout(limit, response)
                .await
                .map_err(|_| ConnectorError::timeout(format!("no response in {limit:?}").into()))?
                .map_err(|e| ConnectorError::io(e.into()))?;
            HttpResponse::try_from(response.map(SdkBody::from_body_1_x))
                .map_err(|e| ConnectorError::other(e.into(), None))
        })
    }
}

/// hyper's TCP connector, handing out [`QuickAck`] streams.
#[derive(Debug, Clone)]
pub(crate) struct Connector(Tcp);

pub(crate) fn connector(connect_timeout: Duration) -> Connector {
    let mut tcp = Tcp::new();
    tcp.set_nodelay(true);
    tcp.set_connect_timeout(Some(connect_timeout));
    Connector(tcp)
}

impl tower_service::Service<hyper::Uri> for Connector {
    type Response = QuickAck;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<QuickAck, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.0.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, uri: hyper::Uri) -> Self::Future {
        let connecting = self.0.call(uri);
        Box::pin(async move { Ok(QuickAck(connecting.await?)) })
    }
}

/// A TCP stream that re-arms `TCP_QUICKACK` after every read: Linux
/// clears it again on its own, so once per connection is not enough.
#[derive(Debug)]
pub(crate) struct QuickAck(TokioIo<TcpStream>);

impl Connection for QuickAck {
    fn connected(&self) -> Connected {
        self.0.connected()
    }
}

impl Read for QuickAck {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: ReadBufCursor<'_>,
    ) -> Poll<io::Result<()>> {
        let polled = Pin::new(&mut self.0).poll_read(cx, buf);
        #[cfg(target_os = "linux")]
        if let Poll::Ready(Ok(())) = polled {
            // Best effort: a failure only brings the delay back.
            let _ = self.0.inner().set_quickack(true);
        }
        polled
    }
}

impl Write for QuickAck {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.0.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}
