#!/usr/bin/env bash
# Makes sure the services and programs the test suite talks to are present: a Redis server on
# 127.0.0.1:6379, PostgreSQL on 127.0.0.1:5432 (trust auth for local connections, database
# `test`) and Debian's Chromium for the browser tests. Installs Debian packages when root.
set -euo pipefail

need=()
command -v redis-server >/dev/null 2>&1 || need+=(redis-server)
command -v pg_ctlcluster >/dev/null 2>&1 || need+=(postgresql)
[ -x /usr/bin/chromium ] || need+=(chromium)
if [ ${#need[@]} -gt 0 ]; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "missing Debian packages: ${need[*]} (install them, e.g. sudo apt-get install ${need[*]})" >&2
    exit 1
  fi
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi

if ! redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null 2>&1; then
  redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no
  for _ in $(seq 1 50); do
    redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null 2>&1 && break
    sleep 0.1
  done
fi
redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null

pg_ready() { pg_isready -h 127.0.0.1 -p 5432 -q 2>/dev/null; }
if ! pg_ready; then
  cluster=$(pg_lsclusters --no-header 2>/dev/null | awk 'NR == 1 {print $1, $2}')
  if [ -z "$cluster" ]; then
    echo "PostgreSQL is installed but has no cluster (create one: pg_createcluster 15 main)" >&2
    exit 1
  fi
  if [ "$(id -u)" -eq 0 ]; then
    # shellcheck disable=SC2086 # "version name", split on purpose
    pg_ctlcluster --skip-systemctl-redirect $cluster start
  else
    echo "PostgreSQL is not running: start it (sudo pg_ctlcluster $cluster start)" >&2
    exit 1
  fi
  for _ in $(seq 1 100); do
    pg_ready && break
    sleep 0.1
  done
fi
pg_ready
# The tests use database `test` as user postgres over TCP without a password.
if [ "$(id -u)" -eq 0 ] && ! psql -h 127.0.0.1 -U postgres -d test -c 'select 1' >/dev/null 2>&1; then
  hba=$(su postgres -c "psql -tAc 'SHOW hba_file'")
  grep -q '^host all all 127.0.0.1/32 trust' "$hba" || sed -i '1i host all all 127.0.0.1/32 trust' "$hba"
  su postgres -c "psql -q -c 'SELECT pg_reload_conf()'" >/dev/null
  su postgres -c "createdb test" 2>/dev/null || true
fi
psql -h 127.0.0.1 -U postgres -d test -c 'select 1' >/dev/null
