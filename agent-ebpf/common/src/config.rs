//! The one configuration global of the programs (`CONFIG` in `agent-ebpf/src/main.rs`).

/// Everything the programs need to know about the running kernel, filled in by userspace from
/// BTF (or tracefs) and written as the one `CONFIG` global before loading: struct offsets,
/// `enum req_op` values, flag masks, and which features are on. All fields are `u64` so the
/// struct has no padding and every read is one 8-byte load of a constant `.rodata` value (the
/// verifier knows frozen read-only map values, so offsets and switches are constants to it).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Config {
    // ---- struct request / request_queue / gendisk (BTF mode) ----
    pub rq_q: u64,
    pub rq_cmd_flags: u64,
    pub rq_data_len: u64,
    /// Offset of `request.rq_disk` (kernels before 5.17), `u64::MAX` when the disk is `q->disk`.
    pub rq_disk: u64,
    pub q_disk: u64,
    pub disk_major: u64,
    pub disk_first_minor: u64,
    // ---- enum req_op ----
    pub req_op_mask: u64,
    pub req_op_read: u64,
    pub req_op_write: u64,
    pub req_op_flush: u64,
    pub req_op_discard: u64,
    pub req_op_secure_erase: u64,
    pub req_op_drv_in: u64,
    pub req_op_drv_out: u64,
    // ---- fast path: the block layer's own stamps ----
    /// 1 when every field below exists (the fast path may be turned on, see
    /// [`crate::CONTROL_FAST_SINCE`]); the programs then also run the flag self-test.
    pub fast_layout: u64,
    pub rq_rq_flags: u64,
    pub rq_start_time: u64,
    pub rq_io_start_time: u64,
    pub rq_stats_sectors: u64,
    pub q_queue_flags: u64,
    /// `1 << QUEUE_FLAG_STATS` and `RQF_STATS`.
    pub queue_flag_stats_mask: u64,
    pub rqf_stats_mask: u64,
    /// 1 when both masks above come from BTF enumerators (6.8+/6.11+), 0 when from the
    /// kernel-version table (they are `#define`s there) and so confirmed by the self-test.
    pub stats_flags_from_btf: u64,
    /// `request.state` and `MQ_RQ_IDLE` (`enum mq_rq_state`).
    pub rq_state: u64,
    pub mq_rq_idle: u64,
    // ---- depth per hardware queue ----
    /// 1 when `request.mq_hctx` and `blk_mq_hw_ctx.queue_num` exist (every blk-mq kernel); 0
    /// puts every request on depth line 0.
    pub queue_lines: u64,
    pub rq_mq_hctx: u64,
    pub hctx_queue_num: u64,
    /// 1 when `request.tag` and `request.internal_tag` exist too (every blk-mq kernel): the fast
    /// path marks requests of low tags on their queue line ([`crate::TagMark`]) instead of the
    /// outstanding table.
    pub tag_marks: u64,
    pub rq_tag: u64,
    pub rq_internal_tag: u64,
    // ---- attribution ----
    /// 1: record the submitting task's cgroup in the start map (attribution by task).
    pub attribute_cgroups: u64,
    /// 1: take the cgroup from `rq->bio->bi_blkg` (attribution by bio).
    pub bio_cgroup: u64,
    pub rq_bio: u64,
    pub bio_blkg: u64,
    pub blkg_blkcg: u64,
    /// `offsetof(struct blkcg, css) + offsetof(struct cgroup_subsys_state, cgroup)`.
    pub blkcg_cgroup: u64,
    pub cgroup_kn: u64,
    pub kn_id: u64,
    // ---- classic tracepoint record offsets (tracefs format files) ----
    pub tp_insert_dev: u64,
    pub tp_insert_sector: u64,
    pub tp_issue_dev: u64,
    pub tp_issue_sector: u64,
    pub tp_issue_bytes: u64,
    pub tp_issue_rwbs: u64,
    pub tp_complete_dev: u64,
    pub tp_complete_sector: u64,
    pub tp_requeue_dev: u64,
    pub tp_requeue_sector: u64,
}

impl Config {
    /// Nothing known: every feature off, `enum req_op` as in every kernel since 4.10.
    pub const DEFAULT: Config = Config {
        rq_q: 0,
        rq_cmd_flags: 0,
        rq_data_len: 0,
        rq_disk: u64::MAX,
        q_disk: 0,
        disk_major: 0,
        disk_first_minor: 0,
        req_op_mask: 0xff,
        req_op_read: 0,
        req_op_write: 1,
        req_op_flush: 2,
        req_op_discard: 3,
        req_op_secure_erase: 5,
        req_op_drv_in: 34,
        req_op_drv_out: 35,
        fast_layout: 0,
        rq_rq_flags: 0,
        rq_start_time: 0,
        rq_io_start_time: 0,
        rq_stats_sectors: 0,
        q_queue_flags: 0,
        queue_flag_stats_mask: 0,
        rqf_stats_mask: 0,
        stats_flags_from_btf: 0,
        rq_state: 0,
        mq_rq_idle: 0,
        queue_lines: 0,
        rq_mq_hctx: 0,
        hctx_queue_num: 0,
        tag_marks: 0,
        rq_tag: 0,
        rq_internal_tag: 0,
        attribute_cgroups: 0,
        bio_cgroup: 0,
        rq_bio: 0,
        bio_blkg: 0,
        blkg_blkcg: 0,
        blkcg_cgroup: 0,
        cgroup_kn: 0,
        kn_id: 0,
        tp_insert_dev: 0,
        tp_insert_sector: 0,
        tp_issue_dev: 0,
        tp_issue_sector: 0,
        tp_issue_bytes: 0,
        tp_issue_rwbs: 0,
        tp_complete_dev: 0,
        tp_complete_sector: 0,
        tp_requeue_dev: 0,
        tp_requeue_sector: 0,
    };
}

impl Default for Config {
    fn default() -> Self {
        Config::DEFAULT
    }
}

#[cfg(feature = "user")]
// SAFETY: repr(C), only u64 fields: no padding, every bit pattern valid.
unsafe impl aya::Pod for Config {}
