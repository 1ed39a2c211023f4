//! Bounds on what responses in progress may hold: big-file streams, and the
//! bytes of small-file payloads buffered for sending. A request that would
//! exceed one is answered 503 with `Retry-After` at once, before any storage
//! read: waiting would let a crowd of slow clients queue up every other
//! request behind them, and a quick 503 lets a load balancer try elsewhere.
//!
//! Slow readers hold their share until they finish or disconnect; the bound
//! is what keeps a crowd of them from taking the pod's memory or threads.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use actix_web::body::{BodySize, MessageBody};
use bytes::Bytes;
use prometheus::{IntCounterVec, IntGauge};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::config::Guards;
use crate::error::ApiError;
use crate::metrics::Metrics;

/// What a client is told to wait before trying again.
const RETRY_AFTER: Duration = Duration::from_secs(1);

#[derive(Debug, Clone)]
pub struct Admission {
    big_streams: Bound,
    payload_bytes: Bound,
}

#[derive(Debug, Clone)]
struct Bound {
    resource: &'static str,
    permits: Arc<Semaphore>,
    /// One request may ask for more than the whole bound (a file larger
    /// than it): it then takes the whole bound, so it is served alone.
    max: usize,
    in_use: IntGauge,
    rejections: IntCounterVec,
}

/// A share of a bound, given back when dropped (the response finished, or
/// the client went away).
#[derive(Debug)]
pub struct Held {
    _permit: OwnedSemaphorePermit,
    in_use: IntGauge,
    n: i64,
}

impl Drop for Held {
    fn drop(&mut self) {
        self.in_use.sub(self.n);
    }
}

impl Admission {
    pub fn new(guards: &Guards, metrics: &Metrics) -> Self {
        let bound = |resource, max: usize, in_use: &IntGauge| {
            // Present from the start, so alerts can see a zero rate.
            metrics.overload_rejections.with_label_values(&[resource]);
            let max = max.clamp(1, Semaphore::MAX_PERMITS);
            Bound {
                resource,
                permits: Arc::new(Semaphore::new(max)),
                max,
                in_use: in_use.clone(),
                rejections: metrics.overload_rejections.clone(),
            }
        };
        let bytes = usize::try_from(guards.max_payload_bytes_in_flight).unwrap_or(usize::MAX);
        Self {
            big_streams: bound(
                "big_streams",
                guards.max_big_streams,
                &metrics.big_streams_active,
            ),
            payload_bytes: bound("payload_bytes", bytes, &metrics.payload_bytes_in_flight),
        }
    }

    /// One big-file stream.
    pub fn big_stream(&self) -> Result<Held, ApiError> {
        self.big_streams.take(1)
    }

    /// `bytes` of payload held in memory until the response is sent.
    pub fn payload_bytes(&self, bytes: u64) -> Result<Held, ApiError> {
        self.payload_bytes
            .take(usize::try_from(bytes).unwrap_or(usize::MAX))
    }
}

impl Bound {
    fn take(&self, n: usize) -> Result<Held, ApiError> {
        let n = n.clamp(1, self.max);
        let wanted = u32::try_from(n).ok();
        let permit = wanted.and_then(|w| Arc::clone(&self.permits).try_acquire_many_owned(w).ok());
        let Some(permit) = permit.or_else(|| self.take_large(n)) else {
            self.rejections.with_label_values(&[self.resource]).inc();
            return Err(ApiError::overloaded(
                format!(
                    "server busy: too many {} in use; retry shortly",
                    self.resource.replace('_', " ")
                ),
                RETRY_AFTER,
            ));
        };
        let n = i64::try_from(n).unwrap_or(i64::MAX);
        self.in_use.add(n);
        Ok(Held {
            _permit: permit,
            in_use: self.in_use.clone(),
            n,
        })
    }

