//! The sync engine: the desired state of every Service, a mirror of what
//! the maps hold, and the ordered writes that take the maps from one to the
//! other.
//!
//! Callers hand in whole Services ([`Syncer::set_service`]); the engine
//! records which frontends and backends that touches and [`Syncer::flush`]
//! writes only those, in an order that never lets the kernel follow a
//! reference to something missing:
//! 1. backends that are new or changed;
//! 2. reverse-NAT entries of new frontends;
//! 3. per frontend and scope: slot entries `1..=count`, then the master
//!    (whose count publishes them), then surplus slots beyond the new
//!    count; a removed frontend loses its master first, then its slots.
//!    The EXTERNAL scope is written only where its backends differ from
//!    the INTERNAL scope's (`externalTrafficPolicy: Local` on a NodePort,
//!    externalIP or LoadBalancer frontend); without it the per-packet
//!    programs read the INTERNAL scope, so most frontends take half the
//!    entries. A scope that stops differing is removed like a frontend;
//! 4. reverse-NAT entries of removed frontends;
//! 5. backends nothing refers to any more (their ids are released only
//!    now, so an id is never reused while a map entry still names it).
//!
//! Slots are planned to move as little as possible: a backend keeps its
//! slot while it stays, new backends fill the holes left by removed ones,
//! and a shrinking set moves its last entries into the holes. One endpoint
//! change therefore rewrites one or two slots, and connections hashed to
//! the other slots by the kernel are undisturbed.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::net::Ipv4Addr;

use kestrel_ebpf_common::lb::{Backend, RevNat, ServiceKey, ServiceValue, backend_flags};

use super::desired::{BackendKey, FrontendKey, SCOPES, ServiceRef, ServiceState};
use super::ids::IdAllocator;
use super::maps::{Batch, LbMaps};
use crate::{Error, Result};

/// How many ids the engine may hand out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IdLimits {
    /// Largest backend id.
    pub backends: u32,
    /// Largest reverse-NAT id.
    pub rev_nat: u16,
}

impl Default for IdLimits {
    fn default() -> Self {
        Self {
            backends: u32::MAX,
            rev_nat: u16::MAX,
        }
    }
}

/// What one [`Syncer::flush`] wrote.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlushStats {
    /// Entries written (created or overwritten).
    pub writes: usize,
    /// Entries deleted.
    pub deletes: usize,
}

/// The entries of one frontend in SERVICES, per scope, by slot (0 = master).
type Programmed = [BTreeMap<u16, ServiceValue>; 2];

/// Keeps the service maps equal to the desired state of every Service.
#[derive(Debug)]
pub struct Syncer<M> {
    maps: M,

    // What the maps hold (kept equal to them: updated after each write).
    programmed: HashMap<FrontendKey, Programmed>,
    rev_nat_ids: HashMap<FrontendKey, u16>,
    rev_nats: HashMap<u16, RevNat>,
    backend_ids: HashMap<BackendKey, u32>,
    backends: HashMap<u32, Backend>,
    backend_alloc: IdAllocator,
    rev_nat_alloc: IdAllocator,
    // Adopted entries that no frontend or backend can own (duplicates,
    // malformed keys); deleted by the first flush.
    stray_service_keys: BTreeSet<ServiceKey>,
    stray_backends: BTreeSet<u32>,
    stray_rev_nats: BTreeSet<u16>,

    // What the maps should hold.
    services: HashMap<ServiceRef, ServiceState>,
    /// Which Services want each frontend; the first (by name) gets it.
    frontend_claims: HashMap<FrontendKey, BTreeSet<ServiceRef>>,
    /// Which Services list each backend, with the flags each gives it.
    backend_claims: HashMap<BackendKey, BTreeMap<ServiceRef, u8>>,

    // What the next flush must look at.
    pending_frontends: BTreeSet<FrontendKey>,
    pending_backends: BTreeSet<BackendKey>,
}

