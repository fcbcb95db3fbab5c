#!/bin/bash
# Loads the exact rules of docs/syn-defence.md section 6 (nft; iptables-nft v4/v6; iptables-legacy) into a
# throwaway network namespace: the kernel and the tools accept them. No traffic. Run as root.
set -euo pipefail
NS=ngs-$$-rules
ip netns add $NS; trap "ip netns del $NS" EXIT
X="ip netns exec $NS"
$X nft -f - <<'EOF'
table inet ngs-doccheck {
  set synproxy-ports-v4 { type inet_service; elements = { 22, 10250 } }
  set synproxy-ports-v6 { type inet_service; elements = { 22 } }
  set synproxy-svc-v4 { type ipv4_addr . inet_service; elements = { 192.168.99.33 . 80 } }
  set trusted-v4 { type ipv4_addr; size 65536; flags dynamic,timeout; timeout 1h; }
  set conn-0-v4 { type ipv4_addr; size 65536; flags dynamic; }
  set syn-valve-on { type inet_proto; }
  counter syn-valve-drops { }
  chain filter-prerouting {
    type filter hook prerouting priority -350; policy accept;
    iifname != { "eth0" } return
    meta nfproto ipv4 fib daddr type local tcp dport @synproxy-ports-v4 tcp flags & (fin | syn | rst | ack) == syn notrack
    meta nfproto ipv6 fib daddr type local tcp dport @synproxy-ports-v6 tcp flags & (fin | syn | rst | ack) == syn notrack
    ip daddr . tcp dport @synproxy-svc-v4 tcp flags & (fin | syn | rst | ack) == syn notrack
    tcp flags & (fin | syn | rst | ack) == syn jump syn-flood
  }
  chain syn-flood {
    ip saddr @trusted-v4 return
    ct state untracked return
    limit rate over 5000/second burst 10000 packets drop
    meta l4proto @syn-valve-on limit rate over 500/second burst 500 packets counter name syn-valve-drops drop
  }
  chain synproxy-input {
    type filter hook input priority -160; policy accept;
    iifname != { "eth0" } return
    meta nfproto ipv4 tcp dport @synproxy-ports-v4 tcp flags & (fin | syn | rst | ack) == ack ct state invalid add @conn-0-v4 { ip saddr ct count over 256 } drop
    meta nfproto ipv4 tcp dport @synproxy-ports-v4 ct state invalid,untracked synproxy mss 1460 wscale 10 timestamp sack-perm
    meta nfproto ipv6 tcp dport @synproxy-ports-v6 ct state invalid,untracked synproxy mss 1440 wscale 10 timestamp sack-perm
    meta nfproto ipv4 tcp dport @synproxy-ports-v4 ct state invalid drop
    meta nfproto ipv6 tcp dport @synproxy-ports-v6 ct state invalid drop
  }
  chain synproxy-forward {
    type filter hook forward priority -160; policy accept;
    iifname != { "eth0" } return
    ip daddr . tcp dport @synproxy-svc-v4 ct state invalid,untracked synproxy mss 1460 wscale 10 timestamp sack-perm
    ip daddr . tcp dport @synproxy-svc-v4 ct state invalid drop
  }
}
EOF
echo "nft: loaded"; $X nft list table inet ngs-doccheck > /dev/null
$X ipset create NODEGUARD-SYNPROXY-V4 bitmap:port range 0-65535
$X ipset create NODEGUARD-SYNPROXY-V6 bitmap:port range 0-65535
IPT=$(cat <<'EOF'
*raw
:PREROUTING ACCEPT [0:0]
:NODEGUARD-PRE-UPLINK - [0:0]
:NODEGUARD-SYN - [0:0]
-A PREROUTING -i eth0 -g NODEGUARD-PRE-UPLINK
-A NODEGUARD-PRE-UPLINK -p tcp --syn -m addrtype --dst-type LOCAL -m set --match-set NODEGUARD-SYNPROXY-V4 dst -m comment --comment "nodeguard:0 synproxy: SYN not tracked" -j CT --notrack
-A NODEGUARD-PRE-UPLINK -p tcp --tcp-flags FIN,SYN,RST,ACK SYN -j NODEGUARD-SYN
-A NODEGUARD-SYN -m conntrack --ctstate UNTRACKED -m comment --comment "nodeguard:0 synproxy ports skip the valve" -j RETURN
COMMIT
*filter
:INPUT ACCEPT [0:0]
:FORWARD ACCEPT [0:0]
:NODEGUARD-SYNPROXY - [0:0]
:NODEGUARD-SYNPROXY-UPLINK - [0:0]
-I INPUT 1 -j NODEGUARD-SYNPROXY
-I FORWARD 1 -j NODEGUARD-SYNPROXY
-A NODEGUARD-SYNPROXY -i eth0 -g NODEGUARD-SYNPROXY-UPLINK
-A NODEGUARD-SYNPROXY-UPLINK -p tcp -m set --match-set NODEGUARD-SYNPROXY-V4 dst --tcp-flags FIN,SYN,RST,ACK ACK -m conntrack --ctstate INVALID -m connlimit --connlimit-above 256 --connlimit-mask 32 --connlimit-saddr -j DROP
-A NODEGUARD-SYNPROXY-UPLINK -p tcp -m set --match-set NODEGUARD-SYNPROXY-V4 dst -m conntrack --ctstate INVALID,UNTRACKED -j SYNPROXY --sack-perm --timestamp --wscale 10 --mss 1460
-A NODEGUARD-SYNPROXY-UPLINK -p tcp -m set --match-set NODEGUARD-SYNPROXY-V4 dst -m conntrack --ctstate INVALID -j DROP
COMMIT
EOF
)
echo "$IPT" | $X iptables-nft-restore --noflush && echo "iptables-nft: loaded"
echo "$IPT" | sed "s/V4/V6/g; s/--mss 1460/--mss 1440/; s/--connlimit-mask 32/--connlimit-mask 64/" | $X ip6tables-nft-restore --noflush && echo "ip6tables-nft: loaded"
echo "$IPT" | $X iptables-legacy-restore --noflush && echo "iptables-legacy: loaded"
