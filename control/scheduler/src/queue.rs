//! The scheduling queue, shaped like upstream's: an active queue ordered by
//! priority then arrival, a backoff queue for pods that failed recently,
//! and an unschedulable set that cluster events (a node added or changed,
//! a placed pod gone) move back to the active or backoff queue. A periodic
//! flush moves backed-off pods to active, and pods unschedulable for longer
//! than five minutes back too.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::pod_info::PodInfo;

/// First backoff after a failure; it doubles per attempt.
pub const INITIAL_BACKOFF: Duration = Duration::from_secs(1);
/// Longest backoff.
pub const MAX_BACKOFF: Duration = Duration::from_secs(10);
/// Unschedulable pods are retried at least this often.
pub const MAX_UNSCHEDULABLE: Duration = Duration::from_secs(5 * 60);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Place {
    Active,
    Backoff,
    Unschedulable,
    /// Popped; its cycle (or binding) is running.
    InFlight,
}

#[derive(Debug)]
struct Entry {
    pod: Arc<PodInfo>,
    fingerprint: u64,
    place: Place,
    /// Identifies the entry's current heap position; older heap items for
    /// the same pod are stale and skipped.
    seq: u64,
    attempts: u32,
    /// When the last failure happened.
    failed_at: Instant,
    /// The move counter when the pod was popped.
    popped_at_move: u64,
}

impl Entry {
    fn backoff_until(&self) -> Instant {
        let exp = self.attempts.saturating_sub(1).min(16);
        let d = INITIAL_BACKOFF.saturating_mul(1 << exp).min(MAX_BACKOFF);
        self.failed_at + d
    }
}

/// Pending pods of this scheduler.
#[derive(Debug, Default)]
pub struct Queue {
    entries: HashMap<String, Entry>,
    /// (priority, earliest first, key).
    active: BinaryHeap<(i32, Reverse<u64>, String)>,
    backoff: BinaryHeap<Reverse<(Instant, u64, String)>>,
    seq: u64,
    /// Bumped by every cluster event that may make pods schedulable.
    moves: u64,
}

impl Queue {
    fn next_seq(&mut self) -> u64 {
        self.seq += 1;
        self.seq
    }

    fn make_active(&mut self, key: &str) {
        let seq = self.next_seq();
        if let Some(e) = self.entries.get_mut(key) {
            e.place = Place::Active;
            e.seq = seq;
            self.active
                .push((e.pod.priority, Reverse(seq), key.to_owned()));
        }
    }

    fn make_backoff(&mut self, key: &str) {
        let seq = self.next_seq();
        if let Some(e) = self.entries.get_mut(key) {
            e.place = Place::Backoff;
            e.seq = seq;
            self.backoff
                .push(Reverse((e.backoff_until(), seq, key.to_owned())));
        }
    }

    /// Back to active, or to backoff if its backoff has not run out.
    fn requeue(&mut self, key: &str, now: Instant) {
        let backing_off = self
            .entries
            .get(key)
            .is_some_and(|e| e.attempts > 0 && e.backoff_until() > now);
        if backing_off {
            self.make_backoff(key);
        } else {
            self.make_active(key);
        }
    }

    /// A pending pod was added or changed. Returns whether it became
    /// active (so the loop should wake). `fingerprint` identifies its
    /// spec and labels: a change there retries an unschedulable pod, a
    /// status-only change (our own condition) does not.
    pub fn upsert(&mut self, pod: Arc<PodInfo>, fingerprint: u64) -> bool {
        let key = pod.key();
        match self.entries.get_mut(&key) {
            Some(e) => {
                let changed = e.fingerprint != fingerprint;
                e.pod = pod;
                e.fingerprint = fingerprint;
                if changed && e.place == Place::Unschedulable {
                    self.requeue(&key, Instant::now());
                    return true;
                }
                false
            }
            None => {
                self.entries.insert(
                    key.clone(),
                    Entry {
                        pod,
                        fingerprint,
                        place: Place::Active,
                        seq: 0,
                        attempts: 0,
                        failed_at: Instant::now(),
                        popped_at_move: 0,
                    },
                );
                self.make_active(&key);
                true
            }
        }
    }

    /// The pod was deleted, bound, or is no longer ours.
    pub fn remove(&mut self, key: &str) {
        self.entries.remove(key);
    }

    /// Whether `key` is queued (in any state).
    pub fn contains(&self, key: &str) -> bool {
        self.entries.contains_key(key)
    }

    /// The queued pod `key`, as last seen.
    pub fn get(&self, key: &str) -> Option<&Arc<PodInfo>> {
        self.entries.get(key).map(|e| &e.pod)
    }

    /// Keys of every queued pod.
    pub fn keys(&self) -> impl Iterator<Item = &String> {
        self.entries.keys()
    }

    /// Take the highest-priority active pod, if any.
    pub fn pop(&mut self) -> Option<Arc<PodInfo>> {
        while let Some((_, Reverse(seq), key)) = self.active.pop() {
            let moves = self.moves;
            if let Some(e) = self.entries.get_mut(&key)
                && e.seq == seq
                && e.place == Place::Active
            {
                e.place = Place::InFlight;
                e.popped_at_move = moves;
                return Some(e.pod.clone());
            }
        }
        None
    }

    /// The popped pod was assumed on a node; it leaves the queue.
    pub fn done(&mut self, key: &str) {
        self.entries.remove(key);
    }

    /// The popped pod fit nowhere. If the cluster changed while it was
    /// being scheduled it goes to backoff (the change may have fixed it),
    /// else it waits in the unschedulable set for a change.
    pub fn unschedulable(&mut self, key: &str) {
        let moves = self.moves;
        let Some(e) = self.entries.get_mut(key) else {
            return;
        };
        e.attempts += 1;
        e.failed_at = Instant::now();
        if e.popped_at_move != moves {
            self.make_backoff(key);
        } else {
            e.place = Place::Unschedulable;
        }
    }

