//! A TCP proxy that makes loopback look like a network path: every byte is
//! delayed by a fixed time in each direction, and optionally each direction
//! of each connection is capped to a bandwidth.
//!
//! Per direction, a reader task stamps what it reads with a deadline (read
//! time + delay) and queues it; a writer drains the queue, sleeping until
//! each chunk's deadline. A byte read at t is written at t + delay whatever
//! came before it, so delay does not add up over a response and throughput
//! is not capped at one buffer per delay (as it would be by "read, sleep,
//! write"). End of stream travels through the same queue, so a close also
//! arrives `delay` later.
//!
//! The rate cap paces the reader: a chunk of n bytes occupies the "link"
//! for n / rate after the previous one, and is queued when it has been
//! fully sent (a token bucket with no burst credit beyond one chunk, and
//! none saved while idle). The reader stops reading while it waits, so the
//! sender sees TCP backpressure as on a slow link. The proxy does not model
//! TCP's window over the delayed path (ACKs are local on each leg): up to
//! [`Config::max_in_flight`] bytes per direction are in flight. Nor does it
//! delay connection set-up: the kernel completes the client's handshake
//! before the proxy sees it, so a new connection costs no extra round trip
//! here (one on a real path); compare keep-alive traffic, or add it.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio::time::{Instant, sleep_until};

/// Largest read; also the unit the delay queue moves.
const CHUNK: usize = 64 * 1024;

#[derive(Debug, Clone)]
pub struct Config {
    /// Where connections go (`host:port`, resolved per connection).
    pub upstream: String,
    /// Added to every byte, in each direction.
    pub delay: Duration,
    /// Bytes per second per connection per direction; `None`: no cap.
    pub rate: Option<u64>,
    /// Bytes read but not yet written, per connection per direction, before
    /// the reader stops reading (bounds memory when a peer reads slowly).
    pub max_in_flight: usize,
}

impl Config {
    pub fn new(upstream: impl Into<String>, delay: Duration) -> Self {
        Self {
            upstream: upstream.into(),
            delay,
            rate: None,
            max_in_flight: 64 << 20,
        }
    }

    /// Bytes per read: with a rate cap at most 10 ms of the link, so the
    /// paced bytes leave in steps no coarser than that (at least 1 KiB).
    fn chunk(&self) -> usize {
        match self.rate {
            Some(r) => usize::try_from(r / 100).unwrap_or(CHUNK).clamp(1024, CHUNK),
            None => CHUNK,
        }
    }
}

/// Accepts connections on `listener` and proxies each to the upstream,
/// until the task is dropped. Upstream connect failures close the client's
/// connection and are reported on stderr; they do not stop the proxy.
pub async fn serve(listener: TcpListener, config: Config) -> io::Result<()> {
    let config = Arc::new(config);
    loop {
        let (client, peer) = match listener.accept().await {
            Ok(c) => c,
            // Out of file descriptors and the like: stay up, retry soon.
            Err(e) => {
                eprintln!("des-latency-proxy: accept: {e}");
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let config = config.clone();
        tokio::spawn(async move {
            if let Err(e) = connection(client, &config).await {
                // Resets and broken pipes are how benchmark clients end
                // connections; only an unreachable upstream is worth a line.
                if e.kind() == io::ErrorKind::ConnectionRefused {
                    eprintln!(
                        "des-latency-proxy: {peer}: upstream {}: {e}",
                        config.upstream
                    );
                }
            }
        });
    }
}

/// Binds `listen` and serves in a background task; returns the bound address
/// (port 0 picks a free one). For tests and embedding.
pub async fn spawn(
    listen: &str,
    config: Config,
) -> io::Result<(SocketAddr, tokio::task::JoinHandle<io::Result<()>>)> {
    let listener = TcpListener::bind(listen).await?;
    let addr = listener.local_addr()?;
    Ok((addr, tokio::spawn(serve(listener, config))))
}

async fn connection(client: TcpStream, config: &Config) -> io::Result<()> {
    let upstream = TcpStream::connect(&config.upstream).await?;
    // The proxy must not add Nagle's wait to the delay it was asked for.
    client.set_nodelay(true)?;
    upstream.set_nodelay(true)?;
    let (client_r, client_w) = client.into_split();
    let (upstream_r, upstream_w) = upstream.into_split();
    // An error in either direction (reset, broken pipe) ends both: dropping
    // the halves closes both sockets, as a broken path would.
    tokio::try_join!(
        direction(client_r, upstream_w, config),
        direction(upstream_r, client_w, config),
    )?;
    Ok(())
}

/// One queued chunk: `None` is end of stream. The permit holds the chunk's
/// share of `max_in_flight` until it is written.
type Queued = (Instant, Option<Bytes>, Option<OwnedSemaphorePermit>);

async fn direction(mut r: OwnedReadHalf, mut w: OwnedWriteHalf, config: &Config) -> io::Result<()> {
    let (tx, mut rx) = mpsc::unbounded_channel::<Queued>();
    let budget = Arc::new(Semaphore::new(config.max_in_flight));
    let chunk = config.chunk();
    let reader = async move {
        let mut buf = BytesMut::new();
        // When the paced "link" is free again.
        let mut link_free = Instant::now();
        loop {
            buf.reserve(chunk);
            let n = (&mut r).take(chunk as u64).read_buf(&mut buf).await?;
            quickack(&r);
            let mut sent = Instant::now();
            if n > 0
                && let Some(rate) = config.rate
            {
                link_free = link_free.max(sent) + Duration::from_secs_f64(n as f64 / rate as f64);
                sleep_until(link_free).await;
                sent = link_free;
            }
            let deadline = sent + config.delay;
            if n == 0 {
                // The writer is gone only if it failed; its error is the one to report.
                let _ = tx.send((deadline, None, None));
                return Ok::<_, io::Error>(());
            }
            let permit = budget
                .clone()
                .acquire_many_owned(u32::try_from(n).unwrap_or(u32::MAX))
                .await
                .map_err(io::Error::other)?;
            if tx
                .send((deadline, Some(buf.split().freeze()), Some(permit)))
                .is_err()
            {
                return Ok(());
            }
        }
    };
    let writer = async move {
        while let Some((deadline, data, _permit)) = rx.recv().await {
            sleep_until(deadline).await;
            match data {
                Some(bytes) => w.write_all(&bytes).await?,
                None => {
                    // Half-close, as the sender did; the peer may already
                    // be gone, which is no error here.
                    let _ = w.shutdown().await;
                    break;
                }
            }
        }
        Ok::<_, io::Error>(())
    };
    tokio::try_join!(reader, writer)?;
    Ok(())
}

/// Garage and other hyper servers without TCP_NODELAY send a response's
/// headers and body as two segments, and Nagle holds the body until the
/// headers are ACKed; Linux delays that ACK up to 40 ms. A client on the
/// far side of a real path would see a delay, not that stall, so ACK at
/// once (TCP_QUICKACK is not sticky: re-arm after every read).
fn quickack(r: &OwnedReadHalf) {
    #[cfg(target_os = "linux")]
    {
        let _ = socket2::SockRef::from(r.as_ref()).set_tcp_quickack(true);
    }
    #[cfg(not(target_os = "linux"))]
    let _ = r;
}
