//! A minimal reader of kernel BTF (`/sys/kernel/btf/vmlinux`): struct member offsets, enum
//! values and tracepoint prototypes — what the eBPF programs need in place of CO-RE, which aya
//! does not offer for Rust programs.
//!
//! Format: <https://docs.kernel.org/bpf/btf.html> and include/uapi/linux/btf.h
//! <https://github.com/torvalds/linux/blob/v6.18/include/uapi/linux/btf.h>

use std::path::Path;

use crate::error::{Error, Result};

const BTF_MAGIC: u16 = 0xeb9f;

const KIND_INT: u32 = 1;
const KIND_PTR: u32 = 2;
const KIND_ARRAY: u32 = 3;
const KIND_STRUCT: u32 = 4;
const KIND_UNION: u32 = 5;
const KIND_ENUM: u32 = 6;
const KIND_FWD: u32 = 7;
const KIND_TYPEDEF: u32 = 8;
const KIND_VOLATILE: u32 = 9;
const KIND_CONST: u32 = 10;
const KIND_RESTRICT: u32 = 11;
const KIND_FUNC: u32 = 12;
const KIND_FUNC_PROTO: u32 = 13;
const KIND_VAR: u32 = 14;
const KIND_DATASEC: u32 = 15;
const KIND_FLOAT: u32 = 16;
const KIND_DECL_TAG: u32 = 17;
const KIND_TYPE_TAG: u32 = 18;
const KIND_ENUM64: u32 = 19;

/// A type, as positions in the raw blob: members, enumerators and parameters are decoded on
/// demand, so a parsed vmlinux (~150k types) costs a few MB instead of tens.
#[derive(Debug, Clone, Copy)]
enum Type {
    /// `at`: byte offset of the first member record.
    Struct {
        name: u32,
        at: u32,
        vlen: u16,
        kind_flag: bool,
    },
    Ptr {
        target: u32,
    },
    Typedef {
        name: u32,
        target: u32,
    },
    /// const/volatile/restrict/type_tag: transparent for our purposes.
    Modifier {
        target: u32,
    },
    Enum {
        at: u32,
        vlen: u16,
        wide: bool,
    },
    FuncProto {
        at: u32,
        vlen: u16,
    },
    Int {
        name: u32,
    },
    Other,
}

/// Parsed type section of a BTF blob.
pub struct Btf {
    data: Vec<u8>,
    strings: std::ops::Range<usize>,
    /// Index = type id (id 0 is `void`).
    types: Vec<Type>,
}

/// The arguments of a tracepoint as a `tp_btf` program sees them (the leading `void *__data`
/// of the `btf_trace_*` typedef is not an argument there). Kernel BTF leaves these parameters
/// unnamed, so each is described by its type: `struct request *`, `unsigned int`, a typedef
/// name such as `blk_status_t`, ...
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TracepointArgs {
    pub types: Vec<String>,
}

impl TracepointArgs {
    pub fn position(&self, type_desc: &str) -> Option<usize> {
        self.types.iter().position(|n| n == type_desc)
    }
}

impl Btf {
    pub fn from_file(path: &Path) -> Result<Btf> {
        let data = std::fs::read(path).map_err(|e| Error::read(path, e))?;
        Btf::parse_owned(data).map_err(|detail| Error::Parse { what: "BTF", path: path.into(), detail })
    }

    pub fn parse(data: &[u8]) -> std::result::Result<Btf, String> {
        Btf::parse_owned(data.to_vec())
    }

