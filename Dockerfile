# aibox images: edge, controller, dashboard. Two ways to fill the same final stages:
#
# 1. From source, on a host with only Docker (needs a registry and BuildKit, which Docker Engine
#    >= 23 and compose v2 use by default):
#        docker compose up -d --build          (docker-compose.yml has `build:` with these targets)
#        docker build --target edge -t aibox-edge:local .
#    The `build` stage compiles on the official Rust image. It is linted (hadolint) but NOT
#    exercised by the tests: the machine they run on has no registry.
#
# 2. From binaries built on the host, offline (the default of ./aibox up; deploy/build-images.sh):
#        deploy/image-context.sh CTX target/release
#        docker build --target edge-host -t aibox-edge:TAG -f Dockerfile CTX
#    The `-host` targets come BEFORE the build stage on purpose: the classic builder (no BuildKit)
#    builds every stage before its target, and must never reach the one that pulls.
#
# Either way the image is FROM scratch: the binary, the C runtime it links against, CA
# certificates, a passwd entry for uid 65532 and a static busybox for the HEALTHCHECK's wget
# (deploy/image-context.sh assembles all of it in both ways).

ARG RUST_IMAGE=rust:1.95-slim-bookworm

# ---- what each image is: one definition, shared by both ways (no files yet) ----

FROM scratch AS edge-meta
ENV EDGE_LISTEN=0.0.0.0:11435 \
    EGRESS_LISTEN=0.0.0.0:3128 \
    LOG_FORMAT=json
EXPOSE 11435 3128
# The binaries resolve relative paths (data/mcp/registry.json, data/ops-controller) from /.
WORKDIR /
USER 65532:65532
HEALTHCHECK --interval=5s --timeout=3s --start-period=10s --retries=3 \
    CMD ["/bin/busybox", "wget", "-q", "-O", "/dev/null", "http://127.0.0.1:11435/health"]
ENTRYPOINT ["/usr/local/bin/edge"]

FROM scratch AS controller-meta
ENV CONTROLLER_LISTEN=0.0.0.0:9000 \
    CONTROLLER_AUDIT_DIR=/data/ops-controller
EXPOSE 9000
WORKDIR /
USER 65532:65532
HEALTHCHECK --interval=5s --timeout=3s --start-period=10s --retries=3 \
    CMD ["/bin/busybox", "wget", "-q", "-O", "/dev/null", "http://127.0.0.1:9000/health"]
ENTRYPOINT ["/usr/local/bin/controller"]

FROM scratch AS dashboard-meta
ENV DASHBOARD_LISTEN=0.0.0.0:8080
EXPOSE 8080
WORKDIR /
USER 65532:65532
HEALTHCHECK --interval=5s --timeout=3s --start-period=10s --retries=3 \
    CMD ["/bin/busybox", "wget", "-q", "-O", "/dev/null", "http://127.0.0.1:8080/healthz"]
ENTRYPOINT ["/usr/local/bin/dashboard"]

# ---- way 2: the context deploy/build-images.sh assembled from host binaries (offline) ----

FROM scratch AS host
COPY ./ /ctx/

FROM edge-meta AS edge-host
COPY --from=host /ctx/rootfs/ /
COPY --from=host --chown=65532:65532 /ctx/data/ /data/
COPY --from=host /ctx/bin/edge /usr/local/bin/edge

FROM controller-meta AS controller-host
COPY --from=host /ctx/rootfs/ /
COPY --from=host --chown=65532:65532 /ctx/data/ /data/
COPY --from=host /ctx/bin/controller /usr/local/bin/controller
# Placed by the controller into each MCP tool container (read-only volume at /aibox).
COPY --from=host /ctx/bridge/ /usr/local/lib/aibox/mcp-bridge/

FROM dashboard-meta AS dashboard-host
COPY --from=host /ctx/rootfs/ /
COPY --from=host --chown=65532:65532 /ctx/data/ /data/
COPY --from=host /ctx/bin/dashboard /usr/local/bin/dashboard

# ---- way 1: build from source on the official Rust image (needs a registry; untested offline) ----

FROM ${RUST_IMAGE} AS build
# cmake: libz-ng-sys; busybox-static: the HEALTHCHECK's wget; binutils: objcopy strips the binaries.
# Versions come with the base image's Debian release, so they are not pinned one by one.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends busybox-static binutils cmake g++ make pkg-config \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p edge -p controller -p dashboard -p mcp-bridge \
    && deploy/image-context.sh /ctx target/release

FROM edge-meta AS edge
COPY --from=build /ctx/rootfs/ /
COPY --from=build --chown=65532:65532 /ctx/data/ /data/
COPY --from=build /ctx/bin/edge /usr/local/bin/edge

FROM controller-meta AS controller
COPY --from=build /ctx/rootfs/ /
COPY --from=build --chown=65532:65532 /ctx/data/ /data/
COPY --from=build /ctx/bin/controller /usr/local/bin/controller
# Placed by the controller into each MCP tool container (read-only volume at /aibox).
COPY --from=build /ctx/bridge/ /usr/local/lib/aibox/mcp-bridge/

FROM dashboard-meta AS dashboard
COPY --from=build /ctx/rootfs/ /
COPY --from=build --chown=65532:65532 /ctx/data/ /data/
COPY --from=build /ctx/bin/dashboard /usr/local/bin/dashboard
