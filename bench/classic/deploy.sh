#!/bin/bash
# deploy.sh - what the classic Jenkins freestyle job runs on the server after it ships
# the build: restart the idle port, wait for health, switch nginx to it.
#
# The idle port is guessed the classic way, from live traffic: ask the front door which
# port answered and take the other one (weakness kept: no recorded state, no lock).
# IDLE_PORT overrides the guess.
#
# Usage: deploy.sh
# Env:   PORTS ("8081 8082")  FRONT_URL (http://127.0.0.1)  IDLE_PORT (guessed)
#        + everything restart.sh, health.sh and switch.sh read (APP_DIR, INCLUDE_FILE,
#          NGINX_ARGS, STOP_SLEEP, HEALTH_*)
set -u

HERE=$(cd "$(dirname "$0")" && pwd)
PORTS=${PORTS:-"8081 8082"}
FRONT_URL=${FRONT_URL:-http://127.0.0.1}
read -r PORT_A PORT_B <<< "$PORTS"

if [ -z "${IDLE_PORT:-}" ]; then
    # the demo answers "hello from v1 (blue:8081)": the port that answered is live
    LIVE=$(curl -fsS --max-time 5 "$FRONT_URL/" | sed -n 's/.*:\([0-9][0-9]*\)).*/\1/p')
    if [ "$LIVE" = "$PORT_A" ]; then IDLE_PORT=$PORT_B; else IDLE_PORT=$PORT_A; fi
fi
echo "deploy: idle port $IDLE_PORT"

"$HERE/restart.sh" "$IDLE_PORT" || exit 1
"$HERE/health.sh" "$IDLE_PORT" || exit 1
"$HERE/switch.sh" "$IDLE_PORT" || exit 1
echo "deploy: live on $IDLE_PORT"
