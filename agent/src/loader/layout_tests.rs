//! Unit tests of `layout.rs` on hand-built BTF.

use super::*;
use crate::btf::tests::BtfBuilder;

fn kernel_like(legacy: bool, rq_disk: bool) -> Btf {
    let mut b = BtfBuilder::new();
    let u32t = b.int("unsigned int", 4);
    let int = b.int("int", 4);
    let vp = b.ptr(0);
    let disk = b.structure("gendisk", 64, &[("major", int, 0), ("first_minor", int, 4)]);
    let disk_ptr = b.ptr(disk);
    b.structure("request_queue", 128, &[("queuedata", vp, 0), ("disk", disk_ptr, 96)]);
    let mut members = vec![("q", vp, 0), ("cmd_flags", u32t, 24), ("__data_len", u32t, 44)];
    if rq_disk {
        members.push(("rq_disk", disk_ptr, 88));
    }
    let req = b.structure("request", 256, &members);
    b.enumeration(
        "req_op",
        &[
            ("REQ_OP_READ", 0),
            ("REQ_OP_WRITE", 1),
            ("REQ_OP_FLUSH", 2),
            ("REQ_OP_DISCARD", 3),
            ("REQ_OP_SECURE_ERASE", 5),
        ],
    );
    b.enumeration("req_flag_bits", &[("__REQ_FAILFAST_DEV", 8)]);
    let rq = b.ptr(req);
    for tp in ["block_rq_issue", "block_rq_insert", "block_rq_requeue"] {
        let proto =
            if legacy { b.func_proto(&[("", vp), ("", vp), ("", rq)]) } else { b.func_proto(&[("", vp), ("", rq)]) };
        let fp = b.ptr(proto);
        b.typedef(&format!("btf_trace_{tp}"), fp);
    }
    let proto = b.func_proto(&[("", vp), ("", rq), ("", int), ("", u32t)]);
    let fp = b.ptr(proto);
    b.typedef("btf_trace_block_rq_complete", fp);
    Btf::parse(&b.build()).unwrap()
}

#[test]
fn layout_of_a_current_kernel() {
    let l = BtfLayout::from_btf(&kernel_like(false, false), Some((6, 18))).unwrap();
    assert_eq!((l.rq_q, l.rq_cmd_flags, l.rq_data_len, l.q_disk), (0, 24, 44, 96));
    assert_eq!((l.disk_major, l.disk_first_minor), (0, 4));
    assert_eq!(l.rq_disk, None);
    assert_eq!(l.req_op_mask, 0xff);
    assert_eq!(l.req_op_secure_erase, 5);
    assert!(l.legacy_q_arg.is_empty());
}

#[test]
fn fast_path_needs_every_field_and_flag() {
    let build = |with_rqf_stats: bool| {
        let mut b = BtfBuilder::new();
        let u32t = b.int("unsigned int", 4);
        let u64t = b.int("u64", 8);
        let u16t = b.int("unsigned short", 2);
        let vp = b.ptr(0);
        b.structure("request_queue", 128, &[("queue_flags", u64t, 32), ("disk", vp, 104)]);
        b.structure(
            "request",
            256,
            &[
                ("rq_flags", u32t, 28),
                ("state", u32t, 32),
                ("start_time_ns", u64t, 104),
                ("io_start_time_ns", u64t, 112),
                ("stats_sectors", u16t, 122),
            ],
        );
        b.enumeration("mq_rq_state", &[("MQ_RQ_IDLE", 0), ("MQ_RQ_IN_FLIGHT", 1), ("MQ_RQ_COMPLETE", 2)]);
        if with_rqf_stats {
            b.enumeration("rqf_flags", &[("__RQF_STATS", 11)]);
        }
        b.enumeration("qf", &[("QUEUE_FLAG_STATS", 7)]);
        b.enumeration("req_op", &[("REQ_OP_DRV_IN", 34), ("REQ_OP_DRV_OUT", 35)]);
        Btf::parse(&b.build()).unwrap()
    };
    let f = FastLayout::from_btf(&build(true), Some((6, 18))).expect("6.18-like layout");
    assert_eq!((f.rq_io_start_time, f.rqf_stats_mask, f.queue_flag_stats_mask), (112, 1 << 11, 1 << 7));
    assert_eq!((f.rq_stats_sectors, f.q_queue_flags, f.req_op_drv_out), (122, 32, 35));
    assert_eq!((f.rq_state, f.mq_rq_idle, f.flags_from), (32, 0, FlagSource::Btf));
    // RQF_STATS only a #define: the table's value, for kernels it covers, marked for the self-test.
    let f = FastLayout::from_btf(&build(false), Some((6, 1))).expect("6.1: RQF_STATS from the table");
    assert_eq!((f.rqf_stats_mask, f.queue_flag_stats_mask, f.flags_from), (1 << 17, 1 << 7, FlagSource::KernelTable));
    assert_eq!(FastLayout::from_btf(&build(false), Some((6, 8))), None, "6.8+ must carry __RQF_STATS in BTF");
    assert_eq!(FastLayout::from_btf(&build(false), None), None, "no version: no table");
    assert_eq!(table_bit("QUEUE_FLAG_STATS", Some((5, 10))), Some(20));
    assert_eq!(table_bit("QUEUE_FLAG_STATS", Some((6, 11))), None);
    assert_eq!(table_bit("RQF_STATS", Some((6, 7))), Some(17));
    assert_eq!(BtfLayout::from_btf(&kernel_like(false, false), Some((6, 18))).unwrap().fast, None);
}

