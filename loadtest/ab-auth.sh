#!/usr/bin/env bash
# Proxy CPU per handshake with and without authentication, interleaved:
# one echo server, then ROUNDS rounds of a fresh proxy per variant (none,
# JWT ES256, JWT RS256, JWT HS256, api_key), each measured by
# `wsload connect --max --watch` with the credential in a header. Tokens
# are the PyJWT-made fixtures of tests/fixtures/jwt. Prints "VARIANT µs".
#
# Usage: ROUNDS=5 loadtest/ab-auth.sh [target/release/wsedge]
# Proxy on CPU 0, wsload and the echo server on CPU 1; needs release
# builds of wsedge and wsload.
set -euo pipefail
cd "$(dirname "$0")/.."
bin=${1:-target/release/wsedge}
w=target/release/wsload
fx=tests/fixtures/jwt
dir=$(mktemp -d)
taskset -c 1 "$w" echo --listen 127.0.0.1:19201 --workers 1 >/dev/null 2>&1 &
echo_pid=$!
trap 'kill "$echo_pid" 2>/dev/null; rm -rf "$dir"' EXIT
token() { python3 -c "import json,sys; print(json.load(open('$fx/tokens.json'))['tokens'][sys.argv[1]])" "$1"; }
echo "bench:key-for-the-handshake-benchmark" > "$dir/keys"
base='[[listener]]
address = "127.0.0.1:19200"
[[upstream]]
name = "u"
servers = ["127.0.0.1:19201"]
[[route]]
path = "/"
upstream = "u"'
jwt() {
    printf '%s\nauth = "a"\n[[auth]]\nname = "a"\nkind = "jwt"\n%s\nissuer = "https://issuer.test"\naudience = "wsedge-test"\nforward = { sub = "X-User-Id" }\n' "$base" "$1"
}
printf '%s\n' "$base" > "$dir/none.toml"
jwt "public_key_file = \"$PWD/$fx/ec256.pem\"" > "$dir/es256.toml"
jwt "public_key_file = \"$PWD/$fx/rsa.pem\"" > "$dir/rs256.toml"
jwt "secret_file = \"$PWD/$fx/hmac.secret\"" > "$dir/hs256.toml"
printf '%s\nauth = "a"\n[[auth]]\nname = "a"\nkind = "api_key"\nkeys_file = "%s"\n' "$base" "$dir/keys" > "$dir/api_key.toml"
declare -A header=(
    [none]="X-Nothing: 1"
    [es256]="Authorization: Bearer $(token valid_ES256)"
    [rs256]="Authorization: Bearer $(token valid_RS256)"
    [hs256]="Authorization: Bearer $(token valid_HS256)"
    [api_key]="X-API-Key: key-for-the-handshake-benchmark"
)
for _ in $(seq 1 "${ROUNDS:-5}"); do
    for v in none es256 rs256 hs256 api_key; do
        taskset -c 0 nice -n -10 "$bin" --config "$dir/$v.toml" --workers 1 >/dev/null 2>&1 &
        pid=$!
        sleep 0.4
        out=$(taskset -c 1 nice -n -10 "$w" connect ws://127.0.0.1:19200/ -H "${header[$v]}" \
            --max --concurrency 16 -d 3s --warmup 1s --workers 1 --watch "proxy=$pid" 2>&1)
        us=$(awk '/cpu proxy/ {print $3}' <<<"$out")
        fails=$(awk '/failed/ {print}' <<<"$out" | head -1)
        echo "$v $us ${fails}"
        kill "$pid"
        wait "$pid" 2>/dev/null || true
    done
done
