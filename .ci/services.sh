#!/usr/bin/env bash
# Services and tools the tests need, from Debian's packages, started on loopback only. Source it:
#   . .ci/services.sh     (exports IMGCLS_TEST_POSTGRES_URL; stop with imgcls_services_stop)
need=()
ls /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1 || need+=(postgresql)
command -v chromium >/dev/null 2>&1 || need+=(chromium)
# QEMU's user-mode emulator: tests/test_other_cpus.py runs imgcls on an emulated AVX2-only CPU
if [ "$(uname -m)" = x86_64 ] && ! command -v qemu-x86_64 >/dev/null 2>&1; then need+=(qemu-user); fi
if [ ${#need[@]} -gt 0 ]; then
  echo "installing ${need[*]} from Debian's packages"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi

# PostgreSQL: a throwaway cluster in /tmp, listening on 127.0.0.1 only, for the search tests.
PGBIN=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)
IMGCLS_PGDATA=$(mktemp -d /tmp/imgcls-pg.XXXXXX)
# a free port on loopback (another PostgreSQL, or a second CI run, may hold the usual ones)
IMGCLS_PGPORT=${IMGCLS_PGPORT:-$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')}
chown postgres "$IMGCLS_PGDATA"
su postgres -s /bin/sh -c "$PGBIN/initdb -D $IMGCLS_PGDATA -A trust -U postgres" >/dev/null
su postgres -s /bin/sh -c "$PGBIN/pg_ctl -D $IMGCLS_PGDATA -l $IMGCLS_PGDATA/log -w \
  -o '-c listen_addresses=127.0.0.1 -p $IMGCLS_PGPORT -k $IMGCLS_PGDATA' start" >/dev/null
su postgres -s /bin/sh -c "$PGBIN/createdb -h 127.0.0.1 -p $IMGCLS_PGPORT imgcls_test"
export IMGCLS_TEST_POSTGRES_URL="postgresql+psycopg2://postgres@127.0.0.1:$IMGCLS_PGPORT/imgcls_test"
echo "PostgreSQL for tests: $IMGCLS_TEST_POSTGRES_URL"

imgcls_services_stop() {
  su postgres -s /bin/sh -c "$PGBIN/pg_ctl -D $IMGCLS_PGDATA -m fast -w stop" >/dev/null 2>&1
  rm -rf "$IMGCLS_PGDATA"
}
