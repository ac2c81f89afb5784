#!/usr/bin/env bash
# Install appliance as a service (see docs/operations.md).
#
#   sudo scripts/install.sh                      # build for this machine, install, enable, start
#   sudo scripts/install.sh --wheelhouse DIR     # offline: install from prebuilt wheels
#   sudo scripts/install.sh --uninstall [--purge]
#   scripts/install.sh --root /tmp/scratch --skip-pip   # lay out the files only (tests)
#
# Backend: Linux with an NVIDIA driver (nvidia-smi) -> llama-cpp-python built with CUDA
# (needs nvcc); Apple Silicon -> Metal (the default build); otherwise CPU. --cpu forces CPU.
# Idempotent: a second run changes nothing and keeps existing config, keys and models.
#
# Offline wheelhouse, built on a machine with the same OS/Python/CUDA (portable CPU code):
#   CMAKE_ARGS="-DGGML_CUDA=on -DGGML_NATIVE=OFF" pip wheel -w DIR /path/to/appliance
# (plain CPU: CMAKE_ARGS=-DGGML_NATIVE=OFF). Then: install.sh --wheelhouse DIR.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
ROOT=""
WHEELHOUSE=""
SKIP_PIP=0
UNINSTALL=0
PURGE=0
FORCE_CPU=0
START=1
CUDA_ARCH=""
PYTHON="${PYTHON:-python3}"
SERVICE_USER=appliance

usage() {
    sed -n '2,16p' "$0" | sed 's/^# \{0,1\}//'
    cat <<'EOF'
Options:
  --root DIR         install under DIR (a scratch root: no systemctl, no user creation)
  --wheelhouse DIR   pip install --no-index --find-links DIR (offline sites)
  --skip-pip         create the venv but install nothing into it
  --cpu              build llama-cpp-python for the CPU even if a GPU is present
  --cuda-arch N      CMAKE_CUDA_ARCHITECTURES (86 for RTX 30xx, 89 for 40xx, 90 for H100)
  --no-start         enable the service but do not start it now
  --uninstall        remove the service and the venv; keep config, keys and models
  --purge            with --uninstall: also remove config, keys, models, caches and the user
EOF
}

die() { echo "install.sh: error: $*" >&2; exit 1; }
say() { echo "install.sh: $*"; }

while [ $# -gt 0 ]; do
    case "$1" in
        --root) ROOT="${2:?--root needs a directory}"; shift 2 ;;
        --root=*) ROOT="${1#*=}"; shift ;;
        --wheelhouse) WHEELHOUSE="${2:?--wheelhouse needs a directory}"; shift 2 ;;
        --wheelhouse=*) WHEELHOUSE="${1#*=}"; shift ;;
        --skip-pip) SKIP_PIP=1; shift ;;
        --cpu) FORCE_CPU=1; shift ;;
        --cuda-arch) CUDA_ARCH="${2:?--cuda-arch needs a number}"; shift 2 ;;
        --no-start) START=0; shift ;;
        --uninstall) UNINSTALL=1; shift ;;
        --purge) PURGE=1; shift ;;
        -h|--help) usage; exit 0 ;;
        *) echo "install.sh: error: unknown option $1 (see --help)" >&2; exit 2 ;;
    esac
done
[ "$PURGE" = 1 ] && [ "$UNINSTALL" = 0 ] && { echo "install.sh: error: --purge goes with --uninstall" >&2; exit 2; }
if [ -n "$ROOT" ]; then
    mkdir -p "$ROOT"
    ROOT="$(cd "$ROOT" && pwd)"
elif [ "$(id -u)" != 0 ]; then
    die "run as root (sudo), or use --root DIR for a scratch install"
fi
[ -z "$WHEELHOUSE" ] || [ -d "$WHEELHOUSE" ] || die "--wheelhouse $WHEELHOUSE is not a directory"

OS="$(uname -s)"
PREFIX="$ROOT/opt/appliance"
VENV="$PREFIX/venv"
if [ "$OS" = Darwin ]; then
    ETC="$ROOT/etc/appliance"              # /etc -> /private/etc; the CLI searches /etc/appliance
    STORE_PATH="/usr/local/var/appliance"
    SERVICE_USER=_appliance
else
    ETC="$ROOT/etc/appliance"
    STORE_PATH="/var/lib/appliance"
fi
UNIT="$ROOT/etc/systemd/system/appliance.service"
SYSUSERS="$ROOT/usr/lib/sysusers.d/appliance.conf"
PLIST="$ROOT/Library/LaunchDaemons/com.appliance.daemon.plist"
BIN_LINK="$ROOT/usr/local/bin/appliance"

