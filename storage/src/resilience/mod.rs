//! Resilience for object stores, as [`ObjectStore`](crate::ObjectStore)
//! wrappers that compose. A zone builds, per backend location, from the
//! inside out:
//!
//! ```text
//! backend → RateLimitedStore → RetryStore → BreakerStore → HedgedStore
//! ```
//!
//! and a [`ReplicatedStore`] over those stacks (primary first). Why this order:
//! - the rate limit is innermost, so every request that reaches the backend
//!   (each retry, each hedge) takes a permit;
//! - the breaker is outside the retries, so one logical request is one
//!   outcome for it, and an open breaker burns no retries and no sleeps;
//! - hedging is outside the breaker, so a hedge is a second logical request
//!   (fails fast too when the breaker is open);
//! - replication is outermost: a read fails over once a location's retries
//!   are spent or its breaker is open.
//!
//! [`ScriptedStore`] fails and stalls on cue for testing all of this under
//! paused tokio time.

pub mod breaker;
mod breaker_store;
mod durations;
pub mod hedge;
pub mod ratelimit;
pub mod replicas;
pub mod retry;
pub mod scripted;

pub use breaker::{BreakerConfig, BreakerPermit, BreakerState, CircuitBreaker, Health};
pub use breaker_store::BreakerStore;
pub use hedge::HedgedStore;
pub use ratelimit::{RateLimit, RateLimitedStore, RateLimiter};
pub use replicas::ReplicatedStore;
pub use retry::{RetryHook, RetryPolicy, RetryStore};
pub use scripted::{Call, Op, ScriptedStore, Step};
