# syntax=docker/dockerfile:1.7
# edge-lb: the pingora edge load balancer (it discovers core pods from DNS itself).
#
# Build from the repository root (the whole workspace is the build context):
#   docker build -f deploy/docker/edge-lb.Dockerfile -t quiz/edge-lb:$(git rev-parse --short HEAD) .
# edge-lb.Dockerfile.dockerignore (next to this file, BuildKit) keeps target/ and .stack/ out.

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
    cargo build --release --locked -p edge-lb --bin edge-lb \
 && install -D -m 0755 target/release/edge-lb /out/edge-lb

# ---- runtime ----------------------------------------------------------------------------
FROM debian:${DEBIAN_RELEASE}-slim AS runtime
# Shared libraries the binary links (OpenSSL 3, zlib, libcurl), CA certificates for TLS to
# managed services, curl for the health check.
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates curl libssl3 libcurl4 zlib1g \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --system --gid 10001 quiz \
 && useradd --system --uid 10001 --gid quiz --home-dir /nonexistent --shell /usr/sbin/nologin quiz
COPY --from=build /out/edge-lb /usr/local/bin/edge-lb
COPY deploy/docker/entrypoint.sh /usr/local/bin/quiz-entrypoint

USER 10001:10001
EXPOSE 8080 9090
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 \
  CMD curl -fsS http://127.0.0.1:9090/healthz || exit 1
ENTRYPOINT ["/usr/local/bin/quiz-entrypoint"]
CMD ["/usr/local/bin/edge-lb", "-c", "/etc/edge-lb/edge-lb.yaml"]
