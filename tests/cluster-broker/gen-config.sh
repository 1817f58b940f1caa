#!/usr/bin/env bash
# Writes the configuration of a 3-node cluster-broker cluster on loopback:
#
#   tests/cluster-broker/gen-config.sh OUT_DIR CA_CERT SERVER_CERT SERVER_KEY
#
# giving, for N = 1 2 3, OUT_DIR/nodeN/rmqtt.toml (from node.toml.in) and
# OUT_DIR/nodeN/plugins/<plugin>.toml (from plugins/*.toml.in). Run node N as
#
#   cluster-broker -f OUT_DIR/nodeN/rmqtt.toml --id N
#
# Node N listens on 127.0.0.1 ports BASE+N; the bases can be changed:
#   MQTT_PORT_BASE=18830  MQTT over mutual TLS   (node 1: 18831)
#   GRPC_PORT_BASE=15360  node-to-node gRPC      (node 1: 15361)
#   RAFT_PORT_BASE=16000  raft                   (node 1: 16001)
#   HTTP_PORT_BASE=16060  HTTP API, if built in  (node 1: 16061)
#
# The certificates: PEM files; the server certificate needs a SAN for
# 127.0.0.1 (and localhost), and client certificates must chain to CA_CERT.
# deploy/pki/gen-dev-pki.sh makes such a set (ca.crt, broker.crt, broker.key).
set -euo pipefail

if [ $# -ne 4 ]; then
    echo "usage: $0 OUT_DIR CA_CERT SERVER_CERT SERVER_KEY" >&2
    exit 64
fi

here=$(cd "$(dirname "$0")" && pwd)
mkdir -p "$1"
out=$(cd "$1" && pwd)
abs() { # absolute path of an existing file
    [ -f "$1" ] || { echo "$0: not a file: $1" >&2; exit 66; }
    echo "$(cd "$(dirname "$1")" && pwd)/$(basename "$1")"
}
ca=$(abs "$2"); cert=$(abs "$3"); key=$(abs "$4")
for p in "$out" "$ca" "$cert" "$key"; do
    case $p in *[\"\\\|\&]*) echo "$0: unsupported character in path: $p" >&2; exit 65 ;; esac
done

mqtt_base=${MQTT_PORT_BASE:-18830}
grpc_base=${GRPC_PORT_BASE:-15360}
raft_base=${RAFT_PORT_BASE:-16000}
http_base=${HTTP_PORT_BASE:-16060}
nodes="1 2 3"
leader_id=1

grpc_addrs=; raft_addrs=
for n in $nodes; do
    grpc_addrs+="${grpc_addrs:+, }\"$n@127.0.0.1:$((grpc_base + n))\""
    raft_addrs+="${raft_addrs:+, }\"$n@127.0.0.1:$((raft_base + n))\""
done

# render TEMPLATE OUTPUT N
render() {
    local n=$3
    sed -e "s|@NODE_ID@|$n|g" \
        -e "s|@MQTT_PORT@|$((mqtt_base + n))|g" \
        -e "s|@GRPC_PORT@|$((grpc_base + n))|g" \
        -e "s|@HTTP_PORT@|$((http_base + n))|g" \
        -e "s|@PLUGINS_DIR@|$out/node$n/plugins/|g" \
        -e "s|@CA_CERT@|$ca|g" \
        -e "s|@SERVER_CERT@|$cert|g" \
        -e "s|@SERVER_KEY@|$key|g" \
        -e "s|@NODE_GRPC_ADDRS@|$grpc_addrs|g" \
        -e "s|@RAFT_PEER_ADDRS@|$raft_addrs|g" \
        -e "s|@LEADER_ID@|$leader_id|g" \
        "$1" > "$2"
    if grep -q '@[A-Z_]*@' "$2"; then
        echo "$0: unreplaced placeholder in $2" >&2
        exit 70
    fi
}

for n in $nodes; do
    mkdir -p "$out/node$n/plugins"
    render "$here/node.toml.in" "$out/node$n/rmqtt.toml" "$n"
    for t in "$here"/plugins/*.toml.in; do
        name=$(basename "$t" .in)
        render "$t" "$out/node$n/plugins/$name" "$n"
    done
done
echo "cluster config in $out/node{1,2,3}: MQTT/TLS on 127.0.0.1:$((mqtt_base + 1))-$((mqtt_base + 3)), HTTP API on 127.0.0.1:$((http_base + 1))-$((http_base + 3)), leader node $leader_id"