    fn parse_owned(data: Vec<u8>) -> std::result::Result<Btf, String> {
        let u16_at = |o: usize| data.get(o..o + 2).map(|b| u16::from_le_bytes([b[0], b[1]]));
        let u32_at = |o: usize| data.get(o..o + 4).map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]));
        if u16_at(0) != Some(BTF_MAGIC) {
            return Err("bad magic (not little-endian BTF)".into());
        }
        let hdr_len = u32_at(4).ok_or("short header")? as usize;
        let type_off = u32_at(8).ok_or("short header")? as usize;
        let type_len = u32_at(12).ok_or("short header")? as usize;
        let str_off = u32_at(16).ok_or("short header")? as usize;
        let str_len = u32_at(20).ok_or("short header")? as usize;
        let strings = hdr_len + str_off..hdr_len + str_off + str_len;
        if strings.end > data.len() {
            return Err("string section out of bounds".into());
        }
        let start = hdr_len + type_off;
        let end = start + type_len;
        if end > data.len() {
            return Err("type section out of bounds".into());
        }
        let mut types = vec![Type::Other];
        let mut o = start;
        while o < end {
            let rd = |at: usize| u32_at(at).ok_or_else(|| format!("truncated type at byte {at}"));
            let name = rd(o)?;
            let info = rd(o + 4)?;
            let size_or_type = rd(o + 8)?;
            o += 12;
            let vlen = (info & 0xffff) as usize;
            let kind = (info >> 24) & 0x1f;
            let kind_flag = info >> 31 == 1;
            let at = o as u32;
            let v16 = vlen as u16;
            let (ty, trailing) = match kind {
                KIND_INT => (Type::Int { name }, 4),
                KIND_PTR => (Type::Ptr { target: size_or_type }, 0),
                KIND_ARRAY => (Type::Other, 12),
                KIND_STRUCT | KIND_UNION => (Type::Struct { name, at, vlen: v16, kind_flag }, 12 * vlen),
                KIND_ENUM => (Type::Enum { at, vlen: v16, wide: false }, 8 * vlen),
                KIND_ENUM64 => (Type::Enum { at, vlen: v16, wide: true }, 12 * vlen),
                KIND_FWD | KIND_FUNC | KIND_FLOAT => (Type::Other, 0),
                KIND_TYPEDEF => (Type::Typedef { name, target: size_or_type }, 0),
                KIND_VOLATILE | KIND_CONST | KIND_RESTRICT | KIND_TYPE_TAG => {
                    (Type::Modifier { target: size_or_type }, 0)
                }
                KIND_FUNC_PROTO => (Type::FuncProto { at, vlen: v16 }, 8 * vlen),
                KIND_VAR | KIND_DECL_TAG => (Type::Other, 4),
                KIND_DATASEC => (Type::Other, 12 * vlen),
                other => return Err(format!("unknown BTF kind {other}")),
            };
            o += trailing;
            if o > end {
                return Err(format!("truncated type at byte {o}"));
            }
            types.push(ty);
        }
        Ok(Btf { data, strings, types })
    }

    fn u32_at(&self, o: u32) -> u32 {
        let o = o as usize;
        self.data.get(o..o + 4).map_or(0, |b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn name(&self, off: u32) -> &str {
        let s = self.data.get(self.strings.start + off as usize..self.strings.end).unwrap_or(&[]);
        let end = s.iter().position(|&b| b == 0).unwrap_or(s.len());
        std::str::from_utf8(&s[..end]).unwrap_or("")
    }

    fn get(&self, id: u32) -> Type {
        self.types.get(id as usize).copied().unwrap_or(Type::Other)
    }

    fn strip(&self, mut id: u32) -> u32 {
        for _ in 0..32 {
            match self.get(id) {
                Type::Typedef { target, .. } | Type::Modifier { target } => id = target,
                _ => break,
            }
        }
        id
    }

    /// Members of a struct/union: (name offset, type id, bit offset).
    fn members(&self, at: u32, vlen: u16, kind_flag: bool) -> impl Iterator<Item = (u32, u32, u32)> + '_ {
        (0..u32::from(vlen)).map(move |i| {
            let o = at + 12 * i;
            let raw_off = self.u32_at(o + 8);
            // With kind_flag the offset packs the bitfield size in its top byte.
            let bits = if kind_flag { raw_off & 0x00ff_ffff } else { raw_off };
            (self.u32_at(o), self.u32_at(o + 4), bits)
        })
    }

    /// The struct named `name` that has members (the kernel may also carry empty forward
    /// declarations under the same name).
    fn find_struct(&self, name: &str) -> Option<(u32, u16, bool)> {
        self.types.iter().find_map(|t| match *t {
            Type::Struct { name: n, at, vlen, kind_flag } if vlen > 0 && self.name(n) == name => {
                Some((at, vlen, kind_flag))
            }
            _ => None,
        })
    }

    /// Byte offset of `member` in `struct name`, looking through anonymous unions and structs.
    pub fn member_offset(&self, name: &str, member: &str) -> Result<u64> {
        let (at, vlen, kf) = self.find_struct(name).ok_or_else(|| Error::BtfMissing(format!("struct {name}")))?;
        self.find_member(at, vlen, kf, member, 0, 0)
            .map(|bits| u64::from(bits / 8))
            .ok_or_else(|| Error::BtfMissing(format!("member {member} in struct {name}")))
    }

    /// Whether `struct name` has `member` (e.g. `rq_disk`, removed in 5.17).
    pub fn has_member(&self, name: &str, member: &str) -> bool {
        self.member_offset(name, member).is_ok()
    }

    fn find_member(&self, at: u32, vlen: u16, kf: bool, wanted: &str, base_bits: u32, depth: u32) -> Option<u32> {
        if let Some((_, _, bits)) = self.members(at, vlen, kf).find(|(n, _, _)| self.name(*n) == wanted) {
            return Some(base_bits + bits);
        }
        if depth > 8 {
            return None;
        }
        self.members(at, vlen, kf).filter(|(n, _, _)| *n == 0 || self.name(*n).is_empty()).find_map(|(_, ty, bits)| {
            match self.get(self.strip(ty)) {
                Type::Struct { at, vlen, kind_flag, .. } => {
                    self.find_member(at, vlen, kind_flag, wanted, base_bits + bits, depth + 1)
                }
                _ => None,
            }
        })
    }

    /// Value of the enumerator `name` (in whatever enum declares it).
    pub fn enum_value(&self, name: &str) -> Result<i64> {
        self.types
            .iter()
            .find_map(|t| match *t {
                Type::Enum { at, vlen, wide } => (0..u32::from(vlen)).find_map(|i| {
                    let o = at + if wide { 12 } else { 8 } * i;
                    (self.name(self.u32_at(o)) == name).then(|| {
                        if wide {
                            (u64::from(self.u32_at(o + 4)) | (u64::from(self.u32_at(o + 8)) << 32)) as i64
                        } else {
                            i64::from(self.u32_at(o + 4) as i32)
                        }
                    })
                }),
                _ => None,
            })
            .ok_or_else(|| Error::BtfMissing(format!("enumerator {name}")))
    }

    /// The type id of the typedef `name` (e.g. `btf_trace_block_rq_issue`): what the kernel wants as
    /// a `tp_btf` program's `attach_btf_id`.
    pub fn typedef_id(&self, name: &str) -> Option<u32> {
        self.types
            .iter()
            .position(|t| matches!(*t, Type::Typedef { name: n, .. } if self.name(n) == name))
            .map(|i| i as u32)
    }

    /// Arguments of tracepoint `tp` as a `tp_btf` program sees them, from the
    /// `btf_trace_<tp>` typedef (a pointer to `void (*)(void *__data, args...)`).
    pub fn tracepoint_args(&self, tp: &str) -> Result<TracepointArgs> {
        let typedef = format!("btf_trace_{tp}");
        let missing = || Error::BtfMissing(format!("typedef {typedef} (tracepoint {tp})"));
        let id = self
            .types
            .iter()
            .position(|t| matches!(*t, Type::Typedef { name, .. } if self.name(name) == typedef))
            .ok_or_else(missing)? as u32;
        let Type::Ptr { target } = self.get(self.strip(id)) else { return Err(missing()) };
        let Type::FuncProto { at, vlen } = self.get(self.strip(target)) else { return Err(missing()) };
        let types = (1..u32::from(vlen)).map(|i| self.describe(self.u32_at(at + 8 * i + 4))).collect();
        Ok(TracepointArgs { types })
    }

    /// A short C-like description of a type: `struct request *`, `unsigned int`, `blk_status_t`.
    fn describe(&self, id: u32) -> String {
        match self.get(id) {
            Type::Typedef { name, .. } => self.name(name).to_string(),
            Type::Modifier { target } => self.describe(target),
            Type::Ptr { target } => match self.get(self.strip(target)) {
                Type::Struct { name, .. } => format!("struct {} *", self.name(name)),
                _ => format!("{} *", self.describe(target)),
            },
            Type::Int { name } => self.name(name).to_string(),
            Type::Struct { name, .. } => format!("struct {}", self.name(name)),
            _ if id == 0 => "void".into(),
            _ => "?".into(),
        }
    }
}

