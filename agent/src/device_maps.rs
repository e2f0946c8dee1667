//! The per-device kernel maps, dense and fallback, read as one.
//!
//! The programs find a device's histograms and depth gauge through `DEVICE_INDEX`, a small
//! open-addressing table that only this module writes: a device with a slot there is counted in
//! the per-CPU `DENSE_HISTS` array and the `DENSE_INFLIGHT` array (inlined array lookups on the
//! per-I/O path), any other device in the `HISTS`/`INFLIGHT` hash maps. A device is first seen in
//! the fallback maps; after each snapshot it is given a free slot, and from then on its I/O goes to
//! the dense maps. Both halves are cumulative, so a device's totals are their sum.

use std::collections::{BTreeMap, BTreeSet};

use aya::maps::{Array, HashMap as BpfHashMap, MapData, PerCpuArray};
use blkio_agent_common::{
    DEVICE_INDEX_PROBES, DEVICE_INDEX_SIZE, DeviceHists, DeviceInflight as KernelInflight, HIST_SLOTS, HistKey,
    MAX_DENSE_DEVICES, OpHist, device_index_entry, device_index_pos,
};

use crate::{
    error::{Error, Result},
    loader::Probes,
};

pub struct DeviceMaps {
    index: Array<MapData, u64>,
    dense_hists: PerCpuArray<MapData, DeviceHists>,
    dense_inflight: Array<MapData, KernelInflight>,
    hists: BpfHashMap<MapData, HistKey, OpHist>,
    inflight: BpfHashMap<MapData, u32, KernelInflight>,
    /// Our copy of `DEVICE_INDEX` (the kernel never writes it).
    table: [u64; DEVICE_INDEX_SIZE as usize],
    /// Device of each dense slot given so far. Slots are never reused while the agent runs: the
    /// kernel entries of a slot are cumulative and a device may come back.
    slots: Vec<u32>,
    /// Devices that did not fit (no slot left or no free position within the probes).
    unplaced: Vec<u32>,
    /// Devices seen in the fallback maps by the last reads, candidates for a slot.
    in_fallback: BTreeSet<u32>,
}

pub(crate) fn take<T>(probes: &mut Probes, name: &str) -> Result<T>
where
    T: TryFrom<aya::maps::Map, Error = aya::maps::MapError>,
{
    let map =
        probes.ebpf.take_map(name).ok_or_else(|| Error::Other(format!("map {name} is not in the eBPF object")))?;
    T::try_from(map).map_err(|e| Error::bpf(format!("map {name} has an unexpected type"), e))
}

pub(crate) fn map_err(what: &str) -> impl FnOnce(aya::maps::MapError) -> Error + '_ {
    move |e| Error::bpf(format!("cannot read map {what}"), e)
}

impl DeviceMaps {
    pub fn take(probes: &mut Probes) -> Result<Self> {
        Ok(DeviceMaps {
            index: take(probes, "DEVICE_INDEX")?,
            dense_hists: take(probes, "DENSE_HISTS")?,
            dense_inflight: take(probes, "DENSE_INFLIGHT")?,
            hists: take(probes, "HISTS")?,
            inflight: take(probes, "INFLIGHT")?,
            table: [0; DEVICE_INDEX_SIZE as usize],
            slots: Vec::new(),
            unplaced: Vec::new(),
            in_fallback: BTreeSet::new(),
        })
    }

    /// Cumulative statistics per (device, op): per-CPU dense copies and the fallback entry summed.
    pub fn hists(&mut self) -> Result<BTreeMap<HistKey, OpHist>> {
        let mut out: BTreeMap<HistKey, OpHist> = BTreeMap::new();
        for item in self.hists.iter() {
            let (key, h) = item.map_err(map_err("HISTS"))?;
            self.in_fallback.insert(key.dev);
            add_hist(out.entry(key).or_insert(OpHist::ZERO), &h);
        }
        for (slot, &dev) in self.slots.iter().enumerate() {
            let per_cpu = self.dense_hists.get(&(slot as u32), 0).map_err(map_err("DENSE_HISTS"))?;
            let mut sums = [OpHist::ZERO; blkio_agent_common::OP_COUNT];
            for cpu in per_cpu.iter() {
                for (sum, h) in sums.iter_mut().zip(&cpu.ops) {
                    add_hist(sum, h);
                }
            }
            for (op, sum) in sums.iter().enumerate().filter(|(_, s)| s.count != 0) {
                add_hist(out.entry(HistKey { dev, op: op as u32 }).or_insert(OpHist::ZERO), sum);
            }
        }
        Ok(out)
    }

