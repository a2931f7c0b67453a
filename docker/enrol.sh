#!/bin/sh
# The stack's trust set-up, on the coordinator's side (docker/compose.yaml). No private key of a
# silo ever reaches it: a silo's container makes its own key and publishes only the public half in
# the enrolment volume (docker/silo.sh).
#   enrol.sh coordinator    the coordinator's key (made in its own volume on first start, kept
#                           after), pinned in the roster
#   enrol.sh SILO...        enrol each named silo by the public key its container published there
#                           (waits up to FEDSILO_ENROL_WAIT s for it). A silo already enrolled with
#                           another key is never replaced here: rotating a key is the operator's
#                           decision (`fedsilo roster add SILO KEY --replace`).
# Every change to the roster holds a lock, so the set-up services may run at the same time (podman
# also starts coordinator-key again when it starts serve, which requires it: harmless, it keeps the key).
set -eu
: "${FEDSILO_ROSTER:?the roster file}"
lock="$(dirname "$FEDSILO_ROSTER")/.lock"
enrolment="${FEDSILO_ENROLMENT:-/var/lib/fedsilo/enrolment}"

if [ "${1:-}" = coordinator ]; then
  : "${FEDSILO_COORDINATOR_STATE:?the coordinator's key folder}"
  exec flock "$lock" fedsilo keys init --coordinator --state "$FEDSILO_COORDINATOR_STATE" \
    --roster "$FEDSILO_ROSTER"
fi
[ "$#" -gt 0 ] || { echo "usage: enrol.sh coordinator | enrol.sh SILO..." >&2; exit 2; }
deadline=$(( $(date +%s) + ${FEDSILO_ENROL_WAIT:-900} ))
for silo in "$@"; do
  while [ ! -s "$enrolment/$silo.pub" ]; do
    if [ "$(date +%s)" -ge "$deadline" ]; then
      echo "enrol: silo $silo published no public key in $enrolment (is its container running?)" >&2
      exit 1
    fi
    sleep 2
  done
  key="$(cat "$enrolment/$silo.pub")"
  flock "$lock" fedsilo roster add "$silo" "$key" --roster "$FEDSILO_ROSTER"
done