#[test]
fn config_follows_the_layout_and_the_attribution_source() {
    use crate::loader::CgroupSource;
    let mut l = BtfLayout::from_btf(&kernel_like(false, true), Some((5, 10))).unwrap();
    let c = l.config(None);
    assert_eq!((c.rq_disk, c.rq_cmd_flags, c.req_op_secure_erase, c.fast_layout), (88, 24, 5, 0));
    assert_eq!((c.attribute_cgroups, c.bio_cgroup), (0, 0));
    assert_eq!(BtfLayout::from_btf(&kernel_like(false, false), None).unwrap().config(None).rq_disk, u64::MAX);
    l.fast = Some(FastLayout {
        rq_rq_flags: 28,
        rq_start_time: 104,
        rq_io_start_time: 112,
        rq_stats_sectors: 122,
        q_queue_flags: 32,
        queue_flag_stats_mask: 1 << 20,
        rqf_stats_mask: 1 << 17,
        flags_from: FlagSource::KernelTable,
        req_op_drv_in: 34,
        req_op_drv_out: 35,
        rq_state: 32,
        mq_rq_idle: 0,
    });
    let c = l.config(Some(CgroupSource::Bio));
    assert_eq!(
        (c.fast_layout, c.stats_flags_from_btf, c.rqf_stats_mask, c.queue_flag_stats_mask),
        (1, 0, 1 << 17, 1 << 20)
    );
    assert_eq!(c.bio_cgroup, 0, "no bio->bi_blkg in this layout: nothing to follow");
    let c = l.config(Some(CgroupSource::Task));
    assert_eq!((c.fast_layout, c.attribute_cgroups), (0, 1), "attribution by task keeps the start map");
    assert_eq!(core::mem::size_of::<Config>() % 8, 0);
}

#[test]
fn layout_of_a_pre_5_11_kernel() {
    let l = BtfLayout::from_btf(&kernel_like(true, true), Some((5, 10))).unwrap();
    assert_eq!(l.rq_disk, Some(88));
    assert_eq!(l.legacy_q_arg, vec!["block_rq_issue", "block_rq_insert", "block_rq_requeue"]);
}

#[test]
fn tag_marks_need_the_queue_number_and_both_tags() {
    let build = |tags: bool| {
        let mut b = BtfBuilder::new();
        let u32t = b.int("unsigned int", 4);
        let int = b.int("int", 4);
        let vp = b.ptr(0);
        let disk = b.structure("gendisk", 64, &[("major", int, 0), ("first_minor", int, 4)]);
        let disk_ptr = b.ptr(disk);
        b.structure("request_queue", 128, &[("disk", disk_ptr, 96)]);
        b.structure("blk_mq_hw_ctx", 512, &[("queue_num", u32t, 336)]);
        let mut members = vec![("q", vp, 0), ("mq_hctx", vp, 16), ("cmd_flags", u32t, 24), ("__data_len", u32t, 44)];
        if tags {
            members.extend([("tag", int, 32), ("internal_tag", int, 36)]);
        }
        let req = b.structure("request", 256, &members);
        b.enumeration("req_op", &[("REQ_OP_READ", 0), ("REQ_OP_WRITE", 1), ("REQ_OP_FLUSH", 2), ("REQ_OP_DISCARD", 3)]);
        b.enumeration("req_op2", &[("REQ_OP_SECURE_ERASE", 5)]);
        b.enumeration("req_flag_bits", &[("__REQ_FAILFAST_DEV", 8)]);
        let rq = b.ptr(req);
        for tp in ["block_rq_issue", "block_rq_insert", "block_rq_requeue"] {
            let proto = b.func_proto(&[("", vp), ("", rq)]);
            let fp = b.ptr(proto);
            b.typedef(&format!("btf_trace_{tp}"), fp);
        }
        let proto = b.func_proto(&[("", vp), ("", rq), ("", int), ("", u32t)]);
        let fp = b.ptr(proto);
        b.typedef("btf_trace_block_rq_complete", fp);
        Btf::parse(&b.build()).unwrap()
    };
    let c = BtfLayout::from_btf(&build(true), Some((6, 18))).unwrap().config(None);
    assert_eq!((c.queue_lines, c.rq_mq_hctx, c.hctx_queue_num), (1, 16, 336));
    assert_eq!((c.tag_marks, c.rq_tag, c.rq_internal_tag), (1, 32, 36));
    let c = BtfLayout::from_btf(&build(false), Some((6, 18))).unwrap().config(None);
    assert_eq!((c.queue_lines, c.tag_marks), (1, 0), "no tags: every request goes to the outstanding table");
    let mut l = BtfLayout::from_btf(&build(true), Some((6, 18))).unwrap();
    l.queue = None;
    assert_eq!(l.config(None).tag_marks, 0, "lines shared by every queue cannot hold one queue's tags");
}
