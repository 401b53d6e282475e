# idle-config.sh — sourced by measure-idle.sh and measure-scale.sh: the throw-away config both
# measure with (self-signed certificate, user bench/bench with a role on /echo, Origin
# https://localhost, warn-level log). The caller gives its own [server] lines.
#
#   write_idle_config FILE SERVER_LINES
write_idle_config() {
  cat >"$1" <<INI
[server]
$2
[tls]
cert = wsgate.crt
key = wsgate.key
self_signed = true
[origins]
allow = https://localhost
[auth]
users_file = users
[log]
level = warn
[channel:/echo]
mode = echo
[role:bench]
members = *
subscribe = /echo
publish = /echo
INI
}
