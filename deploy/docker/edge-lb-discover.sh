#!/bin/bash
# edge-lb-discover: keeps edge-lb's backend list equal to the core StatefulSet's pods.
#
# edge-lb's configuration names each backend by `name` (the ring key) and `addr` (ip:port);
# it has no DNS or Kubernetes discovery of its own. This script, run as a sidecar of every
# edge-lb pod (same image), resolves the StatefulSet's stable per-pod DNS names
#   <CORE_STATEFULSET>-<ordinal>.<CORE_SERVICE>.<POD_NAMESPACE>.svc.<CLUSTER_DOMAIN>
# (the headless Service publishes them, not-ready pods included), writes the edge-lb
# configuration from a template, and asks edge-lb to reload (POST /admin/reload) when the
# list changed. Scaling the StatefulSet therefore needs no configuration edit. Every edge-lb
# replica computes the same list from the same DNS answers, so they route alike; the backend
# name is the pod name, which is also core's node name (QUIZ_NODE_NAME), so a restarted pod
# with a new IP keeps its place on the ring.
#
#   edge-lb-discover.sh --once   wait until at least one core pod resolves, write, exit (init)
#   edge-lb-discover.sh          loop forever (sidecar)
#
# Settings (environment):
#   DISCOVER_TEMPLATE      edge-lb configuration with the line `backends: __CORE_BACKENDS__`
#                          (default /etc/edge-lb/edge-lb.template.yaml)
#   DISCOVER_OUTPUT        file edge-lb reads (default /run/edge-lb/edge-lb.yaml)
#   CORE_STATEFULSET       core                      CORE_SERVICE   core-headless
#   CORE_PORT              8080                      CLUSTER_DOMAIN cluster.local
#   POD_NAMESPACE          namespace (from the downward API); DISCOVER_DOMAIN overrides the
#                          whole suffix after the pod name
#   DISCOVER_INTERVAL      seconds between rounds (5)
#   DISCOVER_MAX_MISSES    consecutive unresolvable ordinals that end a scan (8): ordinals of
#                          a StatefulSet are contiguous, gaps are only transient
#   DISCOVER_FORGET_AFTER  seconds a pod that stopped resolving stays listed (60), so a pod
#                          being recreated is not removed and re-added (edge-lb's health
#                          checks and hold-down handle it meanwhile)
#   DISCOVER_RESOLVE       resolver command, given a name, printing "IP ..." (getent hosts)
#   DISCOVER_RELOAD_URL    http://127.0.0.1:9090/admin/reload; empty = do not reload
set -uo pipefail

template="${DISCOVER_TEMPLATE:-/etc/edge-lb/edge-lb.template.yaml}"
output="${DISCOVER_OUTPUT:-/run/edge-lb/edge-lb.yaml}"
sts="${CORE_STATEFULSET:-core}"
port="${CORE_PORT:-8080}"
domain="${DISCOVER_DOMAIN:-${CORE_SERVICE:-core-headless}.${POD_NAMESPACE:-default}.svc.${CLUSTER_DOMAIN:-cluster.local}}"
interval="${DISCOVER_INTERVAL:-5}"
max_misses="${DISCOVER_MAX_MISSES:-8}"
forget_after="${DISCOVER_FORGET_AFTER:-60}"
resolve="${DISCOVER_RESOLVE:-getent hosts}"
reload_url="${DISCOVER_RELOAD_URL-http://127.0.0.1:9090/admin/reload}"

declare -A last_ip=()
declare -A last_seen=()
max_ordinal=-1

log() { echo "edge-lb-discover: $*" >&2; }

# One scan: resolve ordinals from 0 until max_misses in a row fail.
scan() {
    local now i misses=0 ip
    now="$(date +%s)"
    for ((i = 0; misses < max_misses; i++)); do
        ip="$($resolve "$sts-$i.$domain" 2>/dev/null | awk 'NR == 1 { print $1 }')"
        if [[ -n "$ip" ]]; then
            misses=0
            last_ip[$i]="$ip"
            last_seen[$i]="$now"
            ((i > max_ordinal)) && max_ordinal=$i
        else
            misses=$((misses + 1))
        fi
    done
}

# The flow sequence that replaces __CORE_BACKENDS__, sorted by ordinal.
backends() {
    local now i addr out=""
    now="$(date +%s)"
    for ((i = 0; i <= max_ordinal; i++)); do
        [[ -n "${last_seen[$i]:-}" ]] || continue
        if ((now - last_seen[$i] > forget_after)); then
            unset "last_ip[$i]" "last_seen[$i]"
            continue
        fi
        addr="${last_ip[$i]}"
        [[ "$addr" == *:* ]] && addr="[$addr]"
        out+="${out:+, }{name: $sts-$i, addr: \"$addr:$port\"}"
    done
    [[ -n "$out" ]] && echo "[$out]"
}

# Write the configuration if it changed; prints "changed" when it did.
write_config() {
    local list="$1" tmp
    tmp="$(mktemp "$(dirname "$output")/.edge-lb.XXXXXX")" || return 1
    if ! grep -q '__CORE_BACKENDS__' "$template"; then
        log "template $template has no __CORE_BACKENDS__ placeholder"
        rm -f "$tmp"
        return 1
    fi
    sed "s|__CORE_BACKENDS__|$list|" "$template" >"$tmp"
    if [[ -f "$output" ]] && cmp -s "$tmp" "$output"; then
        rm -f "$tmp"
        return 0
    fi
    chmod 0644 "$tmp"
    mv -f "$tmp" "$output"
    echo changed
}

reload() {
    [[ -n "$reload_url" ]] || return 0
    curl -fsS -m 5 -X POST "$reload_url" >/dev/null
}

round() {
    local list changed
    scan
    list="$(backends)"
    if [[ -z "$list" ]]; then
        log "no pod of $sts.$domain resolves yet; keeping the current configuration"
        return 1
    fi
    changed="$(write_config "$list")" || return 1
    if [[ "$changed" == changed ]]; then
        log "backends: $list"
        pending_reload=1
    fi
    return 0
}

pending_reload=0
if [[ "${1:-}" == "--once" ]]; then
    until round; do sleep "$interval"; done
    exit 0
fi
while true; do
    round
    if ((pending_reload)); then
        if reload; then
            pending_reload=0
        else
            log "reload via $reload_url failed; retrying next round"
        fi
    fi
    sleep "$interval"
done
