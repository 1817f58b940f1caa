#!/usr/bin/env bash
# Development PKI for roomsense: one CA, one broker certificate, one client
# certificate per NAME (CN = NAME, which Mosquitto uses as the username for its ACL).
#
#   deploy/pki/gen-dev-pki.sh OUT_DIR NAME...
#   e.g. deploy/pki/gen-dev-pki.sh var/pki room101 room102 room201 aggregatord observer
#
# Re-running is safe: an existing CA and existing certificates are kept, missing
# ones are added; RENEW=1 issues new keys and certificates for the NAMEs given
# (same CA), for rotating or for testing a reload. Keys are mode 0600. Extra broker names/addresses for the
# certificate's SAN: BROKER_SANS="DNS:mosquitto,IP:10.0.0.5".
# Dev only: for production, issue certificates from your own CA.
set -euo pipefail

if [ $# -lt 1 ]; then
    echo "usage: $0 OUT_DIR NAME..." >&2
    exit 64
fi
command -v openssl >/dev/null || { echo "$0: openssl not found; install it: apt-get install openssl" >&2; exit 69; }

out=$1; shift
days=${PKI_DAYS:-825}
mkdir -p "$out"
umask 077

newkey() { openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$1" 2>/dev/null; chmod 600 "$1"; }

if [ ! -f "$out/ca.crt" ]; then
    newkey "$out/ca.key"
    openssl req -x509 -new -key "$out/ca.key" -sha256 -days "$days" \
        -subj "/O=roomsense/CN=roomsense dev CA" \
        -addext "basicConstraints=critical,CA:TRUE,pathlen:0" \
        -addext "keyUsage=critical,keyCertSign,cRLSign" \
        -out "$out/ca.crt"
fi

# sign NAME EXTENSIONS
sign() {
    local name=$1 ext=$2
    [ -f "$out/$name.crt" ] && [ "${RENEW:-0}" != 1 ] && return 0
    newkey "$out/$name.key"
    openssl req -new -key "$out/$name.key" -subj "/O=roomsense/CN=$name" -out "$out/$name.csr"
    printf '%s\n' "$ext" > "$out/$name.ext"
    openssl x509 -req -in "$out/$name.csr" -CA "$out/ca.crt" -CAkey "$out/ca.key" \
        -CAcreateserial -days "$days" -sha256 -extfile "$out/$name.ext" -out "$out/$name.crt" 2>/dev/null
    rm -f "$out/$name.csr" "$out/$name.ext"
}

# BROKER_NAMES replaces the default names entirely (tests use it for a wrong-name case).
sans="${BROKER_NAMES:-DNS:localhost,IP:127.0.0.1,IP:::1}${BROKER_SANS:+,$BROKER_SANS}"
RENEW=0 sign broker "basicConstraints=critical,CA:FALSE
keyUsage=critical,digitalSignature
extendedKeyUsage=serverAuth
subjectAltName=$sans"

for name in "$@"; do
    case $name in
        ''|*[!A-Za-z0-9_-]*|broker|ca) echo "$0: bad client name '$name'" >&2; exit 65 ;;
    esac
    sign "$name" "basicConstraints=critical,CA:FALSE
keyUsage=critical,digitalSignature
extendedKeyUsage=clientAuth"
done
chmod 644 "$out"/*.crt
echo "PKI in $out: ca.crt, broker.{crt,key}${*:+, and $*}"
