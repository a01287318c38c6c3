#!/bin/sh
# Container entrypoint of every quiz image: raise the open-file limit, then exec the binary.
#
# Kubernetes has no per-pod rlimit setting; the container runtime hands the process its own
# defaults (containerd: often a soft limit of 1024 with a much higher hard limit). A core node
# or an edge-lb holds one descriptor per connection (edge-lb two), so the soft limit is raised
# to QUIZ_NOFILE (default 1048576), or to the hard limit when that is lower. The effective
# limit is printed once so `kubectl logs` shows it.
set -eu
want="${QUIZ_NOFILE:-1048576}"
hard="$(ulimit -Hn)"
if [ "$hard" != "unlimited" ] && [ "$hard" -lt "$want" ]; then
    want="$hard"
fi
ulimit -Sn "$want" 2>/dev/null || true
echo "entrypoint: open-file limit $(ulimit -Sn) (hard $(ulimit -Hn))" >&2
exec "$@"
