# roomsense: both daemons in one small image. Build:
#   docker build -t roomsense .        (podman build --format docker works the same)
# The builder's Rust is Cargo.toml's rust-version (scripts/msrv checks the two
# agree). Base images are arguments, so an offline site can use its own mirrors:
#   docker build --build-arg RUST_IMAGE=registry.local/rust:1.88-slim-bookworm \
#     --build-arg RUNTIME_IMAGE=registry.local/debian:bookworm-slim .
# For a Raspberry Pi, the same file builds an arm64 image on an x86 machine,
# without emulation: the builder cross-compiles, the runtime stage runs nothing.
#   docker build --platform linux/arm64 -t roomsense:arm64 .
ARG RUST_IMAGE=rust:1.88-slim-bookworm
ARG RUNTIME_IMAGE=debian:bookworm-slim

# The builder runs on the build machine's platform whatever the target's.
FROM --platform=$BUILDPLATFORM ${RUST_IMAGE} AS build
ARG TARGETARCH
WORKDIR /src
# arm64: Debian's cross C compiler (ring builds C) and Rust's arm64 standard
# library. Versions come with the builder image's Debian release.
# hadolint ignore=DL3008
RUN case "${TARGETARCH:-amd64}" in \
        amd64) echo x86_64-unknown-linux-gnu > /target ;; \
        arm64) apt-get update \
            && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends gcc-aarch64-linux-gnu libc6-dev-arm64-cross \
            && rm -rf /var/lib/apt/lists/* \
            && rustup target add aarch64-unknown-linux-gnu \
            && echo aarch64-unknown-linux-gnu > /target ;; \
        *) echo "no build for TARGETARCH=$TARGETARCH (amd64, arm64)" >&2; exit 1 ;; \
    esac
ENV CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER=aarch64-linux-gnu-gcc \
    CC_aarch64_unknown_linux_gnu=aarch64-linux-gnu-gcc \
    CARGO_PROFILE_RELEASE_STRIP=symbols
# The context is only these (.dockerignore): no target/, no .git, no keys.
COPY Cargo.toml Cargo.lock ./
COPY src ./src
RUN target=$(cat /target) \
    && cargo build --release --locked --bins --target "$target" \
    && mkdir -p /out/bin /out/state \
    && cp "target/$target/release/sensord" "target/$target/release/aggregatord" /out/bin/ \
    && chmod 0700 /out/state

# The runtime stage runs no command, so it builds for any platform without
# emulation: no packages (the binaries link only glibc, and TLS trusts our own
# CA), no user database (the daemons run as uid 10001 and look up no names).
FROM ${RUNTIME_IMAGE}
COPY --from=build /out/bin/ /usr/local/bin/
COPY --from=build --chown=10001:10001 /out/state/ /var/lib/roomsense/
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
