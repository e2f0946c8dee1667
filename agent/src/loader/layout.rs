//! The kernel layout the programs need, found in the running kernel's BTF (or tracefs format
//! files) and turned into the one [`Config`] the programs read.

use std::path::Path;

use blkio_agent_common::Config;

use super::HOOKS;
use crate::{
    btf::Btf,
    error::{Error, Result},
    tracefs,
};

/// Offsets and constants for BTF mode, all taken from the running kernel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BtfLayout {
    pub rq_q: u64,
    pub rq_cmd_flags: u64,
    pub rq_data_len: u64,
    /// `Some` on kernels before 5.17, which had `request->rq_disk`.
    pub rq_disk: Option<u64>,
    pub q_disk: u64,
    pub disk_major: u64,
    pub disk_first_minor: u64,
    pub req_op_mask: u32,
    pub req_op_read: u32,
    pub req_op_write: u32,
    pub req_op_flush: u32,
    pub req_op_discard: u32,
    pub req_op_secure_erase: u32,
    /// Tracepoints whose `rq` is the second argument (before 5.11: `(q, rq)`).
    pub legacy_q_arg: Vec<&'static str>,
    /// What the no-start-map fast path needs; `None` when this kernel lacks any of it.
    pub fast: Option<FastLayout>,
    /// What attribution by bio needs; `None` without `CONFIG_BLK_CGROUP` (no `bio->bi_blkg`).
    pub bio_cgroup: Option<BioCgroupLayout>,
    /// vmlinux type id of each hook's `btf_trace_<tracepoint>` typedef (the `tp_btf` attach id).
    pub attach_ids: Vec<(&'static str, u32)>,
    /// `request.mq_hctx` and `blk_mq_hw_ctx.queue_num`: the depth line of a request's hardware
    /// queue (`blkio_agent_common::QUEUE_LINES`); `None` puts every request on line 0.
    pub queue: Option<(u64, u64)>,
    /// `request.tag` and `request.internal_tag`: with `queue`, the fast path's tag marks
    /// (`blkio_agent_common::TagMark`).
    pub tags: Option<(u64, u64)>,
}

/// `rq->bio->bi_blkg->blkcg->css.cgroup->kn->id` (see `agent-ebpf/src/fast.rs`, `bio_cgroup`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BioCgroupLayout {
    pub rq_bio: u64,
    pub bio_blkg: u64,
    pub blkg_blkcg: u64,
    pub blkcg_cgroup: u64,
    pub cgroup_kn: u64,
    pub kn_id: u64,
}

impl BioCgroupLayout {
    fn from_btf(btf: &Btf) -> Option<BioCgroupLayout> {
        let m = |s: &str, f: &str| btf.member_offset(s, f).ok();
        Some(BioCgroupLayout {
            rq_bio: m("request", "bio")?,
            bio_blkg: m("bio", "bi_blkg")?,
            blkg_blkcg: m("blkcg_gq", "blkcg")?,
            blkcg_cgroup: m("blkcg", "css")? + m("cgroup_subsys_state", "cgroup")?,
            cgroup_kn: m("cgroup", "kn")?,
            kn_id: m("kernfs_node", "id")?,
        })
    }
}

/// Where the `QUEUE_FLAG_STATS` and `RQF_STATS` values came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FlagSource {
    /// Both are enumerators in this kernel's BTF (`RQF_STATS` since 6.8, `QUEUE_FLAG_STATS`
    /// since 6.11): trusted as they are.
    Btf,
    /// At least one is a `#define` here, invisible in BTF: the value comes from [`STATS_FLAG_TABLE`]
    /// and the fast path waits for the self-test (`agent-ebpf/src/fast.rs`, `self_test`).
    KernelTable,
}

impl FlagSource {
    pub fn as_str(self) -> &'static str {
        match self {
            FlagSource::Btf => "btf",
            FlagSource::KernelTable => "kernel-table",
        }
    }
}

