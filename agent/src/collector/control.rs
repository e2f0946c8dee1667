//! The control path: what the agent writes into the kernel's maps — the interval epoch, dense
//! device slots and the eviction of idle attribution entries — and the judgement of a depth
//! gauge that lost completions (repaired in userspace, never by writing the gauge). (Arming the
//! depth gauge happens once, in the loader, before the first interval.)

use std::{
    collections::{BTreeSet, HashMap},
    time::{Duration, Instant},
};

use blkio_agent_common::{
    CgroupKey, DEVICE_INDEX_PROBES, DEVICE_INDEX_SIZE, IGNORED_SLOT, MAX_DENSE_DEVICES, device_index_entry,
    device_index_pos,
};

use super::maps::MapControl;
use crate::error::Result;

/// Which devices have a dense slot. The programs find a device's histograms and gauge through
/// `DEVICE_INDEX`, an open-addressing table that only this writes: a device with a slot there is
/// counted in the dense arrays (inlined array lookups on the per-I/O path), any other device in
/// the fallback hash maps. Slots are never reused while the agent runs: a slot's kernel entries
/// are cumulative and its device may come back.
///
/// A device the device filter excludes gets an `IGNORED_SLOT` entry instead of a slot: the
/// programs then skip its requests, so it costs neither the fallback path's atomics nor fallback
/// entries (160 histogram keys: 32 devices' worth) that new reported devices need. Its fallback
/// entries from before the mark are removed one interval later, when no program can still be
/// updating them.
pub struct DenseSlots {
    /// Our copy of `DEVICE_INDEX` (the kernel never writes it).
    table: [u64; DEVICE_INDEX_SIZE as usize],
    /// Device of each slot given so far.
    slots: Vec<u32>,
    /// Devices that did not fit (no slot left or no free position within the probes).
    unplaced: Vec<u32>,
    /// Devices marked ignored.
    ignored: Vec<u32>,
    /// Ignored devices whose fallback entries go at the next [`DenseSlots::assign`].
    reclaim: Vec<u32>,
}

/// What one [`DenseSlots::assign`] did.
#[derive(Debug, Default, PartialEq)]
pub struct Assigned {
    /// Devices given a dense slot.
    pub dense: Vec<u32>,
    /// Devices marked ignored.
    pub ignored: Vec<u32>,
}

impl Default for DenseSlots {
    fn default() -> Self {
        DenseSlots {
            table: [0; DEVICE_INDEX_SIZE as usize],
            slots: Vec::new(),
            unplaced: Vec::new(),
            ignored: Vec::new(),
            reclaim: Vec::new(),
        }
    }
}

impl DenseSlots {
    /// `devices()[i]` is the device of slot `i`.
    pub fn devices(&self) -> &[u32] {
        &self.slots
    }

    pub fn slot_of(&self, dev: u32) -> Option<u32> {
        self.slots.iter().position(|&d| d == dev).map(|s| s as u32)
    }

