#!/usr/bin/env bash
# Builds cluster-broker into target/cluster-broker/release/cluster-broker
# (under the repository root), with the protoc that a registry crate ships.
# Extra arguments go to cargo build (e.g. --no-default-features).
# Slow: two C/C++ builds (libprotobuf via protobuf-src, aws-lc-sys) plus
# ~500 crates; on 2 cores expect tens of minutes the first time.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
manifest=$here/Cargo.toml

# rmqtt's gRPC and raft crates generate code from .proto files at build time
# and need protoc: $PROTOC if set, else the one from
# protoc-bin-vendored-linux-x86_64 (a build-dependency, so fetched with the rest).
if [ -z "${PROTOC:-}" ]; then
    cargo fetch --locked --manifest-path "$manifest"
    PROTOC=$(ls -d "${CARGO_HOME:-$HOME/.cargo}"/registry/src/*/protoc-bin-vendored-linux-x86_64-3.3.0/bin/protoc 2>/dev/null | head -n 1 || true)
    [ -x "$PROTOC" ] || { echo "$0: vendored protoc not found; set PROTOC" >&2; exit 69; }
    export PROTOC
fi

cargo build --release --locked --manifest-path "$manifest" --target-dir "$root/target/cluster-broker" "$@"
