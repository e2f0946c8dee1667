//! The seam between the collector and the kernel: two small traits, one for what is read each
//! interval ([`MapRead`]) and one for what the agent writes ([`MapControl`]), implemented for the
//! real aya maps by [`AyaMaps`] and by fakes in the unit tests (no root needed there).

use aya::maps::{Array, HashMap as BpfHashMap, MapData, PerCpuArray};
use blkio_agent_common::{
    CONTROL_EPOCH, COUNTER_SLOTS, CgroupKey, CgroupStats, DeviceHists, DeviceInflight as KernelInflight, DeviceQueues,
    Framed, HistKey, OpHist,
};

use crate::{
    error::{Error, Result},
    loader::{Attached, Probes, program_stats},
};

/// One CPU's copy of the `COUNTERS` element.
pub type Counters = [u64; COUNTER_SLOTS as usize];

/// What the collector reads from the kernel. Every value is cumulative since the programs were
/// loaded; the collector takes deltas.
pub trait MapRead {
    /// Entries of the fallback `HISTS` hash map (devices without a dense slot), as copied (maybe
    /// torn: see [`Framed`]).
    fn fallback_hists(&self) -> Result<Vec<(HistKey, Framed<OpHist>)>>;
    /// Per-CPU copies of dense slot `slot` of `DENSE_HISTS`.
    fn dense_hists(&self, slot: u32) -> Result<Vec<Framed<DeviceHists>>>;
    /// Entries of the fallback `INFLIGHT` hash map.
    fn fallback_inflight(&self) -> Result<Vec<(u32, KernelInflight)>>;
    /// Dense slot `slot` of `DENSE_INFLIGHT`: the device's line per hardware queue.
    fn dense_inflight(&self, slot: u32) -> Result<DeviceQueues>;
    /// Entries of the attribution map (empty when attribution is off).
    fn cgroups(&self) -> Result<Vec<(CgroupKey, Framed<CgroupStats>)>>;
    /// Per-CPU copies of the `COUNTERS` element.
    fn counters(&self) -> Result<Vec<Counters>>;
    /// Sum of the attached programs' `recursion_misses`.
    fn recursion_misses(&self) -> u64;
}

/// What the agent writes into the kernel's maps (entries the programs only read; the gauges the
/// programs update are never written from here).
pub trait MapControl {
    /// `CONTROL[CONTROL_EPOCH]`: which peak slot the programs raise.
    fn set_epoch(&mut self, epoch: u64) -> Result<()>;
    /// `DEVICE_INDEX[pos]`.
    fn set_index(&mut self, pos: u32, entry: u64) -> Result<()>;
    fn remove_cgroup(&mut self, key: &CgroupKey) -> Result<()>;
    /// Removes `dev`'s entries from the fallback `HISTS` and `INFLIGHT` maps (a device the
    /// programs now skip).
    fn remove_fallback(&mut self, dev: u32) -> Result<()>;
    /// `CONTROL[CONTROL_FAST_SINCE]`: requests allocated from then on take the fast path.
    fn set_fast_since(&mut self, since_ns: u64) -> Result<()>;
}

/// The loaded programs' maps. Holds the programs too: dropping it detaches them.
pub struct AyaMaps {
    probes: Probes,
    index: Array<MapData, u64>,
    dense_hists: PerCpuArray<MapData, Framed<DeviceHists>>,
    dense_inflight: Array<MapData, DeviceQueues>,
    hists: BpfHashMap<MapData, HistKey, Framed<OpHist>>,
    inflight: BpfHashMap<MapData, u32, KernelInflight>,
    cgroups: Option<BpfHashMap<MapData, CgroupKey, Framed<CgroupStats>>>,
    counters: PerCpuArray<MapData, Counters>,
    control: Array<MapData, u64>,
}

fn take<T>(probes: &mut Probes, name: &str) -> Result<T>
where
    T: TryFrom<aya::maps::Map, Error = aya::maps::MapError>,
{
    let map =
        probes.ebpf.take_map(name).ok_or_else(|| Error::Other(format!("map {name} is not in the eBPF object")))?;
    T::try_from(map).map_err(|e| Error::bpf(format!("map {name} has an unexpected type"), e))
}

