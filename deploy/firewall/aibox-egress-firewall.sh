#!/usr/bin/env bash
# aibox egress firewall: the host-level backstop behind the egress proxy.
#
# The browser worker's network should reach only the edge's egress proxy. This script drops its
# forwarded traffic to the same address ranges the proxy refuses (private, loopback, link-local
# and metadata, tailnet/CGNAT, multicast, reserved, documentation, IPv6 translation prefixes),
# so a browser that ignores its proxy settings still cannot reach them.
#
#   iptables:  a chain AIBOX-EGRESS, jumped to from DOCKER-USER for each browser subnet
#              (DOCKER-USER is the chain Docker reserves for user rules and never flushes).
#   nftables:  a table `inet aibox_egress` with a forward hook at priority filter - 1, i.e. before
#              Docker's own rules; the nftables equivalent of DOCKER-USER (Docker's nftables
#              backend has no DOCKER-USER chain).
#
# Usage:
#   aibox-egress-firewall.sh --dry-run --subnet 172.30.0.0/24 --allow 172.30.0.2:3128
#   sudo aibox-egress-firewall.sh --network aibox_browser --allow 172.30.0.2:3128
#   sudo aibox-egress-firewall.sh --remove [--backend nftables]
#
# Options:
#   --subnet CIDR        browser network subnet (repeatable)
#   --network NAME       Docker network whose subnets to use (repeatable; needs `docker`)
#   --allow IP:PORT      destination the browser may still reach, e.g. the edge's proxy (repeatable;
#                        IPv6 as [addr]:port)
#   --backend B          iptables (default) or nftables
#   --dry-run            print the rules/commands, change nothing
#   --remove             remove everything this script installed
# Not run by the test suite except in --dry-run mode.
set -euo pipefail

DENIED_V4=(
  0.0.0.0/8 10.0.0.0/8 100.64.0.0/10 127.0.0.0/8 169.254.0.0/16 172.16.0.0/12 192.0.0.0/24
  192.0.2.0/24 192.88.99.0/24 192.168.0.0/16 198.18.0.0/15 198.51.100.0/24 203.0.113.0/24
  224.0.0.0/4 240.0.0.0/4
)
DENIED_V6=(
  ::/128 ::1/128 ::ffff:0:0/96 ::/96 64:ff9b::/96 64:ff9b:1::/48 100::/64 2001::/23
  2001:db8::/32 2002::/16 3fff::/20 5f00::/16 fc00::/7 fe80::/10 fec0::/10 ff00::/8
)
CHAIN=AIBOX-EGRESS
TABLE=aibox_egress

backend=iptables
dry_run=0
remove=0
subnets=()
networks=()
allows=()

die() { echo "aibox-egress-firewall: $*" >&2; exit 2; }

while [ $# -gt 0 ]; do
  case "$1" in
    --subnet) [ $# -ge 2 ] || die "--subnet needs a value"; subnets+=("$2"); shift 2 ;;
    --network) [ $# -ge 2 ] || die "--network needs a value"; networks+=("$2"); shift 2 ;;
    --allow) [ $# -ge 2 ] || die "--allow needs a value"; allows+=("$2"); shift 2 ;;
    --backend) [ $# -ge 2 ] || die "--backend needs a value"; backend="$2"; shift 2 ;;
    --dry-run) dry_run=1; shift ;;
    --remove) remove=1; shift ;;
    -h|--help) sed -n '2,33p' "$0"; exit 0 ;;
    *) die "unknown argument: $1 (see --help)" ;;
  esac
done

case "$backend" in iptables|nftables) ;; *) die "--backend must be iptables or nftables, not '$backend'" ;; esac

for net in "${networks[@]}"; do
  command -v docker >/dev/null || die "--network needs the docker CLI"
  found=$(docker network inspect -f '{{range .IPAM.Config}}{{.Subnet}} {{end}}' "$net") \
    || die "--network: no Docker network named '$net'"
  for s in $found; do subnets+=("$s"); done
done

is_v4_cidr() { [[ "$1" =~ ^([0-9]{1,3}\.){3}[0-9]{1,3}/([0-9]|[12][0-9]|3[0-2])$ ]]; }
is_v6_cidr() { [[ "$1" =~ ^[0-9a-fA-F:]*:[0-9a-fA-F:.]*/([0-9]{1,2}|1[01][0-9]|12[0-8])$ ]]; }

