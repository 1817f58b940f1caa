# roomsense: both daemons in one small image. Build:
#   docker build -t roomsense .
# Base images are arguments, so an offline site can use its own mirrors:
#   docker build --build-arg RUST_IMAGE=registry.local/rust:1.85 --build-arg RUNTIME_IMAGE=registry.local/debian:bookworm-slim .
ARG RUST_IMAGE=rust:1.85-slim-bookworm
ARG RUNTIME_IMAGE=debian:bookworm-slim

FROM ${RUST_IMAGE} AS build
WORKDIR /src
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
# Config and PKI are mounted read-only at /etc/roomsense; the database lives in
# /var/lib/roomsense. Keys must be readable by uid 10001 and by nobody else.
VOLUME ["/var/lib/roomsense"]
USER 10001:10001
WORKDIR /var/lib/roomsense
# Both daemons stop cleanly on SIGTERM (offline status; flush and ack).
STOPSIGNAL SIGTERM
CMD ["aggregatord", "--config", "/etc/roomsense/aggregatord.yaml"]
