//! The agent's BPF programs as the kernel lists them (BPF_PROG_GET_NEXT_ID, via aya: no
//! bpftool needed). Needs CAP_SYS_ADMIN (root).

/// Whether a program name is one of the agent's: `rq_<event>_btf`, `rq_<event>_btf_q` or
/// `rq_<event>_tp` (agent-ebpf/src/main.rs), as the kernel keeps it (at most 15 bytes).
pub fn is_agent_program(name: &str) -> bool {
    let Some(rest) = name.strip_prefix("rq_") else { return false };
    let event = ["insert", "issue", "requeue", "complete"].into_iter().find(|e| rest.starts_with(e));
    let Some(event) = event else { return false };
    let suffix = &rest[event.len()..];
    const SUFFIXES: [&str; 3] = ["_btf", "_btf_q", "_tp"];
    // The kernel keeps 15 bytes of a name: "rq_requeue_btf_q" is listed as "rq_requeue_btf_".
    let truncated = name.len() == 15;
    SUFFIXES.iter().any(|s| suffix == *s || (truncated && suffix.len() >= 2 && s.starts_with(suffix)))
}

/// (id, name) of every loaded program that is one of the agent's.
pub fn agent_programs() -> anyhow::Result<Vec<(u32, String)>> {
    let mut out = Vec::new();
    for info in aya::programs::loaded_programs() {
        // A program can be unloaded between listing its id and reading its info: skip it.
        let Ok(info) = info else { continue };
        if let Some(name) = info.name_as_str().filter(|n| is_agent_program(n)) {
            out.push((info.id(), name.to_string()));
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recognizes_the_agents_programs() {
        for n in
            ["rq_issue_btf", "rq_issue_btf_q", "rq_insert_tp", "rq_complete_btf", "rq_requeue_btf", "rq_requeue_btf_"]
        {
            assert!(is_agent_program(n), "{n}");
        }
        for n in ["rq_issue", "rq_issue_", "rq_foo_btf", "block_rq_issue", "sd_fw_ingress", "rq_issue_xyz"] {
            assert!(!is_agent_program(n), "{n}");
        }
    }
}
