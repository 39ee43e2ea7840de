#!/usr/bin/env bash
# Installs (when missing) and starts the services Sluice runs against on a developer
# machine or in CI. Idempotent: a service that already answers is left alone.
#
#   scripts/services.sh postgres   PostgreSQL on 127.0.0.1:5432 (trust auth)
#   scripts/services.sh ch26       ClickHouse 26.9 (chdb-core) on 127.0.0.1:8125
#   scripts/services.sh ch18       ClickHouse 18.16 (Debian) on 127.0.0.1:8123
#   scripts/services.sh moto       S3-compatible moto_server on 127.0.0.1:5000
#   scripts/services.sh stop       stops what this script started (not PostgreSQL)
#
# State lives under .tools/ (git-ignored): the Python venv, server data and logs.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
TOOLS=$ROOT/.tools
RUN=$TOOLS/run
VENV=$TOOLS/venv
mkdir -p "$RUN"

CH26_PORT=${SLUICE_CH26_PORT:-8125}
CH18_PORT=${SLUICE_CH18_PORT:-8123}
MOTO_PORT=${SLUICE_MOTO_PORT:-5000}

log() { echo "services: $*" >&2; }

apt_install() {
    export DEBIAN_FRONTEND=noninteractive
    if [ ! -f "$TOOLS/.apt-updated" ]; then
        apt-get update -q >/dev/null
        touch "$TOOLS/.apt-updated"
    fi
    apt-get install -y -q "$@" >/dev/null
}

# wait_for URL SECONDS NAME LOGFILE
wait_for() {
    local url=$1 secs=$2 name=$3 logfile=$4
    for _ in $(seq 1 $((secs * 10))); do
        if curl -fsS -o /dev/null "$url" 2>/dev/null; then
            log "$name is up ($url)"
            return 0
        fi
        sleep 0.1
    done
    log "$name did not come up within ${secs}s; last lines of $logfile:"
    tail -n 30 "$logfile" >&2 || true
    return 1
}

ensure_curl() {
    command -v curl >/dev/null || apt_install curl ca-certificates
}

postgres() {
    if command -v pg_isready >/dev/null && pg_isready -q -h 127.0.0.1 -p 5432; then
        return 0
    fi
    if ! command -v pg_lsclusters >/dev/null; then
        log "installing PostgreSQL"
        apt_install postgresql
    fi
    local version
    version=$(ls /etc/postgresql | sort -n | tail -n 1)
    local hba=/etc/postgresql/$version/main/pg_hba.conf
    # Local development only: trust connections from this machine.
    if ! grep -q '^host all all 127.0.0.1/32 trust' "$hba"; then
        sed -i '1i host all all 127.0.0.1/32 trust\nhost all all ::1/128 trust' "$hba"
    fi
    pg_ctlcluster --skip-systemctl-redirect "$version" main start || true
    for _ in $(seq 1 100); do
        pg_isready -q -h 127.0.0.1 -p 5432 && { log "PostgreSQL is up"; return 0; }
        sleep 0.1
    done
    log "PostgreSQL did not start"; return 1
}

venv() {
    if [ -x "$VENV/bin/python" ] \
        && "$VENV/bin/python" -c 'import chdb, moto' 2>/dev/null; then
        return 0
    fi
    if ! python3 -m venv --help >/dev/null 2>&1 || ! python3 -c 'import ensurepip' 2>/dev/null; then
        log "installing python3-venv"
        apt_install python3 python3-venv python3-pip
    fi
    log "creating $VENV with chdb-core and moto (one-time, ~1 minute)"
    rm -rf "$VENV"
    python3 -m venv "$VENV"
    "$VENV/bin/pip" install -q --disable-pip-version-check 'chdb-core==26.9.0' 'moto[server]==5.2.5'
}

ch26() {
    ensure_curl
    curl -fsS -o /dev/null "http://127.0.0.1:$CH26_PORT/ping" 2>/dev/null && return 0
    venv
    log "starting ClickHouse 26.9 (chdb-core) on $CH26_PORT"
    rm -rf "$RUN/ch26"
    setsid nohup "$VENV/bin/python" "$ROOT/scripts/chdb_server.py" "$RUN/ch26" "$CH26_PORT" \
        "${SLUICE_CH26_TCP_PORT:-9125}" >"$RUN/ch26.log" 2>&1 < /dev/null &
    echo $! >"$RUN/ch26.pid"
    wait_for "http://127.0.0.1:$CH26_PORT/ping" 60 "ClickHouse 26.9" "$RUN/ch26.log"
}