    /// Semaphores count permits in `u32` per acquisition; a share above
    /// that (a bound over 4 GiB of bytes) is taken in pieces, merged.
    fn take_large(&self, n: usize) -> Option<OwnedSemaphorePermit> {
        if u32::try_from(n).is_ok() {
            return None;
        }
        let mut left = n;
        let mut merged: Option<OwnedSemaphorePermit> = None;
        while left > 0 {
            let piece = left.min(u32::MAX as usize);
            let p = Arc::clone(&self.permits)
                .try_acquire_many_owned(u32::try_from(piece).ok()?)
                .ok()?;
            left -= piece;
            match merged.as_mut() {
                Some(m) => m.merge(p),
                None => merged = Some(p),
            }
        }
        merged
    }
}

/// Bytes handed to the connection this many at a time: actix copies each
/// piece into its write buffer and asks for the next only when that buffer
/// has drained, so the share is held until the bytes are nearly all sent,
/// not given back when the whole payload was copied into a buffer.
const PIECE: usize = 64 * 1024;

/// A small file's bytes as a response body, with their share of the bound.
pub struct HeldBody {
    bytes: Bytes,
    _held: Option<Held>,
}

impl HeldBody {
    pub fn new(bytes: Bytes, held: Option<Held>) -> Self {
        Self { bytes, _held: held }
    }
}

impl MessageBody for HeldBody {
    type Error = std::convert::Infallible;

    fn size(&self) -> BodySize {
        BodySize::Sized(self.bytes.len() as u64)
    }

    fn poll_next(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Bytes, Self::Error>>> {
        let this = self.get_mut();
        if this.bytes.is_empty() {
            return Poll::Ready(None);
        }
        let n = this.bytes.len().min(PIECE);
        Poll::Ready(Some(Ok(this.bytes.split_to(n))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ErrorKind;

    fn admission(big: usize, bytes: u64) -> (Admission, Metrics) {
        let metrics = Metrics::new().unwrap();
        let guards = Guards {
            max_big_streams: big,
            max_payload_bytes_in_flight: bytes,
            ..Guards::default()
        };
        (Admission::new(&guards, &metrics), metrics)
    }

    #[test]
    fn big_streams_are_bounded_and_given_back() {
        let (a, m) = admission(2, 1 << 20);
        let one = a.big_stream().unwrap();
        let _two = a.big_stream().unwrap();
        assert_eq!(m.big_streams_active.get(), 2);
        let e = a.big_stream().unwrap_err();
        assert_eq!(e.kind, ErrorKind::Overloaded);
        assert_eq!(
            m.overload_rejections
                .with_label_values(&["big_streams"])
                .get(),
            1
        );
        drop(one);
        assert_eq!(m.big_streams_active.get(), 1);
        a.big_stream().unwrap();
    }

    #[test]
    fn payload_bytes_are_counted_by_size() {
        let (a, m) = admission(1, 1000);
        let held = a.payload_bytes(600).unwrap();
        assert_eq!(m.payload_bytes_in_flight.get(), 600);
        assert!(a.payload_bytes(500).is_err(), "600 + 500 > 1000");
        let small = a.payload_bytes(400).unwrap();
        drop(held);
        drop(small);
        assert_eq!(m.payload_bytes_in_flight.get(), 0);
        // Larger than the whole bound: served alone, not refused forever.
        let huge = a.payload_bytes(5000).unwrap();
        assert_eq!(m.payload_bytes_in_flight.get(), 1000);
        assert!(a.payload_bytes(1).is_err());
        drop(huge);
        a.payload_bytes(0).unwrap();
    }

    #[actix_web::test]
    async fn body_holds_its_share_until_sent() {
        let (a, m) = admission(1, 1 << 20);
        let data = Bytes::from(vec![7u8; 3 * PIECE + 5]);
        let mut body = Box::pin(HeldBody::new(
            data.clone(),
            Some(a.payload_bytes(1000).unwrap()),
        ));
        let mut sent = Vec::new();
        while let Some(piece) = futures::future::poll_fn(|cx| body.as_mut().poll_next(cx)).await {
            let piece = piece.unwrap();
            assert!(piece.len() <= PIECE);
            assert_eq!(m.payload_bytes_in_flight.get(), 1000, "held while sending");
            sent.extend_from_slice(&piece);
        }
        assert_eq!(sent, data);
        drop(body);
        assert_eq!(m.payload_bytes_in_flight.get(), 0);
    }
}
