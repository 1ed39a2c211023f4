//! Maintenance tools for DES stores. So far: `verify`, which checks shards
//! (trailer, index, every or a sample of the payloads) and reports corruption
//! by shard key and uid; the repacker and scrubber are meant to reuse it.

pub mod verify;
