#!/usr/bin/env bash
# The one-command demo: builds the release binary, starts a throw-away
# PostgreSQL under target/demo/, migrates it, starts `sink` (a webhook
# receiver that verifies signatures and fails 30% of requests), creates two
# channels on one rule -- the sink, and a dead endpoint (a loopback port
# nothing listens on) -- emits 300 events, and runs the daemon with a short
# retry schedule until nothing is unfinished:
#
# - the flaky sink's failures are retried (the [sink] 500 lines, the
#   [daemon] interval summaries) and its circuit breaker stays closed;
# - the dead channel's breaker opens after 5 refused connections, probes
#   now and then, and its deliveries end FAILED (the demo's short pending
#   and sending timeouts).
#
# Then the dead endpoint comes back (a second sink on its port), its FAILED
# deliveries are recovered with `resend --channel ID --state FAILED`, and
# the daemon runs again until they are delivered. Then it prints `status`,
# stops everything it started (by PID) and removes target/demo, also on
# Ctrl-C.
#
# Needs PostgreSQL's server binaries (initdb/pg_ctl on PATH or under
# /usr/lib/postgresql/*/bin) and psql. As root, the server runs as the
# `postgres` user (initdb refuses root).
set -euo pipefail
cd "$(dirname "$0")/.."

EVENTS=${DEMO_EVENTS:-300}
FAIL_RATE=${DEMO_FAIL_RATE:-0.3}
SECRET=whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw   # the Standard Webhooks example secret
TIMEOUT=${DEMO_TIMEOUT:-120}                     # seconds for each delivery phase

say() { printf '\n==> %s\n' "$*" >&2; }
die() { echo "demo: $*" >&2; exit 1; }

# --- PostgreSQL tools ----------------------------------------------------
pgbin=
if command -v initdb >/dev/null; then
    pgbin=$(dirname "$(readlink -f "$(command -v initdb)")")
else
    for d in $(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V); do
        [ -x "$d/initdb" ] && pgbin=$d
    done
fi
[ -n "$pgbin" ] || die "no PostgreSQL server tools: install the server package (initdb, pg_ctl)"
psql=$(command -v psql || echo "$pgbin/psql")
[ -x "$psql" ] || die "psql not found"

as_pg=()
if [ "$(id -u)" = 0 ]; then
    id postgres >/dev/null 2>&1 || die "running as root but there is no postgres user to run initdb as"
    as_pg=(runuser -u postgres --)
fi
pg() { "${as_pg[@]}" "$pgbin/$1" "${@:2}"; }