    /// Gives every candidate (a device seen in the fallback maps) that `wanted` accepts (the
    /// device filter) a slot, while slots and table positions last, and marks the ones it
    /// refuses ignored. `wanted` returns `None` while a device has no name yet (not in
    /// diskstats): it is decided later, as a device that must not be ignored for good.
    pub fn assign(
        &mut self,
        maps: &mut impl MapControl,
        candidates: &BTreeSet<u32>,
        mut wanted: impl FnMut(u32) -> Option<bool>,
    ) -> Result<Assigned> {
        for dev in std::mem::take(&mut self.reclaim) {
            maps.remove_fallback(dev)?;
        }
        let mut done = Assigned::default();
        for &dev in candidates {
            if self.slots.contains(&dev) || self.unplaced.contains(&dev) || self.ignored.contains(&dev) {
                continue;
            }
            match wanted(dev) {
                None => continue,
                Some(true) => {}
                Some(false) => {
                    let Some(pos) = free_position(&self.table, dev) else {
                        tracing::debug!(
                            device = dev,
                            "no free device-index position; the excluded device stays on the fallback maps"
                        );
                        self.unplaced.push(dev);
                        continue;
                    };
                    let entry = device_index_entry(dev, IGNORED_SLOT);
                    maps.set_index(pos, entry)?;
                    self.table[pos as usize] = entry;
                    self.ignored.push(dev);
                    self.reclaim.push(dev);
                    done.ignored.push(dev);
                    continue;
                }
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
            maps.set_index(pos, entry)?;
            self.table[pos as usize] = entry;
            self.slots.push(dev);
            done.dense.push(dev);
        }
        Ok(done)
    }
}

/// The first empty position among the device's probes, or `None` (the programs would not look
/// further, so neither do we).
pub fn free_position(table: &[u64; DEVICE_INDEX_SIZE as usize], dev: u32) -> Option<u32> {
    (0..DEVICE_INDEX_PROBES).map(|p| device_index_pos(dev, p)).find(|&pos| table[pos as usize] == 0)
}

/// Judges gauges that lost completions. Our depth counts requests whose issue we saw and whose
/// completion we have not. If the kernel says the device is idle, nothing completed in two
/// intervals, and the raw gauge has not moved, their completions were lost (the kernel skipped
/// the programs): the gauge's value is set aside (`Reconcile::gauge_reset`) and the requests
/// counted in `inflight_resync`.
#[derive(Default)]
pub struct Resync {
    /// Raw kernel gauge at the previous read.
    prev_raw: HashMap<u32, i64>,
    /// Consecutive stale intervals per device.
    drift: HashMap<u32, u32>,
}

impl Resync {
    /// `true` when the device's gauge (`raw`) must be reset now.
    pub fn stale(&mut self, dev: u32, raw: i64, sysfs: Option<u64>, completed: u64) -> bool {
        let prev_raw = self.prev_raw.insert(dev, raw);
        let stale = raw != 0 && sysfs == Some(0) && completed == 0 && prev_raw == Some(raw);
        if !stale {
            self.drift.remove(&dev);
            return false;
        }
        let n = self.drift.entry(dev).or_insert(0);
        *n += 1;
        if *n < 2 {
            return false;
        }
        self.drift.remove(&dev);
        true
    }

    /// After a reset: the gauge reads 0 from now on.
    pub fn was_reset(&mut self, dev: u32) {
        self.prev_raw.insert(dev, 0);
    }
}

/// Attribution entries without I/O for this long are evicted from the kernel map.
pub const CGROUP_IDLE_EVICT: Duration = Duration::from_secs(600);

/// Pods come and go; their entries would fill the kernel map for good. An entry idle for
/// [`CGROUP_IDLE_EVICT`] is removed (with its baseline, so a cgroup that becomes active again
/// restarts from zero, still exact). Only an I/O completing in the instant between the read and
/// the removal could be lost.
pub struct Eviction {
    idle_since: HashMap<CgroupKey, Instant>,
    pub after: Duration,
}

impl Default for Eviction {
    fn default() -> Self {
        Eviction { idle_since: HashMap::new(), after: CGROUP_IDLE_EVICT }
    }
}

impl Eviction {
    /// The entry moved: not idle.
    pub fn active(&mut self, key: &CgroupKey) {
        self.idle_since.remove(key);
    }

    /// The entry did not move at `now`: `true` when it has been idle long enough to go.
    pub fn idle(&mut self, key: CgroupKey, now: Instant) -> bool {
        let since = *self.idle_since.entry(key).or_insert(now);
        if now.duration_since(since) >= self.after {
            self.idle_since.remove(&key);
            return true;
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
    fn resync_needs_two_idle_intervals_of_an_unchanged_gauge() {
        let mut r = Resync::default();
        assert!(!r.stale(1, 3, Some(0), 0), "first sight: no previous value");
        assert!(!r.stale(1, 3, Some(0), 0), "one interval of disagreement");
        assert!(r.stale(1, 3, Some(0), 0), "two: reset");
        assert!(!r.stale(2, 3, Some(0), 0) && !r.stale(2, 3, Some(1), 0), "busy per sysfs");
        assert!(!r.stale(2, 3, Some(0), 0) && !r.stale(2, 3, Some(0), 5) && !r.stale(2, 3, Some(0), 0), "completions");
    }
}