impl<M: LbMaps> Syncer<M> {
    /// Adopts what `maps` already hold: their ids are kept, so the kernel's
    /// conntrack, affinity and socket state (which name ids) stays valid.
    /// Everything adopted is re-checked by the first [`Syncer::flush`], and
    /// removed then unless a Service wants it; so flush only once every
    /// Service has been handed in.
    pub fn adopt(maps: M, limits: IdLimits) -> Result<Self> {
        let services = maps.dump_services()?;
        let backends = maps.dump_backends()?;
        let rev_nats = maps.dump_rev_nat()?;
        let mut s = Self {
            maps,
            programmed: HashMap::new(),
            rev_nat_ids: HashMap::new(),
            rev_nats: HashMap::new(),
            backend_ids: HashMap::new(),
            backends: HashMap::new(),
            backend_alloc: IdAllocator::new("backend", limits.backends),
            rev_nat_alloc: IdAllocator::new("reverse-NAT", u32::from(limits.rev_nat)),
            stray_service_keys: BTreeSet::new(),
            stray_backends: BTreeSet::new(),
            stray_rev_nats: BTreeSet::new(),
            services: HashMap::new(),
            frontend_claims: HashMap::new(),
            backend_claims: HashMap::new(),
            pending_frontends: BTreeSet::new(),
            pending_backends: BTreeSet::new(),
        };

        for (id, backend) in backends {
            s.backends.insert(id, backend);
            let key = backend_key(&backend);
            if !s.backend_alloc.adopt(id) || s.backend_ids.contains_key(&key) {
                s.stray_backends.insert(id);
                continue;
            }
            s.backend_ids.insert(key, id);
            s.pending_backends.insert(key);
        }

        for (key, value) in services {
            let scope = usize::from(key.scope);
            if scope >= SCOPES.len() || key._pad != [0; 2] {
                s.stray_service_keys.insert(key);
                continue;
            }
            let fk = frontend_key(&key);
            s.programmed.entry(fk).or_default()[scope].insert(key.slot, value);
            s.pending_frontends.insert(fk);
        }

        for &(id, value) in &rev_nats {
            s.rev_nats.insert(id, value);
            s.rev_nat_alloc.adopt(u32::from(id));
        }
        let mut claimed = HashSet::new();
        let mut frontends: Vec<FrontendKey> = s.programmed.keys().copied().collect();
        frontends.sort_unstable();
        for fk in frontends {
            let want = rev_nat_value(&fk);
            let masters = s.programmed[&fk].iter().filter_map(|e| e.get(&0));
            for master in masters {
                let id = master.rev_nat_id;
                if s.rev_nats.get(&id) == Some(&want) && claimed.insert(id) {
                    s.rev_nat_ids.insert(fk, id);
                    break;
                }
            }
        }
        s.stray_rev_nats = rev_nats
            .iter()
            .map(|&(id, _)| id)
            .filter(|id| !claimed.contains(id))
            .collect();
        tracing::debug!(
            frontends = s.programmed.len(),
            backends = s.backends.len(),
            rev_nats = s.rev_nats.len(),
            "adopted the service maps"
        );
        Ok(s)
    }

    /// The maps.
    pub fn maps(&self) -> &M {
        &self.maps
    }

    /// The maps, for tests that inject failures.
    pub fn maps_mut(&mut self) -> &mut M {
        &mut self.maps
    }

    /// The Services handed in so far (with something to program).
    pub fn services(&self) -> impl Iterator<Item = &ServiceRef> {
        self.services.keys()
    }

    /// The backend id of a backend, if it has one.
    pub fn backend_id(&self, key: &BackendKey) -> Option<u32> {
        self.backend_ids.get(key).copied()
    }

    /// The reverse-NAT id of a frontend, if it has one.
    pub fn rev_nat_id(&self, key: &FrontendKey) -> Option<u16> {
        self.rev_nat_ids.get(key).copied()
    }

    /// Whether a flush has work to do.
    pub fn is_pending(&self) -> bool {
        !(self.pending_frontends.is_empty()
            && self.pending_backends.is_empty()
            && self.stray_service_keys.is_empty()
            && self.stray_backends.is_empty()
            && self.stray_rev_nats.is_empty())
    }