if [ "$remove" -eq 0 ]; then
  [ ${#subnets[@]} -gt 0 ] || die "--subnet or --network is required"
  for s in "${subnets[@]}"; do
    is_v4_cidr "$s" || is_v6_cidr "$s" || die "--subnet: '$s' is not a CIDR (e.g. 172.30.0.0/24)"
  done
fi

# --allow IP:PORT -> "family ip port"
allow_specs=()
for a in "${allows[@]}"; do
  if [[ "$a" =~ ^\[([0-9a-fA-F:.]+)\]:([0-9]{1,5})$ ]]; then
    allow_specs+=("6 ${BASH_REMATCH[1]} ${BASH_REMATCH[2]}")
  elif [[ "$a" =~ ^(([0-9]{1,3}\.){3}[0-9]{1,3}):([0-9]{1,5})$ ]]; then
    allow_specs+=("4 ${BASH_REMATCH[1]} ${BASH_REMATCH[3]}")
  else
    die "--allow: '$a' is not IP:PORT (IPv6 as [addr]:port)"
  fi
done

run() {
  # Print in dry-run mode, execute otherwise.
  if [ "$dry_run" -eq 1 ]; then
    printf '%s\n' "$*"
  else
    "$@"
  fi
}

iptables_for() { if [ "$1" = 6 ]; then echo ip6tables; else echo iptables; fi; }

iptables_remove() {
  for fam in 4 6; do
    local ipt; ipt=$(iptables_for "$fam")
    if [ "$dry_run" -eq 1 ]; then
      echo "# remove: $ipt -D DOCKER-USER ... -j $CHAIN (every jump), then flush and delete $CHAIN"
      continue
    fi
    command -v "$ipt" >/dev/null || continue
    while rule=$("$ipt" -w -S DOCKER-USER 2>/dev/null | grep -- "-j $CHAIN" | head -n1) && [ -n "$rule" ]; do
      # shellcheck disable=SC2086
      "$ipt" -w ${rule/-A /-D }
    done
    "$ipt" -w -F "$CHAIN" 2>/dev/null || true
    "$ipt" -w -X "$CHAIN" 2>/dev/null || true
  done
}

iptables_apply() {
  for fam in 4 6; do
    local ipt fam_subnets=() ranges=()
    ipt=$(iptables_for "$fam")
    for s in "${subnets[@]}"; do
      if [ "$fam" = 4 ] && is_v4_cidr "$s"; then fam_subnets+=("$s"); fi
      if [ "$fam" = 6 ] && is_v6_cidr "$s"; then fam_subnets+=("$s"); fi
    done
    [ ${#fam_subnets[@]} -gt 0 ] || continue
    if [ "$fam" = 4 ]; then ranges=("${DENIED_V4[@]}"); else ranges=("${DENIED_V6[@]}"); fi
    echo "# $ipt: browser subnets ${fam_subnets[*]} -> DOCKER-USER -> $CHAIN"
    run "$ipt" -w -N "$CHAIN" 2>/dev/null || true
    run "$ipt" -w -F "$CHAIN"
    for spec in "${allow_specs[@]}"; do
      read -r afam aip aport <<<"$spec"
      [ "$afam" = "$fam" ] || continue
      run "$ipt" -w -A "$CHAIN" -d "$aip" -p tcp --dport "$aport" -j RETURN
    done
    for r in "${ranges[@]}"; do
      run "$ipt" -w -A "$CHAIN" -d "$r" -j DROP
    done
    run "$ipt" -w -A "$CHAIN" -j RETURN
    for s in "${fam_subnets[@]}"; do
      if [ "$dry_run" -eq 1 ] || ! "$ipt" -w -C DOCKER-USER -s "$s" -j "$CHAIN" 2>/dev/null; then
        run "$ipt" -w -I DOCKER-USER -s "$s" -j "$CHAIN"
      fi
    done
  done
}

nft_script() {
  echo "# nftables: table inet $TABLE, a forward hook before Docker's rules (the DOCKER-USER equivalent)"
  echo "table inet $TABLE"
  echo "delete table inet $TABLE"
  echo "table inet $TABLE {"
  echo "  chain forward {"
  echo "    type filter hook forward priority filter - 1; policy accept;"
  for s in "${subnets[@]}"; do
    local fam=ip ranges=()
    if is_v6_cidr "$s"; then fam=ip6; ranges=("${DENIED_V6[@]}"); else ranges=("${DENIED_V4[@]}"); fi
    for spec in "${allow_specs[@]}"; do
      read -r afam aip aport <<<"$spec"
      if { [ "$afam" = 4 ] && [ "$fam" = ip ]; } || { [ "$afam" = 6 ] && [ "$fam" = ip6 ]; }; then
        echo "    $fam saddr $s $fam daddr $aip tcp dport $aport accept"
      fi
    done
    for r in "${ranges[@]}"; do
      echo "    $fam saddr $s $fam daddr $r drop"
    done
  done
  echo "  }"
  echo "}"
}

nft_apply() {
  if [ "$dry_run" -eq 1 ]; then
    nft_script
  else
    command -v nft >/dev/null || die "nft not found"
    nft_script | nft -f -
  fi
}

nft_remove() {
  if [ "$dry_run" -eq 1 ]; then
    echo "delete table inet $TABLE"
  else
    nft delete table inet "$TABLE" 2>/dev/null || true
  fi
}

if [ "$dry_run" -eq 0 ] && [ "$(id -u)" -ne 0 ]; then
  die "must run as root (or use --dry-run)"
fi

case "$backend:$remove" in
  iptables:0) iptables_apply ;;
  iptables:1) iptables_remove ;;
  nftables:0) nft_apply ;;
  nftables:1) nft_remove ;;
esac
