# syntax=docker/dockerfile:1
# The one image that runs every Isthmus role: `isthmus control`, the proxy
# `isthmus-gateway --role sidecar|east-west|ingress|egress` (the data plane
# alone, built by gateway/build-proxy.sh: whole-program and profile-guided
# optimisation, the profile from a training run of real traffic, and static
# linking, since a sidecar's resident memory is mostly the code it maps),
# and the sidecar's capture init container
# (sh + iptables-restore).
#
#   docker build -t ghcr.io/isthmus-mesh/isthmus:0.1.0 .
#
# control/tests/install_render.rs checks that this file's binary, entrypoint,
# user and packages match what `isthmus install` and the injector render.

FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
# The registry and target directory are build caches; the binary is copied
# out in the same step because cache mounts are not part of the layer.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p isthmus-control --bin isthmus \
    && install -m 0755 target/release/isthmus /usr/local/bin/isthmus \
    && ISTHMUS_BIN=/usr/local/bin/isthmus gateway/build-proxy.sh --pgo /usr/local/bin/isthmus-gateway

FROM debian:bookworm-slim
# ca-certificates: TLS to anything outside the mesh's own trust domain;
# iptables: the sidecar's traffic-capture init container.
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates iptables \
    && rm -rf /var/lib/apt/lists/*
COPY --from=build /usr/local/bin/isthmus /usr/local/bin/isthmus
COPY --from=build /usr/local/bin/isthmus-gateway /usr/local/bin/isthmus-gateway
# Non-root by default (the control plane); proxies run as 1337 and the
# capture init container as root, both set by their pod specs.
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/isthmus"]
CMD ["--help"]
