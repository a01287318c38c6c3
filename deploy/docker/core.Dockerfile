# syntax=docker/dockerfile:1.7
# quiz-core: the quiz service (HTTP API + WebSockets), one image for every tier.
#
# Build from the repository root (the whole workspace is the build context):
#   docker build -f deploy/docker/core.Dockerfile -t quiz/core:$(git rev-parse --short HEAD) .
# core.Dockerfile.dockerignore (next to this file, BuildKit) keeps target/ and .stack/ out.

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
    cargo build --release --locked -p quiz-core --bin quiz-core \
 && install -D -m 0755 target/release/quiz-core /out/quiz-core

# ---- runtime ----------------------------------------------------------------------------
FROM debian:${DEBIAN_RELEASE}-slim AS runtime
# Shared libraries the binary links (OpenSSL 3, zlib, libcurl), CA certificates for TLS to
# managed services, curl for the health check.
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates curl libssl3 libcurl4 zlib1g \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --system --gid 10001 quiz \
 && useradd --system --uid 10001 --gid quiz --home-dir /nonexistent --shell /usr/sbin/nologin quiz
COPY --from=build /out/quiz-core /usr/local/bin/quiz-core
COPY deploy/docker/entrypoint.sh /usr/local/bin/quiz-entrypoint
ENV QUIZ_LISTEN=0.0.0.0:8080 \
    QUIZ_LOG_FORMAT=json
USER 10001:10001
EXPOSE 8080
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 \
  CMD curl -fsS http://127.0.0.1:8080/healthz || exit 1
ENTRYPOINT ["/usr/local/bin/quiz-entrypoint"]
CMD ["/usr/local/bin/quiz-core"]
