#!/bin/sh
# A silo's container (docker/compose.yaml): `silo.sh SILO [fedsilo worker options]`.
# 1. its Ed25519 key, made in its own state volume on first start and kept after; the private half
#    never leaves that volume;
# 2. the public half published in the enrolment volume, for the coordinator's set-up to enrol;
# 3. wait (up to FEDSILO_ENROL_WAIT s) until the roster (read-only here) pins the coordinator's key
#    and enrols this silo with this key: a worker never starts unenrolled;
# 4. then wait for the servers (wait-for.sh) and become the silo's worker, with its state, roster
#    and policy (mounted read-only; an empty file is an empty policy).
set -eu
silo="${1:?usage: silo.sh SILO [fedsilo worker options]}"
shift
state="${FEDSILO_SILO_STATE:-/var/lib/fedsilo/state}"
enrolment="${FEDSILO_ENROLMENT:-/var/lib/fedsilo/enrolment}"
policy="${FEDSILO_POLICY_FILE:-/etc/fedsilo/policy.yaml}"
: "${FEDSILO_ROSTER:?the roster file}"

key="$(fedsilo keys init --silo "$silo" --state "$state" | awk -v silo="$silo" '$1 == silo && NF == 2 {print $2}')"
[ -n "$key" ] || { echo "silo.sh: fedsilo keys init printed no public key for $silo" >&2; exit 1; }
printf '%s\n' "$key" > "$enrolment/.$silo.pub.$$"
mv -f "$enrolment/.$silo.pub.$$" "$enrolment/$silo.pub"
echo "silo $silo: published its public key $key for enrolment; waiting for the roster"

python - "$silo" "$key" "$FEDSILO_ROSTER" "${FEDSILO_ENROL_WAIT:-900}" <<'PY'
import sys, time
from fedsilo.errors import TrustError
from fedsilo.trust.roster import load_roster

silo, key, path, seconds = sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4])
deadline = time.monotonic() + seconds
while True:
    try:
        roster = load_roster(path)
        entry = roster.silos.get(silo)
        if roster.coordinator and entry is not None and entry.public_key == key:
            break
        if not roster.coordinator:
            why = "the roster pins no coordinator key yet"
        elif entry is None:
            why = f"{silo} is not enrolled yet"
        else:
            why = (f"{silo} is enrolled with another key ({entry.public_key}); if this silo's key was "
                   f"made anew, the coordinator's operator rotates it: fedsilo roster add {silo} {key} --replace")
    except TrustError as exc:
        why = str(exc)
    if time.monotonic() > deadline:
        sys.exit(f"silo {silo}: not enrolled in {path} after {seconds:.0f} s: {why}")
    time.sleep(2)
print(f"silo {silo}: enrolled in {path}", flush=True)
PY
exec /app/docker/wait-for.sh fedsilo worker --silo "$silo" --state "$state" --roster "$FEDSILO_ROSTER" \
  --policy "$policy" "$@"
