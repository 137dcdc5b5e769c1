# shellcheck shell=bash
# Self-setup for the vocker checkout.  Source it from the other scripts:
#     source "$(dirname "${BASH_SOURCE[0]}")/setup.sh"
# It installs missing system packages, creates .venv, installs the project with
# its test extra (only when pyproject.toml changed since the last install), and
# puts .venv/bin first on PATH.  Idempotent; a no-op run takes well under 1 s.
# Note: sourcing leaves the caller in the repo root with `set -euo pipefail`.

set -euo pipefail

# System packages needed by the project (FUSE back-end) and its tests (docker-registry and nginx: servers the
# sharing tests start on 127.0.0.1; zsh and fish: the shells whose activation the CLI tests check).
APT_PACKAGES=(fuse3 libfuse3-3 docker-registry nginx zsh fish)

cd "$(dirname "${BASH_SOURCE[0]}")/.."
VOCKER_REPO_ROOT="$(pwd -P)"
export VOCKER_REPO_ROOT

_vocker_setup_log_dir() {
    if [[ -d .venv ]]; then echo ".venv"; else echo "${TMPDIR:-/tmp}"; fi
}

_vocker_setup_apt() {
    local missing=() pkg status
    for pkg in "${APT_PACKAGES[@]}"; do
        status="$(dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null || true)"
        [[ "$status" == "install ok installed" ]] || missing+=("$pkg")
    done
    ((${#missing[@]})) || return 0

    if [[ "$(id -u)" != 0 ]]; then
        echo "setup: missing system packages; please run: sudo apt-get install -y ${missing[*]}" >&2
        exit 1
    fi
    local log
    log="$(_vocker_setup_log_dir)/vocker-setup-apt.log"
    echo "installing system packages: ${missing[*]}" >&2
    if ! { DEBIAN_FRONTEND=noninteractive apt-get update -q \
        && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}"; } \
        >"$log" 2>&1 </dev/null; then
        echo "setup: apt-get failed (log: $log):" >&2
        tail -n 20 "$log" >&2
        exit 1
    fi
}

_vocker_setup_venv() {
    local stamp=.venv/.vocker-setup-stamp want have="" log
    if [[ ! -x .venv/bin/python ]]; then
        echo "creating .venv" >&2
        rm -f "$stamp"
        python3 -m venv .venv
        if ! .venv/bin/python -m pip install -q --upgrade pip >.venv/vocker-setup-pip.log 2>&1 </dev/null; then
            echo "setup: upgrading pip failed (log: .venv/vocker-setup-pip.log):" >&2
            tail -n 20 .venv/vocker-setup-pip.log >&2
            exit 1
        fi
    fi
    want="$(sha256sum pyproject.toml | cut -d' ' -f1)"
    [[ -f "$stamp" ]] && have="$(<"$stamp")"
    [[ "$want" == "$have" ]] && return 0

    log=.venv/vocker-setup-pip.log
    echo "installing project into .venv (pip install -e '.[test]')" >&2
    if ! .venv/bin/python -m pip install -q -e '.[test]' >"$log" 2>&1 </dev/null; then
        echo "setup: pip install failed (log: $log):" >&2
        tail -n 30 "$log" >&2
        exit 1
    fi
    echo "$want" >"$stamp"
}

_vocker_setup_apt
_vocker_setup_venv
unset -f _vocker_setup_apt _vocker_setup_venv _vocker_setup_log_dir

VIRTUAL_ENV="$VOCKER_REPO_ROOT/.venv"
export VIRTUAL_ENV
case ":$PATH:" in
    "$VIRTUAL_ENV/bin:"*) ;;
    *) PATH="$VIRTUAL_ENV/bin:$PATH" ;;
esac
export PATH
hash -r
