#!/bin/sh
# System packages the test stack and the demo need: a real OpenSSH server and client (the client
# carries the Hosts' streams: tasks/openssh.py), the archivers the
# nodes use (tar, zstd, gzip, bzip2), sudo for the least-privilege user, and headless Chromium with
# its WebDriver for the browser test of the Prefect UI (tests/test_ui_browser.py). Installs only
# what is missing; needs root for that.
set -eu
need=""
[ -x /usr/sbin/sshd ] || need="$need openssh-server"
command -v ssh >/dev/null 2>&1 || need="$need openssh-client"
command -v zstd >/dev/null 2>&1 || need="$need zstd"
command -v bzip2 >/dev/null 2>&1 || need="$need bzip2"
command -v runuser >/dev/null 2>&1 || need="$need util-linux"
[ -x /usr/bin/chromium ] || need="$need chromium"
[ -x /usr/bin/chromedriver ] || need="$need chromium-driver"
command -v sudo >/dev/null 2>&1 || need="$need sudo"  # the least-privilege test (tests/test_least_privilege.py)
[ -z "$need" ] && exit 0
if [ "$(id -u)" != 0 ]; then
  echo "missing system packages:$need (install them as root)" >&2
  exit 1
fi
# Keep the package's own sshd from starting on port 22: the stack runs its own on loopback.
printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d
trap 'rm -f /usr/sbin/policy-rc.d' EXIT
apt-get update -q
DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $need
