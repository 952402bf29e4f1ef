#!/usr/bin/env bash
# Screenshots of the admin status page (`GET /status`) for the docs:
# docs/status.png (1280×900 window, whole page) and docs/status-phone.png
# (390×844, a phone). Builds nothing.
#
# With STATUS_URL set (a running wsedge's http://HOST:PORT/status), it
# shoots that page. Otherwise it starts its own scene on ports 19910-19924:
#   - with wsload (target/debug or target/release): two `wsload echo`
#     servers and wsedge with two upstreams: `chat` (the two echo servers
#     and a dead port, which passive ejection throws out; the second echo
#     server is drained through the API) and `feed` (a dead port with
#     websocket health checks: DOWN); clients hold 40 connections, churn
#     handshakes, send messages and ask for a route that does not exist,
#     so that every state and most counters show;
#   - without wsload: `wsedge --listen 127.0.0.1:19910 --admin
#     127.0.0.1:19911` (the built-in echo) and a few connections from
#     python3's `websockets`, if installed.
# The page polls /api/status every 2 s; the shots are taken after a few
# seconds of real time (Chromium's DevTools protocol, driven by python3
# `websockets`) so that the rates have two samples. Without python3
# `websockets` it falls back to `chromium --screenshot` (rates show "…").
#
# With pngquant installed (Debian: apt-get install -y pngquant), the shots
# are reduced to 256 colours (text stays sharp) to keep each under ~200 KB.
#
# Usage: loadtest/status-screenshot.sh
#   WSEDGE=path/to/wsedge   (default: target/debug/wsedge, else release)
#   WSLOAD=path/to/wsload  (WSLOAD=none: the built-in echo scene)
#   OUT=docs                where the PNGs go
# Needs chromium (Debian: apt-get install -y --no-install-recommends chromium).
set -euo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-docs}
target=${CARGO_TARGET_DIR:-target}
pick() { for f in "$@"; do [ -x "$f" ] && { echo "$f"; return; }; done; }
wsedge=${WSEDGE:-$(pick "$target/debug/wsedge" "$target/release/wsedge")}
wsload=${WSLOAD:-$(pick "$target/debug/wsload" "$target/release/wsload")}
[ "$wsload" = none ] && wsload=
chrome=$(command -v chromium || command -v chromium-browser || command -v google-chrome || true)
[ -n "$chrome" ] || { echo "no chromium: apt-get install -y --no-install-recommends chromium" >&2; exit 1; }
has_pyws() { python3 -c 'import websockets.sync.client' 2>/dev/null; }

dir=$(mktemp -d)
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$dir"
}
trap cleanup EXIT

wait_port() { # HOST PORT: up to 5 s
    for _ in $(seq 50); do
        (exec 3<>"/dev/tcp/$1/$2") 2>/dev/null && return 0
        sleep 0.1
    done
    echo "nothing listens on $1:$2" >&2
    return 1
}

url=${STATUS_URL:-}
if [ -z "$url" ]; then
    [ -n "$wsedge" ] || { echo "no wsedge binary: cargo build first (or WSEDGE=...)" >&2; exit 1; }
    url=http://127.0.0.1:19911/status
    admin=http://127.0.0.1:19911
    ws=ws://127.0.0.1:19910
    if [ -n "$wsload" ]; then
        for p in 19921 19922; do
            "$wsload" echo --listen "127.0.0.1:$p" --workers 1 --no-pin >/dev/null 2>&1 &
            pids+=($!)
        done
        cat >"$dir/wsedge.toml" <<'TOML'
workers = 2
pin = false
[admin]
address = "127.0.0.1:19911"
[[listener]]
address = "127.0.0.1:19910"
[[route]]
path = "/chat"
upstream = "chat"
[[route]]
path = "/feed"
upstream = "feed"
fallback_upstream = "chat"
[[upstream]]
name = "chat"
balance = "least_conn"
servers = ["127.0.0.1:19921", "127.0.0.1:19922", "127.0.0.1:19923"]
eject_after = 2
eject_base = "5m"
[[upstream]]
name = "feed"
servers = ["127.0.0.1:19924"]
[upstream.health]
kind = "websocket"
path = "/"
interval = "1s"
timeout = "500ms"
fall = 1
TOML
        wait_port 127.0.0.1 19921
        wait_port 127.0.0.1 19922
        NO_COLOR=1 "$wsedge" --config "$dir/wsedge.toml" >"$dir/wsedge.log" 2>&1 &
        pids+=($!)
        wait_port 127.0.0.1 19911
        # Held connections, handshake churn (bytes are counted as they
        # end), messages, and a few refusals.
        "$wsload" idle "$ws/chat" -c 40 --workers 1 --no-pin --ready-file "$dir/ready" >/dev/null 2>&1 &
        pids+=($!)
        for _ in $(seq 50); do [ -e "$dir/ready" ] && break; sleep 0.1; done
        curl -fsS -X POST "$admin/api/servers/chat/127.0.0.1:19922/drain" >/dev/null
        "$wsload" connect "$ws/chat" -r 40 -d 60s --warmup 0s --workers 1 --no-pin >/dev/null 2>&1 &
        pids+=($!)
        "$wsload" run "$ws/chat" -c 4 -r 400 -s 64..4k -d 60s --warmup 0s --workers 1 --no-pin >/dev/null 2>&1 &
        pids+=($!)
        for _ in 1 2 3; do
            curl -s -o /dev/null -H 'Connection: Upgrade' -H 'Upgrade: websocket' \
                -H 'Sec-WebSocket-Version: 13' -H 'Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==' \
                http://127.0.0.1:19910/nowhere || true
        done
    else
        NO_COLOR=1 "$wsedge" --listen 127.0.0.1:19910 --admin 127.0.0.1:19911 --workers 2 --no-pin \
            >"$dir/wsedge.log" 2>&1 &
        pids+=($!)
        wait_port 127.0.0.1 19911
        if has_pyws; then
            python3 - "$ws/" >/dev/null 2>&1 <<'PY' &
