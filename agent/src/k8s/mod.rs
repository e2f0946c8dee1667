//! Cgroup -> pod attribution (issue 5) — being written.
