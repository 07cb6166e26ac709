# syntax=docker/dockerfile:1
#
# daemonset-webhook as a container image: one static binary (x86_64-unknown-linux-musl) on
# distroless/static, running as uid 65532, with no shell and no package manager.
#
#   docker build -t daemonset-webhook:0.1.0 .
#
# Stages: chef (the toolchain), planner (a recipe of the dependencies), builder (the dependencies,
# cached as a layer until Cargo.toml or Cargo.lock change, then the binary), and the runtime image.

ARG RUST_VERSION=1.95

FROM rust:${RUST_VERSION}-bookworm AS chef
# The crypto (rustls and rcgen on aws-lc-rs) compiles C in aws-lc-sys. For
# x86_64-unknown-linux-musl that needs only a C compiler for musl, musl-gcc from musl-tools:
# aws-lc-sys ships pregenerated bindings for this target (no bindgen, no clang) and builds with
# the cc crate (no cmake). musl's headers lack <linux/random.h>; aws-lc-sys probes for it and
# does without.
# musl-tools is left unpinned: bookworm's version (1.2.3) only changes with security fixes.
# hadolint ignore=DL3008
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends musl-tools \
 && rm -rf /var/lib/apt/lists/* \
 && rustup target add x86_64-unknown-linux-musl \
 && cargo install cargo-chef --locked --version 0.1.78
# The same profile for the dependencies and the binary, so the cached dependencies are reused.
ENV CARGO_PROFILE_RELEASE_STRIP=symbols
WORKDIR /src

FROM chef AS planner
COPY . .
RUN cargo chef prepare --recipe-path recipe.json

FROM chef AS builder
COPY --from=planner /src/recipe.json recipe.json
# The C flags the allocator is built with (.cargo/config.toml) apply to the dependencies too.
COPY .cargo .cargo
RUN cargo chef cook --release --locked --target x86_64-unknown-linux-musl --recipe-path recipe.json
COPY . .
RUN cargo build --release --locked --target x86_64-unknown-linux-musl --bin daemonset-webhook \
 && cp target/x86_64-unknown-linux-musl/release/daemonset-webhook /daemonset-webhook

FROM gcr.io/distroless/static-debian12:nonroot
LABEL org.opencontainers.image.title="daemonset-webhook" \
      org.opencontainers.image.description="Kubernetes admission webhook for apps/v1 DaemonSets" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY --from=builder /daemonset-webhook /usr/local/bin/daemonset-webhook
# Numeric, so the kubelet can verify runAsNonRoot against the image itself.
USER 65532:65532
# Without --tls-cert/--tls-key the webhook writes a development certificate under the working
# directory's certs/; the nonroot user's home is writable. In Kubernetes the Deployment passes
# explicit paths and nothing is written (readOnlyRootFilesystem).
WORKDIR /home/nonroot
EXPOSE 8443
ENTRYPOINT ["/usr/local/bin/daemonset-webhook"]
CMD ["serve"]
