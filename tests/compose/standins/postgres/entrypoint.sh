#!/bin/sh
# The part of the official postgres image's entrypoint that logagg's Compose file relies on.
set -eu
if [ "$1" = "postgres" ] && [ ! -s "$PGDATA/PG_VERSION" ]; then
    : "${POSTGRES_PASSWORD:?the stand-in, like the official image, needs POSTGRES_PASSWORD}"
    pwfile=$(mktemp)
    printf '%s\n' "$POSTGRES_PASSWORD" > "$pwfile"
    # UTF-8 whatever the build machine's locale: a SQL_ASCII cluster breaks /stats (issue 10).
    initdb -D "$PGDATA" -U postgres --pwfile="$pwfile" --encoding=UTF8 --locale=C.UTF-8 \
        --auth-local=trust --auth-host=scram-sha-256
    rm -f "$pwfile"
    echo "host all all all scram-sha-256" >> "$PGDATA/pg_hba.conf"
    # Socket only while the database is created, so no client connects half-way.
    pg_ctl -D "$PGDATA" -w -o "-c listen_addresses=''" start
    if [ -n "${POSTGRES_DB:-}" ] && [ "$POSTGRES_DB" != "postgres" ]; then
        createdb -U postgres "$POSTGRES_DB"
    fi
    pg_ctl -D "$PGDATA" -w -m fast stop
fi
if [ "$1" = "postgres" ]; then
    set -- "$@" -c listen_addresses='*'
fi
exec "$@"