# Copy SRC to DEST with MODE only when the content differs (idempotent, keeps mtimes).
put() {
    local src="$1" dest="$2" mode="$3"
    mkdir -p "$(dirname "$dest")"
    if [ -f "$dest" ] && cmp -s "$src" "$dest"; then
        return 0
    fi
    install -m "$mode" "$src" "$dest"
    say "installed $dest"
}

# Copy only when DEST does not exist yet: an admin's edits are never overwritten.
put_once() {
    local src="$1" dest="$2" mode="$3"
    if [ -e "$dest" ]; then
        return 0
    fi
    mkdir -p "$(dirname "$dest")"
    install -m "$mode" "$src" "$dest"
    say "installed $dest (example; edit it)"
}

live() { [ -z "$ROOT" ]; }
has_systemd() { live && command -v systemctl >/dev/null && [ -d /run/systemd/system ]; }

# --- uninstall ---------------------------------------------------------------------------
if [ "$UNINSTALL" = 1 ]; then
    if [ "$OS" = Darwin ]; then
        live && launchctl bootout system/com.appliance.daemon 2>/dev/null || true
        rm -f "$PLIST"
    else
        if has_systemd; then
            systemctl disable --now appliance.service 2>/dev/null || true
        fi
        rm -f "$UNIT"
        has_systemd && systemctl daemon-reload || true
    fi
    rm -rf "$PREFIX"
    rm -f "$BIN_LINK"
    say "removed the service and $PREFIX; kept $ETC and the models in $ROOT$STORE_PATH"
    if [ "$PURGE" = 1 ]; then
        rm -rf "$ETC" "$ROOT$STORE_PATH" "$ROOT/var/cache/appliance" "$SYSUSERS"
        if live && id "$SERVICE_USER" >/dev/null 2>&1; then
            if [ "$OS" = Darwin ]; then
                dscl . -delete "/Users/$SERVICE_USER" || true
                dscl . -delete "/Groups/$SERVICE_USER" || true
            else
                userdel "$SERVICE_USER" || true
            fi
        fi
        say "purged config, keys, models and caches"
    fi
    exit 0
fi

# --- the service user --------------------------------------------------------------------
if [ "$OS" != Darwin ]; then
    put "$REPO/systemd/appliance.sysusers" "$SYSUSERS" 0644
fi
if live && ! id "$SERVICE_USER" >/dev/null 2>&1; then
    if [ "$OS" = Darwin ]; then
        # Not exercised by the test suite (no macOS here): a hidden system user and group.
        uid=400; while dscl . -list /Users UniqueID | awk '{print $2}' | grep -qx "$uid"; do uid=$((uid + 1)); done
        dscl . -create "/Groups/$SERVICE_USER" PrimaryGroupID "$uid"
        dscl . -create "/Users/$SERVICE_USER" UniqueID "$uid"
        dscl . -create "/Users/$SERVICE_USER" PrimaryGroupID "$uid"
        dscl . -create "/Users/$SERVICE_USER" UserShell /usr/bin/false
        dscl . -create "/Users/$SERVICE_USER" NFSHomeDirectory "$STORE_PATH"
        dscl . -create "/Users/$SERVICE_USER" IsHidden 1
    elif command -v systemd-sysusers >/dev/null; then
        systemd-sysusers "$SYSUSERS"
    else
        useradd --system --user-group --home-dir "$STORE_PATH" --shell /usr/sbin/nologin \
            --comment "appliance LLM inference" "$SERVICE_USER"
    fi
    say "created user $SERVICE_USER"
fi

# --- the venv and llama-cpp-python for this machine ----------------------------------------
if [ ! -x "$VENV/bin/python" ]; then
    mkdir -p "$PREFIX"
    if [ "$SKIP_PIP" = 1 ]; then
        "$PYTHON" -m venv --without-pip "$VENV"
    else
        "$PYTHON" -m venv "$VENV"
    fi
    say "created $VENV"
fi

