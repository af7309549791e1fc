//! An in-memory [`PolicyMaps`] for unit tests: it records every operation
//! in order and can fail on demand.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use ipnet::Ipv4Net;
use kestrel_ebpf_common::policy::PolicyEndpoint;

use super::compile::RuleKey;
use super::maps::PolicyMaps;
use crate::{Error, Result};

/// One write or delete, in the order the syncer issued it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Op {
    PutIpcache(Ipv4Net, u32),
    DeleteIpcache(Ipv4Net),
    PutEndpoint(Ipv4Addr, PolicyEndpoint),
    DeleteEndpoint(Ipv4Addr),
    PutEntry(RuleKey, u32),
    DeleteEntry(RuleKey),
}

#[derive(Debug, Default)]
pub(crate) struct FakePolicyMaps {
    pub(crate) ipcache: BTreeMap<Ipv4Net, u32>,
    pub(crate) endpoints: BTreeMap<Ipv4Addr, PolicyEndpoint>,
    pub(crate) entries: BTreeMap<RuleKey, u32>,
    pub(crate) ops: Vec<Op>,
    /// Fail every write once this many more operations have succeeded.
    pub(crate) fail_after: Option<usize>,
}

impl FakePolicyMaps {
    fn op(&mut self, op: Op) -> Result<()> {
        if let Some(n) = self.fail_after.as_mut() {
            if *n == 0 {
                return Err(Error::Io {
                    what: "fake policy map write",
                    source: std::io::Error::other("injected failure"),
                });
            }
            *n -= 1;
        }
        self.ops.push(op);
        match op {
            Op::PutIpcache(n, id) => {
                self.ipcache.insert(n, id);
            }
            Op::DeleteIpcache(n) => {
                self.ipcache.remove(&n);
            }
            Op::PutEndpoint(a, ep) => {
                self.endpoints.insert(a, ep);
            }
            Op::DeleteEndpoint(a) => {
                self.endpoints.remove(&a);
            }
            Op::PutEntry(k, id) => {
                self.entries.insert(k, id);
            }
            Op::DeleteEntry(k) => {
                self.entries.remove(&k);
            }
        }
        Ok(())
    }
}

impl PolicyMaps for FakePolicyMaps {
    fn dump_ipcache(&self) -> Result<Vec<(Ipv4Net, u32)>> {
        Ok(self.ipcache.iter().map(|(k, v)| (*k, *v)).collect())
    }

    fn dump_endpoints(&self) -> Result<Vec<(Ipv4Addr, PolicyEndpoint)>> {
        Ok(self.endpoints.iter().map(|(k, v)| (*k, *v)).collect())
    }

    fn dump_entries(&self) -> Result<Vec<(RuleKey, u32)>> {
        Ok(self.entries.iter().map(|(k, v)| (*k, *v)).collect())
    }

    fn put_ipcache(&mut self, net: Ipv4Net, identity: u32) -> Result<()> {
        self.op(Op::PutIpcache(net, identity))
    }

    fn delete_ipcache(&mut self, net: Ipv4Net) -> Result<()> {
        self.op(Op::DeleteIpcache(net))
    }

    fn put_endpoint(&mut self, addr: Ipv4Addr, endpoint: PolicyEndpoint) -> Result<()> {
        self.op(Op::PutEndpoint(addr, endpoint))
    }

    fn delete_endpoint(&mut self, addr: Ipv4Addr) -> Result<()> {
        self.op(Op::DeleteEndpoint(addr))
    }

    fn put_entry(&mut self, key: RuleKey, policy_id: u32) -> Result<()> {
        self.op(Op::PutEntry(key, policy_id))
    }

    fn delete_entry(&mut self, key: RuleKey) -> Result<()> {
        self.op(Op::DeleteEntry(key))
    }
}