ch18() {
    ensure_curl
    curl -fsS -o /dev/null "http://127.0.0.1:$CH18_PORT/ping" 2>/dev/null && return 0
    if ! command -v clickhouse-server >/dev/null; then
        log "installing clickhouse-server (Debian, 18.16)"
        apt_install clickhouse-server
    fi
    local d=$RUN/ch18
    rm -rf "$d"
    mkdir -p "$d/data/tmp" "$d/data/user_files" "$d/data/fs"
    # Sluice passes each principal's quota key; 18.x refuses client-supplied keys unless
    # the user's quota is keyed, so the default quota is made keyed (users.xml copied).
    # The least-privilege users of the README's security model are added: 18.x has no
    # SQL grants, so `sluice_tenant` gets what its users.xml can say: readonly = 1 in
    # its profile (no writes, no table functions, no setting changes, no killing other
    # users' queries) and the `default` database only. `sluice_monitor` runs Sluice's
    # own progress and KILL queries.
    sed -e '/<quotas>/,/<\/quotas>/ s|<interval>|<keyed />\n<interval>|' \
        -e '0,/<profiles>/ s|<profiles>|<profiles><sluice_tenant><readonly>1</readonly></sluice_tenant>|' \
        -e '0,/<users>/ s|<users>|<users>\
        <sluice_tenant><password>sluice-tenant-local</password>\
            <networks><ip>127.0.0.1</ip><ip>::1</ip></networks>\
            <profile>sluice_tenant</profile><quota>default</quota>\
            <allow_databases><database>default</database></allow_databases></sluice_tenant>\
        <sluice_monitor><password>sluice-monitor-local</password>\
            <networks><ip>127.0.0.1</ip><ip>::1</ip></networks>\
            <profile>default</profile><quota>default</quota></sluice_monitor>|' \
        /etc/clickhouse-server/users.xml >"$d/users.xml"
    log "starting ClickHouse 18.16 on $CH18_PORT"
    setsid nohup clickhouse-server --config-file=/etc/clickhouse-server/config.xml -- \
        --users_config="$d/users.xml" \
        --path="$d/data/" --tmp_path="$d/data/tmp/" --user_files_path="$d/data/user_files/" \
        --format_schema_path="$d/data/fs/" --http_port="$CH18_PORT" \
        --tcp_port="${SLUICE_CH18_TCP_PORT:-9000}" \
        --interserver_http_port="${SLUICE_CH18_INTERSERVER_PORT:-9009}" \
        --listen_host=127.0.0.1 --logger.log="$d/server.log" \
        --logger.errorlog="$d/server.err.log" >"$d/stdout.log" 2>&1 < /dev/null &
    echo $! >"$RUN/ch18.pid"
    wait_for "http://127.0.0.1:$CH18_PORT/ping" 60 "ClickHouse 18.16" "$d/server.err.log"
}

moto() {
    ensure_curl
    curl -fsS -o /dev/null "http://127.0.0.1:$MOTO_PORT/moto-api/" 2>/dev/null && return 0
    venv
    log "starting moto_server (S3) on $MOTO_PORT"
    setsid nohup "$VENV/bin/moto_server" -H 127.0.0.1 -p "$MOTO_PORT" >"$RUN/moto.log" 2>&1 < /dev/null &
    echo $! >"$RUN/moto.pid"
    wait_for "http://127.0.0.1:$MOTO_PORT/moto-api/" 60 "moto_server" "$RUN/moto.log"
}

stop() {
    for name in ch26 ch18 moto; do
        if [ -f "$RUN/$name.pid" ]; then
            kill "$(cat "$RUN/$name.pid")" 2>/dev/null || true
            rm -f "$RUN/$name.pid"
        fi
    done
}

for cmd in "$@"; do
    case "$cmd" in
        postgres|ch26|ch18|moto|stop|venv) "$cmd" ;;
        *) echo "usage: $0 {postgres|ch26|ch18|moto|stop}..." >&2; exit 2 ;;
    esac
done
