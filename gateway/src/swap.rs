//! A value that a reload replaces while readers keep using the one they took.
//!
//! Owns: nothing but the cell. Guarantees: a reader takes an `Arc` of the current value under
//! a read lock held only for the clone (never across an `.await`), so a reload never waits for
//! a message being handled and a message never sees half of a new table. Imports nothing from
//! the rest of the gateway.

use std::sync::{Arc, RwLock};

/// The current value of a table that a configuration reload replaces as a whole.
#[derive(Debug, Default)]
pub struct Swap<T> {
    current: RwLock<Arc<T>>,
}

impl<T> Swap<T> {
    pub fn new(value: T) -> Self {
        Self {
            current: RwLock::new(Arc::new(value)),
        }
    }

    /// The value now; later replacements do not change what the caller holds.
    pub fn load(&self) -> Arc<T> {
        self.current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Replaces the value for every later [`Swap::load`].
    pub fn store(&self, value: T) {
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(value);
    }
}

#[cfg(test)]
mod tests {
    use super::Swap;

    #[test]
    fn a_reader_keeps_the_value_it_took_and_the_next_reader_sees_the_new_one() {
        let s = Swap::new(vec![1]);
        let before = s.load();
        s.store(vec![2, 3]);
        assert_eq!(*before, vec![1]);
        assert_eq!(*s.load(), vec![2, 3]);
    }
}
