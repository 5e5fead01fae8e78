//! A Python key-value store (torch.distributed's c10d `Store`: TCPStore, FileStore,
//! PrefixStore) as the runtime's [`Store`], so a communicator meets in the store that
//! `init_process_group` made: `env://`, `tcp://`, `file://` and torchrun need no second
//! port.
//!
//! | runtime | c10d |
//! |---|---|
//! | `set(key, value)` | `set(key, bytes)` |
//! | `get(key, deadline)` | `wait([key], left)`, then `get(key)` |
//! | `try_get(key)` | `check([key])`, then `get(key)` |
//! | `wait(keys, deadline)` | `wait(keys, left)` |
//! | `add(key, delta)` | `add(key, delta)` |
//! | `delete(key)` | `delete_key(key)` (a store without it keeps the key) |
//!
//! Each call takes the GIL (c10d releases it while it blocks); a Python exception becomes a
//! [`StoreError`] with its message, a c10d timeout a [`StoreError::Timeout`].

use std::fmt;
use std::time::{Duration, Instant};

use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyList};
use topoccl::store::{Store, StoreError};

/// The shortest wait handed to c10d (a zero timedelta may mean "the store's default").
const MIN_WAIT: Duration = Duration::from_millis(1);

pub struct PyStore {
    store: Py<PyAny>,
}

impl PyStore {
    pub fn new(store: Py<PyAny>) -> PyStore {
        PyStore { store }
    }

    fn call<R>(
        &self,
        keys: &[String],
        f: impl FnOnce(Python<'_>, &Bound<'_, PyAny>) -> PyResult<R>,
    ) -> Result<R, StoreError> {
        Python::with_gil(|py| {
            f(py, self.store.bind(py)).map_err(|e| {
                let kind = e
                    .get_type(py)
                    .name()
                    .map(|n| n.to_string())
                    .unwrap_or_default();
                let text = e.to_string();
                if kind == "DistStoreError" && text.to_lowercase().contains("timeout") {
                    StoreError::Timeout {
                        missing: keys.to_vec(),
                    }
                } else {
                    StoreError::Io(format!("the torch.distributed store raised {text}"))
                }
            })
        })
    }
}

fn timedelta<'py>(py: Python<'py>, deadline: Instant) -> PyResult<Bound<'py, PyAny>> {
    let left = deadline
        .saturating_duration_since(Instant::now())
        .max(MIN_WAIT);
    py.import("datetime")?
        .getattr("timedelta")?
        .call1((0, 0, left.as_micros() as u64))
}

impl fmt::Debug for PyStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("PyStore(torch.distributed store)")
    }
}

impl Store for PyStore {
    fn set(&self, key: &str, value: &[u8]) -> Result<(), StoreError> {
        self.call(&[], |py, s| {
            s.call_method1("set", (key, PyBytes::new(py, value)))
                .map(drop)
        })
    }

    fn get(&self, key: &str, deadline: Instant) -> Result<Vec<u8>, StoreError> {
        let keys = [key.to_string()];
        self.call(&keys, |py, s| {
            s.call_method1("wait", (PyList::new(py, &keys)?, timedelta(py, deadline)?))?;
            s.call_method1("get", (key,))?.extract::<Vec<u8>>()
        })
    }

    fn try_get(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let keys = [key.to_string()];
        self.call(&keys, |py, s| {
            if !s
                .call_method1("check", (PyList::new(py, &keys)?,))?
                .extract::<bool>()?
            {
                return Ok(None);
            }
            s.call_method1("get", (key,))?
                .extract::<Vec<u8>>()
                .map(Some)
        })
    }

    fn wait(&self, keys: &[String], deadline: Instant) -> Result<(), StoreError> {
        self.call(keys, |py, s| {
            s.call_method1("wait", (PyList::new(py, keys)?, timedelta(py, deadline)?))
                .map(drop)
        })
    }

    fn add(&self, key: &str, delta: i64) -> Result<i64, StoreError> {
        self.call(&[], |_, s| {
            s.call_method1("add", (key, delta))?.extract::<i64>()
        })
    }

    fn delete(&self, key: &str) -> Result<(), StoreError> {
        // Deleting only tidies the store; a store that cannot (some c10d stores raise
        // "not implemented") keeps the key, which is harmless.
        let _ = self.call(&[], |_, s| s.call_method1("delete_key", (key,)).map(drop));
        Ok(())
    }
}