import asyncio, sys
from websockets.asyncio.client import connect

async def chatter(url, i):
    async with connect(url) as c:
        while True:
            await c.send("x" * (64 * (i + 1)))
            await c.recv()
            await asyncio.sleep(0.05)

async def main(url):
    await asyncio.gather(*(chatter(url, i) for i in range(8)))

asyncio.run(main(sys.argv[1]))
PY
            pids+=($!)
        else
            echo "NOTE: neither wsload nor python3 websockets: the page shows no traffic" >&2
        fi
    fi
    sleep 2
fi

mkdir -p "$out"
rm -f "$out/status.png" "$out/status-phone.png"
if has_pyws; then
    port=19930
    "$chrome" --headless --no-sandbox --disable-gpu --hide-scrollbars \
        --user-data-dir="$dir/chrome" --remote-debugging-port=$port \
        --window-size=1280,900 about:blank >"$dir/chrome.log" 2>&1 &
    pids+=($!)
    wait_port 127.0.0.1 $port
    python3 - "$port" "$url" "$out" <<'PY'
# Drives Chromium over the DevTools protocol: load, let the page poll for
# a few seconds of real time, shoot the whole page; then the same as a
# phone.
import base64, json, sys, time, urllib.request
from websockets.sync.client import connect

port, url, out = sys.argv[1], sys.argv[2], sys.argv[3]
for _ in range(50):
    try:
        targets = json.load(urllib.request.urlopen(f"http://127.0.0.1:{port}/json"))
        page = next(t for t in targets if t["type"] == "page")
        break
    except Exception:
        time.sleep(0.1)
ids = iter(range(1, 1 << 30))

def call(method, **params):
    n = next(ids)
    ws.send(json.dumps({"id": n, "method": method, "params": params}))
    while True:
        m = json.loads(ws.recv())
        if m.get("id") == n:
            if "error" in m:
                raise SystemExit(f"{method}: {m['error']}")
            return m.get("result", {})

def shoot(path, width, height, scale, mobile):
    call("Emulation.setDeviceMetricsOverride", width=width, height=height,
         deviceScaleFactor=scale, mobile=mobile)
    call("Page.navigate", url=url)
    time.sleep(5.5)  # three polls: the rates have two samples
    h = call("Runtime.evaluate", expression="document.documentElement.scrollHeight",
             returnByValue=True)["result"]["value"]
    shot = call("Page.captureScreenshot", format="png", captureBeyondViewport=True,
                clip={"x": 0, "y": 0, "width": width, "height": max(height, h), "scale": 1})
    with open(path, "wb") as f:
        f.write(base64.b64decode(shot["data"]))

with connect(page["webSocketDebuggerUrl"], max_size=None) as ws:
    call("Page.enable")
    shoot(f"{out}/status.png", 1280, 900, 1, False)
    shoot(f"{out}/status-phone.png", 390, 844, 1, True)
PY
else
    echo "NOTE: no python3 websockets: plain --screenshot, taken at load (rates show …)" >&2
    "$chrome" --headless --no-sandbox --disable-gpu --hide-scrollbars \
        --screenshot="$out/status.png" --window-size=1280,900 "$url" >/dev/null 2>&1
    "$chrome" --headless --no-sandbox --disable-gpu --hide-scrollbars \
        --screenshot="$out/status-phone.png" --window-size=390,844 "$url" >/dev/null 2>&1
fi

if command -v pngquant >/dev/null; then
    # Exit 98/99: already small, or the quality floor not met: kept as shot.
    pngquant --quality 70-95 --speed 1 --strip --skip-if-larger --force --ext .png \
        "$out/status.png" "$out/status-phone.png" || [ $? -ge 98 ]
else
    echo "NOTE: no pngquant: the PNGs are kept as Chromium wrote them" >&2
fi

for f in "$out/status.png" "$out/status-phone.png"; do
    [ -s "$f" ] || { echo "no $f" >&2; exit 1; }
    head -c 8 "$f" | od -An -tx1 | grep -q '89 50 4e 47 0d 0a 1a 0a' || { echo "$f is not a PNG" >&2; exit 1; }
    echo "$f: $(wc -c <"$f") bytes"
done
