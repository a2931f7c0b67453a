#!/bin/sh
# Wait until every host:port in FEDSILO_WAIT_FOR accepts a TCP connection (up to 180 s), then run
# the command. Compose starts services in order but not when they are ready; this is the rest.
set -eu
if [ -n "${FEDSILO_WAIT_FOR:-}" ]; then
  python - "$FEDSILO_WAIT_FOR" <<'PY'
import socket, sys, time
deadline = time.monotonic() + 180
for target in sys.argv[1].split():
    host, port = target.rsplit(":", 1)
    while True:
        try:
            socket.create_connection((host, int(port)), timeout=2).close()
            break
        except OSError as exc:
            if time.monotonic() > deadline:
                sys.exit(f"wait-for: {target} not reachable after 180 s: {exc}")
            time.sleep(1)
PY
fi
exec "$@"
