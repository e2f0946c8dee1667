# blkio-agent container image: one static (musl) binary and a CA bundle on an empty base.
# No shell, no package manager, no libc: nothing in the image but what the agent runs.
#
# Two ways to build the same final image (same labels, entrypoint and default arguments):
#
# 1. From a binary built on the host -- no base image is pulled (scratch is not an image), so
#    this works where the Docker engine cannot reach a registry. `cargo xtask image [--tag T]`
#    does it:
#        cargo build --release -p blkio-agent --target x86_64-unknown-linux-musl
#        # xtask stages the binary and the host's CA bundle under target/image/
#        docker build --target prebuilt -t blkio-agent:dev .
#    The legacy builder (no BuildKit) builds every stage up to the target, so `prebuilt` comes
#    before the stage that pulls the Rust image.
#
# 2. Multi-stage from source, for normal CI with BuildKit (it skips stages the target does not
#    need); the default target is the last stage, `release`:
#        docker buildx build -t ghcr.io/blkio-agent/blkio-agent:0.1.0 \
#          --build-arg VERSION=0.1.0 --build-arg REVISION=$(git rev-parse HEAD) .
#
# Run it outside Kubernetes (what the docker-level e2e does, see e2e/tests/docker_e2e.rs):
#     docker run --rm --cap-drop ALL --cap-add BPF --cap-add PERFMON --read-only \
#       -v /proc:/host/proc:ro -v /sys/kernel/btf:/host/sys/kernel/btf:ro \
#       -v /sys/block:/host/sys/block:ro -v /sys/devices:/host/sys/devices:ro \
#       -v /var/log/blkio-agent:/var/log/blkio-agent -e NODE_NAME=$(hostname) blkio-agent:dev
#   (an engine older than 23 does not know BPF/PERFMON: use --cap-add SYS_ADMIN there).

ARG RUST_VERSION=1.95

# --- Everything the final image has besides its files -------------------------------------
FROM scratch AS base
ARG VERSION=0.0.0-dev
ARG REVISION=unknown
ARG CREATED=1970-01-01T00:00:00Z
LABEL org.opencontainers.image.title="blkio-agent" \
      org.opencontainers.image.description="eBPF node agent: exact block-device I/O latency and queue depth as JSONL, OTLP and Prometheus" \
      org.opencontainers.image.source="https://github.com/blkio-agent/blkio-agent" \
      org.opencontainers.image.url="https://github.com/blkio-agent/blkio-agent" \
      org.opencontainers.image.documentation="https://github.com/blkio-agent/blkio-agent/blob/main/docs/kubernetes.md" \
      org.opencontainers.image.licenses="MIT OR Apache-2.0" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.created="${CREATED}"
# uid 0: the kernel grants added capabilities (BPF, PERFMON) only to root when no ambient
# capabilities are set, which is the case in Kubernetes and Docker.
USER 0:0
ENTRYPOINT ["/usr/local/bin/blkio-agent"]
# Segment mode, reading the host's /proc and /sys mounted under /host (see the chart).
CMD ["run", "--output-dir=/var/log/blkio-agent", "--proc-root=/host", "--sys-root=/host", "--live=log"]

# --- 1. Binary built on the host (cargo xtask image) ----------------------------------------
FROM base AS prebuilt
COPY target/image/ca-certificates.crt /etc/ssl/certs/ca-certificates.crt
COPY target/image/blkio-agent /usr/local/bin/blkio-agent

# --- 2. Build from source (BuildKit) --------------------------------------------------------
FROM rust:${RUST_VERSION}-bookworm AS build
# musl-tools: C code in dependencies (e.g. ring) is compiled for the musl target.
RUN apt-get update \
 && apt-get install -y --no-install-recommends musl-tools \
 && rm -rf /var/lib/apt/lists/*
# The eBPF programs are built by agent/build.rs with nightly (build-std needs rust-src) and
# bpf-linker, which must link against that nightly's own LLVM (as `cargo xtask setup` does).
RUN rustup target add x86_64-unknown-linux-musl \
 && rustup toolchain install nightly --profile minimal --component rust-src
RUN set -eux; \
    sysroot="$(rustc +nightly --print sysroot)"; \
    llvm="$(ls "$sysroot"/lib/libLLVM.so.* | head -n1)"; \
    major="$(basename "$llvm" | sed -E 's/^libLLVM\.so\.([0-9]+).*/\1/')"; \
    mkdir -p /opt/llvm-nightly/lib; \
    ln -s "$llvm" /opt/llvm-nightly/lib/libLLVM.so; \
    LLVM_PREFIX=/opt/llvm-nightly cargo install bpf-linker --version 0.13.0 --locked \
      --no-default-features --features "llvm-$major"
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p blkio-agent --target x86_64-unknown-linux-musl \
 && install -D -m 0755 target/x86_64-unknown-linux-musl/release/blkio-agent /out/usr/local/bin/blkio-agent \
 && install -D -m 0644 /etc/ssl/certs/ca-certificates.crt /out/etc/ssl/certs/ca-certificates.crt

FROM base AS release
COPY --from=build /out/ /