# A loopback port nothing listens on (bash's /dev/tcp).
free_port() {
    local p
    for p in $(seq "$1" $(($1 + 200))); do
        if ! (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then echo "$p"; return; fi
    done
    die "no free port from $1"
}

# --- cleanup, on every exit ------------------------------------------------
target_dir=${CARGO_TARGET_DIR:-target}
demo=$target_dir/demo
bin=$target_dir/release/notification-reconciler
daemon_pid= sink_pid= back_pid= pg_started= data= pg_tmp=

cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    if [ -n "$daemon_pid" ] && kill -0 "$daemon_pid" 2>/dev/null; then
        kill -TERM "$daemon_pid" 2>/dev/null || true
        wait "$daemon_pid" 2>/dev/null || true
    fi
    local pid
    for pid in $sink_pid $back_pid; do
        if kill -0 "$pid" 2>/dev/null; then
            kill -TERM "$pid" 2>/dev/null || true
            wait "$pid" 2>/dev/null || true
        fi
    done
    if [ -n "$pg_started" ]; then
        pg pg_ctl stop -D "$data" -m fast -w >/dev/null 2>&1 || true
    fi
    rm -rf "$demo"
    if [ -n "$pg_tmp" ]; then rm -rf "$pg_tmp"; fi
    echo "demo: stopped everything and removed $demo" >&2
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# --- build -------------------------------------------------------------------
say "building (cargo build --release)"
cargo build --release
started=$(date +%s)

# --- PostgreSQL under target/demo ----------------------------------------------
say "starting a throw-away PostgreSQL in $demo"
if [ -f "$demo/pg/data/postmaster.pid" ]; then   # left over by a killed run
    pg pg_ctl stop -D "$demo/pg/data" -m immediate -w >/dev/null 2>&1 || true
fi
rm -rf "$demo"
mkdir -p "$demo/pg"
demo=$(cd "$demo" && pwd)
pgdir=$demo/pg
if [ ${#as_pg[@]} -gt 0 ]; then
    chown postgres: "$pgdir"
    if ! "${as_pg[@]}" test -w "$pgdir"; then
        # A private parent (a clone under /root): the postgres user cannot
        # reach target/, so the server's files go to a temp dir instead.
        pg_tmp=$(mktemp -d /tmp/nr-demo-pg.XXXXXX)
        chown postgres: "$pg_tmp"
        pgdir=$pg_tmp
        echo "demo: the postgres user cannot reach $demo; the server's files are in $pgdir" >&2
    fi
fi
data=$pgdir/data
pg_port=$(free_port 54330)
pg initdb -A trust -U postgres -E UTF8 --locale=C --no-sync -D "$data" >"$demo/initdb.log" 2>&1 ||
    { cat "$demo/initdb.log" >&2; die "initdb failed"; }
cat >>"$data/postgresql.conf" <<EOF
port = $pg_port
listen_addresses = '127.0.0.1'
unix_socket_directories = '$data'
fsync = off
synchronous_commit = off
EOF
pg_started=1
pg pg_ctl start -D "$data" -l "$data/postgres.log" -w -t 60 >/dev/null ||
    { tail -20 "$data/postgres.log" >&2; die "PostgreSQL did not start"; }
export DATABASE_URL=postgres://postgres@127.0.0.1:$pg_port/postgres

cat >"$demo/config.toml" <<EOF
# The demo's configuration: a safety-net sweep every second, a short retry
# schedule (6 attempts in about 16 s), and short pending and sending
# timeouts so that the dead channel's deliveries give up within the demo.
# A channel behind an open breaker is read when its probe may go, what
# timed out in what was read is failed then: a page as large as the demo's
# backlog lets one probe's read fail them all.
[database]
url = "$DATABASE_URL"
[reconciler]
interval = "1s"
workers = 8
page_size = 1000
pending_timeout = "10s"
sending_timeout = "20s"
[delivery]
timeout = "5s"
connect_timeout = "2s"
retry_schedule = ["1s", "2s", "3s", "5s", "5s"]
# The default breaker (5 attempts in a row without an answer open it); a
# short cool-down shows the dead channel's probes in the log. The flaky
# sink's fast 500s are left to the retry schedule: its breaker stays closed.
breaker_cooldown = "1s"
# The sinks listen on 127.0.0.1; the SSRF guard refuses loopback by default.
allow_networks = ["127.0.0.0/8", "::1/128"]
EOF
nr() { "$bin" --config "$demo/config.toml" "$@"; }

say "migrate"
nr migrate

# --- the sink ----------------------------------------------------------------------
sink_port=$(free_port 18080)
say "starting sink on 127.0.0.1:$sink_port (fail rate $FAIL_RATE)"
"$bin" sink --listen "127.0.0.1:$sink_port" --secret "$SECRET" --fail-rate "$FAIL_RATE" \
    > >(sed -u 's/^/[sink] /') 2>&1 &
sink_pid=$!
for _ in $(seq 50); do
    (exec 3<>"/dev/tcp/127.0.0.1/$sink_port") 2>/dev/null && break
    sleep 0.1
done

# --- two channels, a rule, events --------------------------------------------------
dead_port=$(free_port 18280)
say "creating two channels (the sink; a dead endpoint: 127.0.0.1:$dead_port, nothing listens) and a rule"
channel=$(nr channel create --namespace demo --name demo-sink \
    --url "http://127.0.0.1:$sink_port/hook" --secret "$SECRET")
dead=$(nr channel create --namespace demo --name demo-dead \
    --url "http://127.0.0.1:$dead_port/hook" --secret "$SECRET")
rule=$(nr rule create --namespace demo --name orders --event-type order.created \
    --channel "$channel" --channel "$dead")
echo "channels $channel (sink) and $dead (dead), rule $rule" >&2

say "emitting $EVENTS events (one transaction, through notification.enqueue_event)"
"$psql" -X -q -v ON_ERROR_STOP=1 -d "$DATABASE_URL" -At -c "
    SELECT count(*) || ' events enqueued' FROM (
        SELECT notification.enqueue_event('demo', 'order.created',
               jsonb_build_object('order', i, 'amount_cents', i * 100))
        FROM generate_series(1, $EVENTS) AS i) AS enqueued"

# --- the daemon until nothing is unfinished -----------------------------------------------
count() { sed -n "s/.*\"$1\": *\([0-9][0-9]*\).*/\1/p" <<<"$2" | head -1; }

# Runs the daemon until no delivery is PENDING, SENDING or RESENDING (at
# most TIMEOUT seconds), then stops it.
run_until_finished() {
    # The binary itself in the background (not through a function, which
    # would fork a subshell): $! must be the daemon's PID.
    "$bin" --config "$demo/config.toml" run 2> >(sed -u 's/^/[daemon] /' >&2) &
    daemon_pid=$!
    local deadline=$(($(date +%s) + TIMEOUT)) json unfinished
    while :; do
        sleep 1
        kill -0 "$daemon_pid" 2>/dev/null || die "the daemon exited"
        json=$(nr status --json)
        unfinished=$(($(count PENDING "$json") + $(count SENDING "$json") + $(count RESENDING "$json")))
        [ "$unfinished" -eq 0 ] && break
        [ "$(date +%s)" -lt "$deadline" ] || die "still $unfinished unfinished after ${TIMEOUT}s"
    done
    kill -TERM "$daemon_pid"
    wait "$daemon_pid" || die "the daemon exited with status $?"
    daemon_pid=
}

say "running the daemon until every delivery is finished"
run_until_finished

say "status: the sink's deliveries succeeded through retries, the dead channel's FAILED"
nr status

# --- the dead endpoint comes back: recover its FAILED deliveries ---------------------------
say "the dead endpoint comes back (a sink on 127.0.0.1:$dead_port); resend its FAILED deliveries"
"$bin" sink --listen "127.0.0.1:$dead_port" --secret "$SECRET" \
    > >(sed -u 's/^/[sink 2] /') 2>&1 &
back_pid=$!
for _ in $(seq 50); do
    (exec 3<>"/dev/tcp/127.0.0.1/$dead_port") 2>/dev/null && break
    sleep 0.1
done
nr resend --channel "$dead" --state FAILED

say "running the daemon again until every delivery is finished"
run_until_finished

say "status"
nr status
echo >&2
echo "demo: done in $(($(date +%s) - started))s after the build" >&2