/// Values of the two stats flags on kernels that only `#define` them, by release range
/// `[from, until)`, read from the kernel sources:
/// - `RQF_STATS` is `(1 << 17)` in every release from 5.0 through v6.7, in include/linux/blkdev.h
///   (<https://elixir.bootlin.com/linux/v5.10/source/include/linux/blkdev.h>) and, from 5.16,
///   include/linux/blk-mq.h (<https://elixir.bootlin.com/linux/v6.1/source/include/linux/blk-mq.h>,
///   <https://elixir.bootlin.com/linux/v6.6/source/include/linux/blk-mq.h>); 6.8 made it
///   `1 << __RQF_STATS`, in BTF.
/// - `QUEUE_FLAG_STATS` is `20` in include/linux/blkdev.h in every release from 5.0 through v6.10
///   (<https://elixir.bootlin.com/linux/v5.10/source/include/linux/blkdev.h>,
///   <https://elixir.bootlin.com/linux/v6.8/source/include/linux/blkdev.h>); 6.11 made the queue
///   flags an enum, in BTF.
///
/// (Older releases are left out: BTF tracepoints need 5.5 anyway.) A kernel outside these ranges
/// without the enumerators gets no fast path. A distribution kernel could patch these values; the
/// self-test catches that.
pub const STATS_FLAG_TABLE: [TableFlag; 2] = [
    TableFlag { name: "RQF_STATS", from: (5, 0), until: (6, 8), bit: 17 },
    TableFlag { name: "QUEUE_FLAG_STATS", from: (5, 0), until: (6, 11), bit: 20 },
];

/// A flag's bit number for kernel releases `from <= major.minor < until`.
pub struct TableFlag {
    pub name: &'static str,
    pub from: (u32, u32),
    pub until: (u32, u32),
    pub bit: u32,
}

fn table_bit(flag: &str, version: Option<(u32, u32)>) -> Option<u32> {
    let v = version?;
    STATS_FLAG_TABLE.iter().find(|t| t.name == flag && v >= t.from && v < t.until).map(|t| t.bit)
}

/// Fields for the fast path (`agent-ebpf/src/fast.rs`): the block layer's own timestamps.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FastLayout {
    pub rq_rq_flags: u64,
    pub rq_start_time: u64,
    pub rq_io_start_time: u64,
    pub rq_stats_sectors: u64,
    pub q_queue_flags: u64,
    pub queue_flag_stats_mask: u64,
    pub rqf_stats_mask: u32,
    pub flags_from: FlagSource,
    pub req_op_drv_in: u32,
    pub req_op_drv_out: u32,
    /// `request.state` and `MQ_RQ_IDLE`: a requeue counts down only a started request.
    pub rq_state: u64,
    pub mq_rq_idle: u32,
}

impl FastLayout {
    /// `None` unless every field exists in this kernel's BTF and both stats flags are known,
    /// from BTF enumerators or, for the kernel `version` (`major.minor`), from the table.
    fn from_btf(btf: &Btf, version: Option<(u32, u32)>) -> Option<FastLayout> {
        let m = |s: &str, f: &str| btf.member_offset(s, f).ok();
        let e = |n: &str| btf.enum_value(n).ok();
        let rqf_btf = e("__RQF_STATS").map(|b| b as u32);
        let qf_btf = e("QUEUE_FLAG_STATS").map(|b| b as u32);
        let flags_from = if rqf_btf.is_some() && qf_btf.is_some() { FlagSource::Btf } else { FlagSource::KernelTable };
        let rqf_bit = rqf_btf.or_else(|| table_bit("RQF_STATS", version))?;
        let qf_bit = qf_btf.or_else(|| table_bit("QUEUE_FLAG_STATS", version))?;
        let l = FastLayout {
            rq_rq_flags: m("request", "rq_flags")?,
            rq_start_time: m("request", "start_time_ns")?,
            rq_io_start_time: m("request", "io_start_time_ns")?,
            rq_stats_sectors: m("request", "stats_sectors")?,
            q_queue_flags: m("request_queue", "queue_flags")?,
            queue_flag_stats_mask: 1u64.checked_shl(qf_bit)?,
            rqf_stats_mask: 1u32.checked_shl(rqf_bit)?,
            flags_from,
            req_op_drv_in: e("REQ_OP_DRV_IN")? as u32,
            req_op_drv_out: e("REQ_OP_DRV_OUT")? as u32,
            rq_state: m("request", "state")?,
            mq_rq_idle: e("MQ_RQ_IDLE")? as u32,
        };
        Some(l)
    }
}

