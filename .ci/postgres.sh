# PostgreSQL for CI (sourced by .ci/run): a server on 127.0.0.1:5432 and a database of this run.
PG_HOST=127.0.0.1
PG_PORT=5432
PG_USER=postgres

start_postgres() {
  if pg_isready -q -h "$PG_HOST" -p "$PG_PORT" 2>/dev/null; then
    return
  fi
  echo "ci: no PostgreSQL on $PG_HOST:$PG_PORT, starting Debian's" >&2
  if ! command -v pg_ctlcluster >/dev/null; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null
  fi
  local version
  version="$(ls /etc/postgresql | sort -V | tail -n 1)"
  # trust on loopback TCP, as on the CI machine: the tests connect as postgres without a password
  sed -i -E 's/^(host[[:space:]]+all[[:space:]]+all[[:space:]]+(127\.0\.0\.1\/32|::1\/128)[[:space:]]+)[^[:space:]]+/\1trust/' \
    "/etc/postgresql/$version/main/pg_hba.conf"
  pg_ctlcluster "$version" main start || pg_ctlcluster "$version" main reload
  for _ in $(seq 1 60); do
    pg_isready -q -h "$PG_HOST" -p "$PG_PORT" && return
    sleep 0.5
  done
  echo "ci: PostgreSQL did not start" >&2
  return 1
}

create_ci_database() {
  CI_DATABASE="cartox_ci_$(date +%s)_$$_${RANDOM}"
  psql -q -h "$PG_HOST" -p "$PG_PORT" -U "$PG_USER" -d postgres -c "CREATE DATABASE \"$CI_DATABASE\"" >&2
  echo "postgresql+psycopg://$PG_USER@$PG_HOST:$PG_PORT/$CI_DATABASE"
}

drop_ci_database() {
  local name="${CARTOX_TEST_DATABASE_URL##*/}"
  psql -q -h "$PG_HOST" -p "$PG_PORT" -U "$PG_USER" -d postgres -c "DROP DATABASE IF EXISTS \"$name\" WITH (FORCE)" >&2 || true
}
