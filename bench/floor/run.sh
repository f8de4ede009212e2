#!/usr/bin/env bash
# How far the org INSERT could get without its logic: pgbench, on one server,
# alternating in every round, from CLIENTS connections (prepared statements,
# one INSERT per transaction, daemon stopped):
#   plain  one-row INSERT into a table with a uuid key and a unique lower(name) index
#   org    the org INSERT as it is (creator's users row already there)
#   rows   the rows the design requires, written by bare triggers (bare.sql)
#   org_row  the org row alone (id and settings version set, nothing else)
# and each one's ratio to the same round's plain figure.
#
#   BENCH_DATABASE_URL=postgres://postgres@127.0.0.1:5432/postgres bench/floor/run.sh
#
# A database orgkeeper_floor_<pid> is created on that server (a superuser's
# URL: it migrates and swaps triggers) and dropped at the end. ORGKEEPER
# (./target/release/orgkeeper), CLIENTS (8), SECS (8 per run), ROUNDS (3).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
url=${BENCH_DATABASE_URL:?set BENCH_DATABASE_URL to a superuser URL of the server to measure}
bin=${ORGKEEPER:-./target/release/orgkeeper}
clients=${CLIENTS:-8}; secs=${SECS:-8}; rounds=${ROUNDS:-3}
db=orgkeeper_floor_$$
dburl="${url%/*}/$db"
work=$(mktemp -d)
psql "$url" -qc "CREATE DATABASE $db"
trap 'psql "$url" -qc "DROP DATABASE IF EXISTS $db" >/dev/null; rm -rf "$work"' EXIT
"$bin" migrate --database-url "$dburl" >/dev/null
creators=$(( rounds * 3 * secs * 6000 ))
psql "$dburl" -q -v ON_ERROR_STOP=1 -f "$here/bare.sql" -c "
CREATE TABLE public.floor_plain (id uuid PRIMARY KEY DEFAULT gen_random_uuid(), name text NOT NULL);
CREATE UNIQUE INDEX floor_plain_name ON public.floor_plain (lower(name));
CREATE TABLE public.floor_creators (n bigint PRIMARY KEY, id uuid NOT NULL);
INSERT INTO orgkeeper.users (id) SELECT gen_random_uuid() FROM generate_series(1, $creators);
INSERT INTO public.floor_creators SELECT row_number() OVER (), id FROM orgkeeper.users;
CREATE SEQUENCE public.floor_next;" -c "VACUUM ANALYZE orgkeeper.users, public.floor_creators"
# Only those two: analyzed while empty, org and the tables its triggers write
# would be known empty (unlike never-analyzed ones, which the planner assumes
# to have ten pages), and the first round's sessions would plan every lookup
# as a sequential scan.
echo "INSERT INTO public.floor_plain (name) VALUES ('p ' || gen_random_uuid());" > "$work/plain.sql"
# One new creator per org, as bench provision's peer inserts do.
echo "INSERT INTO orgkeeper.org (name, created_by) SELECT 'o ' || gen_random_uuid(), c.id
      FROM (SELECT nextval('public.floor_next') AS n) s JOIN public.floor_creators c ON c.n = s.n;" > "$work/org.sql"

variant() { # the org table's triggers for a variant
    case $1 in
        org) psql "$dburl" -qc "ALTER TABLE orgkeeper.org ENABLE TRIGGER USER, DISABLE TRIGGER zz_floor_before, DISABLE TRIGGER zz_floor_after" \
                           -c "ALTER TABLE orgkeeper.org_member ENABLE TRIGGER USER" \
                           -c "ALTER TABLE orgkeeper.pending_external_actions ENABLE TRIGGER USER" ;;
        rows|org_row)
             psql "$dburl" -qc "ALTER TABLE orgkeeper.org DISABLE TRIGGER USER, ENABLE TRIGGER zz_floor_before" \
                           -c "ALTER TABLE orgkeeper.org_member DISABLE TRIGGER USER" \
                           -c "ALTER TABLE orgkeeper.pending_external_actions DISABLE TRIGGER USER"
             [ "$1" = rows ] && psql "$dburl" -qc "ALTER TABLE orgkeeper.org ENABLE TRIGGER zz_floor_after" ;;
    esac
    return 0
}
tps() { # script -> transactions per second
    pgbench -n -M prepared -c "$clients" -j 2 -T "$secs" -f "$work/$1.sql" "$dburl" 2>&1 | awk '/^tps/ {print $3}'
}

printf '%-6s %10s %22s %22s %22s\n' round plain/s 'org/s (ratio)' 'rows/s (ratio)' 'org_row/s (ratio)'
for r in $(seq "$rounds"); do
    plain=$(tps plain)
    line=$(printf '%-6s %10.0f' "$r" "$plain")
    for v in org rows org_row; do
        variant "$v"
        t=$(tps org)
        line+=$(printf ' %13.0f (%5.1f %%)' "$t" "$(echo "100 * $t / $plain" | bc -l)")
    done
    echo "$line"
done
variant org