    /// Replaces what `svc` wants in the maps (an empty state removes it).
    /// Nothing is written until [`Syncer::flush`].
    pub fn set_service(&mut self, svc: &ServiceRef, state: ServiceState) {
        let old = self.services.get(svc);
        if old.is_none_or(ServiceState::is_empty) && state.is_empty() {
            return;
        }
        if old == Some(&state) {
            return;
        }
        let empty = ServiceState::default();
        let old = old.unwrap_or(&empty);
        let Self {
            frontend_claims,
            backend_claims,
            pending_frontends,
            pending_backends,
            ..
        } = self;
        for fk in old.frontends.keys() {
            if !state.frontends.contains_key(fk) {
                if let Some(claims) = frontend_claims.get_mut(fk) {
                    claims.remove(svc);
                    if claims.is_empty() {
                        frontend_claims.remove(fk);
                    }
                }
                pending_frontends.insert(*fk);
            }
        }
        for (fk, f) in &state.frontends {
            if old.frontends.get(fk) != Some(f) {
                frontend_claims.entry(*fk).or_default().insert(svc.clone());
                pending_frontends.insert(*fk);
            }
        }
        for bk in old.backends.keys() {
            if !state.backends.contains_key(bk) {
                if let Some(claims) = backend_claims.get_mut(bk) {
                    claims.remove(svc);
                    if claims.is_empty() {
                        backend_claims.remove(bk);
                    }
                }
                pending_backends.insert(*bk);
            }
        }
        for (bk, &flags) in &state.backends {
            if old.backends.get(bk) != Some(&flags) {
                backend_claims
                    .entry(*bk)
                    .or_default()
                    .insert(svc.clone(), flags);
                pending_backends.insert(*bk);
            }
        }
        if state.is_empty() {
            self.services.remove(svc);
        } else {
            self.services.insert(svc.clone(), state);
        }
    }

    /// Writes the difference between the desired state and the maps. On
    /// error the maps hold a consistent mix of old and new (the order above
    /// still held for every write done) and the next flush resumes.
    ///
    /// Running out of ids does not stop the rest: the frontends and backends
    /// that got none are left out (a frontend without one is not
    /// programmed, a backend without one takes no slot), everything else is
    /// written, the error is returned, and the next flush tries them again.
    pub fn flush(&mut self) -> Result<FlushStats> {
        let mut stats = FlushStats::default();
        // A second round when the first freed ids that it could not yet
        // hand out (ids are released last, after the entries naming them).
        for round in 0..2 {
            let frontends = std::mem::take(&mut self.pending_frontends);
            let backends = std::mem::take(&mut self.pending_backends);
            let releases = self.backend_alloc.releases() + self.rev_nat_alloc.releases();
            let mut starved = Starved::default();
            if let Err(e) = self.flush_sets(&frontends, &backends, &mut stats, &mut starved) {
                self.pending_frontends.extend(frontends);
                self.pending_backends.extend(backends);
                return Err(e);
            }
            let Some(e) = starved.error else {
                return Ok(stats);
            };
            self.pending_frontends.extend(starved.frontends);
            self.pending_backends.extend(starved.backends);
            let freed = self.backend_alloc.releases() + self.rev_nat_alloc.releases() > releases;
            if round == 1 || !freed {
                return Err(e);
            }
        }
        Ok(stats)
    }