    /// In-flight gauge per device, dense and fallback merged (see [`merge_inflight`]).
    pub fn inflight(&mut self) -> Result<BTreeMap<u32, KernelInflight>> {
        let mut fallback: BTreeMap<u32, KernelInflight> = BTreeMap::new();
        for item in self.inflight.iter() {
            let (dev, v) = item.map_err(map_err("INFLIGHT"))?;
            self.in_fallback.insert(dev);
            fallback.insert(dev, v);
        }
        let mut out = BTreeMap::new();
        for (slot, &dev) in self.slots.iter().enumerate() {
            let dense = self.dense_inflight.get(&(slot as u32), 0).map_err(map_err("DENSE_INFLIGHT"))?;
            out.insert(dev, merge_inflight(Some(dense), fallback.remove(&dev)));
        }
        out.extend(fallback);
        Ok(out)
    }

    /// Sets the device's depth to 0 in both halves (peaks kept). Only for an idle device: the
    /// write would race with the programs' atomic adds otherwise.
    pub fn reset_inflight(&mut self, dev: u32) -> Result<()> {
        if let Some(slot) = self.slots.iter().position(|&d| d == dev) {
            let slot = slot as u32;
            let mut v = self.dense_inflight.get(&slot, 0).map_err(map_err("DENSE_INFLIGHT"))?;
            v.inflight = 0;
            self.dense_inflight.set(slot, v, 0).map_err(map_err("DENSE_INFLIGHT"))?;
        }
        if let Ok(mut v) = self.inflight.get(&dev, 0) {
            v.inflight = 0;
            self.inflight.insert(dev, v, 0).map_err(map_err("INFLIGHT"))?;
        }
        Ok(())
    }

    /// Gives every device that the last reads found in the fallback maps and that `wanted`
    /// accepts (the device filter: slots are never reused, so devices nobody looks at must not
    /// take them) a dense slot, while slots and table positions last. Returns the devices given one.
    pub fn assign_slots(&mut self, mut wanted: impl FnMut(u32) -> bool) -> Result<Vec<u32>> {
        let mut placed = Vec::new();
        for dev in std::mem::take(&mut self.in_fallback) {
            if self.slots.contains(&dev) || self.unplaced.contains(&dev) || !wanted(dev) {
                continue;
            }
            if self.slots.len() >= MAX_DENSE_DEVICES as usize {
                tracing::debug!(device = dev, "no dense slot left; the device stays on the fallback maps");
                self.unplaced.push(dev);
                continue;
            }
            let Some(pos) = free_position(&self.table, dev) else {
                tracing::debug!(device = dev, "no free device-index position; the device stays on the fallback maps");
                self.unplaced.push(dev);
                continue;
            };
            let entry = device_index_entry(dev, self.slots.len() as u32);
            self.index.set(pos, entry, 0).map_err(map_err("DEVICE_INDEX"))?;
            self.table[pos as usize] = entry;
            self.slots.push(dev);
            placed.push(dev);
        }
        Ok(placed)
    }
}

/// The first empty position among the device's probes, or `None` (the programs would not look
/// further, so neither do we).
pub fn free_position(table: &[u64; DEVICE_INDEX_SIZE as usize], dev: u32) -> Option<u32> {
    (0..DEVICE_INDEX_PROBES).map(|p| device_index_pos(dev, p)).find(|&pos| table[pos as usize] == 0)
}

/// Adds `h` to a running sum. Slots stay wrapped `u32` sums, the way the kernel stores them, so
/// `wrapping_sub` of two sums gives exact deltas.
pub fn add_hist(sum: &mut OpHist, h: &OpHist) {
    sum.count = sum.count.wrapping_add(h.count);
    sum.device_ns = sum.device_ns.wrapping_add(h.device_ns);
    sum.queue_ns = sum.queue_ns.wrapping_add(h.queue_ns);
    sum.bytes = sum.bytes.wrapping_add(h.bytes);
    for i in 0..HIST_SLOTS {
        sum.device_slots[i] = sum.device_slots[i].wrapping_add(h.device_slots[i]);
        sum.queue_slots[i] = sum.queue_slots[i].wrapping_add(h.queue_slots[i]);
        sum.size_slots[i] = sum.size_slots[i].wrapping_add(h.size_slots[i]);
    }
}

