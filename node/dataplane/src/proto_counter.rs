//! The per-protocol packet counter: the first program through the pipeline,
//! and a handy probe for "is traffic reaching this interface at all".

use std::path::Path;

use aya::{
    Ebpf, EbpfLoader,
    maps::PerCpuArray,
    programs::{SchedClassifier, TcAttachType, tc},
};
use kestrel_ebpf_common::{PacketCount, ProtoSlot, map_names, program_names};

use crate::{EbpfLogLevel, Error, Result, ebpf_object};

/// Packet and byte totals per protocol slot, summed over CPUs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ProtoCounts(pub [PacketCount; ProtoSlot::COUNT as usize]);

impl ProtoCounts {
    /// The totals of one slot.
    pub fn get(&self, slot: ProtoSlot) -> PacketCount {
        self.0.get(slot.0 as usize).copied().unwrap_or_default()
    }

    /// Sums per-CPU values into one total.
    pub fn sum_per_cpu<'a>(values: impl IntoIterator<Item = &'a PacketCount>) -> PacketCount {
        values
            .into_iter()
            .fold(PacketCount::default(), |acc, v| PacketCount {
                packets: acc.packets.wrapping_add(v.packets),
                bytes: acc.bytes.wrapping_add(v.bytes),
            })
    }
}

/// A loaded counter program. Attachments live as long as this value.
#[derive(Debug)]
pub struct ProtoCounter {
    ebpf: Ebpf,
}

impl ProtoCounter {
    /// Loads the object and verifies the classifier, without attaching it.
    /// The object's maps are pinned by name, so `pin_dir` must be on a
    /// bpffs; maps already pinned there are reused.
    pub fn load(log_level: EbpfLogLevel, pin_dir: &Path) -> Result<Self> {
        let level = log_level.as_global();
        let mut ebpf = EbpfLoader::new()
            .override_global("AYA_LOG_LEVEL", &level, true)
            .default_map_pin_directory(pin_dir)
            .load(ebpf_object()?)
            .map_err(Error::Load)?;
        let name = program_names::PROTO_COUNTER;
        let program: &mut SchedClassifier = ebpf
            .program_mut(name)
            .ok_or(Error::MissingProgram(name))?
            .try_into()
            .map_err(|source| Error::Program {
                what: "typing".into(),
                name,
                source,
            })?;
        program.load().map_err(|source| Error::Program {
            what: "loading".into(),
            name,
            source,
        })?;
        Ok(Self { ebpf })
    }

    /// The loaded object, for taking its log ring buffer.
    pub fn ebpf_mut(&mut self) -> &mut Ebpf {
        &mut self.ebpf
    }

    /// Attaches the classifier to `iface` in the calling thread's network
    /// namespace. The caller is responsible for choosing an interface the
    /// project created.
    pub fn attach(&mut self, iface: &str, direction: TcAttachType) -> Result<()> {
        // Needed only for legacy cls_bpf attachment (kernels before TCX);
        // an existing clsact qdisc is fine.
        let _ = tc::qdisc_add_clsact(iface);
        let name = program_names::PROTO_COUNTER;
        let program: &mut SchedClassifier = self
            .ebpf
            .program_mut(name)
            .ok_or(Error::MissingProgram(name))?
            .try_into()
            .map_err(|source| Error::Program {
                what: "typing".into(),
                name,
                source,
            })?;
        program
            .attach(iface, direction)
            .map_err(|source| Error::Program {
                what: format!("attaching to {iface} ({direction:?})"),
                name,
                source,
            })?;
        Ok(())
    }

    /// Reads the current totals.
    pub fn counts(&self) -> Result<ProtoCounts> {
        let name = map_names::PROTO_COUNTERS;
        let map = self.ebpf.map(name).ok_or(Error::MissingMap(name))?;
        let array: PerCpuArray<_, PacketCount> =
            PerCpuArray::try_from(map).map_err(|source| Error::Map {
                what: "opening",
                name,
                source,
            })?;
        let mut counts = ProtoCounts::default();
        for slot in ProtoSlot::ALL {
            let per_cpu = array.get(&slot.0, 0).map_err(|source| Error::Map {
                what: "reading",
                name,
                source,
            })?;
            counts.0[slot.0 as usize] = ProtoCounts::sum_per_cpu(per_cpu.iter());
        }
        Ok(counts)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn per_cpu_values_sum() {
        let values = [
            PacketCount {
                packets: 1,
                bytes: 60,
            },
            PacketCount {
                packets: 2,
                bytes: 140,
            },
            PacketCount::default(),
        ];
        assert_eq!(
            ProtoCounts::sum_per_cpu(&values),
            PacketCount {
                packets: 3,
                bytes: 200
            }
        );
    }

    #[test]
    fn missing_slot_reads_as_zero() {
        assert_eq!(
            ProtoCounts::default().get(ProtoSlot(99)),
            PacketCount::default()
        );
    }
}
