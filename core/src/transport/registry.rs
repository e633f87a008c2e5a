//! A backend's registered regions by key: what `register` adds,
//! `deregister` removes (an unknown key is the same error in every
//! backend), and transfers look up.

use super::{LOCAL, RegionKey, TransportError};
use std::collections::HashMap;
use std::sync::RwLock;

pub struct Registry<V> {
    map: RwLock<HashMap<RegionKey, V>>,
}

impl<V> Default for Registry<V> {
    fn default() -> Self {
        Self {
            map: RwLock::new(HashMap::new()),
        }
    }
}

impl<V: Clone> Registry<V> {
    pub fn insert(&self, key: RegionKey, value: V) {
        self.write().insert(key, value);
    }

    /// The entry of `key` (a clone: entries are handles, cheap to copy).
    pub fn get(&self, key: RegionKey) -> Option<V> {
        self.read().get(&key).cloned()
    }

    /// Removes `key`; an unknown one is `UnknownKey`.
    pub fn remove(&self, key: RegionKey) -> Result<V, TransportError> {
        self.write().remove(&key).ok_or(TransportError::UnknownKey {
            peer: LOCAL.into(),
            key,
        })
    }

    pub fn clear(&self) {
        self.write().clear();
    }

    // A poisoned lock only means another thread panicked holding it; single
    // inserts and removes leave the map consistent, so keep going.
    fn read(&self) -> std::sync::RwLockReadGuard<'_, HashMap<RegionKey, V>> {
        self.map.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, HashMap<RegionKey, V>> {
        self.map.write().unwrap_or_else(|p| p.into_inner())
    }
}
