//! The live views `keys()`, `values()` and `items()` return, and `==` of a
//! store against any mapping: Rust classes that read the store directly.
//!
//! `lmdb_object_store/__init__.py` registers the classes with
//! `collections.abc.KeysView`, `ValuesView` and `ItemsView`. Registering
//! gives no mixin methods, so what those mixins (and `Set`, `MappingView`)
//! define is written out here, with the same results and the same errors:
//! set operations accept any iterable and return a `set`, comparisons
//! accept any `collections.abc.Set`, and anything else is `NotImplemented`.

use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::gc::PyVisit;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyBool, PyDict, PyGenericAlias, PyIterator, PySet, PyTuple, PyType};
use pyo3::PyTraverseError;

use std::sync::Arc;

use crate::codec;
use crate::core::CoreHandle;
use crate::iter::{Kind, StoreIterator};

/// A store and a key range, as given to `keys()`, `values()` or `items()`.
///
/// The bounds are kept as given: `repr` shows them, and every operation
/// parses them again, so a bytearray bound changed later moves the range.
pub struct View {
    /// The store object itself, for `repr`, pickling and the collector.
    store: Py<PyAny>,
    /// What every read goes through.
    core: Arc<CoreHandle>,
    kind: Kind,
    prefix: Option<Py<PyAny>>,
    start: Option<Py<PyAny>>,
    stop: Option<Py<PyAny>>,
    reverse: bool,
}

/// Whether `obj` is an instance of `collections.abc.<name>`, the class
/// cached in `cell`. An ABC, not a type check: the mixins accept whatever
/// is registered with, or looks like, the ABC.
fn is_abc(cell: &PyOnceLock<Py<PyType>>, name: &str, obj: &Bound<'_, PyAny>) -> PyResult<bool> {
    obj.is_instance(cell.import(obj.py(), "collections.abc", name)?)
}

static ITERABLE: PyOnceLock<Py<PyType>> = PyOnceLock::new();
static SET: PyOnceLock<Py<PyType>> = PyOnceLock::new();
static MAPPING: PyOnceLock<Py<PyType>> = PyOnceLock::new();
static METHODCALLER: PyOnceLock<Py<PyType>> = PyOnceLock::new();

fn is_iterable(obj: &Bound<'_, PyAny>) -> PyResult<bool> {
    is_abc(&ITERABLE, "Iterable", obj)
}

fn is_set(obj: &Bound<'_, PyAny>) -> PyResult<bool> {
    is_abc(&SET, "Set", obj)
}

fn not_implemented(py: Python<'_>) -> Bound<'_, PyAny> {
    py.NotImplemented().into_bound(py)
}

fn answer(py: Python<'_>, yes: bool) -> Bound<'_, PyAny> {
    PyBool::new(py, yes).to_owned().into_any()
}

/// `other` as the mixins' binary operators take it: a `Set` as it is, any
/// other iterable as a `set` of its items, anything else `None`
/// (`NotImplemented`).
fn as_set<'py>(other: &Bound<'py, PyAny>) -> PyResult<Option<Bound<'py, PyAny>>> {
    if is_set(other)? {
        return Ok(Some(other.clone()));
    }
    if !is_iterable(other)? {
        return Ok(None);
    }
    Ok(Some(other.py().get_type::<PySet>().call1((other,))?))
}