    /// Scheduling or binding `pod` failed for a reason other than fit:
    /// retry after backoff. The pod may have left the queue (it was bound
    /// when assumed), so it is given again.
    pub fn error(&mut self, pod: Arc<PodInfo>, fingerprint: u64) {
        let key = pod.key();
        let e = self.entries.entry(key.clone()).or_insert_with(|| Entry {
            pod,
            fingerprint,
            place: Place::InFlight,
            seq: 0,
            attempts: 0,
            failed_at: Instant::now(),
            popped_at_move: 0,
        });
        e.attempts += 1;
        e.failed_at = Instant::now();
        self.make_backoff(&key);
    }

    /// A cluster event that may make unschedulable pods fit. Returns
    /// whether any pod became active.
    pub fn move_all(&mut self) -> bool {
        self.moves += 1;
        let now = Instant::now();
        let keys: Vec<String> = self
            .entries
            .iter()
            .filter(|(_, e)| e.place == Place::Unschedulable)
            .map(|(k, _)| k.clone())
            .collect();
        let any = !keys.is_empty();
        for k in keys {
            self.requeue(&k, now);
        }
        any
    }

    /// Move pods whose backoff is over to active, and pods unschedulable
    /// for too long back for another try. Returns whether any became active.
    pub fn flush(&mut self, now: Instant) -> bool {
        let mut woke = false;
        while let Some(Reverse((at, seq, key))) = self.backoff.peek().cloned() {
            if at > now {
                break;
            }
            self.backoff.pop();
            if self
                .entries
                .get(&key)
                .is_some_and(|e| e.seq == seq && e.place == Place::Backoff)
            {
                self.make_active(&key);
                woke = true;
            }
        }
        let stale: Vec<String> = self
            .entries
            .iter()
            .filter(|(_, e)| {
                e.place == Place::Unschedulable
                    && now.duration_since(e.failed_at) > MAX_UNSCHEDULABLE
            })
            .map(|(k, _)| k.clone())
            .collect();
        for k in stale {
            self.make_active(&k);
            woke = true;
        }
        woke
    }

    /// (active, backoff, unschedulable) counts, for logs and tests.
    pub fn lengths(&self) -> (usize, usize, usize) {
        let count = |p| self.entries.values().filter(|e| e.place == p).count();
        (
            count(Place::Active),
            count(Place::Backoff),
            count(Place::Unschedulable),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(name: &str, priority: i32) -> Arc<PodInfo> {
        Arc::new(PodInfo {
            namespace: "ns".into(),
            name: name.into(),
            priority,
            ..Default::default()
        })
    }

    #[test]
    fn higher_priority_first_then_arrival_order() {
        let mut q = Queue::default();
        q.upsert(pod("a", 0), 1);
        q.upsert(pod("b", 10), 1);
        q.upsert(pod("c", 0), 1);
        let order: Vec<String> = std::iter::from_fn(|| q.pop().map(|p| p.name.clone())).collect();
        assert_eq!(order, ["b", "a", "c"]);
    }

    #[test]
    fn unschedulable_waits_for_a_cluster_event_then_backs_off() {
        let mut q = Queue::default();
        q.upsert(pod("a", 0), 1);
        let p = q.pop().expect("a");
        q.unschedulable(&p.key());
        assert_eq!(q.lengths(), (0, 0, 1));
        assert!(q.pop().is_none());
        // A status-only update does not retry it...
        assert!(!q.upsert(pod("a", 0), 1));
        assert_eq!(q.lengths(), (0, 0, 1));
        // ...a cluster event does, after the 1 s backoff.
        q.move_all();
        assert_eq!(q.lengths(), (0, 1, 0));
        assert!(!q.flush(Instant::now()));
        assert!(q.flush(Instant::now() + INITIAL_BACKOFF));
        assert_eq!(q.pop().map(|p| p.name.clone()).as_deref(), Some("a"));
    }

    #[test]
    fn an_event_during_the_cycle_is_not_lost() {
        let mut q = Queue::default();
        q.upsert(pod("a", 0), 1);
        let p = q.pop().expect("a");
        // A node arrives while "a" is being scheduled.
        q.move_all();
        q.unschedulable(&p.key());
        assert_eq!(q.lengths(), (0, 1, 0), "straight to backoff, not parked");
    }

    #[test]
    fn a_spec_change_retries_and_backoff_grows_to_the_cap() {
        let mut q = Queue::default();
        q.upsert(pod("a", 0), 1);
        for attempt in 1..=6u32 {
            let now = Instant::now() + Duration::from_secs(3600 * u64::from(attempt));
            q.flush(now);
            let p = q.pop().expect("a");
            q.unschedulable(&p.key());
            let e = q.entries.get("ns/a").expect("entry");
            let wait = e.backoff_until() - e.failed_at;
            assert_eq!(
                wait,
                (INITIAL_BACKOFF * 2u32.pow(attempt - 1)).min(MAX_BACKOFF)
            );
            // A changed spec moves it along.
            assert!(q.upsert(pod("a", 0), u64::from(attempt) + 1));
        }
    }

    #[test]
    fn unschedulable_pods_are_retried_after_five_minutes() {
        let mut q = Queue::default();
        q.upsert(pod("a", 0), 1);
        let p = q.pop().expect("a");
        q.unschedulable(&p.key());
        assert!(!q.flush(Instant::now() + Duration::from_secs(60)));
        assert!(q.flush(Instant::now() + MAX_UNSCHEDULABLE + Duration::from_secs(1)));
        assert!(q.pop().is_some());
    }
}
