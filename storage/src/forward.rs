//! Pass-through methods for [`ObjectStore`](crate::ObjectStore) wrappers,
//! which change a few operations and hand the rest to the store they hold:
//!
//! ```ignore
//! #[async_trait]
//! impl ObjectStore for Counting {
//!     des_storage::forward_methods!(inner => describe, capabilities, head, put,
//!         put_writer, delete, list, sweep_leftovers);
//!     async fn get(&self, key: &str, opts: GetOptions) -> Result<GetResult> { /* count */ }
//! }
//! ```
//!
//! The generated methods are not `async fn`s, because `#[async_trait]` only
//! rewrites those it sees and a macro in the impl expands after it. They have
//! the signature `async_trait` gives the trait's methods and return the inner
//! store's future itself: the same calls as `self.inner.op(..).await`, minus
//! one boxed future. Should `async_trait` change that signature, the impls
//! stop compiling rather than misbehave.
//!
//! A wrapper that leaves out `capabilities` or `sweep_leftovers` silently
//! gets the trait's default instead of its inner store's answer;
//! `tests/conformance_wrappers.rs` checks every wrapper forwards both.

use std::future::Future;
use std::pin::Pin;

#[doc(hidden)]
pub use bytes::Bytes;

/// The future an `async_trait` method of [`ObjectStore`](crate::ObjectStore) returns.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = crate::Result<T>> + Send + 'a>>;

/// `forward_methods!(field => method, ...)` inside an `impl ObjectStore`:
/// each listed method calls the same method on `self.field` (see the
/// [module docs](crate::forward)).
#[macro_export]
macro_rules! forward_methods {
    ($field:ident => $($method:ident),+ $(,)?) => {
        $($crate::forward_methods!(@one $field $method);)+
    };
    (@one $f:ident describe) => {
        fn describe(&self) -> String { self.$f.describe() }
    };
    (@one $f:ident capabilities) => {
        fn capabilities(&self) -> $crate::Capabilities { self.$f.capabilities() }
    };
    (@one $f:ident get) => { $crate::forward_methods!(@async $f get['k](key: &'k str,
        opts: $crate::GetOptions) -> $crate::GetResult); };
    (@one $f:ident head) => { $crate::forward_methods!(@async $f head['k](key: &'k str)
        -> $crate::ObjectMeta); };
    (@one $f:ident put) => { $crate::forward_methods!(@async $f put['k](key: &'k str,
        data: $crate::forward::Bytes, opts: $crate::PutOptions) -> $crate::PutResult); };
    (@one $f:ident put_writer) => { $crate::forward_methods!(@async $f put_writer['k](
        key: &'k str, opts: $crate::PutOptions) -> Box<dyn $crate::ObjectWriter>); };
    (@one $f:ident delete) => { $crate::forward_methods!(@async $f delete['k](key: &'k str)
        -> ()); };
    (@one $f:ident list) => { $crate::forward_methods!(@async $f list['p, 'a](prefix: &'p str,
        start_after: Option<&'a str>) -> $crate::ListPage); };
    (@one $f:ident sweep_leftovers) => { $crate::forward_methods!(@async $f sweep_leftovers[](
        older_than: ::std::time::Duration) -> u64); };
    // `async_trait`'s form: `&self` and each reference argument get their
    // own lifetime, in argument order, each outliving the future's.
    (@async $f:ident $name:ident [$($lt:lifetime),*] ($($arg:ident : $ty:ty),*) -> $out:ty) => {
        fn $name<'s, $($lt,)* 'fut>(&'s self, $($arg: $ty),*)
            -> $crate::forward::BoxFuture<'fut, $out>
        where 's: 'fut, $($lt: 'fut,)* Self: 'fut
        {
            self.$f.$name($($arg),*)
        }
    };
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::time::Duration;

    use async_trait::async_trait;

    use crate::error::Result;
    use crate::object::{
        ByteRange, Capabilities, GetOptions, GetResult, ObjectStore, ObjectStoreExt, PutOptions,
    };
    use crate::{ErrorKind, MemoryStore};

    /// A backend whose trait defaults would be wrong answers, so a wrapper
    /// that fell back to them instead of forwarding would show.
    #[derive(Debug, Default)]
    struct Unusual {
        memory: MemoryStore,
    }

    #[async_trait]
    impl ObjectStore for Unusual {
        crate::forward_methods!(memory => get, head, put, put_writer, delete, list);

        fn describe(&self) -> String {
            "unusual://".into()
        }

        fn capabilities(&self) -> Capabilities {
            Capabilities {
                conditional_put: false,
            }
        }

        async fn sweep_leftovers(&self, _older_than: Duration) -> Result<u64> {
            Ok(7)
        }
    }

    /// Counts `get`s, forwards every other method.
    #[derive(Debug)]
    struct Gets {
        inner: Arc<dyn ObjectStore>,
        gets: AtomicU64,
    }

    #[async_trait]
    impl ObjectStore for Gets {
        crate::forward_methods!(inner =>
            describe, capabilities, head, put, put_writer, delete, list, sweep_leftovers);

        async fn get(&self, key: &str, opts: GetOptions) -> Result<GetResult> {
            self.gets.fetch_add(1, Ordering::Relaxed);
            self.inner.get(key, opts).await
        }
    }

    #[tokio::test]
    async fn forwarded_methods_reach_the_inner_store() {
        let s = Gets {
            inner: Arc::new(Unusual::default()),
            gets: AtomicU64::new(0),
        };
        assert_eq!(s.describe(), "unusual://");
        assert!(!s.capabilities().conditional_put);
        assert_eq!(s.sweep_leftovers(Duration::ZERO).await.unwrap(), 7);

        s.put("a/1", "one".into(), PutOptions::default())
            .await
            .unwrap();
        let mut w = s.put_writer("a/2", PutOptions::default()).await.unwrap();
        w.write("two".into()).await.unwrap();
        w.finish().await.unwrap();
        assert_eq!(s.head("a/2").await.unwrap().size, 3);
        let listed = s.list("a/", Some("a/1")).await.unwrap();
        let keys: Vec<_> = listed.objects.iter().map(|m| m.key.as_str()).collect();
        assert_eq!(keys, ["a/2"]);
        s.delete("a/1").await.unwrap();
        assert_eq!(s.head("a/1").await.unwrap_err().kind(), ErrorKind::NotFound);

        let (_, body) = s.get_range("a/2", ByteRange::Suffix(2)).await.unwrap();
        assert_eq!(&body[..], b"wo");
        assert_eq!(s.gets.load(Ordering::Relaxed), 1, "the override ran");
    }
}
