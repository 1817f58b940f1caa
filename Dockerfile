# roomsense: both daemons in one small image. Build:
#   docker build -t roomsense .        (podman build works the same)
# The builder's Rust is Cargo.toml's rust-version (scripts/msrv checks the two
# agree). Base images are arguments, so an offline site can use its own mirrors:
#   docker build --build-arg RUST_IMAGE=registry.local/rust:1.88-slim-bookworm \
#     --build-arg RUNTIME_IMAGE=registry.local/debian:bookworm-slim .
# An arm64 image for a Raspberry Pi: build on an arm64 machine, or with
# `--platform linux/arm64` where the engine emulates it (README, "Run in containers").
ARG RUST_IMAGE=rust:1.88-slim-bookworm
ARG RUNTIME_IMAGE=debian:bookworm-slim

FROM ${RUST_IMAGE} AS build
WORKDIR /src
# The context is only these (.dockerignore): no target/, no .git, no keys.
COPY Cargo.toml Cargo.lock ./
COPY src ./src
RUN cargo build --release --locked --bins \
    && strip target/release/sensord target/release/aggregatord

FROM ${RUNTIME_IMAGE}
# No packages needed: the binaries link only glibc, and TLS trusts our own CA.
RUN groupadd --system --gid 10001 roomsense \
    && useradd --system --uid 10001 --gid 10001 --home-dir /var/lib/roomsense --shell /usr/sbin/nologin roomsense \
    && mkdir -p /etc/roomsense /var/lib/roomsense \
    && chown roomsense:roomsense /var/lib/roomsense \
    && chmod 0700 /var/lib/roomsense
COPY --from=build /src/target/release/sensord /src/target/release/aggregatord /usr/local/bin/
# Config and PKI are mounted read-only at /etc/roomsense, each container's own
# (deploy/compose.yaml); the database lives in /var/lib/roomsense. Keys must be
# readable by uid 10001 and by nobody else.
VOLUME ["/var/lib/roomsense"]
USER 10001:10001
WORKDIR /var/lib/roomsense
# Both daemons stop cleanly on SIGTERM within about 5 s (offline status; flush
# and ack): give them 15 s (compose: stop_grace_period, docker stop -t 15).
STOPSIGNAL SIGTERM
# aggregatord's /healthz (the default command's dashboard on 8080), with bash
# alone: the image has no HTTP client. Node containers turn it off (compose).
HEALTHCHECK --interval=30s --timeout=5s --start-period=10s --retries=3 \
    CMD ["bash", "-c", "exec 3<>/dev/tcp/127.0.0.1/8080 && printf 'GET /healthz HTTP/1.0\\r\\n\\r\\n' >&3 && head -n 1 <&3 | grep -q ' 200 '"]
CMD ["aggregatord", "--config", "/etc/roomsense/aggregatord.yaml"]