    fn flush_sets(
        &mut self,
        frontends: &BTreeSet<FrontendKey>,
        backends: &BTreeSet<BackendKey>,
        stats: &mut FlushStats,
        starved: &mut Starved,
    ) -> Result<()> {
        // 1. Backends that are wanted.
        self.write_backends(backends, stats, starved)?;
        // A frontend that lists a starved backend is re-checked with it.
        if !starved.backends.is_empty() {
            let starved_set: HashSet<&BackendKey> = starved.backends.iter().collect();
            for (fk, claims) in &self.frontend_claims {
                let wants_starved = claims
                    .first()
                    .and_then(|o| self.services.get(o)?.frontends.get(fk))
                    .is_some_and(|f| f.scopes.iter().flatten().any(|b| starved_set.contains(b)));
                if wants_starved {
                    starved.frontends.push(*fk);
                }
            }
        }
        // 2. Reverse NAT of wanted frontends.
        self.write_rev_nats(frontends, stats, starved)?;
        // 3. Service entries, each step over every frontend at once.
        let strays: Vec<ServiceKey> = self.stray_service_keys.iter().copied().collect();
        let result = self.maps.delete_services(&strays);
        applied(result, &strays, |key| {
            self.stray_service_keys.remove(key);
            stats.deletes += 1;
        })?;
        let plan = self.plan_services(frontends);
        self.put_services(&plan.slots, stats)?;
        self.put_services(&plan.masters, stats)?;
        self.delete_services(&plan.gone_masters, stats)?;
        self.delete_services(&plan.gone_slots, stats)?;
        for fk in frontends {
            if self
                .programmed
                .get(fk)
                .is_some_and(|p| p.iter().all(BTreeMap::is_empty))
            {
                self.programmed.remove(fk);
            }
        }
        // 4. Reverse NAT of removed frontends.
        let gone: Vec<(FrontendKey, u16)> = frontends
            .iter()
            .filter(|fk| self.owner(fk).is_none())
            .filter_map(|fk| Some((*fk, *self.rev_nat_ids.get(fk)?)))
            .collect();
        let ids: Vec<u16> = gone.iter().map(|&(_, id)| id).collect();
        let result = self.maps.delete_rev_nats(&ids);
        applied(result, &gone, |(fk, id)| {
            stats.deletes += 1;
            self.rev_nat_ids.remove(fk);
            self.rev_nats.remove(id);
            self.rev_nat_alloc.release(u32::from(*id));
        })?;
        let strays: Vec<u16> = self.stray_rev_nats.iter().copied().collect();
        let result = self.maps.delete_rev_nats(&strays);
        applied(result, &strays, |id| {
            stats.deletes += 1;
            self.stray_rev_nats.remove(id);
            self.rev_nats.remove(id);
            self.rev_nat_alloc.release(u32::from(*id));
        })?;
        // 5. Backends nothing wants, then the strays.
        let gone: Vec<(Option<BackendKey>, u32)> = backends
            .iter()
            .filter(|bk| self.desired_backend_flags(bk).is_none())
            .filter_map(|bk| Some((Some(*bk), *self.backend_ids.get(bk)?)))
            .chain(self.stray_backends.iter().map(|&id| (None, id)))
            .collect();
        self.delete_backends(&gone, stats)
    }

    /// The Service that gets a frontend: the first by namespace/name of
    /// those that want it (two Services can list the same externalIP).
    fn owner(&self, fk: &FrontendKey) -> Option<&ServiceRef> {
        self.frontend_claims.get(fk).and_then(BTreeSet::first)
    }

    /// The flags a backend should carry, if any Service lists it: local if
    /// any says so, terminating only if all do.
    fn desired_backend_flags(&self, bk: &BackendKey) -> Option<u8> {
        let claims = self.backend_claims.get(bk)?;
        let mut local = false;
        let mut terminating = true;
        for &flags in claims.values() {
            local |= flags & backend_flags::LOCAL != 0;
            terminating &= flags & backend_flags::TERMINATING != 0;
        }
        let mut flags = 0;
        if local {
            flags |= backend_flags::LOCAL;
        }
        if terminating && !claims.is_empty() {
            flags |= backend_flags::TERMINATING;
        }
        Some(flags)
    }

    /// Writes the wanted backends that are new or changed; a new one gets
    /// its id here, and keeps it only once written.
    fn write_backends(
        &mut self,
        backends: &BTreeSet<BackendKey>,
        stats: &mut FlushStats,
        starved: &mut Starved,
    ) -> Result<()> {
        // (id, value, the key if the id is new)
        let mut writes: Vec<(u32, Backend, Option<BackendKey>)> = Vec::new();
        for bk in backends {
            let Some(flags) = self.desired_backend_flags(bk) else {
                continue;
            };
            let value = Backend {
                addr_be: addr_be(bk.addr),
                port_be: bk.port.to_be(),
                proto: bk.proto,
                flags,
            };
            match self.backend_ids.get(bk) {
                Some(&id) if self.backends.get(&id) == Some(&value) => {}
                Some(&id) => writes.push((id, value, None)),
                None => match self.backend_alloc.allocate() {
                    Ok(id) => writes.push((id, value, Some(*bk))),
                    Err(e) => {
                        starved.backends.push(*bk);
                        starved.error.get_or_insert(e);
                    }
                },
            }
        }
        let (ids, values) = columns(&writes);
        let result = self.maps.put_backends(&ids, &values);
        let done = done(&result, writes.len());
        for &(id, _, fresh) in &writes[done..] {
            if fresh.is_some() {
                self.backend_alloc.release(id);
            }
        }
        applied(result, &writes, |&(id, value, fresh)| {
            stats.writes += 1;
            self.backends.insert(id, value);
            if let Some(bk) = fresh {
                self.backend_ids.insert(bk, id);
            }
        })
    }

