//! The Python surface: the `LmdbObjectStore` class. Each method converts
//! its arguments, calls one operation of the store's core (`core.rs`), and
//! converts the result.

use std::borrow::Cow;
use std::sync::Arc;

use engine::buffer::{Bytes, Lookup, Sorted};
use engine::Bounds;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyList, PyTuple};

use crate::args;
use crate::codec;
use crate::core::{held, report, CoreHandle, CoreRef};
use crate::errors::add_note;
use crate::errors::StoreError;
use crate::exit;
use crate::iter::{Kind, StoreIterator};
use crate::npy;
use crate::options::{type_name, Settings, DEFAULT_MAX_BUFFER_BYTES};
use crate::values;
use crate::views::{self, View};

/// A persistent, thread-safe, dict-like store of Python objects on LMDB.
///
/// >>> with LmdbObjectStore("/tmp/db") as store:
/// ...     store[b"k"] = {"v": 1}
#[pyclass(
    module = "lmdb_object_store",
    name = "LmdbObjectStore",
    subclass,
    frozen,
    weakref
)]
pub struct LmdbObjectStore {
    /// Shared with the store's iterators, which need nothing else of it.
    core: Arc<CoreHandle>,
}

impl LmdbObjectStore {
    /// The core, open or closed, for one call.
    pub(crate) fn core(&self) -> PyResult<CoreRef<'_>> {
        self.core.get()
    }

    /// The core, for a call that needs it open.
    pub(crate) fn open_core(&self) -> PyResult<CoreRef<'_>> {
        self.core.open_core()
    }

    /// See [`CoreHandle::current`].
    pub(crate) fn current<'a>(&'a self, c: CoreRef<'a>) -> PyResult<CoreRef<'a>> {
        self.core.current(c)
    }
}

