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
G=(nsenter --net=/run/netns/$NS "$BIN" --pin-dir "$PIN" --state-dir "$STATE")
g() { "${G[@]}" "$@"; }
# Wall-clock seconds and CPU seconds (user+sys) of one command.
timed() {
    local label=$1; shift
    /usr/bin/time -o "$STATE/time" -f "%e %U %S" "$@" >/dev/null 2>"$STATE/stderr" \
        || { echo "$label failed: $(cat "$STATE/stderr")"; return 1; }
    read -r wall user sys <"$STATE/time"
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
timed "fill: add --file ($N lines)" "${G[@]}" blocklist add --file "$STATE/fill.txt" --ttl 1h
timed "one add" "${G[@]}" blocklist add 2001:2:0:ffff::1 --ttl 10m
timed "one add (again)" "${G[@]}" blocklist add 2001:2:0:ffff::2
timed "one remove" "${G[@]}" blocklist remove 2001:2:0:ffff::2
timed "100k-line file add" "${G[@]}" blocklist add --file "$STATE/file100k.txt" --ttl 1h
timed "100k-line file remove" "${G[@]}" blocklist remove --file "$STATE/file100k.txt"
timed "list" "${G[@]}" blocklist list
timed "list --json" "${G[@]}" --json blocklist list
timed "xdp status" "${G[@]}" xdp status
timed "ratelimit show" "${G[@]}" ratelimit show
timed "stats" "${G[@]}" stats
printf '[xdp]\ninterface = "g%s"\n[admin]\nenabled = false\n' $NS > "$STATE/gw.toml"
start=$(date +%s.%N)
nsenter --net=/run/netns/$NS "$BIN" --pin-dir "$PIN" --state-dir "$STATE" run --config "$STATE/gw.toml" >"$STATE/daemon.log" 2>&1 &
DAEMON=$!
until grep -q "gateway running" "$STATE/daemon.log"; do sleep 0.05; done
printf '%-34s wall %6.3f s\n' "daemon start (restore, index)" "$(echo "$(date +%s.%N) - $start" | bc)"
sleep 10  # past the first reconcile walk
ticks() { awk '{print $14 + $15}' /proc/$DAEMON/stat; }
IDLE=${IDLE:-30}
t0=$(ticks); sleep "$IDLE"; t1=$(ticks)
HZ=$(getconf CLK_TCK)
printf '%-34s %6.2f %% of a core (%s s)\n' "daemon idle CPU" "$(echo "scale=4; ($t1 - $t0) * 100 / $HZ / $IDLE" | bc)" "$IDLE"
timed "one add (daemon running)" "${G[@]}" blocklist add 2001:2:0:ffff::3 --ttl 2s
sleep 3
start=$(date +%s.%N)
kill -TERM $DAEMON
while kill -0 $DAEMON 2>/dev/null; do sleep 0.01; done
DAEMON=
printf '%-34s wall %6.3f s\n' "SIGTERM to exit" "$(echo "$(date +%s.%N) - $start" | bc)"