/// `key, value = item`, or `None` where that statement raises `TypeError`
/// or `ValueError` (not a pair): such an item is in no items view.
fn unpack_pair<'py>(
    item: &Bound<'py, PyAny>,
) -> PyResult<Option<(Bound<'py, PyAny>, Bound<'py, PyAny>)>> {
    let py = item.py();
    if let Ok(tuple) = item.cast_exact::<PyTuple>() {
        if tuple.len() != 2 {
            return Ok(None);
        }
        return Ok(Some((tuple.get_item(0)?, tuple.get_item(1)?)));
    }
    let not_a_pair = |e: PyErr| {
        if e.is_instance_of::<PyTypeError>(py) || e.is_instance_of::<PyValueError>(py) {
            Ok(None)
        } else {
            Err(e)
        }
    };
    let mut items = match item.try_iter() {
        Ok(items) => items,
        Err(e) => return not_a_pair(e),
    };
    let mut next = || items.next().transpose();
    let key = match next() {
        Ok(Some(key)) => key,
        Ok(None) => return Ok(None),
        Err(e) => return not_a_pair(e),
    };
    let value = match next() {
        Ok(Some(value)) => value,
        Ok(None) => return Ok(None),
        Err(e) => return not_a_pair(e),
    };
    match next() {
        Ok(None) => Ok(Some((key, value))),
        Ok(Some(_)) => Ok(None),
        Err(e) => not_a_pair(e),
    }
}

/// `found is value or found == value`, as dicts and the mixins compare
/// values.
fn same_value(found: &Bound<'_, PyAny>, value: &Bound<'_, PyAny>) -> PyResult<bool> {
    Ok(found.is(value) || found.eq(value)?)
}

impl View {
    pub(crate) fn new(
        store: &Bound<'_, PyAny>,
        core: Arc<CoreHandle>,
        kind: Kind,
        prefix: Option<&Bound<'_, PyAny>>,
        start: Option<&Bound<'_, PyAny>>,
        stop: Option<&Bound<'_, PyAny>>,
        reverse: bool,
    ) -> Self {
        let keep = |b: Option<&Bound<'_, PyAny>>| b.map(|b| b.clone().unbind());
        View {
            store: store.clone().unbind(),
            core,
            kind,
            prefix: keep(prefix),
            start: keep(start),
            stop: keep(stop),
            reverse,
        }
    }

    /// The objects a view holds, for the garbage collector: a store kept
    /// on itself through a view (`self.keys = self.keys()` in a subclass)
    /// is then a cycle it can free.
    fn traverse(&self, visit: &PyVisit<'_>) -> Result<(), PyTraverseError> {
        visit.call(&self.store)?;
        visit.call(&self.prefix)?;
        visit.call(&self.start)?;
        visit.call(&self.stop)
    }