impl BtfLayout {
    /// `version`: the running kernel's `major.minor`, only used for the stats flags that older
    /// kernels do not carry in BTF ([`STATS_FLAG_TABLE`]).
    pub fn from_btf(btf: &Btf, version: Option<(u32, u32)>) -> Result<BtfLayout> {
        let rq_disk =
            btf.has_member("request", "rq_disk").then(|| btf.member_offset("request", "rq_disk")).transpose()?;
        let q_disk = if rq_disk.is_some() { 0 } else { btf.member_offset("request_queue", "disk")? };
        // REQ_OP_BITS is a #define; the first flag bit after the op, __REQ_FAILFAST_DEV, is
        // declared as `= REQ_OP_BITS` in enum req_flag_bits, so BTF carries it.
        let op_bits = btf.enum_value("__REQ_FAILFAST_DEV")?;
        let op = |name: &str| btf.enum_value(name).map(|v| v as u32);
        let mut legacy_q_arg = Vec::new();
        let mut attach_ids = Vec::new();
        for hook in HOOKS.iter() {
            let args = match btf.tracepoint_args(hook.tracepoint) {
                Ok(args) => args,
                Err(_) if !hook.required => continue,
                Err(e) => return Err(e),
            };
            if let Some(id) = btf.typedef_id(&format!("btf_trace_{}", hook.tracepoint)) {
                attach_ids.push((hook.tracepoint, id));
            }
            match args.position("struct request *") {
                Some(0) => {}
                Some(1) if hook.tracepoint != "block_rq_complete" => legacy_q_arg.push(hook.tracepoint),
                _ => {
                    return Err(Error::BtfMissing(format!(
                        "`struct request *` argument in {} (its arguments are {:?})",
                        hook.tracepoint, args.types
                    )));
                }
            }
            // (rq, error, nr_bytes) since 2.6; the error's type changed (int -> blk_status_t).
            if hook.tracepoint == "block_rq_complete" && (args.types.len() != 3 || args.types[2] != "unsigned int") {
                return Err(Error::BtfMissing(format!(
                    "`unsigned int nr_bytes` third argument in block_rq_complete (its arguments are {:?})",
                    args.types
                )));
            }
        }
        let rq_q = btf.member_offset("request", "q")?;
        let rq_cmd_flags = btf.member_offset("request", "cmd_flags")?;
        let rq_data_len = btf.member_offset("request", "__data_len")?;
        let fast = FastLayout::from_btf(btf, version);
        Ok(BtfLayout {
            rq_q,
            rq_cmd_flags,
            rq_data_len,
            fast,
            bio_cgroup: BioCgroupLayout::from_btf(btf),
            rq_disk,
            q_disk,
            disk_major: btf.member_offset("gendisk", "major")?,
            disk_first_minor: btf.member_offset("gendisk", "first_minor")?,
            req_op_mask: ((1u64 << op_bits) - 1) as u32,
            req_op_read: op("REQ_OP_READ")?,
            req_op_write: op("REQ_OP_WRITE")?,
            req_op_flush: op("REQ_OP_FLUSH")?,
            req_op_discard: op("REQ_OP_DISCARD")?,
            req_op_secure_erase: op("REQ_OP_SECURE_ERASE")?,
            legacy_q_arg,
            attach_ids,
            queue: btf
                .member_offset("request", "mq_hctx")
                .ok()
                .zip(btf.member_offset("blk_mq_hw_ctx", "queue_num").ok()),
            tags: btf.member_offset("request", "tag").ok().zip(btf.member_offset("request", "internal_tag").ok()),
        })
    }
}

