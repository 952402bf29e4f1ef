#!/usr/bin/env bash
# Interleaved A/B of wsedge's proxy CPU per handshake: one echo server, then
# ROUNDS rounds of a fresh proxy per binary, each measured by
# `wsload connect --max --watch`. Prints "BINARY µs" per run.
#
# Usage: ROUNDS=5 [TLS_CERT=FILE TLS_KEY=FILE] [MODE=--tls-resume] \
#            loadtest/ab-handshake.sh BIN_A BIN_B [...]
# With TLS_CERT/TLS_KEY (a certificate for `localhost`) the handshakes are
# TLS 1.3 (MODE=--tls-resume: resumed ones; MODE= : full ones); without,
# plain WebSocket handshakes. Proxy on CPU 0, wsload and the echo server on
# CPU 1; needs a release build of wsload (target/release/wsload).
set -euo pipefail
cd "$(dirname "$0")/.."
w=target/release/wsload
taskset -c 1 "$w" echo --listen 127.0.0.1:19201 --workers 1 >/dev/null 2>&1 &
echo_pid=$!
trap 'kill "$echo_pid" 2>/dev/null' EXIT
proxy_args=()
client_args=()
url=ws://127.0.0.1:19200/
if [ -n "${TLS_CERT:-}" ]; then
    proxy_args=(--tls-cert "$TLS_CERT" --tls-key "${TLS_KEY:?TLS_KEY with TLS_CERT}")
    client_args=(--ca "$TLS_CERT" --tls-version 1.3 ${MODE-"--tls-resume"})
    url=wss://localhost:19200/
fi
for _ in $(seq 1 "${ROUNDS:-5}"); do
    for bin in "$@"; do
        taskset -c 0 nice -n -10 "$bin" --listen 127.0.0.1:19200 --upstream 127.0.0.1:19201 \
            --workers 1 ${proxy_args[@]+"${proxy_args[@]}"} >/dev/null 2>&1 &
        pid=$!
        sleep 0.4
        us=$(taskset -c 1 nice -n -10 "$w" connect "$url" ${client_args[@]+"${client_args[@]}"} \
            --max --concurrency 16 -d 3s --warmup 1s --workers 1 --watch "proxy=$pid" 2>&1 |
            awk '/cpu proxy/ {print $3}')
        echo "$bin $us"
        kill "$pid"
        wait "$pid" 2>/dev/null || true
    done
done
