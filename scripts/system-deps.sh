#!/usr/bin/env bash
# Install the Debian packages the test suite drives for real (nginx, chromium, redis) when missing.
#
#   scripts/system-deps.sh            best effort: warn loudly and exit 0 if they cannot be installed
#   scripts/system-deps.sh --require  CI: failing to install them is an error
#
# Fast and silent when everything is already there (no apt call at all). Tests that need a
# package that is still missing skip themselves with a reason naming this script.
set -uo pipefail

# One line per package: "<Debian package> <command that proves it is installed>".
PACKAGES=(
    "nginx nginx"
    "chromium chromium"
    "redis-server redis-server"
)

require=0
case "${1:-}" in
    --require) require=1 ;;
    "") ;;
    *) echo "usage: $0 [--require]" >&2; exit 2 ;;
esac

has_command() {
    # Daemons live in /usr/sbin, which a non-root PATH may leave out.
    PATH="$PATH:/usr/local/sbin:/usr/sbin:/sbin" command -v "$1" >/dev/null 2>&1
}

missing=()
for entry in "${PACKAGES[@]}"; do
    read -r package binary <<<"$entry"
    if ! has_command "$binary" || ! dpkg -s "$package" >/dev/null 2>&1; then
        missing+=("$package")
    fi
done
[ "${#missing[@]}" -eq 0 ] && exit 0

fail() {
    if [ "$require" -eq 1 ]; then
        echo "system-deps: ERROR: $1" >&2
        exit 1
    fi
    {
        echo "######################################################################"
        echo "# system-deps: WARNING: $1"
        echo "# The tests that need ${missing[*]} will be SKIPPED."
        echo "# Install them as root: sudo $0"
        echo "######################################################################"
    } >&2
    exit 0
}

if [ "$(id -u)" -ne 0 ]; then
    fail "missing Debian packages (${missing[*]}) and not root, so cannot install them."
fi
if ! command -v apt-get >/dev/null 2>&1; then
    fail "missing packages (${missing[*]}) and no apt-get on this machine."
fi

# A package's maintainer script must not start its daemon (nginx would take port 80):
# policy-rc.d answering 101 forbids it, for this install only.
policy=/usr/sbin/policy-rc.d
policy_backup=""
if [ -e "$policy" ]; then
    policy_backup="$(mktemp)"
    cp -p "$policy" "$policy_backup"
fi
restore_policy() {
    if [ -n "$policy_backup" ]; then
        mv -f "$policy_backup" "$policy"
    else
        rm -f "$policy"
    fi
}
trap restore_policy EXIT
printf '#!/bin/sh\nexit 101\n' >"$policy"
chmod 755 "$policy"

echo "system-deps: installing ${missing[*]}" >&2
if ! apt-get update -qq; then
    fail "apt-get update failed."
fi
if ! DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"; then
    fail "apt-get install ${missing[*]} failed."
fi

# Belt and braces: if a system nginx runs anyway (no policy-rc.d support, an earlier
# install), stop it and keep it from starting at boot. The tests run their own, on a free port.
for package in "${missing[@]}"; do
    if [ "$package" = nginx ]; then
        if command -v systemctl >/dev/null 2>&1 && [ -d /run/systemd/system ]; then
            systemctl disable --now nginx >/dev/null 2>&1 || true
        elif [ -x /etc/init.d/nginx ]; then
            /etc/init.d/nginx stop >/dev/null 2>&1 || true
            update-rc.d nginx disable >/dev/null 2>&1 || true
        fi
    fi
done

still=()
for entry in "${PACKAGES[@]}"; do
    read -r package binary <<<"$entry"
    has_command "$binary" || still+=("$package")
done
if [ "${#still[@]}" -ne 0 ]; then
    fail "installed, yet still missing: ${still[*]}."
fi
echo "system-deps: installed ${missing[*]}" >&2