    /// Deletes backends (with their connection counters) and only then
    /// releases their ids; `None` keys are adopted strays.
    fn delete_backends(
        &mut self,
        gone: &[(Option<BackendKey>, u32)],
        stats: &mut FlushStats,
    ) -> Result<()> {
        let ids: Vec<u32> = gone.iter().map(|&(_, id)| id).collect();
        let deleted = self.maps.delete_backends(&ids);
        let done = done(&deleted, ids.len());
        // The counters of what is gone, even if the batch stopped: the
        // mirror still holds those backends until both are done, so a
        // later flush deletes (harmlessly) again and clears what is left.
        let cleared = self.maps.clear_backend_conns(&ids[..done]);
        applied(cleared, &gone[..done], |&(bk, id)| {
            stats.deletes += 1;
            self.backends.remove(&id);
            match bk {
                Some(bk) => {
                    self.backend_ids.remove(&bk);
                }
                None => {
                    self.stray_backends.remove(&id);
                }
            }
            self.backend_alloc.release(id);
        })?;
        deleted.map_err(|s| *s.error)
    }

    /// Writes the reverse-NAT entries of wanted frontends that are new or
    /// changed; a new one gets its id here, and keeps it only once written.
    fn write_rev_nats(
        &mut self,
        frontends: &BTreeSet<FrontendKey>,
        stats: &mut FlushStats,
        starved: &mut Starved,
    ) -> Result<()> {
        // (id, value, the frontend if the id is new)
        let mut writes: Vec<(u16, RevNat, Option<FrontendKey>)> = Vec::new();
        for fk in frontends {
            if self.owner(fk).is_none() {
                continue;
            }
            let value = rev_nat_value(fk);
            if let Some(&id) = self.rev_nat_ids.get(fk) {
                if self.rev_nats.get(&id) != Some(&value) {
                    writes.push((id, value, None));
                }
                continue;
            }
            // The allocator's range is 1..=u16::MAX at most (see `adopt`).
            match self.rev_nat_alloc.allocate().and_then(|raw| {
                u16::try_from(raw).map_err(|_| {
                    self.rev_nat_alloc.release(raw);
                    Error::IdsExhausted {
                        what: "reverse-NAT",
                        max: u32::from(u16::MAX),
                    }
                })
            }) {
                Ok(id) => writes.push((id, value, Some(*fk))),
                Err(e) => {
                    starved.frontends.push(*fk);
                    starved.error.get_or_insert(e);
                }
            }
        }
        let (ids, values) = columns(&writes);
        let result = self.maps.put_rev_nats(&ids, &values);
        let done = done(&result, writes.len());
        for &(id, _, fresh) in &writes[done..] {
            if fresh.is_some() {
                self.rev_nat_alloc.release(u32::from(id));
            }
        }
        applied(result, &writes, |&(id, value, fresh)| {
            stats.writes += 1;
            self.rev_nats.insert(id, value);
            if let Some(fk) = fresh {
                self.rev_nat_ids.insert(fk, id);
            }
        })
    }

    /// Writes SERVICES entries and mirrors what went in.
    fn put_services(
        &mut self,
        entries: &[(ServiceKey, ServiceValue)],
        stats: &mut FlushStats,
    ) -> Result<()> {
        let (keys, values): (Vec<ServiceKey>, Vec<ServiceValue>) = entries.iter().copied().unzip();
        let result = self.maps.put_services(&keys, &values);
        applied(result, entries, |&(key, value)| {
            stats.writes += 1;
            self.programmed.entry(frontend_key(&key)).or_default()[usize::from(key.scope)]
                .insert(key.slot, value);
        })
    }

