#!/usr/bin/env bash
# `make demo`: a real blue-green deploy of the bundled example app on this machine.
# nginx runs in a private prefix on 127.0.0.1:8080; the app's slots are 8081 (blue) and
# 8082 (green); everything lives under /tmp/bluegreen-demo.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
fab="$repo/.venv/bin/fab"
py="$repo/.venv/bin/python"
front=http://127.0.0.1:8080/

step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

step "0. a fresh start: private nginx on 127.0.0.1:8080"
"$repo/scripts/demo-nginx.sh" reset
"$repo/scripts/demo-nginx.sh" start
cd "$repo/examples/demo"
python3 build.py v1 >/dev/null && python3 build.py v2 >/dev/null
echo "built dist/demo-v1.tar.gz and dist/demo-v2.tar.gz"

step "1. fab deploy v1 (first deploy: goes to blue, nginx is pointed at it; no nginx.mode is set, so bluegreen asks nginx, finds the lua module and switches without reloads)"
"$fab" deploy --artifact dist/demo-v1.tar.gz --version v1
echo "curl $front -> $(curl -fsS "$front")"

step "2. fab deploy v2 while a client keeps sending requests"
stopfile=$(mktemp -u)
"$py" "$repo/scripts/demo_traffic.py" "$front" "$stopfile" &
traffic=$!
sleep 0.5
"$fab" deploy --artifact dist/demo-v2.tar.gz --version v2
sleep 0.3
touch "$stopfile"
wait "$traffic" || { echo "requests failed during the deploy" >&2; exit 1; }
rm -f "$stopfile"
echo "curl $front -> $(curl -fsS "$front")"

step "3. fab status: v2 live on green, v1 still warm on blue"
"$fab" status

step "4. fab switch: back to v1, instantly (no upload, no start: a health check, then nginx flips its live port, no reload)"
"$fab" switch
echo "curl $front -> $(curl -fsS "$front")"

step "5. fab rollback: back to the release that was live before (v2)"
"$fab" rollback
echo "curl $front -> $(curl -fsS "$front")"

step "6. the status page: bluegreen serve on 127.0.0.1:8765 (loopback only, no token)"
auto=/tmp/bluegreen-demo/automation
mkdir -p "$auto"
cat > "$auto/automation.toml" <<TOML
[service]
listen = "127.0.0.1"
port = 8765
state_dir = "$auto/state"

[[rules]]  # a push to this repository's main would build the demo and deploy it
name = "demo-main"
repo = "local/bluegreen"
branch = "main"
app = "demo"
action = "build"
clone_url = "$repo"
build_command = "cd examples/demo && python3 build.py \$BLUEGREEN_COMMIT"
artifact = "examples/demo/dist/demo-*.tar.gz"
config = "$repo/examples/demo/bluegreen.toml"
TOML
"$repo/.venv/bin/bluegreen" serve --config "$auto/automation.toml" > "$auto/serve.log" 2>&1 &
echo $! > "$auto/serve.pid"
ui=http://127.0.0.1:8765/ui/
for _ in $(seq 50); do curl -fsS -o /dev/null "$ui" 2>/dev/null && break; sleep 0.1; done
if curl -fsS -o /dev/null "$ui" 2>/dev/null; then
  echo "status page: $ui   (metrics: http://127.0.0.1:8765/metrics)"
else
  echo "bluegreen serve did not answer on $ui (port 8765 busy?): see $auto/serve.log"
fi

cat <<TXT

Done. Try it yourself:
  cd examples/demo
  ../../.venv/bin/fab switch            # flip traffic to the other slot
  ../../.venv/bin/fab status --json     # what runs where, recorded history
  ../../.venv/bin/fab deploy --artifact dist/demo-v1.tar.gz --version v1 --dry-run
  curl $front
  open $ui                  # live slots, lock, history, jobs; updates itself
Stop and remove everything: make demo-stop
TXT
