#!/bin/sh
# First start: make the cluster with POSTGRES_USER/POSTGRES_PASSWORD and the stack's databases;
# every start: serve on all addresses of the container's (backend-only) network, password auth.
set -eu
: "${POSTGRES_USER:=fedsilo}"
: "${POSTGRES_PASSWORD:?set POSTGRES_PASSWORD (docker/.env)}"
: "${POSTGRES_DATABASES:=prefect mlflow mlflow_auth}"
if [ ! -s "$PGDATA/PG_VERSION" ]; then
  password_file="$(mktemp)"
  printf '%s' "$POSTGRES_PASSWORD" > "$password_file"
  initdb --pgdata="$PGDATA" --username="$POSTGRES_USER" --pwfile="$password_file" \
    --auth-local=scram-sha-256 --auth-host=scram-sha-256 >/dev/null
  rm -f "$password_file"
  echo "host all all 0.0.0.0/0 scram-sha-256" >> "$PGDATA/pg_hba.conf"
  pg_ctl --pgdata="$PGDATA" --options="-c listen_addresses=''" --wait start >/dev/null
  for database in $POSTGRES_DATABASES; do
    PGPASSWORD="$POSTGRES_PASSWORD" createdb --username="$POSTGRES_USER" --owner="$POSTGRES_USER" "$database"
  done
  pg_ctl --pgdata="$PGDATA" --wait stop >/dev/null
fi
unset POSTGRES_PASSWORD  # the server itself never needs it again
exec postgres -D "$PGDATA" -c listen_addresses='*'
