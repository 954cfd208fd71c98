# syntax=docker/dockerfile:1.7
#
# One image with the five binaries of the platform (ingest-gateway,
# schema-registry, stream-router, sink-clickhouse, enrich-activity), the
# topics tool context-topics and the topics' declaration, the shipped
# routing rules and a default activity model, on a slim Debian base,
# running as the unprivileged user 10001:10001 (the Helm chart's
# securityContext uses the same numbers; helm/tests checks that they agree).
#
#   docker build -t registry.example.com/context/context-pipeline:0.1.0 .
#   docker push registry.example.com/context/context-pipeline:0.1.0
#
# Needs BuildKit (the cache mounts keep cargo's registry and target directory
# between builds). docs/helm.md has the details.

ARG RUST_VERSION=1.95
ARG DEBIAN_RELEASE=bookworm

# ---------------------------------------------------------------------------
FROM rust:${RUST_VERSION}-${DEBIAN_RELEASE} AS builder

# rdkafka builds librdkafka from source with cmake (the `cmake-build`
# feature); these are the headers its configure step looks for.
RUN apt-get update \
 && apt-get install -y --no-install-recommends \
      cmake libcurl4-openssl-dev libsasl2-dev libssl-dev libzstd-dev pkg-config \
 && rm -rf /var/lib/apt/lists/*

WORKDIR /src
COPY . .

# The binaries are copied out of the cached target directory in the same step.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/usr/local/cargo/git \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked \
      -p ingest-gateway -p schema-registry -p stream-router -p sink-clickhouse -p enrich-activity -p context-runtime \
      --bin ingest-gateway --bin schema-registry --bin stream-router --bin sink-clickhouse --bin enrich-activity \
      --bin context-topics \
 && mkdir -p /out/bin \
 && for b in ingest-gateway schema-registry stream-router sink-clickhouse enrich-activity context-topics; do \
      cp "target/release/$b" /out/bin/; \
    done

# The default activity model: trained on the shipped labelled data with a
# fixed seed, so the same sources give the same model_version. Production
# mounts its own model instead (chart: enrichActivity.model).
RUN /out/bin/enrich-activity train \
      --data enrich-activity/data/BasicMotions_TRAIN.ts --seed 42 --out /out/basicmotions.json

# ---------------------------------------------------------------------------
FROM debian:${DEBIAN_RELEASE}-slim AS runtime

LABEL org.opencontainers.image.title="context-pipeline" \
      org.opencontainers.image.description="ingest-gateway, schema-registry, stream-router, sink-clickhouse and enrich-activity" \
      org.opencontainers.image.licenses="Apache-2.0"

# The binaries link libc, libm, libgcc_s and zlib, all in the base image,
# and OpenSSL 3 (libssl3: librdkafka's TLS and SASL/SCRAM, and the HTTPS
# clients of the registry and ClickHouse); ca-certificates holds the
# public CAs a managed Kafka, registry or ClickHouse is signed by.
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates libssl3 \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --system --gid 10001 context \
 && useradd --system --uid 10001 --gid 10001 --home-dir /nonexistent --no-create-home \
      --shell /usr/sbin/nologin context

COPY --from=builder /out/bin/ /usr/local/bin/
COPY stream-router/rules.toml /usr/share/context-pipeline/rules.toml
# The declaration context-topics applies (also compiled into it as its default).
COPY helm/context-pipeline/topics.toml /usr/share/context-pipeline/topics.toml
COPY --from=builder /out/basicmotions.json /usr/share/context-pipeline/models/basicmotions.json

USER 10001:10001
WORKDIR /tmp
# ingest-gateway, schema-registry, and the admin ports of stream-router,
# sink-clickhouse and enrich-activity.
EXPOSE 8080 8081 9101 9102 9103
# No entrypoint: each workload names its binary (the chart sets `command`).
CMD ["ingest-gateway", "--help"]
