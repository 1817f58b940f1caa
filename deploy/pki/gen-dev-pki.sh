#!/usr/bin/env bash
# Development PKI for roomsense: one CA, one broker certificate, one client
# certificate per NAME (CN = NAME, which Mosquitto uses as the username for its
# ACL), an empty CRL; everything in one folder, keys next to certificates.
# A thin front to deploy/pki/roomsense-pki (the server's tool), in its --flat layout.
#
#   deploy/pki/gen-dev-pki.sh OUT_DIR NAME...
#   e.g. deploy/pki/gen-dev-pki.sh var/pki room101 room102 room201 aggregatord observer
#
# Re-running is safe: an existing CA and existing certificates are kept, missing
# ones are added; RENEW=1 issues new keys and certificates for the NAMEs given
# (same CA), for rotating or for testing a reload. Keys are mode 0600.
# The broker certificate names localhost, 127.0.0.1 and ::1; more with
# BROKER_SANS="DNS:mosquitto,IP:10.0.0.5"; BROKER_NAMES replaces the defaults
# (tests use it for a wrong-name case). Other names than the certificate has
# reissue it. Dev only: for a real building, see README's "Deploy" section.
set -euo pipefail

if [ $# -lt 1 ]; then
    echo "usage: $0 OUT_DIR NAME..." >&2
    exit 64
fi
out=$1; shift
pki() { PKI_CA_NAME="roomsense dev CA" "$(dirname "$0")/roomsense-pki" --flat --no-restart \
    --ca "$out" --pki "$out" --broker-dir "" "$@"; }
mkdir -p "$out"
pki init "${BROKER_NAMES:-DNS:localhost,IP:127.0.0.1,IP:::1}${BROKER_SANS:+,$BROKER_SANS}" >/dev/null
if [ "${RENEW:-0}" = 1 ]; then
    for name in "$@"; do pki renew "$name" >/dev/null; done
else
    pki issue "$@" >/dev/null
fi
echo "PKI in $out: ca.crt, crl.pem, broker.{crt,key}${*:+, and $*}"
