//! Key normalisation and validation.
//!
//! A key reaches LMDB as bytes. `bytes` are borrowed as they are; `bytearray`
//! and C-contiguous `memoryview`s are copied (they are mutable); `str` is
//! accepted only when the store has a `key_encoding`, normalised first when
//! `str_normalize` is set, and encoded (UTF-8 in Rust, other codecs through
//! Python's `str.encode`).

use std::borrow::Cow;

use pyo3::prelude::*;
use pyo3::types::{PyByteArray, PyBytes, PyMemoryView, PyString};
use unicode_normalization::UnicodeNormalization;

use engine::key_len_ok;

use crate::errors::StoreError;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NormalForm {
    Nfc,
    Nfd,
    Nfkc,
    Nfkd,
}

impl NormalForm {
    pub fn parse(name: &str) -> Option<Self> {
        match name {
            "NFC" => Some(Self::Nfc),
            "NFD" => Some(Self::Nfd),
            "NFKC" => Some(Self::Nfkc),
            "NFKD" => Some(Self::Nfkd),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::Nfc => "NFC",
            Self::Nfd => "NFD",
            Self::Nfkc => "NFKC",
            Self::Nfkd => "NFKD",
        }
    }

    /// The normalised text, borrowed when it is already in this form.
    pub fn apply(self, s: &str) -> Cow<'_, str> {
        use unicode_normalization::IsNormalized::Yes;
        use unicode_normalization::{is_nfc_quick, is_nfd_quick, is_nfkc_quick, is_nfkd_quick};
        let quick = match self {
            Self::Nfc => is_nfc_quick(s.chars()),
            Self::Nfd => is_nfd_quick(s.chars()),
            Self::Nfkc => is_nfkc_quick(s.chars()),
            Self::Nfkd => is_nfkd_quick(s.chars()),
        };
        if quick == Yes {
            return Cow::Borrowed(s);
        }
        Cow::Owned(match self {
            Self::Nfc => s.nfc().collect(),
            Self::Nfd => s.nfd().collect(),
            Self::Nfkc => s.nfkc().collect(),
            Self::Nfkd => s.nfkd().collect(),
        })
    }
}

/// How a store turns Python keys into bytes and back.
#[derive(Clone, Debug)]
pub struct KeyPolicy {
    pub encoding: Option<String>,
    pub errors: String,
    pub normalize: Option<NormalForm>,
    /// `encoding` is UTF-8 with strict errors: encode and decode in Rust.
    utf8_strict: bool,
}

fn is_utf8_name(enc: &str) -> bool {
    let e = enc.to_ascii_lowercase().replace(['-', '_'], "");
    e == "utf8" || e == "u8" || e == "utf" || e == "cp65001"
}

impl KeyPolicy {
    pub fn new(
        py: Python<'_>,
        encoding: Option<String>,
        errors: String,
        normalize: Option<String>,
    ) -> PyResult<Self> {
        if let Some(enc) = &encoding {
            // Fail at open, not at the first key, on a codec Python lacks.
            py.import("codecs")?
                .call_method1("lookup", (enc.as_str(),))?;
        }
        let normalize = match normalize {
            None => None,
            Some(name) => Some(NormalForm::parse(&name).ok_or_else(|| {
                PyErr::from(StoreError::BadNormalForm {
                    given: name.clone(),
                })
            })?),
        };
        let utf8_strict = encoding.as_deref().is_some_and(is_utf8_name) && errors == "strict";
        Ok(Self {
            encoding,
            errors,
            normalize,
            utf8_strict,
        })
    }

    /// The key's bytes (borrowed where possible), without the size check.
    pub fn to_bytes<'a>(&self, key: &'a Bound<'_, PyAny>) -> PyResult<Cow<'a, [u8]>> {
        if let Ok(b) = key.cast::<PyBytes>() {
            return Ok(Cow::Borrowed(b.as_bytes()));
        }
        if let Ok(s) = key.cast::<PyString>() {
            return self.encode_str(s);
        }
        if key.is_none() {
            return Err(StoreError::NoneKey.into());
        }
        if let Ok(ba) = key.cast::<PyByteArray>() {
            return Ok(Cow::Owned(ba.to_vec()));
        }
        if key.cast::<PyMemoryView>().is_ok() {
            // Any C-contiguous view, whatever its item format: its raw bytes,
            // as bytes(view) gives them.
            if !key
                .getattr(pyo3::intern!(key.py(), "c_contiguous"))?
                .is_truthy()?
            {
                return Err(StoreError::KeyNotContiguous.into());
            }
            let raw = key.call_method0(pyo3::intern!(key.py(), "tobytes"))?;
            return Ok(Cow::Owned(raw.cast::<PyBytes>()?.as_bytes().to_vec()));
        }
        let got = key
            .get_type()
            .name()
            .map(|n| n.to_string())
            .unwrap_or_else(|_| "?".into());
        Err(StoreError::KeyType {
            got,
            or_str: self.encoding.is_some(),
        }
        .into())
    }

    /// The key's bytes, checked against LMDB's size limit (for writes).
    pub fn to_write_bytes<'a>(&self, key: &'a Bound<'_, PyAny>) -> PyResult<Cow<'a, [u8]>> {
        let bytes = self.to_bytes(key)?;
        if !key_len_ok(bytes.len()) {
            return Err(StoreError::KeySize {
                shown: crate::codec::display_key(key),
                len: bytes.len(),
            }
            .into());
        }
        Ok(bytes)
    }