    fn store<'py>(&self, py: Python<'py>) -> &Bound<'py, PyAny> {
        self.store.bind(py)
    }

    /// The bounds as given, `(prefix, start, stop)`.
    #[allow(clippy::type_complexity)]
    fn bounds<'a, 'py>(
        &'a self,
        py: Python<'py>,
    ) -> (
        Option<&'a Bound<'py, PyAny>>,
        Option<&'a Bound<'py, PyAny>>,
        Option<&'a Bound<'py, PyAny>>,
    ) {
        let bind = |b: &'a Option<Py<PyAny>>| b.as_ref().map(|b| b.bind(py));
        (bind(&self.prefix), bind(&self.start), bind(&self.stop))
    }

    fn len(&self, py: Python<'_>) -> PyResult<usize> {
        let (prefix, start, stop) = self.bounds(py);
        count_in(&self.core, py, prefix, start, stop)
    }

    /// A fresh iterator, in the view's order or (`backwards`) the other way.
    fn iter(&self, py: Python<'_>, backwards: bool) -> PyResult<StoreIterator> {
        let (prefix, start, stop) = self.bounds(py);
        let reverse = self.reverse != backwards;
        iter_in(&self.core, self.kind, prefix, start, stop, reverse)
    }

    fn iterate<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyIterator>> {
        Bound::new(py, self.iter(py, false)?)?.into_any().try_iter()
    }

    fn contains(&self, py: Python<'_>, x: &Bound<'_, PyAny>) -> PyResult<bool> {
        let (prefix, start, stop) = self.bounds(py);
        let core = &self.core;
        match self.kind {
            Kind::Keys => contains_in(core, py, x, prefix, start, stop),
            Kind::Items => {
                let Some((key, value)) = unpack_pair(x)? else {
                    return Ok(false);
                };
                // Membership first, which never commits the buffer; the
                // value is read (as `get` reads it) only for a key that is there.
                if !contains_in(core, py, &key, prefix, start, stop)? {
                    return Ok(false);
                }
                match value_of(core, py, &key)? {
                    Some(found) => same_value(&found, &value),
                    None => Ok(false),
                }
            }
            Kind::Values => {
                for v in self.iterate(py)? {
                    if same_value(&v?, x)? {
                        return Ok(true);
                    }
                }
                Ok(false)
            }
        }
    }

    /// `KeysView(<store repr>, prefix=b'a', reverse=True)`: the bounds that
    /// were given, as given.
    fn repr(&self, py: Python<'_>) -> PyResult<String> {
        let class = match self.kind {
            Kind::Keys => "KeysView",
            Kind::Values => "ValuesView",
            Kind::Items => "ItemsView",
        };
        let mut out = format!("{class}({}", self.store(py).repr()?);
        let (prefix, start, stop) = self.bounds(py);
        for (name, given) in [("prefix", prefix), ("start", start), ("stop", stop)] {
            if let Some(given) = given {
                out.push_str(&format!(", {name}={}", given.repr()?));
            }
        }
        if self.reverse {
            out.push_str(", reverse=True");
        }
        out.push(')');
        Ok(out)
    }

    /// Pickled as the call that makes it again on the unpickled store:
    /// `operator.methodcaller("keys", prefix=..., ...)(store)`.
    fn reduce<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyTuple>> {
        let method = match self.kind {
            Kind::Keys => "keys",
            Kind::Values => "values",
            Kind::Items => "items",
        };
        let (prefix, start, stop) = self.bounds(py);
        let kwargs = PyDict::new(py);
        kwargs.set_item("prefix", prefix)?;
        kwargs.set_item("start", start)?;
        kwargs.set_item("stop", stop)?;
        kwargs.set_item("reverse", self.reverse)?;
        let caller = METHODCALLER
            .import(py, "operator", "methodcaller")?
            .call((method,), Some(&kwargs))?;
        PyTuple::new(py, [caller, PyTuple::new(py, [self.store(py)])?.into_any()])
    }

    // The set operations of `collections.abc.Set`, for keys and items.

    fn and<'py>(&self, other: &Bound<'py, PyAny>) -> PyResult<Bound<'py, PyAny>> {
        let py = other.py();
        if !is_iterable(other)? {
            return Ok(not_implemented(py));
        }
        let out = PySet::empty(py)?;
        for x in other.try_iter()? {
            let x = x?;
            if self.contains(py, &x)? {
                out.add(x)?;
            }
        }
        Ok(out.into_any())
    }

    fn or<'py>(&self, other: &Bound<'py, PyAny>) -> PyResult<Bound<'py, PyAny>> {
        let py = other.py();
        if !is_iterable(other)? {
            return Ok(not_implemented(py));
        }
        let out = PySet::empty(py)?;
        for x in self.iterate(py)? {
            out.add(x?)?;
        }
        for x in other.try_iter()? {
            out.add(x?)?;
        }
        Ok(out.into_any())
    }

    /// `self - other`.
    fn sub<'py>(&self, other: &Bound<'py, PyAny>) -> PyResult<Bound<'py, PyAny>> {
        let py = other.py();
        let Some(other) = as_set(other)? else {
            return Ok(not_implemented(py));
        };
        let out = PySet::empty(py)?;
        for x in self.iterate(py)? {
            let x = x?;
            if !other.contains(&x)? {
                out.add(x)?;
            }
        }
        Ok(out.into_any())
    }

    /// `other - self`.
    fn rsub<'py>(&self, other: &Bound<'py, PyAny>) -> PyResult<Bound<'py, PyAny>> {
        let py = other.py();
        let Some(other) = as_set(other)? else {
            return Ok(not_implemented(py));
        };
        let out = PySet::empty(py)?;
        for x in other.try_iter()? {
            let x = x?;
            if !self.contains(py, &x)? {
                out.add(x)?;
            }
        }
        Ok(out.into_any())
    }

    /// `(self - other) | (other - self)`, each through the operators, as
    /// the mixin computes it (either way round).
    fn xor<'py>(
        &self,
        slf: &Bound<'py, PyAny>,
        other: &Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let Some(other) = as_set(other)? else {
            return Ok(not_implemented(other.py()));
        };
        let left = slf.sub(&other)?;
        let right = other.sub(slf)?;
        left.bitor(right)
    }

    fn isdisjoint(&self, other: &Bound<'_, PyAny>) -> PyResult<bool> {
        for x in other.try_iter()? {
            if self.contains(other.py(), &x?)? {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// Every item of this view is in `other`.
    fn all_in(&self, other: &Bound<'_, PyAny>) -> PyResult<bool> {
        for x in self.iterate(other.py())? {
            if !other.contains(x?)? {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// Every item of `other` is in this view.
    fn holds_all(&self, other: &Bound<'_, PyAny>) -> PyResult<bool> {
        for x in other.try_iter()? {
            if !self.contains(other.py(), &x?)? {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// A comparison with a `Set`: `sizes` says from the two lengths whether
    /// it can hold, `subset` whether it is decided by this view being a
    /// subset of `other` (else by `other` being a subset of this view).
    fn compare<'py>(
        &self,
        other: &Bound<'py, PyAny>,
        sizes: fn(usize, usize) -> bool,
        subset: bool,
    ) -> PyResult<Bound<'py, PyAny>> {
        let py = other.py();
        if !is_set(other)? {
            return Ok(not_implemented(py));
        }
        let mine = self.len(py)?;
        if !sizes(mine, other.len()?) {
            return Ok(answer(py, false));
        }
        let holds = if subset {
            self.all_in(other)?
        } else {
            self.holds_all(other)?
        };
        Ok(answer(py, holds))
    }

    /// `not self == other`, or `NotImplemented` as `==` is.
    fn ne<'py>(&self, other: &Bound<'py, PyAny>) -> PyResult<Bound<'py, PyAny>> {
        let py = other.py();
        let eq = self.compare(other, |a, b| a == b, true)?;
        if eq.is(not_implemented(py)) {
            return Ok(eq);
        }
        Ok(answer(py, !eq.is_truthy()?))
    }
}

/// The methods every view has: those of `collections.abc.MappingView`
/// (`len`, `repr`, `View[...]`), iteration both ways, membership,
/// pickling and the garbage collector's traversal (a view never changes,
/// so it has nothing to clear), then the class's own (`$extra`).
macro_rules! view_methods {
    ($class:ident { $($extra:tt)* }) => {
        #[pymethods]
        impl $class {
            fn __len__(&self, py: Python<'_>) -> PyResult<usize> {
                self.0.len(py)
            }

            fn __traverse__(&self, visit: PyVisit<'_>) -> Result<(), PyTraverseError> {
                self.0.traverse(&visit)
            }

            fn __iter__(&self, py: Python<'_>) -> PyResult<StoreIterator> {
                self.0.iter(py, false)
            }

            fn __reversed__(&self, py: Python<'_>) -> PyResult<StoreIterator> {
                self.0.iter(py, true)
            }

            fn __contains__(&self, py: Python<'_>, x: &Bound<'_, PyAny>) -> PyResult<bool> {
                self.0.contains(py, x)
            }

            fn __repr__(&self, py: Python<'_>) -> PyResult<String> {
                self.0.repr(py)
            }

            fn __reduce__<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyTuple>> {
                self.0.reduce(py)
            }

            #[classmethod]
            fn __class_getitem__<'py>(
                cls: &Bound<'py, PyType>,
                item: &Bound<'py, PyAny>,
            ) -> PyResult<Bound<'py, PyGenericAlias>> {
                PyGenericAlias::new(cls.py(), cls.as_any(), item)
            }

            $($extra)*
        }
    };
}

/// Keys and items views are sets: `collections.abc.Set`'s operators,
/// `isdisjoint` and comparisons, and (as `Set` defines `__eq__`) no hash.
macro_rules! set_view_methods {
    ($class:ident) => {
        view_methods!($class {
            #[classattr]
            const __hash__: Option<Py<PyAny>> = None;

            fn __and__<'py>(&self, other: &Bound<'py, PyAny>) -> PyResult<Bound<'py, PyAny>> {
                self.0.and(other)
            }

            fn __rand__<'py>(&self, other: &Bound<'py, PyAny>) -> PyResult<Bound<'py, PyAny>> {
                self.0.and(other)
            }

            fn __or__<'py>(&self, other: &Bound<'py, PyAny>) -> PyResult<Bound<'py, PyAny>> {
                self.0.or(other)
            }

            fn __ror__<'py>(&self, other: &Bound<'py, PyAny>) -> PyResult<Bound<'py, PyAny>> {
                self.0.or(other)
            }

            fn __sub__<'py>(&self, other: &Bound<'py, PyAny>) -> PyResult<Bound<'py, PyAny>> {
                self.0.sub(other)
            }

            fn __rsub__<'py>(&self, other: &Bound<'py, PyAny>) -> PyResult<Bound<'py, PyAny>> {
                self.0.rsub(other)
            }

            fn __xor__<'py>(
                slf: &Bound<'py, Self>,
                other: &Bound<'py, PyAny>,
            ) -> PyResult<Bound<'py, PyAny>> {
                slf.get().0.xor(slf.as_any(), other)
            }

            fn __rxor__<'py>(
                slf: &Bound<'py, Self>,
                other: &Bound<'py, PyAny>,
            ) -> PyResult<Bound<'py, PyAny>> {
                slf.get().0.xor(slf.as_any(), other)
            }

            fn isdisjoint(&self, other: &Bound<'_, PyAny>) -> PyResult<bool> {
                self.0.isdisjoint(other)
            }

            fn __lt__<'py>(&self, other: &Bound<'py, PyAny>) -> PyResult<Bound<'py, PyAny>> {
                self.0.compare(other, |a, b| a < b, true)
            }

            fn __le__<'py>(&self, other: &Bound<'py, PyAny>) -> PyResult<Bound<'py, PyAny>> {
                self.0.compare(other, |a, b| a <= b, true)
            }

            fn __eq__<'py>(&self, other: &Bound<'py, PyAny>) -> PyResult<Bound<'py, PyAny>> {
                self.0.compare(other, |a, b| a == b, true)
            }

            fn __ne__<'py>(&self, other: &Bound<'py, PyAny>) -> PyResult<Bound<'py, PyAny>> {
                self.0.ne(other)
            }

            fn __gt__<'py>(&self, other: &Bound<'py, PyAny>) -> PyResult<Bound<'py, PyAny>> {
                self.0.compare(other, |a, b| a > b, false)
            }

            fn __ge__<'py>(&self, other: &Bound<'py, PyAny>) -> PyResult<Bound<'py, PyAny>> {
                self.0.compare(other, |a, b| a >= b, false)
            }
        });
    };
}