/// One device's gauge from its two halves. The depth is their sum: requests issued before the
/// device got its slot were counted up in the fallback entry and are counted down in the dense
/// one. After that moment only the dense entry moves, so its peaks (signed: the dense count
/// starts below zero) were reached while the fallback entry held its current value, which is
/// added back. For each epoch parity the newer epoch wins, and the larger peak on a tie.
pub fn merge_inflight(dense: Option<KernelInflight>, fallback: Option<KernelInflight>) -> KernelInflight {
    let (d, f) = (dense.unwrap_or_default(), fallback.unwrap_or_default());
    let mut out = KernelInflight { inflight: d.inflight + f.inflight, ..KernelInflight::default() };
    for p in 0..2 {
        let dense_peak = d.peak[p] + f.inflight;
        let (epoch, peak) = match d.peak_epoch[p].cmp(&f.peak_epoch[p]) {
            std::cmp::Ordering::Greater => (d.peak_epoch[p], dense_peak),
            std::cmp::Ordering::Less => (f.peak_epoch[p], f.peak[p]),
            std::cmp::Ordering::Equal => (d.peak_epoch[p], dense_peak.max(f.peak[p])),
        };
        out.peak[p] = peak;
        out.peak_epoch[p] = epoch;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gauge(inflight: i64, peak: [i64; 2], peak_epoch: [u64; 2]) -> KernelInflight {
        KernelInflight { inflight, peak, peak_epoch }
    }

    #[test]
    fn depth_is_the_sum_and_dense_peaks_get_the_fallback_offset() {
        // 3 requests issued through the fallback before the slot existed; 2 of them completed
        // through the dense entry, and later the dense entry peaked at 4 in epoch 5.
        let m = merge_inflight(Some(gauge(-2 + 4, [4, 0], [5, 0])), Some(gauge(3, [3, 0], [4, 0])));
        assert_eq!(m.inflight, 5);
        assert_eq!((m.peak[0], m.peak_epoch[0]), (7, 5), "dense peak 4 while the fallback still held 3");
    }

    #[test]
    fn dense_peaks_below_zero_still_count() {
        // 16 requests in flight through the fallback when the slot was given; in epoch 8 the
        // true depth rose to 20 while the dense entry went from -16 up to +4, and in epoch 9 it
        // only reached 14 (dense -2): both are real peaks.
        let m = merge_inflight(Some(gauge(-16, [4, -2], [8, 9])), Some(gauge(16, [16, 0], [3, 0])));
        assert_eq!(m.inflight, 0);
        assert_eq!((m.peak[0], m.peak_epoch[0]), (20, 8));
        assert_eq!((m.peak[1], m.peak_epoch[1]), (14, 9));
    }

    #[test]
    fn the_newer_epoch_wins_and_ties_take_the_larger_peak() {
        let m = merge_inflight(Some(gauge(0, [2, 9], [6, 3])), Some(gauge(0, [5, 1], [4, 3])));
        assert_eq!((m.peak[0], m.peak_epoch[0]), (2, 6));
        assert_eq!((m.peak[1], m.peak_epoch[1]), (9, 3));
        let only_fallback = merge_inflight(None, Some(gauge(4, [6, 0], [2, 0])));
        assert_eq!((only_fallback.inflight, only_fallback.peak[0], only_fallback.peak_epoch[0]), (4, 6, 2));
        let only_dense = merge_inflight(Some(gauge(1, [0, 3], [0, 7])), None);
        assert_eq!((only_dense.inflight, only_dense.peak[1], only_dense.peak_epoch[1]), (1, 3, 7));
    }

    #[test]
    fn positions_follow_the_programs_probe_sequence() {
        let mut table = [0u64; DEVICE_INDEX_SIZE as usize];
        let dev = (259 << 20) | 1;
        let first = free_position(&table, dev).unwrap();
        assert_eq!(first, device_index_pos(dev, 0));
        // Fill every probe position with other devices: no position is left for this one.
        for p in 0..DEVICE_INDEX_PROBES {
            table[device_index_pos(dev, p) as usize] = device_index_entry(7 << 20, p);
        }
        assert_eq!(free_position(&table, dev), None);
        table[device_index_pos(dev, 2) as usize] = 0;
        assert_eq!(free_position(&table, dev), Some(device_index_pos(dev, 2)));
    }

    #[test]
    fn sums_wrap_like_the_kernel() {
        let mut a = OpHist::ZERO;
        a.count = 1;
        a.device_slots[3] = u32::MAX;
        let mut b = OpHist::ZERO;
        b.count = 2;
        b.device_slots[3] = 2;
        let mut sum = OpHist::ZERO;
        add_hist(&mut sum, &a);
        add_hist(&mut sum, &b);
        assert_eq!(sum.count, 3);
        assert_eq!(sum.device_slots[3], 1);
    }
}
