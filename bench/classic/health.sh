#!/bin/bash
# health.sh - the classic health step, kept faithful ON PURPOSE (baseline):
#   sleep a fixed time, then curl the idle port up to N times, a fixed interval apart.
#
# Weaknesses kept: fixed initial sleep (slow when the app is fast, wrong when it is slow),
# fixed interval, checks the idle port directly and never the front door after a switch.
#
# Usage: health.sh PORT
# Env:   HEALTH_INITIAL_SLEEP (10)  HEALTH_TRIES (10)  HEALTH_INTERVAL (10)
#        HEALTH_PATH (/health)      HEALTH_HOST (127.0.0.1)
set -u

PORT=${1:?usage: health.sh PORT}
HEALTH_INITIAL_SLEEP=${HEALTH_INITIAL_SLEEP:-10}
HEALTH_TRIES=${HEALTH_TRIES:-10}
HEALTH_INTERVAL=${HEALTH_INTERVAL:-10}
HEALTH_PATH=${HEALTH_PATH:-/health}
HEALTH_HOST=${HEALTH_HOST:-127.0.0.1}

sleep "$HEALTH_INITIAL_SLEEP"
for i in $(seq 1 "$HEALTH_TRIES"); do
    if curl -fsS --max-time 5 "http://$HEALTH_HOST:$PORT$HEALTH_PATH" > /dev/null; then
        echo "health: port $PORT healthy after try $i"
        exit 0
    fi
    echo "health: port $PORT not healthy (try $i/$HEALTH_TRIES)"
    sleep "$HEALTH_INTERVAL"
done
echo "health: port $PORT never became healthy" >&2
exit 1