#[pymethods]
impl LmdbObjectStore {
    /// `__new__` takes everything `__init__` takes (a subclass may add its
    /// own); the text signature is `__init__`'s, so that `help()` and
    /// `inspect.signature()` show the real constructor.
    #[new]
    #[pyo3(
        signature = (*_args, **_kwargs),
        text_signature = "(db_path, batch_size=1000, *, autoflush_on_read=True, \
                          key_encoding=None, key_errors='strict', str_normalize=None, \
                          max_map_size=None, max_buffer_bytes=67108864, \
                          pickle_protocol=None, serializer='pickle', allowed=None, \
                          compression=None, compression_threshold=None, table=None, \
                          **lmdb_options)"
    )]
    fn new(_args: &Bound<'_, PyTuple>, _kwargs: Option<&Bound<'_, PyDict>>) -> Self {
        LmdbObjectStore {
            core: Arc::default(),
        }
    }

    #[pyo3(signature = (
        db_path, batch_size=1000, *, autoflush_on_read=None, key_encoding=None,
        key_errors="strict".to_string(), str_normalize=None, max_map_size=None,
        max_buffer_bytes=DEFAULT_MAX_BUFFER_BYTES as i64, pickle_protocol=None, serializer=None,
        allowed=None, compression=None, compression_threshold=None, table=None, **lmdb_options
    ))]
    #[allow(clippy::too_many_arguments)]
    fn __init__(
        &self,
        py: Python<'_>,
        db_path: &Bound<'_, PyAny>,
        batch_size: i64,
        autoflush_on_read: Option<&Bound<'_, PyAny>>,
        key_encoding: Option<String>,
        key_errors: String,
        str_normalize: Option<String>,
        max_map_size: Option<&Bound<'_, PyAny>>,
        max_buffer_bytes: i64,
        pickle_protocol: Option<i32>,
        serializer: Option<&Bound<'_, PyAny>>,
        allowed: Option<&Bound<'_, PyAny>>,
        compression: Option<&Bound<'_, PyAny>>,
        compression_threshold: Option<&Bound<'_, PyAny>>,
        table: Option<&Bound<'_, PyAny>>,
        lmdb_options: Option<&Bound<'_, PyDict>>,
    ) -> PyResult<()> {
        let _inside = exit::enter();
        if self.core.is_set() {
            return Err(StoreError::AlreadyOpen.into());
        }
        let settings = Settings::parse(
            py,
            db_path,
            batch_size,
            autoflush_on_read,
            key_encoding,
            key_errors,
            str_normalize,
            max_map_size,
            max_buffer_bytes,
            pickle_protocol,
            serializer,
            allowed,
            compression,
            compression_threshold,
            table,
            lmdb_options,
        )?;
        self.core.open(py, settings)
    }

    /// Store `obj` (pickled now) under `key`; buffered until the next flush.
    fn put(&self, py: Python<'_>, key: &Bound<'_, PyAny>, obj: &Bound<'_, PyAny>) -> PyResult<()> {
        let c = self.core()?;
        c.check_writable("put")?;
        let k = c.keys.to_write_bytes(key)?;
        let pickled = values::encode(py, &c.serializer, &c.compression, obj, c.protocol, key)?;
        self.current(c)?.buffer_write(py, &k, Some(held(pickled)))
    }

    fn __setitem__(
        &self,
        py: Python<'_>,
        key: &Bound<'_, PyAny>,
        obj: &Bound<'_, PyAny>,
    ) -> PyResult<()> {
        self.put(py, key, obj)
    }

    /// Buffer a deletion of `key` (no check that it exists).
    fn delete(&self, py: Python<'_>, key: &Bound<'_, PyAny>) -> PyResult<()> {
        let c = self.core()?;
        c.check_writable("delete")?;
        let k = c.keys.to_write_bytes(key)?;
        self.current(c)?.buffer_write(py, &k, None)
    }

    fn __delitem__(&self, py: Python<'_>, key: &Bound<'_, PyAny>) -> PyResult<()> {
        let c = self.core()?;
        c.check_writable("delete")?;
        let k = c.keys.to_bytes(key)?;
        let c = self.current(c)?;
        if !engine::key_len_ok(k.len()) || !c.contains(py, &k, false)? {
            return Err(codec::key_error(key));
        }
        c.buffer_write(py, &k, None)
    }

    /// The value stored under `key`, or `default`.
    #[pyo3(signature = (key, default=None))]
    fn get<'py>(
        &self,
        py: Python<'py>,
        key: &Bound<'py, PyAny>,
        default: Option<Bound<'py, PyAny>>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let c = self.open_core()?;
        let k = c.keys.to_bytes(key)?;
        Ok(match self.current(c)?.get_value(py, &k)? {
            Some(v) => v,
            None => default.unwrap_or_else(|| py.None().into_bound(py)),
        })
    }

    fn __getitem__<'py>(
        &self,
        py: Python<'py>,
        key: &Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let c = self.open_core()?;
        let k = c.keys.to_bytes(key)?;
        self.current(c)?
            .get_value(py, &k)?
            .ok_or_else(|| codec::key_error(key))
    }

    /// Whether `key` has a value; `flush=None` follows `autoflush_on_read`.
    #[pyo3(signature = (key, *, flush=None))]
    fn exists(
        &self,
        py: Python<'_>,
        key: &Bound<'_, PyAny>,
        flush: Option<bool>,
    ) -> PyResult<bool> {
        let c = self.open_core()?;
        let k = c.keys.to_bytes(key)?;
        let c = self.current(c)?;
        c.contains(py, &k, flush.unwrap_or(c.autoflush_on_read))
    }

    fn __contains__(&self, py: Python<'_>, key: &Bound<'_, PyAny>) -> PyResult<bool> {
        let c = self.open_core()?;
        let k = c.keys.to_bytes(key)?;
        self.current(c)?.contains(py, &k, false)
    }

    /// `(found, not_found)` for many keys, read in one transaction.
    #[pyo3(signature = (keys, *, decode_keys=false, decode_not_found=None))]
    fn get_many<'py>(
        &self,
        py: Python<'py>,
        keys: &Bound<'py, PyAny>,
        decode_keys: bool,
        decode_not_found: Option<bool>,
    ) -> PyResult<(Bound<'py, PyDict>, Bound<'py, PyList>)> {
        let c = self.open_core()?;
        let (decode_keys, decode_not_found) = c.keys.many_options(decode_keys, decode_not_found)?;
        let given = codec::collect_items(keys, "keys of get_many")?;
        let mut normalised: Vec<Cow<'_, [u8]>> = Vec::new();
        codec::reserve_more(&mut normalised, given.len(), "keys of get_many")?;
        for k in &given {
            normalised.push(c.keys.to_bytes(k)?);
        }
        let _gc = (given.len() > 1).then(|| codec::GcPause::new(py));
        let c = self.current(c)?;
        let (c, many) = self.core.read_many(py, c, &normalised)?;
        let (from_buffer, mut from_db) = (many.from_buffer, many.from_db);

        let found = codec::new_dict(py)?;
        let mut hit = vec![false; normalised.len()];
        for (i, (k, l)) in normalised.iter().zip(&from_buffer).enumerate() {
            let obj = match l {
                Some(Lookup::Value(v)) => c.unpickle_buffered(py, k, v)?,
                Some(Lookup::Unknown) => match from_db.get_mut(i).and_then(Option::take) {
                    Some(obj) => obj,
                    None => continue,
                },
                _ => continue,
            };
            found.set_item(c.keys.found_key(py, &given[i], k, decode_keys)?, obj)?;
            hit[i] = true;
        }
        let not_found = codec::new_list(py)?;
        for (i, k) in given.iter().enumerate() {
            if hit[i] {
                continue;
            }
            not_found.append(
                c.keys
                    .not_found_key(py, k, &normalised[i], decode_not_found)?,
            )?;
        }
        c.log_read_flush_failure(py, many.failure);
        Ok((found, not_found))
    }

    /// A read-write transaction: `with store.transaction() as t: ...`
    /// commits every write of the block at its end, or none if it raises.
    fn transaction(&self) -> PyResult<crate::transaction::Transaction> {
        self.open_core()?;
        Ok(crate::transaction::Transaction::new(Arc::clone(&self.core)))
    }

    /// A read-only mapping over the database as it is now, after this
    /// store's buffer is committed: `with store.snapshot() as snap: ...`.
    fn snapshot(&self, py: Python<'_>) -> PyResult<crate::snapshot::Snapshot> {
        crate::snapshot::Snapshot::open(py, Arc::clone(&self.core))
    }

    /// Copy the stored (encoded) bytes of `key` into `buffer`, a writable
    /// C-contiguous bytes-like object; returns how many bytes were written.
    fn get_into(
        &self,
        py: Python<'_>,
        key: &Bound<'_, PyAny>,
        buffer: &Bound<'_, PyAny>,
    ) -> PyResult<usize> {
        let c = self.open_core()?;
        let k = c.keys.to_bytes(key)?;
        let mut out = crate::snapshot::WritableBuffer::get(buffer)?;
        let c = self.current(c)?;
        // SAFETY: `out` holds the buffer exported, writable and contiguous,
        // until it drops at the end of this call; an exported buffer cannot
        // be resized or freed meanwhile.
        let dst = unsafe { out.as_mut_slice() };
        let given = dst.len();
        match c.copy_encoded(py, &k, dst)? {
            None => Err(codec::key_error(key)),
            Some(Ok(n)) => Ok(n),
            Some(Err(needed)) => Err(StoreError::BufferTooSmall {
                key: codec::display_bytes(py, &k),
                needed,
                given,
            }
            .into()),
        }
    }

    /// Write every `(key, value)` of `items` in one transaction, after
    /// flushing the buffer: all or nothing.
    fn put_many(&self, py: Python<'_>, items: &Bound<'_, PyAny>) -> PyResult<()> {
        let c = self.core()?;
        c.check_writable("put_many")?;
        let pairs = if items.hasattr("items")? && items.hasattr("keys")? {
            items.call_method0("items")?
        } else {
            items.clone()
        };
        // Normalise and pickle everything before touching the buffer. The
        // pickles are not copied: the commit reads them in place (bytes
        // objects are immutable and `pickles` keeps them alive).
        let mut keys: Vec<Vec<u8>> = Vec::new();
        let mut pickles: Vec<Bound<'_, PyBytes>> = Vec::new();
        let mut bytes = 0usize;
        for pair in pairs.try_iter()? {
            let pair = pair?;
            codec::check_memory(&c.path)?;
            let (k, v) = args::key_value_pair(&pair)?.map_err(|why| {
                PyErr::from(StoreError::PutManyItem {
                    got: type_name(&pair),
                    why,
                })
            })?;
            let kb = c.keys.to_write_bytes(&k)?.into_owned();
            let pickled = values::encode(py, &c.serializer, &c.compression, &v, c.protocol, &k)?;
            bytes += kb.len() + pickled.as_bytes().len();
            codec::reserve_more(&mut keys, 1, "items of put_many")?;
            codec::reserve_more(&mut pickles, 1, "items of put_many")?;
            keys.push(kb);
            pickles.push(pickled);
        }
        let c = self.current(c)?;
        let mut ops = codec::try_vec(keys.len(), "items of put_many")?;
        ops.extend(
            keys.iter()
                .zip(&pickles)
                .map(|(k, v)| (&k[..], Some(v.as_bytes()))),
        );
        // Sorting them may take as much again.
        codec::room_for::<engine::buffer::Op<'_>>(ops.len(), "items of put_many")?;
        let ops = Sorted::last_write_wins(ops);
        c.put_many(py, &ops, bytes)
    }

    /// Store the array `arr` under `key` in NumPy's `.npy` format (no
    /// pickle); buffered until the next flush, as `put`.
    fn put_array(
        &self,
        py: Python<'_>,
        key: &Bound<'_, PyAny>,
        arr: &Bound<'_, PyAny>,
    ) -> PyResult<()> {
        npy::numpy(py)?;
        let c = self.core()?;
        c.check_writable("put_array")?;
        let k = c.keys.to_write_bytes(key)?;
        let stored = npy::encode(py, arr, || codec::display_key(key))?;
        self.current(c)?.buffer_write(py, &k, Some(held(stored)))
    }

    /// The array stored under `key` by `put_array`, as a new array.
    fn get_array<'py>(
        &self,
        py: Python<'py>,
        key: &Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, PyAny>> {
        npy::numpy(py)?;
        let c = self.open_core()?;
        let k = [c.keys.to_bytes(key)?];
        self.current(c)?
            .with_raw_values(py, &k, |values| match values[0] {
                None => Err(codec::key_error(key)),
                Some(v) if !v.starts_with(npy::MAGIC) => Err(StoreError::NotAnArray {
                    key: codec::display_key(key),
                }
                .into()),
                Some(v) => npy::load(py, v).map_err(|e| codec::unpickle_error(py, &k[0], "DB", e)),
            })
    }

    /// The arrays of `keys` (one dtype, one shape), read in one transaction
    /// into one `(n, *shape)` array: `out`, or a new one.
    #[pyo3(signature = (keys, out=None))]
    fn get_arrays<'py>(
        &self,
        py: Python<'py>,
        keys: &Bound<'py, PyAny>,
        out: Option<Bound<'py, PyAny>>,
    ) -> PyResult<Bound<'py, PyAny>> {
        npy::numpy(py)?;
        let c = self.open_core()?;
        const WHAT: &str = "keys of get_arrays";
        let given = codec::collect_items(keys, WHAT)?;
        let mut normalised: Vec<Cow<'_, [u8]>> = codec::try_vec(given.len(), WHAT)?;
        for k in &given {
            codec::check_memory(&c.path)?;
            normalised.push(c.keys.to_bytes(k)?);
        }
        let out = match out {
            Some(o) if !o.is_none() => Some(npy::Out::check(py, o)?),
            _ => None,
        };
        self.current(c)?.with_raw_values(py, &normalised, |values| {
            npy::fill(py, &normalised, values, out, |i| {
                codec::key_error(&given[i])
            })
        })
    }

    /// Store the bytes of a file (a path, or a binary file object from its
    /// current position) under `key` without reading them into a Python
    /// object: committed at once, after the buffer. `size`, if given, must
    /// be what the file holds.
    #[pyo3(signature = (key, file_or_path, size=None))]
    fn put_file(
        &self,
        py: Python<'_>,
        key: &Bound<'_, PyAny>,
        file_or_path: &Bound<'_, PyAny>,
        size: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<()> {
        let c = self.core()?;
        c.check_writable("put_file")?;
        let k = c.keys.to_write_bytes(key)?.into_owned();
        let dir = if c.fs_path.is_dir() {
            c.fs_path.clone()
        } else {
            c.fs_path
                .parent()
                .map_or_else(|| ".".into(), |p| p.to_path_buf())
        };
        let prepared = crate::stream::prepare(
            py,
            &c.serializer,
            &c.compression,
            key,
            file_or_path,
            size,
            &dir,
        )?;
        self.current(c)?.put_stream(py, &k, &prepared.source())?;
        prepared.finish();
        Ok(())
    }

    /// A read-only binary file over the value of `key` as it is now (a
    /// snapshot is held until the file is closed).
    fn open(&self, py: Python<'_>, key: &Bound<'_, PyAny>) -> PyResult<crate::stream::ValueFile> {
        let c = self.open_core()?;
        let k = c.keys.to_bytes(key)?;
        let c = self.current(c)?;
        crate::stream::ValueFile::open(py, &c, key, &k)
    }

    /// Write the buffer to LMDB in one transaction.
    fn flush(&self, py: Python<'_>) -> PyResult<()> {
        let c = self.core()?;
        c.check_writable("flush")?;
        c.flush(py)
    }

    /// Flush, wait for reads in flight, sync and close. Idempotent.
    #[pyo3(signature = (*, strict=false))]
    fn close(&self, py: Python<'_>, strict: bool) -> PyResult<()> {
        if !self.core.is_set() {
            return Ok(());
        }
        let c = self.core()?;
        match c.close(py)? {
            None => Ok(()),
            Some(lost) if strict => {
                let err = PyErr::from(StoreError::FinalFlushFailed {
                    path: c.path.clone(),
                });
                err.set_cause(py, Some(lost.error));
                Err(err)
            }
            Some(lost) => {
                report(py, &lost.message(py, &c.path, "in close()"));
                Ok(())
            }
        }
    }

    /// Flush the OS buffers of the data file to disk.
    #[pyo3(signature = (force=true))]
    fn sync(&self, py: Python<'_>, force: bool) -> PyResult<()> {
        self.open_core()?.sync(py, force)
    }

    /// `map_addr`, `map_size`, `last_pgno`, `last_txnid`, `max_readers`,
    /// `num_readers`, as py-lmdb's `Environment.info()`.
    fn info<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let c = self.open_core()?;
        let i = c.info(py)?;
        let d = PyDict::new(py);
        d.set_item("map_addr", i.map_addr)?;
        d.set_item("map_size", i.map_size)?;
        d.set_item("last_pgno", i.last_pgno)?;
        d.set_item("last_txnid", i.last_txnid)?;
        d.set_item("max_readers", i.max_readers)?;
        d.set_item("num_readers", i.num_readers)?;
        Ok(d)
    }

    /// Write a consistent copy of the store to `dest`, which must not
    /// exist, after committing the buffer; `compact` leaves out free pages.
    ///
    /// >>> store.copy("/backups/db")
    #[pyo3(signature = (dest, *, compact=true))]
    fn copy(&self, py: Python<'_>, dest: &Bound<'_, PyAny>, compact: bool) -> PyResult<()> {
        let dest = crate::options::path_arg(py, "dest", dest)?;
        self.open_core()?.copy(py, &dest, compact)
    }

    /// `psize`, `depth`, `branch_pages`, `leaf_pages`, `overflow_pages`,
    /// `entries`, as py-lmdb's `Environment.stat()` (committed data only).
    fn stat<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let s = self.open_core()?.stat(py)?;
        let d = PyDict::new(py);
        d.set_item("psize", s.psize)?;
        d.set_item("depth", s.depth)?;
        d.set_item("branch_pages", s.branch_pages)?;
        d.set_item("leaf_pages", s.leaf_pages)?;
        d.set_item("overflow_pages", s.overflow_pages)?;
        d.set_item("entries", s.entries)?;
        Ok(d)
    }

    fn __iter__(slf: &Bound<'_, Self>) -> PyResult<StoreIterator> {
        slf.get().open_core()?;
        Ok(StoreIterator::new(
            Arc::clone(&slf.get().core),
            Kind::Keys,
            Bounds::default(),
            false,
        ))
    }

    /// The keys in descending order, as `reversed(dict)` gives them.
    fn __reversed__(slf: &Bound<'_, Self>) -> PyResult<StoreIterator> {
        slf.get().open_core()?;
        Ok(StoreIterator::new(
            Arc::clone(&slf.get().core),
            Kind::Keys,
            Bounds::default(),
            true,
        ))
    }

    /// `(key, value)` pairs in key order, within the bounds.
    ///
    /// >>> for key, value in store.scan(prefix=b"user:"): ...
    #[pyo3(signature = (*, prefix=None, start=None, stop=None, reverse=false))]
    fn scan(
        slf: &Bound<'_, Self>,
        prefix: Option<&Bound<'_, PyAny>>,
        start: Option<&Bound<'_, PyAny>>,
        stop: Option<&Bound<'_, PyAny>>,
        reverse: bool,
    ) -> PyResult<StoreIterator> {
        views::iter_in(&slf.get().core, Kind::Items, prefix, start, stop, reverse)
    }

    /// A live view of the keys, in key order, within optional bounds.
    #[pyo3(signature = (*, prefix=None, start=None, stop=None, reverse=false))]
    fn keys<'py>(
        slf: &Bound<'py, Self>,
        prefix: Option<&Bound<'py, PyAny>>,
        start: Option<&Bound<'py, PyAny>>,
        stop: Option<&Bound<'py, PyAny>>,
        reverse: bool,
    ) -> PyResult<views::KeysView> {
        let view = Self::view(slf, Kind::Keys, prefix, start, stop, reverse)?;
        Ok(views::KeysView(view))
    }

    /// A live view of the values, in key order, within optional bounds.
    #[pyo3(signature = (*, prefix=None, start=None, stop=None, reverse=false))]
    fn values<'py>(
        slf: &Bound<'py, Self>,
        prefix: Option<&Bound<'py, PyAny>>,
        start: Option<&Bound<'py, PyAny>>,
        stop: Option<&Bound<'py, PyAny>>,
        reverse: bool,
    ) -> PyResult<views::ValuesView> {
        let view = Self::view(slf, Kind::Values, prefix, start, stop, reverse)?;
        Ok(views::ValuesView(view))
    }

    /// A live view of the `(key, value)` pairs, in key order.
    #[pyo3(signature = (*, prefix=None, start=None, stop=None, reverse=false))]
    fn items<'py>(
        slf: &Bound<'py, Self>,
        prefix: Option<&Bound<'py, PyAny>>,
        start: Option<&Bound<'py, PyAny>>,
        stop: Option<&Bound<'py, PyAny>>,
        reverse: bool,
    ) -> PyResult<views::ItemsView> {
        let view = Self::view(slf, Kind::Items, prefix, start, stop, reverse)?;
        Ok(views::ItemsView(view))
    }

    /// Remove `key` and return its value (or `default`, else KeyError).
    #[pyo3(signature = (key, *default))]
    fn pop<'py>(
        &self,
        py: Python<'py>,
        key: &Bound<'py, PyAny>,
        default: &Bound<'py, PyTuple>,
    ) -> PyResult<Bound<'py, PyAny>> {
        if default.len() > 1 {
            return Err(StoreError::PopArguments {
                given: default.len() + 1,
            }
            .into());
        }
        let c = self.core()?;
        c.check_writable("pop")?;
        let k = c.keys.to_bytes(key)?;
        let c = self.current(c)?;
        let found = if engine::key_len_ok(k.len()) {
            c.get_value(py, &k)?
        } else {
            None
        };
        match found {
            Some(v) => {
                self.current(c)?.buffer_write(py, &k, None)?;
                Ok(v)
            }
            None => match default.get_item(0) {
                Ok(d) => Ok(d),
                Err(_) => Err(codec::key_error(key)),
            },
        }
    }

    /// Remove and return the `(key, value)` pair with the smallest key, in
    /// one write transaction.
    fn popitem<'py>(&self, py: Python<'py>) -> PyResult<(Bound<'py, PyAny>, Bound<'py, PyAny>)> {
        let c = self.core()?;
        c.check_writable("popitem")?;
        match self.core.pop_first(py, c)? {
            Some(p) => Ok((p.core.keys.decode(py, &p.key)?, p.value)),
            None => Err(StoreError::EmptyStore.into()),
        }
    }

    /// The value of `key`; if missing, store `default` and return it.
    #[pyo3(signature = (key, default=None))]
    fn setdefault<'py>(
        &self,
        py: Python<'py>,
        key: &Bound<'py, PyAny>,
        default: Option<Bound<'py, PyAny>>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let c = self.core()?;
        c.check_writable("setdefault")?;
        let k = c.keys.to_write_bytes(key)?;
        let c = self.current(c)?;
        if let Some(v) = c.get_value(py, &k)? {
            return Ok(v);
        }
        let d = default.unwrap_or_else(|| py.None().into_bound(py));
        let pickled = values::encode(py, &c.serializer, &c.compression, &d, c.protocol, key)?;
        self.current(c)?.buffer_write(py, &k, Some(held(pickled)))?;
        Ok(d)
    }

    /// Like `dict.update`: a mapping, pairs, and (with `key_encoding`)
    /// keywords. Everything is checked and pickled before anything is
    /// buffered.
    #[pyo3(signature = (other=None, /, **kwargs))]
    fn update(
        &self,
        py: Python<'_>,
        other: Option<&Bound<'_, PyAny>>,
        kwargs: Option<&Bound<'_, PyDict>>,
    ) -> PyResult<()> {
        let c = self.core()?;
        c.check_writable("update")?;
        let mut staged: Vec<(Vec<u8>, Bytes)> = Vec::new();
        let mut stage = |k: &Bound<'_, PyAny>, v: &Bound<'_, PyAny>| -> PyResult<()> {
            codec::check_memory(&c.path)?;
            let kb = c.keys.to_write_bytes(k)?.into_owned();
            let pickled = values::encode(py, &c.serializer, &c.compression, v, c.protocol, k)?;
            codec::reserve_more(&mut staged, 1, "items of update")?;
            staged.push((kb, held(pickled)));
            Ok(())
        };
        args::update_pairs(py, other, kwargs, c.keys.encoding.is_some(), &mut stage)?;
        self.current(c)?
            .buffer_writes(py, staged.into_iter().map(|(k, v)| (k, Some(v))))
    }

    /// Remove this store's table (`table=`) and everything in it, buffered
    /// writes included, in one write transaction, and close this store.
    /// Other stores of the table raise `Error` from then on.
    ///
    /// >>> LmdbObjectStore(path, table="old").drop_table()
    fn drop_table(&self, py: Python<'_>) -> PyResult<()> {
        let c = self.core()?;
        c.check_writable("drop_table")?;
        c.drop_table(py)
    }

    /// Delete everything, buffer included, in one write transaction (LMDB
    /// empties the database in place).
    fn clear(&self, py: Python<'_>) -> PyResult<()> {
        let c = self.core()?;
        c.check_writable("clear")?;
        c.clear(py)
    }

    /// A store pickles as its path and options, never its contents, and
    /// reopens when unpickled (for spawn and forkserver workers).
    fn __reduce__<'py>(slf: &Bound<'py, Self>) -> PyResult<Bound<'py, PyTuple>> {
        let py = slf.py();
        let c = slf.get().core()?;
        let reopen = py.import("lmdb_object_store")?.getattr("_reopen")?;
        // The path exactly as opened, even if it is not valid UTF-8.
        use std::os::unix::ffi::OsStrExt;
        let raw = PyBytes::new(py, c.fs_path.as_os_str().as_bytes());
        let path = py.import("os")?.call_method1("fsdecode", (raw,))?;
        let args = PyTuple::new(
            py,
            [
                slf.get_type().into_any(),
                path,
                c.init_kwargs.bind(py).copy()?.into_any(),
            ],
        )?;
        PyTuple::new(py, [reopen, args.into_any()])
    }

    fn __eq__<'py>(
        slf: &Bound<'py, Self>,
        other: &Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, PyAny>> {
        views::mapping_eq(slf.as_any(), &slf.get().core, other)
    }

    fn __len__(&self, py: Python<'_>) -> PyResult<usize> {
        self.open_core()?.len(py)
    }

    fn __enter__(slf: Bound<'_, Self>) -> PyResult<Bound<'_, Self>> {
        slf.get().open_core()?;
        Ok(slf)
    }

    /// Close. If the final commit fails, its error is raised (a note says
    /// what was not saved), unless an exception is already propagating: that
    /// one wins, and the failure is reported on stderr.
    #[pyo3(signature = (exc_type=None, _exc=None, _tb=None))]
    fn __exit__(
        &self,
        py: Python<'_>,
        exc_type: Option<&Bound<'_, PyAny>>,
        _exc: Option<&Bound<'_, PyAny>>,
        _tb: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<bool> {
        if !self.core.is_set() {
            return Ok(false);
        }
        let c = self.core()?;
        let Some(lost) = c.close(py)? else {
            return Ok(false);
        };
        let when = "when leaving the with block";
        if exc_type.is_some_and(|t| !t.is_none()) {
            report(py, &lost.message(py, &c.path, when));
            return Ok(false);
        }
        let note = format!(
            "{} (the final commit {when}); the store is closed, and `pending` still \
             counts them",
            lost.not_saved(&c.path)
        );
        add_note(lost.error.value(py), note);
        Err(lost.error)
    }

    fn __repr__(&self, py: Python<'_>) -> String {
        let name = "LmdbObjectStore";
        let Ok(c) = self.core() else {
            return format!("<{name} (not initialised)>");
        };
        if c.is_closing() {
            return format!("<{name} path={:?} closed>", c.path);
        }
        let state = if c.readonly { "open, readonly" } else { "open" };
        match c.len(py) {
            Ok(n) => format!("<{name} path={:?} entries={n} {state}>", c.path),
            Err(_) => format!("<{name} path={:?} {state}>", c.path),
        }
    }

    /// Buffered entries not yet committed.
    #[getter]
    fn pending(&self, py: Python<'_>) -> PyResult<usize> {
        self.core()?.pending(py)
    }

    #[getter]
    fn path(&self) -> PyResult<String> {
        Ok(self.core()?.path.clone())
    }

    /// The table this store uses (`table=`); `None` for the main one.
    #[getter]
    fn table(&self) -> PyResult<Option<String>> {
        Ok(self.core()?.table_name().map(str::to_owned))
    }

    #[getter]
    fn readonly(&self) -> PyResult<bool> {
        Ok(self.core()?.readonly)
    }

    #[getter]
    fn closed(&self) -> PyResult<bool> {
        Ok(self.core()?.is_closing())
    }

    #[getter]
    fn batch_size(&self) -> PyResult<usize> {
        Ok(self.core()?.batch_size)
    }

    #[getter]
    fn autoflush_on_read(&self) -> PyResult<bool> {
        Ok(self.core()?.autoflush_on_read)
    }

    #[getter]
    fn max_map_size(&self) -> PyResult<Option<usize>> {
        Ok(self.core()?.max_map_size)
    }

    #[getter]
    fn max_buffer_bytes(&self) -> PyResult<usize> {
        Ok(self.core()?.max_buffer_bytes)
    }

    #[getter]
    fn pickle_protocol(&self) -> PyResult<i32> {
        Ok(self.core()?.protocol)
    }

    /// The serializer's name, or the object given as `serializer=`.
    #[getter]
    fn serializer<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        Ok(self.core()?.serializer.to_object(py))
    }

    #[getter]
    fn key_encoding(&self) -> PyResult<Option<String>> {
        Ok(self.core()?.keys.encoding.clone())
    }

    /// `'zstd'`, `'lz4'`, or None (values are written as they are).
    #[getter]
    fn compression(&self) -> PyResult<Option<&'static str>> {
        Ok(self.core()?.compression.name())
    }

    /// Values at least this many bytes (encoded) are compressed.
    #[getter]
    fn compression_threshold(&self) -> PyResult<usize> {
        Ok(self.core()?.compression.threshold())
    }
}

impl LmdbObjectStore {
    /// A view's store and range; a bad bound fails here, at the call.
    fn view(
        slf: &Bound<'_, Self>,
        kind: Kind,
        prefix: Option<&Bound<'_, PyAny>>,
        start: Option<&Bound<'_, PyAny>>,
        stop: Option<&Bound<'_, PyAny>>,
        reverse: bool,
    ) -> PyResult<View> {
        slf.get().open_core()?.bounds(prefix, start, stop)?;
        Ok(View::new(
            slf.as_any(),
            Arc::clone(&slf.get().core),
            kind,
            prefix,
            start,
            stop,
            reverse,
        ))
    }
}
