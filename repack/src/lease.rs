//! The repacker's lease lives with the store's write protocol in
//! des-storage (`des_storage::protocol::lease`); this re-export keeps the
//! repack tools' paths.

pub use des_storage::protocol::lease::*;