    fn encode_str<'a>(&self, s: &'a Bound<'_, PyString>) -> PyResult<Cow<'a, [u8]>> {
        let Some(encoding) = &self.encoding else {
            return Err(StoreError::StrKeyWithoutEncoding.into());
        };
        if self.utf8_strict {
            // `to_str` fails on lone surrogates, exactly as strict UTF-8 does.
            let text: &'a str = match s.to_str() {
                Ok(t) => t,
                Err(_) => return self.encode_with_python(s, encoding),
            };
            return Ok(match self.normalize {
                None => Cow::Borrowed(text.as_bytes()),
                Some(form) => match form.apply(text) {
                    Cow::Borrowed(t) => Cow::Borrowed(t.as_bytes()),
                    Cow::Owned(t) => Cow::Owned(t.into_bytes()),
                },
            });
        }
        self.encode_with_python(s, encoding)
    }

    fn encode_with_python<'a>(
        &self,
        s: &Bound<'_, PyString>,
        encoding: &str,
    ) -> PyResult<Cow<'a, [u8]>> {
        let py = s.py();
        let text = match (self.normalize, s.to_str()) {
            (Some(form), Ok(t)) => crate::codec::new_str(py, &form.apply(t))?,
            (Some(form), Err(_)) => {
                // Lone surrogates: let Python's unicodedata normalise.
                let ud = py.import("unicodedata")?;
                ud.call_method1("normalize", (form.name(), s))?
                    .cast_into::<PyString>()?
            }
            (None, _) => s.clone(),
        };
        // `str.encode`, not `text.encode`: a str subclass's own `encode` must
        // not decide the key (the UTF-8 path above never calls it either).
        let encoded = py
            .get_type::<PyString>()
            .call_method1("encode", (text, encoding, self.errors.as_str()))?;
        let bytes = encoded.cast::<PyBytes>().map_err(|_| {
            PyErr::from(StoreError::EncodingNotBytes {
                encoding: encoding.to_string(),
            })
        })?;
        Ok(Cow::Owned(bytes.as_bytes().to_vec()))
    }

    /// Stored key bytes as the caller sees them: `str` with an encoding.
    pub fn decode<'py>(&self, py: Python<'py>, key: &[u8]) -> PyResult<Bound<'py, PyAny>> {
        match &self.encoding {
            None => Ok(crate::codec::new_bytes(py, key)?.into_any()),
            Some(enc) => {
                if self.utf8_strict {
                    if let Ok(t) = std::str::from_utf8(key) {
                        return Ok(crate::codec::new_str(py, t)?.into_any());
                    }
                }
                crate::codec::new_bytes(py, key)?
                    .call_method1("decode", (enc.as_str(), self.errors.as_str()))
            }
        }
    }

    /// `get_many`'s choice of how to decode: `decode_not_found` follows
    /// `decode_keys` unless given; either needs a key encoding.
    pub fn many_options(
        &self,
        decode_keys: bool,
        decode_not_found: Option<bool>,
    ) -> PyResult<(bool, bool)> {
        if (decode_keys || decode_not_found == Some(true)) && self.encoding.is_none() {
            return Err(StoreError::DecodeWithoutEncoding.into());
        }
        Ok((decode_keys, decode_not_found.unwrap_or(decode_keys)))
    }

    /// A key of `get_many`'s found dict: decoded with `decode_keys`, else the
    /// caller's own object when it is already the stored bytes (its hash is
    /// cached), else new bytes.
    pub fn found_key<'py>(
        &self,
        py: Python<'py>,
        given: &Bound<'py, PyAny>,
        stored: &[u8],
        decode_keys: bool,
    ) -> PyResult<Bound<'py, PyAny>> {
        if decode_keys {
            self.decode(py, stored)
        } else if given.is_exact_instance_of::<PyBytes>() {
            Ok(given.clone())
        } else {
            Ok(crate::codec::new_bytes(py, stored)?.into_any())
        }
    }

    /// An entry of `get_many`'s not-found list: the caller's key, or its
    /// decoded form with `decode_not_found` when the caller gave bytes.
    pub fn not_found_key<'py>(
        &self,
        py: Python<'py>,
        given: &Bound<'py, PyAny>,
        stored: &[u8],
        decode_not_found: bool,
    ) -> PyResult<Bound<'py, PyAny>> {
        if decode_not_found && given.cast::<PyString>().is_err() {
            self.decode(py, stored)
        } else {
            Ok(given.clone())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normal_forms() {
        let composed = "\u{e9}";
        let decomposed = "e\u{301}";
        assert_eq!(NormalForm::Nfc.apply(decomposed), composed);
        assert_eq!(NormalForm::Nfd.apply(composed), decomposed);
        assert!(matches!(NormalForm::Nfc.apply(composed), Cow::Borrowed(_)));
        assert_eq!(NormalForm::Nfkc.apply("\u{fb01}"), "fi");
        assert_eq!(NormalForm::Nfkd.apply("\u{2460}"), "1");
        assert_eq!(NormalForm::parse("NFX"), None);
        for f in [
            NormalForm::Nfc,
            NormalForm::Nfd,
            NormalForm::Nfkc,
            NormalForm::Nfkd,
        ] {
            assert_eq!(NormalForm::parse(f.name()), Some(f));
        }
    }

    #[test]
    fn utf8_names() {
        for n in ["utf-8", "UTF8", "utf_8", "U8"] {
            assert!(is_utf8_name(n), "{n}");
        }
        for n in ["latin-1", "utf-16", "ascii"] {
            assert!(!is_utf8_name(n), "{n}");
        }
    }
}