/// A live view of a store's keys within a range, in key order.
#[pyclass(module = "lmdb_object_store._native", frozen)]
pub struct KeysView(pub(crate) View);

/// A live view of a store's values within a range, in key order.
#[pyclass(module = "lmdb_object_store._native", frozen)]
pub struct ValuesView(pub(crate) View);

/// A live view of a store's `(key, value)` pairs within a range, in key
/// order.
#[pyclass(module = "lmdb_object_store._native", frozen)]
pub struct ItemsView(pub(crate) View);

set_view_methods!(KeysView);
view_methods!(ValuesView {});
set_view_methods!(ItemsView);

/// `store == other` for any mapping, as `dict` compares: the same length,
/// and every `(key, value)` of the store found in `other`.
pub(crate) fn mapping_eq<'py>(
    store: &Bound<'py, PyAny>,
    core: &Arc<CoreHandle>,
    other: &Bound<'py, PyAny>,
) -> PyResult<Bound<'py, PyAny>> {
    let py = store.py();
    let dict = other.cast_exact::<PyDict>().ok();
    if dict.is_none() && !is_abc(&MAPPING, "Mapping", other)? {
        return Ok(not_implemented(py));
    }
    if count_in(core, py, None, None, None)? != other.len()? {
        return Ok(answer(py, false));
    }
    let items = iter_in(core, Kind::Items, None, None, None, false)?;
    // `other.get(key, missing)` on anything but a plain dict, whose `get`
    // nothing can override.
    let missing = py.get_type::<PyAny>().call0()?;
    let get = pyo3::intern!(py, "get");
    for item in Bound::new(py, items)?.into_any().try_iter()? {
        let item = item?;
        let pair = item.cast::<PyTuple>()?;
        let (key, value) = (pair.get_item(0)?, pair.get_item(1)?);
        let found = match dict {
            Some(dict) => dict.get_item(&key)?,
            None => Some(other.call_method1(get, (&key, &missing))?).filter(|f| !f.is(&missing)),
        };
        match found {
            Some(found) if same_value(&found, &value)? => {}
            _ => return Ok(answer(py, false)),
        }
    }
    Ok(answer(py, true))
}