impl BtfLayout {
    /// The programs' configuration for BTF mode. `attribution`: the source in effect.
    pub fn config(&self, attribution: Option<super::CgroupSource>) -> Config {
        use super::CgroupSource;
        let mut c = Config {
            rq_q: self.rq_q,
            rq_cmd_flags: self.rq_cmd_flags,
            rq_data_len: self.rq_data_len,
            rq_disk: self.rq_disk.unwrap_or(u64::MAX),
            q_disk: self.q_disk,
            disk_major: self.disk_major,
            disk_first_minor: self.disk_first_minor,
            req_op_mask: u64::from(self.req_op_mask),
            req_op_read: u64::from(self.req_op_read),
            req_op_write: u64::from(self.req_op_write),
            req_op_flush: u64::from(self.req_op_flush),
            req_op_discard: u64::from(self.req_op_discard),
            req_op_secure_erase: u64::from(self.req_op_secure_erase),
            attribute_cgroups: u64::from(attribution == Some(CgroupSource::Task)),
            ..Config::DEFAULT
        };
        if let Some((rq_mq_hctx, hctx_queue_num)) = self.queue {
            c.queue_lines = 1;
            c.rq_mq_hctx = rq_mq_hctx;
            c.hctx_queue_num = hctx_queue_num;
            if let Some((rq_tag, rq_internal_tag)) = self.tags {
                c.tag_marks = 1;
                c.rq_tag = rq_tag;
                c.rq_internal_tag = rq_internal_tag;
            }
        }
        if let (Some(b), Some(CgroupSource::Bio)) = (&self.bio_cgroup, attribution) {
            c.bio_cgroup = 1;
            c.rq_bio = b.rq_bio;
            c.bio_blkg = b.bio_blkg;
            c.blkg_blkcg = b.blkg_blkcg;
            c.blkcg_cgroup = b.blkcg_cgroup;
            c.cgroup_kn = b.cgroup_kn;
            c.kn_id = b.kn_id;
        }
        // Attribution by task needs the submitting cgroup kept per request until completion.
        if let Some(f) = self.fast.as_ref().filter(|_| attribution != Some(CgroupSource::Task)) {
            c.fast_layout = 1;
            c.rq_rq_flags = f.rq_rq_flags;
            c.rq_start_time = f.rq_start_time;
            c.rq_io_start_time = f.rq_io_start_time;
            c.rq_stats_sectors = f.rq_stats_sectors;
            c.q_queue_flags = f.q_queue_flags;
            c.queue_flag_stats_mask = f.queue_flag_stats_mask;
            c.rqf_stats_mask = u64::from(f.rqf_stats_mask);
            c.stats_flags_from_btf = u64::from(f.flags_from == FlagSource::Btf);
            c.req_op_drv_in = u64::from(f.req_op_drv_in);
            c.req_op_drv_out = u64::from(f.req_op_drv_out);
            c.rq_state = f.rq_state;
            c.mq_rq_idle = u64::from(f.mq_rq_idle);
        }
        c
    }
}

/// Record offsets for classic tracepoints, from tracefs format files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TracepointLayout {
    pub config: Config,
}

impl TracepointLayout {
    pub fn from_tracefs(root: &Path) -> Result<TracepointLayout> {
        let mut c = Config::DEFAULT;
        let wanted: [(&str, &mut [(&str, &mut u64)]); 4] = [
            (
                "block_rq_issue",
                &mut [
                    ("dev", &mut c.tp_issue_dev),
                    ("sector", &mut c.tp_issue_sector),
                    ("bytes", &mut c.tp_issue_bytes),
                    ("rwbs", &mut c.tp_issue_rwbs),
                ],
            ),
            ("block_rq_complete", &mut [("dev", &mut c.tp_complete_dev), ("sector", &mut c.tp_complete_sector)]),
            ("block_rq_insert", &mut [("dev", &mut c.tp_insert_dev), ("sector", &mut c.tp_insert_sector)]),
            ("block_rq_requeue", &mut [("dev", &mut c.tp_requeue_dev), ("sector", &mut c.tp_requeue_sector)]),
        ];
        for (tp, fields) in wanted {
            let format = tracefs::format(root, "block", tp)?;
            for (field, slot) in fields.iter_mut() {
                let f = format.field(tp, field)?;
                let expected = match *field {
                    "dev" | "bytes" => Some(4),
                    "sector" => Some(8),
                    _ => None,
                };
                if expected.is_some_and(|size| size != f.size) || (*field == "rwbs" && f.size < 8) {
                    return Err(Error::Other(format!("tracepoint {tp} field {field} has unexpected size {}", f.size)));
                }
                **slot = f.offset;
            }
        }
        Ok(TracepointLayout { config: c })
    }
}

#[cfg(test)]
#[path = "layout_tests.rs"]
mod tests;