/// A BTF blob in which each `(name, id)` is a typedef (to `void`) with type id `id`, and every other
/// id up to the largest is a placeholder pointer: enough for a BTF consumer that looks a typedef's
/// id up by name (aya's `BtfTracePoint::load`) without parsing all of vmlinux again.
pub fn typedefs_at(typedefs: &[(String, u32)]) -> Vec<u8> {
    let max = typedefs.iter().map(|t| t.1).max().unwrap_or(0);
    let mut strings = vec![0u8];
    let mut names = std::collections::HashMap::new();
    for (name, id) in typedefs {
        names.insert(*id, strings.len() as u32);
        strings.extend_from_slice(name.as_bytes());
        strings.push(0);
    }
    let mut types = Vec::with_capacity(12 * max as usize);
    for id in 1..=max {
        let (name, kind) = names.get(&id).map_or((0, KIND_PTR), |&n| (n, KIND_TYPEDEF));
        for v in [name, kind << 24, 0] {
            types.extend_from_slice(&v.to_le_bytes());
        }
    }
    let mut out = Vec::with_capacity(24 + types.len() + strings.len());
    out.extend_from_slice(&BTF_MAGIC.to_le_bytes());
    out.extend_from_slice(&[1, 0]); // version 1, no flags
    for v in [24u32, 0, types.len() as u32, types.len() as u32, strings.len() as u32] {
        out.extend_from_slice(&v.to_le_bytes());
    }
    out.extend_from_slice(&types);
    out.extend_from_slice(&strings);
    out
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Builds a BTF blob by hand: the same encoding the kernel emits.
    #[derive(Default)]
    pub struct BtfBuilder {
        types: Vec<u8>,
        strings: Vec<u8>,
        next_id: u32,
    }

    impl BtfBuilder {
        pub fn new() -> Self {
            BtfBuilder { types: vec![], strings: vec![0], next_id: 1 }
        }
        fn s(&mut self, name: &str) -> u32 {
            if name.is_empty() {
                return 0;
            }
            let off = self.strings.len() as u32;
            self.strings.extend_from_slice(name.as_bytes());
            self.strings.push(0);
            off
        }
        fn head(&mut self, name: &str, kind: u32, vlen: u32, kind_flag: bool, st: u32) -> u32 {
            let n = self.s(name);
            let info = (kind << 24) | vlen | if kind_flag { 1 << 31 } else { 0 };
            for v in [n, info, st] {
                self.types.extend_from_slice(&v.to_le_bytes());
            }
            self.next_id += 1;
            self.next_id - 1
        }
        pub fn int(&mut self, name: &str, size: u32) -> u32 {
            let id = self.head(name, KIND_INT, 0, false, size);
            self.types.extend_from_slice(&(size * 8).to_le_bytes());
            id
        }
        pub fn ptr(&mut self, target: u32) -> u32 {
            self.head("", KIND_PTR, 0, false, target)
        }
        pub fn typedef(&mut self, name: &str, target: u32) -> u32 {
            self.head(name, KIND_TYPEDEF, 0, false, target)
        }
        /// Members: (name, type, byte offset).
        pub fn structure(&mut self, name: &str, size: u32, members: &[(&str, u32, u32)]) -> u32 {
            let id = self.head(name, KIND_STRUCT, members.len() as u32, false, size);
            for (n, t, off) in members {
                let n = self.s(n);
                for v in [n, *t, off * 8] {
                    self.types.extend_from_slice(&v.to_le_bytes());
                }
            }
            id
        }
        pub fn union(&mut self, size: u32, members: &[(&str, u32, u32)]) -> u32 {
            let id = self.head("", KIND_UNION, members.len() as u32, false, size);
            for (n, t, off) in members {
                let n = self.s(n);
                for v in [n, *t, off * 8] {
                    self.types.extend_from_slice(&v.to_le_bytes());
                }
            }
            id
        }
        pub fn enumeration(&mut self, name: &str, values: &[(&str, i32)]) -> u32 {
            let id = self.head(name, KIND_ENUM, values.len() as u32, false, 4);
            for (n, v) in values {
                let n = self.s(n);
                self.types.extend_from_slice(&n.to_le_bytes());
                self.types.extend_from_slice(&v.to_le_bytes());
            }
            id
        }
        pub fn func_proto(&mut self, params: &[(&str, u32)]) -> u32 {
            let id = self.head("", KIND_FUNC_PROTO, params.len() as u32, false, 0);
            for (n, t) in params {
                let n = self.s(n);
                self.types.extend_from_slice(&n.to_le_bytes());
                self.types.extend_from_slice(&t.to_le_bytes());
            }
            id
        }
        pub fn build(&self) -> Vec<u8> {
            let mut out = vec![];
            out.extend_from_slice(&BTF_MAGIC.to_le_bytes());
            out.push(1);
            out.push(0);
            for v in [24u32, 0, self.types.len() as u32, self.types.len() as u32, self.strings.len() as u32] {
                out.extend_from_slice(&v.to_le_bytes());
            }
            out.extend_from_slice(&self.types);
            out.extend_from_slice(&self.strings);
            out
        }
    }

    fn sample() -> Btf {
        let mut b = BtfBuilder::new();
        let u32t = b.int("unsigned int", 4);
        let u64t = b.int("u64", 8);
        let void_ptr = b.ptr(0);
        let anon = b.union(8, &[("io_start_time_ns", u64t, 0), ("other", u64t, 0)]);
        let req = b.structure(
            "request",
            64,
            &[("q", void_ptr, 0), ("cmd_flags", u32t, 24), ("__data_len", u32t, 44), ("", anon, 56)],
        );
        b.structure("request", 0, &[]);
        b.enumeration("req_op", &[("REQ_OP_READ", 0), ("REQ_OP_WRITE", 1), ("REQ_OP_FLUSH", 2)]);
        let rq_ptr = b.ptr(req);
        // Unnamed parameters, as in kernel BTF.
        let proto = b.func_proto(&[("", void_ptr), ("", rq_ptr)]);
        let fp = b.ptr(proto);
        b.typedef("btf_trace_block_rq_issue", fp);
        let status = b.typedef("blk_status_t", u32t);
        let proto = b.func_proto(&[("", void_ptr), ("", rq_ptr), ("", status), ("", u32t)]);
        let fp = b.ptr(proto);
        b.typedef("btf_trace_block_rq_complete", fp);
        Btf::parse(&b.build()).unwrap()
    }

    #[test]
    fn member_offsets_including_anonymous_unions() {
        let btf = sample();
        assert_eq!(btf.member_offset("request", "q").unwrap(), 0);
        assert_eq!(btf.member_offset("request", "cmd_flags").unwrap(), 24);
        assert_eq!(btf.member_offset("request", "__data_len").unwrap(), 44);
        assert_eq!(btf.member_offset("request", "io_start_time_ns").unwrap(), 56);
        assert!(!btf.has_member("request", "rq_disk"));
        let err = btf.member_offset("gendisk", "major").unwrap_err().to_string();
        assert!(err.contains("struct gendisk"), "{err}");
    }

    #[test]
    fn enum_values_and_tracepoint_args() {
        let btf = sample();
        assert_eq!(btf.enum_value("REQ_OP_FLUSH").unwrap(), 2);
        assert!(btf.enum_value("REQ_OP_NOPE").is_err());
        let args = btf.tracepoint_args("block_rq_issue").unwrap();
        assert_eq!(args.types, vec!["struct request *"]);
        let args = btf.tracepoint_args("block_rq_complete").unwrap();
        assert_eq!(args.types, vec!["struct request *", "blk_status_t", "unsigned int"]);
        assert!(btf.tracepoint_args("block_rq_nope").is_err());
    }

    #[test]
    fn typedefs_keep_their_ids() {
        let want = [("btf_trace_block_rq_issue".to_string(), 7u32), ("btf_trace_block_rq_complete".to_string(), 3)];
        let btf = Btf::parse(&typedefs_at(&want)).unwrap();
        for (name, id) in &want {
            assert_eq!(btf.typedef_id(name), Some(*id), "{name}");
        }
        assert_eq!(btf.types.len(), 8, "void + 7 types");
        assert_eq!(btf.typedef_id("btf_trace_block_rq_insert"), None);
    }

    #[test]
    fn rejects_garbage() {
        assert!(Btf::parse(b"not btf at all, definitely not").is_err());
        assert!(Btf::parse(&[]).is_err());
        let mut blob = BtfBuilder::new();
        blob.int("int", 4);
        let mut data = blob.build();
        data.truncate(data.len() - 8);
        assert!(Btf::parse(&data).is_err());
    }
}
