#!/usr/bin/env bash
# How far the org INSERT could get without its logic: pgbench, on one server,
# from CLIENTS connections (prepared statements, one INSERT per transaction,
# daemon stopped), as the superuser of the URL (the trusted path: no row
# security; org_admit's trust check runs):
#   plain    one-row INSERT into a table with a uuid key and a unique lower(name) index
#   org      the org INSERT as it is (creator's users row already there)
#   rows     the rows the design requires, written by bare triggers (bare.sql)
#   org_row  the org row alone (id and settings version set, nothing else)
# Each round runs plain, then the three others in an order that rotates from
# round to round (later runs meet larger tables), and gives each one's ratio
# to that round's plain figure.
#
#   BENCH_DATABASE_URL=postgres://postgres@127.0.0.1:5432/postgres bench/floor/run.sh
#
# A database orgkeeper_floor_<pid> is created on that server (a superuser's
# URL: it migrates and swaps triggers) and dropped at the end. ORGKEEPER
# (target/release/orgkeeper of this checkout), CLIENTS (8), SECS (8 per run),
# ROUNDS (3), CREATORS (users made for the org INSERTs; 600,000).
set -euo pipefail
export LC_ALL=C
here=$(cd "$(dirname "$0")" && pwd)
url=${BENCH_DATABASE_URL:?set BENCH_DATABASE_URL to a superuser URL of the server to measure}
bin=${ORGKEEPER:-$here/../../target/release/orgkeeper}
clients=${CLIENTS:-8}; secs=${SECS:-8}; rounds=${ROUNDS:-3}; creators=${CREATORS:-600000}
db=orgkeeper_floor_$$
die() { echo "bench/floor: $*" >&2; exit 1; }

# The same server and parameters, another database.
base=${url%%\?*}; query=""
[[ $url == *\?* ]] && query="?${url#*\?}"
[[ $base =~ ^(postgres(ql)?://[^/]+)(/[^/]*)?$ ]] \
    || die "BENCH_DATABASE_URL must look like postgres://user@host:port/database[?params], not $url"
dburl="${BASH_REMATCH[1]}/$db$query"

work=$(mktemp -d)
trap 'psql -X "$url" -qc "DROP DATABASE IF EXISTS $db WITH (FORCE)" >/dev/null 2>&1; rm -rf "$work"' EXIT
psql -X "$url" -qc "CREATE DATABASE $db"
[ "$(psql -X "$dburl" -Atc 'SELECT current_database()')" = "$db" ] \
    || die "could not connect to the new database $db through $dburl"
"$bin" migrate --database-url "$dburl" >/dev/null
psql -X "$dburl" -q -v ON_ERROR_STOP=1 -f "$here/bare.sql" -c "
CREATE TABLE public.floor_plain (id uuid PRIMARY KEY DEFAULT gen_random_uuid(), name text NOT NULL);
CREATE UNIQUE INDEX floor_plain_name ON public.floor_plain (lower(name));
CREATE TABLE public.floor_creators (n bigint PRIMARY KEY, id uuid NOT NULL);
INSERT INTO orgkeeper.users (id) SELECT gen_random_uuid() FROM generate_series(1, $creators);
INSERT INTO public.floor_creators SELECT row_number() OVER (), id FROM orgkeeper.users;
CREATE SEQUENCE public.floor_next;" -c "VACUUM ANALYZE orgkeeper.users, public.floor_creators"
# Only those two: analyzed while empty, org and the tables its triggers write
# would be known empty (unlike never-analyzed ones, which the planner assumes
# to have ten pages), and the sessions of the first round that plan while
# they are empty would plan their lookups as sequential scans.
echo "INSERT INTO public.floor_plain (name) VALUES ('p ' || gen_random_uuid());" > "$work/plain.sql"
# One new creator per org, as bench provision's peer inserts do.
echo "INSERT INTO orgkeeper.org (name, created_by) SELECT 'o ' || gen_random_uuid(), c.id
      FROM (SELECT nextval('public.floor_next') AS n) s JOIN public.floor_creators c ON c.n = s.n;" > "$work/org.sql"

variant() { # the triggers of a variant
    case $1 in
        org) psql -X "$dburl" -q -c "ALTER TABLE orgkeeper.org ENABLE TRIGGER USER, DISABLE TRIGGER zz_floor_before, DISABLE TRIGGER zz_floor_after" \
                              -c "ALTER TABLE orgkeeper.org_member ENABLE TRIGGER USER" \
                              -c "ALTER TABLE orgkeeper.pending_external_actions ENABLE TRIGGER USER" ;;
        rows|org_row)
             psql -X "$dburl" -q -c "ALTER TABLE orgkeeper.org DISABLE TRIGGER USER, ENABLE TRIGGER zz_floor_before" \
                              -c "ALTER TABLE orgkeeper.org_member DISABLE TRIGGER USER" \
                              -c "ALTER TABLE orgkeeper.pending_external_actions DISABLE TRIGGER USER"
             if [ "$1" = rows ]; then psql -X "$dburl" -qc "ALTER TABLE orgkeeper.org ENABLE TRIGGER zz_floor_after"; fi ;;
    esac
}
tps() { # script -> transactions per second
    local t
    t=$(pgbench -n -M prepared -c "$clients" -j 2 -T "$secs" -f "$work/$1.sql" "$dburl" 2>&1 | awk '/^tps/ {print $3; exit}')
    [ -n "$t" ] || die "pgbench gave no figure for $1"
    # An org INSERT past the last creator inserts nothing and still counts.
    [ "$1" = plain ] || [ "$(psql -X "$dburl" -Atc "SELECT last_value <= $creators FROM public.floor_next")" = t ] \
        || die "ran out of creators during the $1 run: set CREATORS higher than $creators"
    echo "$t"
}

variants=(org rows org_row)
printf '%-6s %10s %22s %22s %22s\n' round plain/s 'org/s (ratio)' 'rows/s (ratio)' 'org_row/s (ratio)'
for r in $(seq "$rounds"); do
    plain=$(tps plain)
    declare -A got=()
    for i in 0 1 2; do
        v=${variants[$(( (i + r - 1) % 3 ))]}
        variant "$v"
        got[$v]=$(tps org)
    done
    line=$(printf '%-6s %10.0f' "$r" "$plain")
    for v in "${variants[@]}"; do
        line+=$(awk -v t="${got[$v]}" -v p="$plain" 'BEGIN { printf " %13.0f (%5.1f %%)", t, 100 * t / p }')
    done
    echo "$line"
done
variant org
