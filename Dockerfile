# syntax=docker/dockerfile:1.7
#
# One image with every DES binary: des-pack, des-retriever, des-verify,
# des-repack, des-tombstones. The default command is the retriever; the batch
# tools are run by naming them (compose `command:`, Kubernetes `command:`).
#
#   docker build -t des:local .
#   docker run --rm -p 8080:8080 -e DES_RETRIEVER_STORE=s3://des/store -e AWS_... des:local
#   docker run --rm -v "$PWD/files:/in:ro" -v des:/data des:local \
#       des-pack --dir /in --created-at 2024-05-17T10:00:00Z --out /data
#
# Runtime: distroless (glibc, libgcc, CA certificates, nothing else: no shell,
# no package manager), user 65532 ("nonroot"). Linted by scripts/validate-deploy.sh
# (hadolint, no ignored rules). See docs/DEPLOYMENT.md.

ARG RUST_VERSION=1.95

# ---- build -------------------------------------------------------------------
# rust:*-slim ships gcc and libc headers, which is all the C code in the tree
# needs (zstd, blake3, crc32c, aws-lc via its cc builder): no apt step.
FROM rust:${RUST_VERSION}-slim-bookworm AS build
WORKDIR /src

# Line tables are kept in the workspace's release profile for backtraces;
# the image drops them (symbols stay, so panics still name functions).
# Build with --build-arg CARGO_PROFILE_RELEASE_STRIP=none to keep everything.
ARG CARGO_PROFILE_RELEASE_STRIP=debuginfo
ENV CARGO_PROFILE_RELEASE_STRIP=${CARGO_PROFILE_RELEASE_STRIP} \
    CARGO_TERM_COLOR=never

COPY . .

# The registry, git checkouts and target/ live in BuildKit cache mounts, so
# a rebuild after a source change recompiles only the changed crates. target/
# is not part of the layer, hence the copy to /out in the same step.
RUN --mount=type=cache,id=des-cargo-registry,target=/usr/local/cargo/registry,sharing=locked \
    --mount=type=cache,id=des-cargo-git,target=/usr/local/cargo/git,sharing=locked \
    --mount=type=cache,id=des-target,target=/src/target,sharing=locked \
    cargo build --release --locked \
        --bin des-pack --bin des-retriever --bin des-verify \
        --bin des-upgrade \
        --bin des-repack --bin des-tombstones --bin des-migrate \
    && install -D -m 0755 -t /out \
        target/release/des-pack target/release/des-retriever target/release/des-verify \
        target/release/des-upgrade \
        target/release/des-repack target/release/des-tombstones target/release/des-migrate

# ---- runtime -----------------------------------------------------------------
FROM gcr.io/distroless/cc-debian12:nonroot AS runtime

LABEL org.opencontainers.image.title="des" \
      org.opencontainers.image.description="DES - Data Easy Store: des-pack, des-retriever, des-verify, des-repack, des-tombstones" \
      org.opencontainers.image.licenses="Apache-2.0"

COPY --from=build /out/ /usr/local/bin/

# The retriever listens on every interface inside the container (its own
# default is loopback) and logs JSON lines. The store is not baked in: set
# DES_RETRIEVER_STORE / --store, or --zones.
ENV DES_RETRIEVER_LISTEN=0.0.0.0:8080 \
    DES_RETRIEVER_LOG_FORMAT=json

# distroless' "nonroot" user, by number so Kubernetes' runAsNonRoot can check it.
USER 65532:65532
WORKDIR /tmp
EXPOSE 8080

# Exec form: there is no shell in this image. `des-retriever healthcheck` does
# one GET and exits 0 on a 2xx answer, 1 otherwise. Only meaningful for the
# retriever; batch containers disable it (compose: healthcheck: disable: true;
# Kubernetes ignores HEALTHCHECK and uses the probes in k8s/).
HEALTHCHECK --interval=15s --timeout=3s --start-period=10s --retries=3 \
    CMD ["/usr/local/bin/des-retriever", "healthcheck", "--url", "http://127.0.0.1:8080/health", "--timeout-secs", "2"]

ENTRYPOINT []
CMD ["/usr/local/bin/des-retriever"]
