//! What a controller has asked for and not yet seen in its store.
//!
//! A reconcile right after creating five pods may be woken by the first of
//! them while the store holds none of the others; counting from the store
//! alone it would create four more. Like upstream's expectations, a
//! controller records each pod it creates or deletes and changes nothing
//! for that owner until the store shows them all, or until they expire (a
//! create the watch never reports must not wedge the owner for good).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Pod;
use kube::runtime::reflector::{ObjectRef, Store};

/// How long an unseen create or delete holds its owner back.
const EXPIRY: Duration = Duration::from_secs(30);

#[derive(Debug)]
struct Pending {
    /// Pods created but not yet in the store.
    adds: Vec<String>,
    /// Pods deleted (name, uid) still in the store without a deletion mark.
    dels: Vec<(String, String)>,
    since: Instant,
}

/// Outstanding pod creates and deletes per owner (keyed by owner uid).
#[derive(Debug, Default)]
pub struct Expectations {
    pending: Mutex<HashMap<String, Pending>>,
}

impl Expectations {
    fn with<T>(&self, owner: &str, f: impl FnOnce(&mut Pending) -> T) -> T {
        let mut m = self.pending.lock().unwrap_or_else(|p| p.into_inner());
        // Owners deleted while waiting are never asked again; drop them.
        m.retain(|_, p| p.since.elapsed() < 2 * EXPIRY);
        let p = m.entry(owner.to_owned()).or_insert_with(|| Pending {
            adds: Vec::new(),
            dels: Vec::new(),
            since: Instant::now(),
        });
        p.since = Instant::now();
        f(p)
    }

    /// `owner` created pod `name`.
    pub fn created(&self, owner: &str, name: &str) {
        self.with(owner, |p| p.adds.push(name.to_owned()));
    }

    /// `owner` deleted the pod `name` with `uid`.
    pub fn deleted(&self, owner: &str, name: &str, uid: &str) {
        self.with(owner, |p| p.dels.push((name.to_owned(), uid.to_owned())));
    }

    /// Whether the store in `namespace` shows everything `owner` asked for.
    pub fn satisfied(&self, owner: &str, namespace: &str, pods: &Store<Pod>) -> bool {
        let mut m = self.pending.lock().unwrap_or_else(|p| p.into_inner());
        let Some(p) = m.get_mut(owner) else {
            return true;
        };
        let get = |name: &str| pods.get(&ObjectRef::new(name).within(namespace));
        p.adds.retain(|n| get(n).is_none());
        p.dels.retain(|(n, uid)| {
            get(n).is_some_and(|pod| {
                pod.metadata.uid.as_deref() == Some(uid.as_str())
                    && pod.metadata.deletion_timestamp.is_none()
            })
        });
        let done = (p.adds.is_empty() && p.dels.is_empty()) || p.since.elapsed() > EXPIRY;
        if done {
            m.remove(owner);
        }
        done
    }

    /// Forget `owner` (it was deleted).
    pub fn forget(&self, owner: &str) {
        self.pending
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(owner);
    }
}