    /// Deletes SERVICES entries and mirrors what went.
    fn delete_services(&mut self, keys: &[ServiceKey], stats: &mut FlushStats) -> Result<()> {
        let result = self.maps.delete_services(keys);
        applied(result, keys, |key| {
            stats.deletes += 1;
            if let Some(p) = self.programmed.get_mut(&frontend_key(key)) {
                p[usize::from(key.scope)].remove(&key.slot);
            }
        })
    }

    /// What the SERVICES entries of `frontends` need, from the mirror of
    /// what the maps hold and the desired state.
    fn plan_services(&self, frontends: &BTreeSet<FrontendKey>) -> ServicePlan {
        let mut plan = ServicePlan::default();
        for fk in frontends {
            self.plan_frontend(fk, &mut plan);
        }
        plan
    }

    /// Adds one frontend's SERVICES changes to `plan`.
    fn plan_frontend(&self, fk: &FrontendKey, plan: &mut ServicePlan) {
        // The desired master and slot ids of each scope.
        let target = self
            .owner(fk)
            .and_then(|o| self.services.get(o)?.frontends.get(fk))
            // Without a reverse-NAT id (step 2 found none free) it cannot
            // be programmed yet (the flush reports that).
            .and_then(|f| Some((f, *self.rev_nat_ids.get(fk)?)))
            .map(|(f, rev_nat_id)| {
                let ids = |scope: u8| -> Vec<u32> {
                    f.scope(scope)
                        .iter()
                        .filter_map(|bk| self.backend_ids.get(bk).copied())
                        .collect()
                };
                let master = ServiceValue {
                    backend_id: 0,
                    count: 0,
                    rev_nat_id,
                    flags: f.flags,
                    _pad: 0,
                    affinity_timeout_s: f.affinity_timeout_s,
                };
                (master, SCOPES.map(ids))
            });
        let empty = Programmed::default();
        let programmed = self.programmed.get(fk).unwrap_or(&empty);
        for (index, scope) in SCOPES.into_iter().enumerate() {
            let current = &programmed[index];
            let key = |slot: u16| service_key(fk, scope, slot);
            // The EXTERNAL scope only where it differs (see the module
            // docs); otherwise it is planned as removed.
            let wanted = target
                .as_ref()
                .filter(|(_, ids)| index == 0 || ids[index] != ids[0]);
            let Some((template, ids)) = wanted else {
                // Removed: the master first, so the kernel stops choosing
                // slots before they go.
                if current.contains_key(&0) {
                    plan.gone_masters.push(key(0));
                }
                plan.gone_slots.extend(
                    current
                        .keys()
                        .filter(|&&slot| slot != 0)
                        .map(|&slot| key(slot)),
                );
                continue;
            };
            let count_now = current.get(&0).map_or(0, |m| m.count);
            let slots_now: Vec<u32> = (1..=count_now)
                .map(|slot| current.get(&slot).map_or(0, |v| v.backend_id))
                .collect();
            let mut wanted = plan_slots(&slots_now, &ids[index]);
            if wanted.len() > usize::from(u16::MAX) {
                tracing::warn!(frontend = %fk, backends = wanted.len(), "more backends than slots; using the first 65535");
                wanted.truncate(usize::from(u16::MAX));
            }
            let count = u16::try_from(wanted.len()).unwrap_or(u16::MAX);
            for (slot, &backend_id) in (1..=count).zip(&wanted) {
                let value = ServiceValue {
                    backend_id,
                    count: 0,
                    rev_nat_id: template.rev_nat_id,
                    flags: 0,
                    _pad: 0,
                    affinity_timeout_s: 0,
                };
                if current.get(&slot) != Some(&value) {
                    plan.slots.push((key(slot), value));
                }
            }
            let master = ServiceValue { count, ..*template };
            if current.get(&0) != Some(&master) {
                plan.masters.push((key(0), master));
            }
            plan.gone_slots.extend(
                current
                    .range(count.saturating_add(1)..)
                    .map(|(&slot, _)| slot)
                    .filter(|&slot| slot > count)
                    .map(key),
            );
        }
    }
}