if [ "$SKIP_PIP" = 0 ]; then
    backend=cpu
    cmake_args="${CMAKE_ARGS:-}"
    if [ "$FORCE_CPU" = 1 ]; then
        backend=cpu
    elif [ "$OS" = Darwin ] && [ "$(uname -m)" = arm64 ]; then
        backend=metal  # llama.cpp's default build on Apple Silicon
    elif [ "$OS" = Linux ] && command -v nvidia-smi >/dev/null && nvidia-smi -L >/dev/null 2>&1; then
        backend=cuda
        if ! command -v nvcc >/dev/null; then
            if [ -x /usr/local/cuda/bin/nvcc ]; then
                export PATH="/usr/local/cuda/bin:$PATH"
            elif [ -z "$WHEELHOUSE" ]; then
                die "an NVIDIA GPU is present but nvcc (the CUDA toolkit) is missing: install it
  (Debian/Ubuntu: apt-get install nvidia-cuda-toolkit, or NVIDIA's cuda-toolkit-12-x package
  from https://developer.nvidia.com/cuda-downloads), or pass --cpu for a CPU-only build,
  or --wheelhouse DIR with wheels built elsewhere"
            fi
        fi
        cmake_args="$cmake_args -DGGML_CUDA=on"
        [ -n "$CUDA_ARCH" ] && cmake_args="$cmake_args -DCMAKE_CUDA_ARCHITECTURES=$CUDA_ARCH"
    fi
    say "llama-cpp-python backend: $backend"
    "$VENV/bin/python" -m pip install --quiet --upgrade pip
    if [ -n "$WHEELHOUSE" ]; then
        "$VENV/bin/python" -m pip install --no-index --find-links "$WHEELHOUSE" appliance
    else
        # The wheel cache would hand back a build for another backend: rebuild when it matters.
        CMAKE_ARGS="$cmake_args" "$VENV/bin/python" -m pip install --no-cache-dir "$REPO"
    fi
fi

mkdir -p "$(dirname "$BIN_LINK")"
if [ "$(readlink "$BIN_LINK" 2>/dev/null || true)" != "/opt/appliance/venv/bin/appliance" ]; then
    ln -sfn /opt/appliance/venv/bin/appliance "$BIN_LINK"
fi
put "$REPO/docs/operations.md" "$PREFIX/docs/operations.md" 0644

# --- configuration (never overwritten) -----------------------------------------------------
mkdir -p "$ETC"
chmod 0750 "$ETC"
tmp="$(mktemp)"
trap 'rm -f "$tmp"' EXIT
# The example with the service's store path set, so the admin's CLI sees the same store.
sed "s|^# path = \"~/.local/share/appliance\".*|path = \"$STORE_PATH\"|" \
    "$REPO/docs/examples/appliance.toml" > "$tmp"
put_once "$tmp" "$ETC/appliance.toml" 0640
put_once "$REPO/models.toml" "$ETC/models.toml" 0640

# --- the unit (or the LaunchDaemon) --------------------------------------------------------
if [ "$OS" = Darwin ]; then
    put "$REPO/systemd/com.appliance.daemon.plist" "$PLIST" 0644
    live && mkdir -p "$STORE_PATH" /usr/local/var/log && chown "$SERVICE_USER" "$STORE_PATH"
else
    put "$REPO/systemd/appliance.service" "$UNIT" 0644
fi

# --- the first admin key (only when no key exists yet) -----------------------------------
# APPLIANCE_CLI: how to run the CLI (tests point it at a development checkout).
cli="${APPLIANCE_CLI:-$VENV/bin/appliance}"
if [ "$SKIP_PIP" = 1 ] && [ -z "${APPLIANCE_CLI:-}" ] && [ ! -x "$VENV/bin/appliance" ]; then
    # --skip-pip installed nothing that could create a key: say so, do not fail the layout.
    say "skipped the first admin key (--skip-pip: the CLI is not installed); later run:"
    say "  appliance keys create admin --scope admin --config $ETC/appliance.toml"
elif ! grep -qs '^\[keys\.' "$ETC/keys.toml"; then
    # No --models here: for `keys create` that is the key's allowed-model list, not the
    # catalog (the catalog is found by the usual search); the first admin key may use all.
    token="$($cli keys create admin --scope admin --config "$ETC/appliance.toml" | head -n 1)" \
        || die "could not create the first admin key"
    echo
    echo "  First admin API key (shown only now; store it safely):"
    echo "    $token"
    echo
fi
[ -f "$ETC/keys.toml" ] && chmod 0640 "$ETC/keys.toml"
if live; then
    chown -R "root:$(id -gn "$SERVICE_USER")" "$ETC"
fi

# --- enable and start -----------------------------------------------------------------------
if [ "$OS" = Darwin ]; then
    if live; then
        launchctl bootstrap system "$PLIST" 2>/dev/null || launchctl kickstart -k system/com.appliance.daemon
        say "LaunchDaemon loaded: com.appliance.daemon"
    fi
elif has_systemd; then
    systemctl daemon-reload
    if [ "$START" = 1 ]; then
        systemctl enable --now appliance.service
    else
        systemctl enable appliance.service
    fi
    say "service enabled: systemctl status appliance"
elif live; then
    say "systemd is not running here: the unit is installed but not enabled"
fi
say "done. Check the setup with: appliance doctor"