// The reads of a key range that views and `scan()` make. Each takes the
// range as it was given to `keys()`, `values()` or `items()` and parses it at
// every call, so a bytearray bound changed later moves the range.

/// An iterator of keys, values or items within the bounds.
pub(crate) fn iter_in(
    core: &Arc<CoreHandle>,
    kind: Kind,
    prefix: Option<&Bound<'_, PyAny>>,
    start: Option<&Bound<'_, PyAny>>,
    stop: Option<&Bound<'_, PyAny>>,
    reverse: bool,
) -> PyResult<StoreIterator> {
    let bounds = core.open_core()?.bounds(prefix, start, stop)?;
    Ok(StoreIterator::new(Arc::clone(core), kind, bounds, reverse))
}

/// Number of keys within the bounds.
fn count_in(
    core: &CoreHandle,
    py: Python<'_>,
    prefix: Option<&Bound<'_, PyAny>>,
    start: Option<&Bound<'_, PyAny>>,
    stop: Option<&Bound<'_, PyAny>>,
) -> PyResult<usize> {
    let c = core.open_core()?;
    let bounds = c.bounds(prefix, start, stop)?;
    core.current(c)?.count(py, &bounds)
}

/// Whether `key` is within the bounds and in the store; a key the store
/// cannot hold is not in it.
fn contains_in(
    core: &CoreHandle,
    py: Python<'_>,
    key: &Bound<'_, PyAny>,
    prefix: Option<&Bound<'_, PyAny>>,
    start: Option<&Bound<'_, PyAny>>,
    stop: Option<&Bound<'_, PyAny>>,
) -> PyResult<bool> {
    let c = core.open_core()?;
    let bounds = c.bounds(prefix, start, stop)?;
    let k = match c.keys.to_bytes(key) {
        Ok(k) => k,
        // Ctrl-C from a key codec is not an answer.
        Err(e) if codec::passes_through(py, &e) => return Err(e),
        Err(_) => return Ok(false),
    };
    Ok(bounds.contains(&k) && core.current(c)?.contains(py, &k, false)?)
}

/// The value of `key`, as `get` reads it, or `None`.
fn value_of<'py>(
    core: &CoreHandle,
    py: Python<'py>,
    key: &Bound<'py, PyAny>,
) -> PyResult<Option<Bound<'py, PyAny>>> {
    let c = core.open_core()?;
    let k = c.keys.to_bytes(key)?;
    core.current(c)?.get_value(py, &k)
}