/// The SERVICES changes of one flush, in the order they are applied, each
/// step over every frontend at once. Slots are in place before the master
/// that counts them, and a master counts no slot that is deleted after it.
#[derive(Debug, Default)]
struct ServicePlan {
    /// Slot entries that are new or changed.
    slots: Vec<(ServiceKey, ServiceValue)>,
    /// Master entries that are new or changed (their counts publish the
    /// slots above).
    masters: Vec<(ServiceKey, ServiceValue)>,
    /// Master entries of frontends that are gone.
    gone_masters: Vec<ServiceKey>,
    /// Slots beyond the new counts, and every slot of frontends that are
    /// gone.
    gone_slots: Vec<ServiceKey>,
}

/// Hands each entry a batch applied to `mirror`, in order; the error of a
/// batch that stopped part-way.
fn applied<T>(result: Batch, entries: &[T], mut mirror: impl FnMut(&T)) -> Result<()> {
    entries[..done(&result, entries.len())]
        .iter()
        .for_each(&mut mirror);
    result.map_err(|s| *s.error)
}

/// How many of a batch of `len` entries went in.
fn done(result: &Batch, len: usize) -> usize {
    result.as_ref().err().map_or(len, |s| s.done.min(len))
}

/// The ids and the values of planned writes, as the batch calls take them.
fn columns<I: Copy, V: Copy, X>(rows: &[(I, V, X)]) -> (Vec<I>, Vec<V>) {
    rows.iter().map(|&(id, value, _)| (id, value)).unzip()
}

/// What a flush could not give ids to, and why.
#[derive(Debug, Default)]
struct Starved {
    frontends: Vec<FrontendKey>,
    backends: Vec<BackendKey>,
    error: Option<Error>,
}

/// New slot contents (slot `i + 1` holds `result[i]`) for the backend ids
/// `wanted`, given the current slots (0 = an empty slot), moving as few
/// entries as possible.
pub(crate) fn plan_slots(current: &[u32], wanted: &[u32]) -> Vec<u32> {
    // The common cases, a new frontend and an unchanged one, cost a copy.
    if current.is_empty() || current == wanted {
        let mut seen = HashSet::with_capacity(wanted.len());
        return wanted
            .iter()
            .copied()
            .filter(|&id| id != 0 && seen.insert(id))
            .collect();
    }
    let wanted_set: HashSet<u32> = wanted.iter().copied().collect();
    let mut placed = HashSet::new();
    let mut slots: Vec<Option<u32>> = current
        .iter()
        .map(|&id| (id != 0 && wanted_set.contains(&id) && placed.insert(id)).then_some(id))
        .collect();
    let mut fresh = wanted
        .iter()
        .copied()
        .filter(|&id| id != 0 && placed.insert(id));
    for slot in slots.iter_mut().filter(|s| s.is_none()) {
        match fresh.next() {
            Some(id) => *slot = Some(id),
            None => break,
        }
    }
    slots.extend(fresh.map(Some));
    // Close the holes that remain with entries from the end.
    let mut i = 0;
    while i < slots.len() {
        if slots[i].is_none() {
            while matches!(slots.last(), Some(None)) {
                slots.pop();
            }
            if i < slots.len() {
                slots[i] = slots.pop().flatten();
            }
        }
        i += 1;
    }
    slots.into_iter().flatten().collect()
}

pub(crate) fn addr_be(addr: Ipv4Addr) -> u32 {
    u32::from(addr).to_be()
}

pub(crate) fn addr_of(addr_be: u32) -> Ipv4Addr {
    Ipv4Addr::from(u32::from_be(addr_be))
}

pub(crate) fn service_key(fk: &FrontendKey, scope: u8, slot: u16) -> ServiceKey {
    ServiceKey {
        addr_be: addr_be(fk.addr),
        port_be: fk.port.to_be(),
        proto: fk.proto,
        scope,
        slot,
        _pad: [0; 2],
    }
}

pub(crate) fn frontend_key(key: &ServiceKey) -> FrontendKey {
    FrontendKey {
        addr: addr_of(key.addr_be),
        port: u16::from_be(key.port_be),
        proto: key.proto,
    }
}

pub(crate) fn backend_key(b: &Backend) -> BackendKey {
    BackendKey {
        addr: addr_of(b.addr_be),
        port: u16::from_be(b.port_be),
        proto: b.proto,
    }
}

fn rev_nat_value(fk: &FrontendKey) -> RevNat {
    RevNat {
        addr_be: addr_be(fk.addr),
        port_be: fk.port.to_be(),
        _pad: 0,
    }
}