fn map_err(what: &str) -> impl FnOnce(aya::maps::MapError) -> Error + '_ {
    move |e| Error::bpf(format!("cannot read map {what}"), e)
}

fn write_err(what: &str) -> impl FnOnce(aya::maps::MapError) -> Error + '_ {
    move |e| Error::bpf(format!("cannot write map {what}"), e)
}

impl AyaMaps {
    /// Takes the maps out of the loaded object; `attribute`: the attribution map too.
    pub fn take(mut probes: Probes, attribute: bool) -> Result<AyaMaps> {
        Ok(AyaMaps {
            index: take(&mut probes, "DEVICE_INDEX")?,
            dense_hists: take(&mut probes, "DENSE_HISTS")?,
            dense_inflight: take(&mut probes, "DENSE_INFLIGHT")?,
            hists: take(&mut probes, "HISTS")?,
            inflight: take(&mut probes, "INFLIGHT")?,
            cgroups: if attribute { Some(take(&mut probes, "CGROUPS")?) } else { None },
            counters: take(&mut probes, "COUNTERS")?,
            control: take(&mut probes, "CONTROL")?,
            probes,
        })
    }

    pub fn mode(&self) -> Attached {
        self.probes.mode
    }
}

impl MapRead for AyaMaps {
    fn fallback_hists(&self) -> Result<Vec<(HistKey, Framed<OpHist>)>> {
        self.hists.iter().map(|r| r.map_err(map_err("HISTS"))).collect()
    }

    fn dense_hists(&self, slot: u32) -> Result<Vec<Framed<DeviceHists>>> {
        Ok(self.dense_hists.get(&slot, 0).map_err(map_err("DENSE_HISTS"))?.iter().copied().collect())
    }

    fn fallback_inflight(&self) -> Result<Vec<(u32, KernelInflight)>> {
        self.inflight.iter().map(|r| r.map_err(map_err("INFLIGHT"))).collect()
    }

    fn dense_inflight(&self, slot: u32) -> Result<DeviceQueues> {
        self.dense_inflight.get(&slot, 0).map_err(map_err("DENSE_INFLIGHT"))
    }

    fn cgroups(&self) -> Result<Vec<(CgroupKey, Framed<CgroupStats>)>> {
        match &self.cgroups {
            Some(m) => m.iter().map(|r| r.map_err(map_err("CGROUPS"))).collect(),
            None => Ok(Vec::new()),
        }
    }

    fn counters(&self) -> Result<Vec<Counters>> {
        Ok(self.counters.get(&0, 0).map_err(map_err("COUNTERS"))?.iter().copied().collect())
    }

    fn recursion_misses(&self) -> u64 {
        let p = &self.probes;
        p.programs.iter().filter_map(|name| program_stats(&p.ebpf, name)).map(|s| s.recursion_misses).sum()
    }
}

impl MapControl for AyaMaps {
    fn set_epoch(&mut self, epoch: u64) -> Result<()> {
        self.control.set(CONTROL_EPOCH, epoch, 0).map_err(write_err("CONTROL"))
    }

    fn set_index(&mut self, pos: u32, entry: u64) -> Result<()> {
        self.index.set(pos, entry, 0).map_err(write_err("DEVICE_INDEX"))
    }

    fn remove_cgroup(&mut self, key: &CgroupKey) -> Result<()> {
        match &mut self.cgroups {
            Some(m) => m.remove(key).map_err(write_err("CGROUPS")),
            None => Ok(()),
        }
    }

    fn remove_fallback(&mut self, dev: u32) -> Result<()> {
        let keys: Vec<HistKey> = self.hists.keys().filter_map(|k| k.ok()).filter(|k| k.dev == dev).collect();
        for k in keys {
            self.hists.remove(&k).map_err(write_err("HISTS"))?;
        }
        if self.inflight.get(&dev, 0).is_ok() {
            self.inflight.remove(&dev).map_err(write_err("INFLIGHT"))?;
        }
        Ok(())
    }

    fn set_fast_since(&mut self, since_ns: u64) -> Result<()> {
        self.control.set(blkio_agent_common::CONTROL_FAST_SINCE, since_ns, 0).map_err(write_err("CONTROL"))
    }
}
