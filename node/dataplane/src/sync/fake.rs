//! An in-memory [`LbMaps`] for unit tests. It records every operation in
//! order and, after each one, checks what the kernel would see at that
//! moment: no master counting a missing slot, no slot naming a missing
//! backend, no entry naming a missing reverse-NAT id.

use std::collections::{BTreeMap, HashMap};

use kestrel_ebpf_common::lb::{Backend, RevNat, ServiceKey, ServiceValue};

use super::maps::{Batch, LbMaps, Stopped};
use crate::{Error, Result};

/// One write or delete, in the order the engine issued it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Op {
    PutService(ServiceKey, ServiceValue),
    DeleteService(ServiceKey),
    PutBackend(u32, Backend),
    DeleteBackend(u32),
    PutRevNat(u16, RevNat),
    DeleteRevNat(u16),
    ClearConns(u32),
}

#[derive(Debug, Default)]
pub(crate) struct FakeMaps {
    pub(crate) services: BTreeMap<ServiceKey, ServiceValue>,
    pub(crate) backends: BTreeMap<u32, Backend>,
    pub(crate) rev_nat: BTreeMap<u16, RevNat>,
    pub(crate) conns: HashMap<u32, u64>,
    pub(crate) ops: Vec<Op>,
    /// Fail every write once this many more operations have succeeded.
    pub(crate) fail_after: Option<usize>,
    /// States the kernel could have read that name something missing.
    pub(crate) violations: Vec<String>,
    /// Whether to check the kernel's view after every operation.
    pub(crate) check: bool,
}

impl FakeMaps {
    pub(crate) fn new() -> Self {
        Self {
            check: true,
            ..Self::default()
        }
    }

    fn op(&mut self, op: Op) -> Result<()> {
        if let Some(n) = self.fail_after.as_mut() {
            if *n == 0 {
                return Err(Error::Io {
                    what: "fake map write",
                    source: std::io::Error::other("injected failure"),
                });
            }
            *n -= 1;
        }
        self.ops.push(op);
        match op {
            Op::PutService(k, v) => {
                self.services.insert(k, v);
            }
            Op::DeleteService(k) => {
                self.services.remove(&k);
            }
            Op::PutBackend(id, b) => {
                self.backends.insert(id, b);
            }
            Op::DeleteBackend(id) => {
                self.backends.remove(&id);
            }
            Op::PutRevNat(id, r) => {
                self.rev_nat.insert(id, r);
            }
            Op::DeleteRevNat(id) => {
                self.rev_nat.remove(&id);
            }
            Op::ClearConns(id) => {
                self.conns.remove(&id);
            }
        }
        if self.check {
            self.check_kernel_view(op);
        }
        Ok(())
    }

    /// Applies `ops` one by one, as the kernel applies a batch: the first
    /// failure stops it and says how many went in.
    fn ops_in_order(&mut self, ops: impl Iterator<Item = Op>) -> Batch {
        for (done, op) in ops.enumerate() {
            self.op(op).map_err(|error| Stopped {
                done,
                error: Box::new(error),
            })?;
        }
        Ok(())
    }

    /// Records every dangling reference visible right now.
    fn check_kernel_view(&mut self, after: Op) {
        for (k, v) in &self.services {
            if !self.rev_nat.contains_key(&v.rev_nat_id) {
                self.violations.push(format!(
                    "after {after:?}: {k:?} names missing rev-nat {}",
                    v.rev_nat_id
                ));
            }
            if k.slot == 0 {
                for slot in 1..=v.count {
                    let slot_key = ServiceKey { slot, ..*k };
                    match self.services.get(&slot_key) {
                        None => self
                            .violations
                            .push(format!("after {after:?}: {k:?} counts missing slot {slot}")),
                        Some(s) if !self.backends.contains_key(&s.backend_id) => {
                            self.violations.push(format!(
                                "after {after:?}: slot {slot_key:?} names missing backend {}",
                                s.backend_id
                            ));
                        }
                        Some(_) => {}
                    }
                }
            }
        }
    }
}

impl LbMaps for FakeMaps {
    fn dump_services(&self) -> Result<Vec<(ServiceKey, ServiceValue)>> {
        Ok(self.services.iter().map(|(k, v)| (*k, *v)).collect())
    }

    fn dump_backends(&self) -> Result<Vec<(u32, Backend)>> {
        Ok(self.backends.iter().map(|(k, v)| (*k, *v)).collect())
    }

    fn dump_rev_nat(&self) -> Result<Vec<(u16, RevNat)>> {
        Ok(self.rev_nat.iter().map(|(k, v)| (*k, *v)).collect())
    }

    fn dump_backend_conns(&self) -> Result<HashMap<u32, u64>> {
        Ok(self.conns.clone())
    }

    fn put_services(&mut self, keys: &[ServiceKey], values: &[ServiceValue]) -> Batch {
        self.ops_in_order(keys.iter().zip(values).map(|(k, v)| Op::PutService(*k, *v)))
    }

    fn delete_services(&mut self, keys: &[ServiceKey]) -> Batch {
        self.ops_in_order(keys.iter().map(|k| Op::DeleteService(*k)))
    }

    fn put_backends(&mut self, ids: &[u32], backends: &[Backend]) -> Batch {
        self.ops_in_order(
            ids.iter()
                .zip(backends)
                .map(|(id, b)| Op::PutBackend(*id, *b)),
        )
    }

    fn delete_backends(&mut self, ids: &[u32]) -> Batch {
        self.ops_in_order(ids.iter().map(|id| Op::DeleteBackend(*id)))
    }

    fn put_rev_nats(&mut self, ids: &[u16], rev_nats: &[RevNat]) -> Batch {
        self.ops_in_order(
            ids.iter()
                .zip(rev_nats)
                .map(|(id, r)| Op::PutRevNat(*id, *r)),
        )
    }

    fn delete_rev_nats(&mut self, ids: &[u16]) -> Batch {
        self.ops_in_order(ids.iter().map(|id| Op::DeleteRevNat(*id)))
    }

    fn clear_backend_conns(&mut self, ids: &[u32]) -> Batch {
        self.ops_in_order(ids.iter().map(|id| Op::ClearConns(*id)))
    }
}
