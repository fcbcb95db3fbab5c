# Sourced by setup.sh. The unit runs /opt/nodeguard's venv under ProtectHome=yes, PrivateTmp=yes and
# PrivateDevices=yes, which hide /root, /home, /run/user, /tmp, /var/tmp and /dev/shm: a venv built
# on a python3 found there first in PATH (pyenv, a user's build) leaves the unit unable to start.
# So the venv is built on the distribution's python3, whatever PATH says.

SYSTEM_PYTHON=/usr/bin/python3

# Prints the interpreter to build the venv on ($1, default $SYSTEM_PYTHON), or one line on stderr
# and status 2 when it is missing or it (or what it links to) is where the unit cannot see it.
system_python() {
  local candidate=${1:-$SYSTEM_PYTHON} path
  if [ ! -x "$candidate" ]; then
    echo "setup.sh: $candidate: no such interpreter (apt-get install python3 python3-venv)" >&2
    return 2
  fi
  for path in "$candidate" "$(readlink -f "$candidate")"; do
    case "$path" in
      /root/*|/home/*|/run/user/*|/tmp/*|/var/tmp/*|/dev/shm/*)
        echo "setup.sh: $path: hidden from the unit (ProtectHome=, PrivateTmp=, PrivateDevices=); use $SYSTEM_PYTHON" >&2
        return 2;;
    esac
  done
  echo "$candidate"
}
