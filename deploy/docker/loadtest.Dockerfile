# syntax=docker/dockerfile:1.7
# loadtest: the load generator and checker, for load tests run from inside a cluster
# (deploy/k8s/loadtest, docs/capacity.md). A batch tool: no server, no health check.
#
# Build from the repository root (the whole workspace is the build context):
#   docker build -f deploy/docker/loadtest.Dockerfile -t quiz/loadtest:$(git rev-parse --short HEAD) .
# loadtest.Dockerfile.dockerignore (next to this file, BuildKit) keeps target/ and .stack/ out.

ARG RUST_VERSION=1.95
ARG DEBIAN_RELEASE=bookworm

# ---- build ------------------------------------------------------------------------------
FROM rust:${RUST_VERSION}-${DEBIAN_RELEASE} AS build
# What the native dependencies need: rdkafka's bundled librdkafka (cmake, g++, zlib, curl,
# OpenSSL), pingora and the MongoDB driver (OpenSSL, pkg-config).
RUN apt-get update \
 && apt-get install -y --no-install-recommends \
      cmake g++ make pkg-config libssl-dev libcurl4-openssl-dev zlib1g-dev \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p loadtest --bin loadtest --bin loadtest-worker \
 && install -D -m 0755 target/release/loadtest /out/loadtest \
 && install -D -m 0755 target/release/loadtest-worker /out/loadtest-worker

# ---- runtime ----------------------------------------------------------------------------
FROM debian:${DEBIAN_RELEASE}-slim AS runtime
# Shared libraries the binary links (OpenSSL 3, zlib, libcurl), CA certificates for TLS to
# managed services (curl: for debugging from the pod).
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates curl libssl3 libcurl4 zlib1g \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --system --gid 10001 quiz \
 && useradd --system --uid 10001 --gid quiz --home-dir /nonexistent --shell /usr/sbin/nologin quiz
COPY --from=build /out/loadtest /usr/local/bin/loadtest
# The worker alone, which `loadtest run` spawns from next to itself.
COPY --from=build /out/loadtest-worker /usr/local/bin/loadtest-worker
COPY loadtest/scenarios /usr/share/quiz/scenarios
COPY deploy/docker/entrypoint.sh /usr/local/bin/quiz-entrypoint
WORKDIR /tmp
USER 10001:10001
# A batch job: Kubernetes (the Job's exit status) watches it, not a health check.
HEALTHCHECK NONE
ENTRYPOINT ["/usr/local/bin/quiz-entrypoint"]
CMD ["/usr/local/bin/loadtest", "check", "/usr/share/quiz/scenarios/smoke.toml"]
