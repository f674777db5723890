//! Argument shapes the store and its transactions take alike: a `(key,
//! value)` pair as `dict.update` takes one, and the pairs of `update()`'s
//! arguments (a mapping, an iterable of pairs, keywords).

use pyo3::prelude::*;
use pyo3::types::{PyDict, PyTuple};

use crate::errors::{passes_through, StoreError};

/// A `(key, value)` item as `dict.update` takes it: any iterable of exactly
/// two items (a tuple, a list, ...). `Ok(Err(why))` says what is wrong with
/// its shape; an exception raised while iterating it is passed on as it is.
pub type Pair<'py> = (Bound<'py, PyAny>, Bound<'py, PyAny>);

pub fn key_value_pair<'py>(item: &Bound<'py, PyAny>) -> PyResult<Result<Pair<'py>, String>> {
    if let Ok(t) = item.cast::<PyTuple>() {
        if t.len() == 2 {
            return Ok(Ok((t.get_item(0)?, t.get_item(1)?)));
        }
        return Ok(Err(format!("has length {}; 2 is required", t.len())));
    }
    let it = match item.try_iter() {
        Ok(it) => it,
        // `__iter__` is user code: Ctrl-C in it is not a bad item.
        Err(e) if passes_through(item.py(), &e) => return Err(e),
        Err(_) => return Ok(Err("is not a (key, value) pair".into())),
    };
    let mut two = Vec::with_capacity(2);
    for x in it {
        let x = x?;
        if two.len() == 2 {
            return Ok(Err("has more than 2 items; 2 are required".into()));
        }
        two.push(x);
    }
    let n = two.len();
    let mut two = two.into_iter();
    Ok(match (two.next(), two.next()) {
        (Some(k), Some(v)) => Ok((k, v)),
        _ => Err(format!("has length {n}; 2 is required")),
    })
}

/// What `update_pairs` calls with each pair.
pub type EachPair<'a, 'py> = dyn FnMut(&Bound<'py, PyAny>, &Bound<'py, PyAny>) -> PyResult<()> + 'a;

/// Call `each` with every `(key, value)` of `update(other, **kwargs)`'s
/// arguments, in order: `other`'s keys and items when it has `keys()`, else
/// its items as pairs; then the keywords, which need a key encoding
/// (`has_encoding`).
pub fn update_pairs<'py>(
    py: Python<'py>,
    other: Option<&Bound<'py, PyAny>>,
    kwargs: Option<&Bound<'py, PyDict>>,
    has_encoding: bool,
    each: &mut EachPair<'_, 'py>,
) -> PyResult<()> {
    if let Some(o) = other {
        if o.hasattr(pyo3::intern!(py, "keys"))? {
            for k in o.call_method0("keys")?.try_iter()? {
                let k = k?;
                let v = o.get_item(&k)?;
                each(&k, &v)?;
            }
        } else {
            for (i, pair) in o.try_iter()?.enumerate() {
                let pair = pair?;
                let (k, v) = key_value_pair(&pair)?
                    .map_err(|why| PyErr::from(StoreError::UpdateElement { index: i, why }))?;
                each(&k, &v)?;
            }
        }
    }
    if let Some(kw) = kwargs {
        if !kw.is_empty() && !has_encoding {
            return Err(StoreError::UpdateKeywordsWithoutEncoding.into());
        }
        for (k, v) in kw.iter() {
            each(&k, &v)?;
        }
    }
    Ok(())
}
