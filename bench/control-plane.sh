#!/usr/bin/env bash
# Control-plane timings at scale (issue 14 item 2): one add, a 100k-line file, list,
# xdp status, stats, the daemon's idle CPU and SIGTERM-to-exit, with N entries
# already on the blocklist. Runs the given gateway binary in a scratch network
# namespace, pin dir and state dir; cleans up after itself.
#
#   sudo bench/control-plane.sh target/release/gateway 1000000
set -euo pipefail
BIN=$(realpath "${1:?gateway binary}")
N=${2:-100000}
NS=ctlbench$$
PIN=/sys/fs/bpf/gateway-$NS
STATE=$(mktemp -d)
cleanup() {
    [[ -n ${DAEMON:-} ]] && kill "$DAEMON" 2>/dev/null || true
    nsenter --net=/run/netns/$NS "$BIN" --pin-dir "$PIN" --state-dir "$STATE" xdp detach >/dev/null 2>&1 || true
    ip netns del $NS 2>/dev/null || true
    rm -rf "$STATE"
}
trap cleanup EXIT
ip netns add $NS
ip -n $NS link add g$NS type veth peer name c$NS
ip -n $NS link set g$NS up
ip -n $NS link set c$NS up
g() { nsenter --net=/run/netns/$NS "$BIN" --pin-dir "$PIN" --state-dir "$STATE" "$@"; }
# Wall-clock seconds and CPU seconds (user+sys) of one command.
timed() {
    local label=$1; shift
    local out
    out=$( { /usr/bin/time -f "%e %U %S" "$@" >/dev/null 2>/dev/null; } 2>&1 | tail -1)
    read -r wall user sys <<<"$out"
    printf '%-34s wall %6.3f s  cpu %6.3f s\n' "$label" "$wall" "$(echo "$user + $sys" | bc)"
}
# Addresses from 2001:2::/48 only (the benchmarking range).
python3 - "$STATE" "$N" <<'PY'
import ipaddress, sys
state, n = sys.argv[1], int(sys.argv[2])
base = int(ipaddress.IPv6Address('2001:2::'))
with open(f'{state}/fill.txt', 'w') as f:
    for i in range(n):
        f.write(f'{ipaddress.IPv6Address(base + (1 << 32) + i)}\n')
with open(f'{state}/file100k.txt', 'w') as f:
    for i in range(100_000):
        f.write(f'{ipaddress.IPv6Address(base + (2 << 32) + i)}\n')
PY
CAP=$(( N + 200000 ))
g xdp attach --iface g$NS --blocklist-entries $CAP >/dev/null
echo "== $N entries (capacity $CAP), $(nproc) CPUs, load average $(cut -d' ' -f1-3 /proc/loadavg)"
timed "fill: add --file ($N lines)" g blocklist add --file "$STATE/fill.txt" --ttl 1h
timed "one add" g blocklist add 2001:2:0:ffff::1 --ttl 10m
timed "one add (again)" g blocklist add 2001:2:0:ffff::2
timed "one remove" g blocklist remove 2001:2:0:ffff::2
timed "100k-line file add" g blocklist add --file "$STATE/file100k.txt" --ttl 1h
timed "100k-line file remove" g blocklist remove --file "$STATE/file100k.txt"
timed "list" g blocklist list
timed "list --json" g --json blocklist list
timed "xdp status" g xdp status
timed "ratelimit show" g ratelimit show
timed "stats" g stats
printf '[xdp]\ninterface = "g%s"\n[admin]\nenabled = false\n' $NS > "$STATE/gw.toml"
start=$(date +%s.%N)
nsenter --net=/run/netns/$NS "$BIN" --pin-dir "$PIN" --state-dir "$STATE" run --config "$STATE/gw.toml" >"$STATE/daemon.log" 2>&1 &
DAEMON=$!
until grep -q "gateway running" "$STATE/daemon.log"; do sleep 0.05; done
printf '%-34s wall %6.3f s\n' "daemon start (restore, index)" "$(echo "$(date +%s.%N) - $start" | bc)"
sleep 10  # past the first reconcile walk
ticks() { awk '{print $14 + $15}' /proc/$DAEMON/stat; }
t0=$(ticks); sleep 60; t1=$(ticks)
HZ=$(getconf CLK_TCK)
printf '%-34s %6.2f %% of a core (60 s)\n' "daemon idle CPU" "$(echo "scale=4; ($t1 - $t0) * 100 / $HZ / 60" | bc)"
timed "one add (daemon running)" g blocklist add 2001:2:0:ffff::3 --ttl 2s
sleep 3
start=$(date +%s.%N)
kill -TERM $DAEMON
while kill -0 $DAEMON 2>/dev/null; do sleep 0.01; done
DAEMON=
printf '%-34s wall %6.3f s\n' "SIGTERM to exit" "$(echo "$(date +%s.%N) - $start" | bc)"
