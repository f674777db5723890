//! The storage engine of `lmdb_object_store`: LMDB environments and
//! transactions, map growth and the map gate, the write buffer and key
//! ranges. It does not depend on PyO3, so no code of it, and in particular
//! nothing that runs inside an LMDB write transaction, can call into Python
//! (spine rule 1, see docs/architecture.md).
//!
//! Its interface speaks in byte slices, batches of writes and guard types:
//! no LMDB transaction, and no closure over one, leaves this crate.

pub mod bounds;
pub mod buffer;
pub mod copy;
mod env;
pub mod error;
pub mod files;
pub mod gate;
mod guard;
pub mod order;
pub mod prefault;
pub mod reserve;
mod snapshot;
pub mod stream;
pub mod tables;
#[cfg(test)]
mod test_alloc;
pub mod txn;

#[cfg(test)]
#[global_allocator]
static TEST_ALLOC: test_alloc::TestAlloc = test_alloc::TestAlloc;

pub use bounds::Bounds;
pub use env::{
    after_fork_in_child, fork_generation, lmdb_version, max_key_size, next_map_size, Ascending,
    DbStat, Env, EnvInfo, EnvOptions, Growth, ReadTxn, GROWTH_STEP,
};
pub use error::{strerror, Error, Result};
pub use snapshot::Snapshot;
pub use stream::{Source, StoredValue};
pub use tables::Table;
pub use txn::WriteTxn;

/// LMDB's compile-time key limit (`mdb_env_get_maxkeysize` with the default
/// `MDB_MAXKEYSIZE`); the binding checks it against the library at load.
pub const MAX_KEY_SIZE: usize = 511;

/// Whether a key of this many bytes can be stored.
pub fn key_len_ok(len: usize) -> bool {
    (1..=MAX_KEY_SIZE).contains(&len)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Spine rule 1 rests on this crate not being able to call Python: its
    /// manifest names no PyO3 (the compiler then refuses any use of it).
    #[test]
    fn the_engine_does_not_depend_on_pyo3() {
        let manifest = include_str!("../Cargo.toml");
        let deps: Vec<&str> = manifest
            .lines()
            .map(str::trim)
            .filter(|l| l.starts_with("pyo3") || l.contains("package = \"pyo3"))
            .collect();
        assert!(deps.is_empty(), "{deps:?}");
    }

    #[test]
    fn key_length_bounds() {
        assert!(!key_len_ok(0));
        assert!(key_len_ok(1));
        assert!(key_len_ok(MAX_KEY_SIZE));
        assert!(!key_len_ok(MAX_KEY_SIZE + 1));
    }
}
