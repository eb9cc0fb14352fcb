#!/usr/bin/env bash
# Side-by-side benchmark of iap-ssh/iap-relay against a plain socat relay and gcloud, all on
# loopback. Prints one table and writes BENCHMARKS.md at the repository root.
#
#   bash bench/run.sh            # full run (about 15 minutes on 2 cores)
#   BENCH_QUICK=1 bash bench/run.sh   # small sizes, for trying the harness out
#
# Knobs (environment): BENCH_RUNS (3), BENCH_SIZE_MIB (1024), BENCH_GCLOUD_MIB (32),
# BENCH_STARTUP_RUNS (5), BENCH_IDLE_STEPS (1000,10000), BENCH_PROFILE (1: callgrind profile
# of a short transfer), BENCH_PROFILE_MIB (32), BENCH_INSTALL (1: apt-get what is missing),
# BENCH_OUT (BENCHMARKS.md at the repository root; "-" for none), BENCH_LAT_COUNT (5000 round
# trips per latency figure), BENCH_PAR_MIB (128 MiB per tunnel at 16 and 64 at once),
# BENCH_SETUPS (2000 tunnel setups), BENCH_DELAY_MS (25, one way), BENCH_DELAY_MIB (64),
# BENCH_FLEET (1: the Ansible fleet runs; needs target/ansible-venv or makes it),
# BENCH_FLEET_HOSTS (30), BENCH_STALL_RUNS (30), BENCH_STEPS (bulk,scp,startup,stall,latency,
# concurrency,setup,distance,fleet,idle,profile: the steps to run; a subset prints its figures
# and writes no report unless BENCH_OUT is set), BENCH_PREV (a directory holding an earlier
# iap-ssh build, e.g. a copy of target/release: measured as "iap-ssh-prev" next to iap-ssh in
# the bulk, startup and latency steps, with a before/after table at the end).
# Traffic goes to 127.0.0.1 only. Needs root for sshd (as the end-to-end tests do).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
RUNS=${BENCH_RUNS:-3}
SIZE_MIB=${BENCH_SIZE_MIB:-1024}
GC_MIB=${BENCH_GCLOUD_MIB:-32}
STARTUP_RUNS=${BENCH_STARTUP_RUNS:-5}
IDLE_STEPS=${BENCH_IDLE_STEPS:-1000,10000}
PROFILE=${BENCH_PROFILE:-1}
PROFILE_MIB=${BENCH_PROFILE_MIB:-32}
INSTALL=${BENCH_INSTALL:-1}
OUT=${BENCH_OUT:-$ROOT/BENCHMARKS.md}
LAT_COUNT=${BENCH_LAT_COUNT:-5000}
PAR_MIB=${BENCH_PAR_MIB:-128}
SETUPS=${BENCH_SETUPS:-2000}
DELAY_MS=${BENCH_DELAY_MS:-25}
DELAY_MIB=${BENCH_DELAY_MIB:-64}
FLEET=${BENCH_FLEET:-1}
FLEET_HOSTS=${BENCH_FLEET_HOSTS:-30}
STALL_RUNS=${BENCH_STALL_RUNS:-30}
ALL_STEPS=bulk,scp,startup,stall,latency,concurrency,setup,distance,fleet,idle,profile
STEPS=${BENCH_STEPS:-$ALL_STEPS}
PREV=${BENCH_PREV:-}
[[ $STEPS != "$ALL_STEPS" && -z ${BENCH_OUT:-} ]] && OUT=-
step() { [[ ,$STEPS, == *,$1,* ]]; }
step profile || PROFILE=0
if [[ ${BENCH_QUICK:-0} == 1 ]]; then
    RUNS=1 SIZE_MIB=64 GC_MIB=4 STARTUP_RUNS=2 IDLE_STEPS=100,200 PROFILE_MIB=4 STALL_RUNS=3
    LAT_COUNT=500 PAR_MIB=8 SETUPS=200 DELAY_MIB=8 FLEET_HOSTS=4
fi
COMMAND="bash bench/run.sh"
for v in BENCH_PREV BENCH_QUICK BENCH_RUNS BENCH_SIZE_MIB BENCH_GCLOUD_MIB BENCH_STARTUP_RUNS BENCH_IDLE_STEPS BENCH_PROFILE BENCH_LAT_COUNT BENCH_PAR_MIB BENCH_SETUPS BENCH_DELAY_MS BENCH_DELAY_MIB BENCH_FLEET BENCH_FLEET_HOSTS BENCH_STALL_RUNS BENCH_STEPS; do
    [[ -n ${!v:-} ]] && COMMAND="$v=${!v} $COMMAND"
done
STEP_LIMIT=600 # seconds: upper bound for any single client run

log() { printf '[bench %(%H:%M:%S)T] %s\n' -1 "$*" >&2; }
die() { log "error: $*"; exit 1; }

# ---------------------------------------------------------------------------------------------
# Tools
need=(socat sshd ssh scp ssh-keygen openssl /usr/bin/time timeout haproxy)
pkgs=(socat openssh-server openssh-client openssl time coreutils procps haproxy python3-venv)
if [[ $PROFILE == 1 ]]; then need+=(valgrind callgrind_annotate); pkgs+=(valgrind); fi
missing=()
for t in "${need[@]}"; do command -v "$t" >/dev/null 2>&1 || [[ -x /usr/sbin/$t ]] || missing+=("$t"); done
if ((${#missing[@]})); then
    [[ $INSTALL == 1 ]] || die "missing tools: ${missing[*]} (set BENCH_INSTALL=1 or install: ${pkgs[*]})"
    log "installing ${pkgs[*]} (missing: ${missing[*]})"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${pkgs[@]}" >/dev/null
fi
SSHD=$(command -v sshd || echo /usr/sbin/sshd)
GCLOUD=$(command -v gcloud || true)
[[ -n $GCLOUD ]] || log "gcloud not found: its rows are skipped"
[[ $(id -u) == 0 ]] || die "run as root (sshd on loopback needs it)"
[[ -z $PREV || -x $PREV/iap-ssh ]] || die "BENCH_PREV=$PREV holds no iap-ssh"

log "building release binaries"
(cd "$ROOT" && cargo build --release --bins --example bench_load --example bench_net) >&2
BIN=$ROOT/target/release
TOOL=$BIN/examples/bench_load
NET=$BIN/examples/bench_net
if [[ $PROFILE == 1 ]]; then
    log "building an unstripped copy for the profile (target/bench-profile)"
    (cd "$ROOT" && CARGO_PROFILE_RELEASE_STRIP=false CARGO_PROFILE_RELEASE_DEBUG=line-tables-only \
        cargo build --release --bins --target-dir "$ROOT/target/bench-profile") >&2
fi

# ---------------------------------------------------------------------------------------------
# Scratch space and cleanup: every process we start is recorded and killed by pid.
TMP=$(mktemp -d "${TMPDIR:-/tmp}/iap-bench.XXXXXX")
# scp's files live in memory (tmpfs) so the disk does not limit them.
SHM=$(mktemp -d "$([[ -d /dev/shm && -w /dev/shm ]] && echo /dev/shm || echo "${TMPDIR:-/tmp}")/iap-bench.XXXXXX")
PIDS=()
cleanup() {
    local p
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
    rm -rf "$TMP" "$SHM"
}
trap cleanup EXIT
trap 'exit 130' INT TERM
mkfifo "$TMP/hold"
exec 3<>"$TMP/hold" # a stdin that never ends, for clients that must not see EOF

ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
NOFILE=$(ulimit -n)
CLK_TCK=$(getconf CLK_TCK)
BYTES=$((SIZE_MIB << 20))
GC_BYTES=$((GC_MIB << 20))

free_port() { "$TOOL" port; }
# wait_for CMD...: retry up to 100 times, 0.1 s apart.
wait_for() { local i; for i in $(seq 100); do "$@" 2>/dev/null && return 0; sleep 0.1; done; return 1; }
port_open() { (exec 9<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
# CPU ticks of a process, including waited-for children (socat's forked workers).
cpu_ticks() { awk '{print $14+$15+$16+$17}' "/proc/$1/stat"; }
now_ns() { date +%s%N; }

# ---------------------------------------------------------------------------------------------
# A private CA, the relay's certificate, a token, the relay configuration.
log "setting up CA, relay, backends and sshd in $TMP"
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 \
    -subj /CN=iap-bench-ca -keyout "$TMP/ca.key" -out "$TMP/ca.pem" 2>/dev/null
openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
    -subj /CN=127.0.0.1 -addext "subjectAltName=IP:127.0.0.1,DNS:localhost" \
    -keyout "$TMP/relay-key.pem" -out "$TMP/relay.csr" 2>/dev/null
openssl x509 -req -in "$TMP/relay.csr" -CA "$TMP/ca.pem" -CAkey "$TMP/ca.key" -CAcreateserial \
    -days 2 -copy_extensions copy -out "$TMP/relay-cert.pem" 2>/dev/null
TOKEN=$(openssl rand -hex 24)
printf %s "$TOKEN" >"$TMP/token"
TOKEN_SHA=$(printf %s "$TOKEN" | sha256sum | cut -d' ' -f1)
PROJECT=bench-project ZONE=bench-zone INSTANCE=vm-1
cat >"$TMP/relay.toml" <<EOF
listen = "127.0.0.1:0"
[tls]
cert = "relay-cert.pem"
key = "relay-key.pem"
[[static_tokens]]
principal = "user:bench@example.com"
sha256 = "$TOKEN_SHA"
[[instances]]
project = "$PROJECT"
zone = "$ZONE"
name = "$INSTANCE"
interfaces = { nic0 = "127.0.0.1" }
$(for i in $(seq "$FLEET_HOSTS"); do printf '[[instances]]\nproject = "%s"\nzone = "%s"\nname = "host-%s"\ninterfaces = { nic0 = "127.0.0.1" }\n' "$PROJECT" "$ZONE" "$i"; done)
[[bindings]]
role = "roles/iap.tunnelResourceAccessor"
members = ["user:bench@example.com"]
resource = "projects/$PROJECT"
[limits]
max_connections = 25000
max_connections_per_principal = 25000
# The idle-tunnel step holds up to 10,000 sessions; each reserves its worst case (1.75 MiB).
memory_budget_mib = 20000
EOF

# start_relay BIN NAME [WRAPPER...]: starts iap-relay, sets RELAY_PID and RELAY_URL.
start_relay() {
    local bin=$1 name=$2
    shift 2
    "$@" "$bin" --config "${RELAY_TOML:-$TMP/relay.toml}" >"$TMP/$name.out" 2>"$TMP/$name.log" &
    RELAY_PID=$!
    PIDS+=("$RELAY_PID")
    local i
    for i in $(seq 600); do
        grep -q 'listening on' "$TMP/$name.out" 2>/dev/null && break
        kill -0 "$RELAY_PID" 2>/dev/null || die "$name exited: $(tail -5 "$TMP/$name.log")"
        sleep 0.1
    done
    RELAY_URL=$(grep -o 'wss://[^ ]*' "$TMP/$name.out" | head -1)
    [[ -n $RELAY_URL ]] || die "$name never printed its address"
}

# Backends on loopback: a sink that counts what it receives, a source of SIZE and GC_SIZE bytes.
SINK=$(free_port)
socat -u "TCP-LISTEN:$SINK,bind=127.0.0.1,reuseaddr,fork" SYSTEM:"wc -c >>$TMP/sink.count" 2>/dev/null &
PIDS+=($!)
SRC=$(free_port)
socat -U "TCP-LISTEN:$SRC,bind=127.0.0.1,reuseaddr,fork" SYSTEM:"head -c $BYTES /dev/zero" 2>/dev/null &
PIDS+=($!)
SRC_GC=$(free_port)
socat -U "TCP-LISTEN:$SRC_GC,bind=127.0.0.1,reuseaddr,fork" SYSTEM:"head -c $GC_BYTES /dev/zero" 2>/dev/null &
PIDS+=($!)

# sshd on loopback with a throw-away host key (as tests/ssh_e2e.rs does).
mkdir -p /run/sshd "$TMP/ssh"
ssh-keygen -q -t ed25519 -N '' -f "$TMP/ssh/host_key"
ssh-keygen -q -t ed25519 -N '' -f "$TMP/ssh/id"
cp "$TMP/ssh/id.pub" "$TMP/ssh/authorized_keys"
echo "* $(cut -d' ' -f1,2 "$TMP/ssh/host_key.pub")" >"$TMP/ssh/known_hosts"
SSH_PORT=$(free_port)
penalties=""
"$SSHD" -G -f /dev/null -o PerSourcePenalties=no >/dev/null 2>&1 && penalties="PerSourcePenalties no"
cat >"$TMP/ssh/sshd_config" <<EOF
ListenAddress 127.0.0.1:$SSH_PORT
HostKey $TMP/ssh/host_key
AuthorizedKeysFile $TMP/ssh/authorized_keys
PidFile none
UsePAM no
StrictModes no
PermitRootLogin prohibit-password
PasswordAuthentication no
KbdInteractiveAuthentication no
UseDNS no
PrintMotd no
PrintLastLog no
MaxStartups 64
Subsystem sftp internal-sftp
$penalties
EOF
"$SSHD" -D -e -f "$TMP/ssh/sshd_config" 2>"$TMP/sshd.log" &
PIDS+=($!)
wait_for port_open "$SSH_PORT" || die "sshd did not start: $(tail -5 "$TMP/sshd.log")"

# Plain TCP relays (the ceiling): one socat per backend, 128 KiB buffers.
socat_relay() {
    local p
    p=$(free_port)
    socat -b 131072 "TCP-LISTEN:$p,bind=127.0.0.1,reuseaddr,fork" "TCP:127.0.0.1:$1" 2>/dev/null &
    PIDS+=($!)
    SOCAT_RELAY_PID[$1]=$!
    SOCAT_RELAY_PORT[$1]=$p
}
declare -A SOCAT_RELAY_PID SOCAT_RELAY_PORT
for b in "$SINK" "$SRC" "$SSH_PORT"; do socat_relay "$b"; done
for b in "$SINK" "$SRC" "$SSH_PORT"; do wait_for port_open "${SOCAT_RELAY_PORT[$b]}"; done

# An echo service (TCP_NODELAY) for latency and setup, and a source of PAR_MIB for the
# concurrency step.
"$NET" echo <&3 >"$TMP/echo.out" &
PIDS+=($!)
wait_for grep -q port "$TMP/echo.out" || die "echo backend did not start"
ECHO=$(awk '{print $2}' "$TMP/echo.out")
PAR_BYTES=$((PAR_MIB << 20))
SRC_PAR=$(free_port)
socat -U "TCP-LISTEN:$SRC_PAR,bind=127.0.0.1,reuseaddr,fork,backlog=1024" SYSTEM:"head -c $PAR_BYTES /dev/zero" 2>/dev/null &
PIDS+=($!)

# The socat TLS pair: the same shape as iap-ssh ↔ iap-relay in C with OpenSSL. A TLS server
# in front of each backend (the relay's certificate), and a TLS client checking it.
socat_tls_relay() {
    local p
    p=$(free_port)
    socat -b 131072 "OPENSSL-LISTEN:$p,bind=127.0.0.1,reuseaddr,fork,backlog=1024,cert=$TMP/relay-cert.pem,key=$TMP/relay-key.pem,verify=0" \
        "TCP:127.0.0.1:$1,nodelay" 2>/dev/null &
    PIDS+=($!)
    SOCAT_TLS_PID[$1]=$!
    SOCAT_TLS_PORT[$1]=$p
}
declare -A SOCAT_TLS_PID SOCAT_TLS_PORT
for b in "$SINK" "$SRC" "$ECHO" "$SRC_PAR"; do socat_tls_relay "$b"; done
for b in "$SINK" "$SRC" "$ECHO" "$SRC_PAR"; do wait_for port_open "${SOCAT_TLS_PORT[$b]}"; done

start_relay "$BIN/iap-relay" relay
IAP_RELAY_PID=$RELAY_PID
log "iap-relay at $RELAY_URL (pid $RELAY_PID), sshd on $SSH_PORT"

export CLOUDSDK_CONFIG="$TMP/gcloud-config" CLOUDSDK_CORE_PROJECT=$PROJECT
export CLOUDSDK_AUTH_ACCESS_TOKEN_FILE="$TMP/token" CLOUDSDK_CORE_CUSTOM_CA_CERTS_FILE="$TMP/ca.pem"
export CLOUDSDK_CORE_DISABLE_USAGE_REPORTING=true CLOUDSDK_COMPONENT_MANAGER_DISABLE_UPDATE_CHECK=true
export CLOUDSDK_CORE_DISABLE_PROMPTS=1
mkdir -p "$CLOUDSDK_CONFIG"

# client_cmd PATH BACKEND_PORT: the command line of a tunnel client on stdin/stdout.
client_cmd() {
    case $1 in
    socat) echo "socat -b 131072 - TCP:127.0.0.1:${SOCAT_RELAY_PORT[$2]}" ;;
    socat-tls) echo "socat -b 131072 - OPENSSL:127.0.0.1:${SOCAT_TLS_PORT[$2]},cafile=$TMP/ca.pem,nodelay" ;;
    iap-ssh) echo "$BIN/iap-ssh --endpoint $RELAY_URL --ca-file $TMP/ca.pem --access-token-file $TMP/token $INSTANCE.$ZONE.$PROJECT $2" ;;
    iap-ssh-prev) echo "$PREV/iap-ssh --endpoint $RELAY_URL --ca-file $TMP/ca.pem --access-token-file $TMP/token $INSTANCE.$ZONE.$PROJECT $2" ;;
    gcloud) echo "$GCLOUD compute start-iap-tunnel $INSTANCE $2 --zone $ZONE --project $PROJECT --listen-on-stdin --iap-tunnel-url-override=$RELAY_URL --verbosity=warning" ;;
    esac
}
relay_pid_for() {
    case $1 in
    socat) echo "${SOCAT_RELAY_PID[$2]}" ;;
    socat-tls) echo "${SOCAT_TLS_PID[$2]}" ;;
    *) echo "$IAP_RELAY_PID" ;;
    esac
}

RESULTS=$TMP/results # lines: metric path value
record() { echo "$1 $2 $3" >>"$RESULTS"; }

# bulk PATH DIR BYTES: one transfer; records MB/s, client CPU s/GiB, relay CPU s/GiB, client RSS.
bulk() {
    local path=$1 dir=$2 bytes=$3 backend cmd rpid c0 c1 t0 t1 got
    if [[ $dir == up ]]; then backend=$SINK; else backend=$([[ $bytes == "$BYTES" ]] && echo "$SRC" || echo "$SRC_GC"); fi
    [[ $path == socat* && $dir == down ]] && backend=$SRC
    cmd=$(client_cmd "$path" "$backend")
    rpid=$(relay_pid_for "$path" "$backend")
    : >"$TMP/sink.count"
    c0=$(cpu_ticks "$rpid")
    t0=$(now_ns)
    if [[ $dir == up ]]; then
        head -c "$bytes" /dev/zero | /usr/bin/time -f '%U %S %M' -o "$TMP/time.out" timeout "$STEP_LIMIT" $cmd >/dev/null ||
            die "$path upload failed (see $TMP)"
        t1=$(now_ns)
        wait_for test -s "$TMP/sink.count" || die "$path upload: the sink saw no end"
        got=$(tail -1 "$TMP/sink.count")
    else
        # Timed to the last byte (gcloud lingers for seconds after the tunnel has closed).
        /usr/bin/time -f '%U %S %M' -o "$TMP/time.out" timeout "$STEP_LIMIT" $cmd <&3 |
            { head -c "$bytes" | wc -c >"$TMP/got"; now_ns >"$TMP/t1"; }
        got=$(<"$TMP/got") t1=$(<"$TMP/t1")
    fi
    sleep 0.3 # let socat reap its worker so the relay's CPU includes it
    c1=$(cpu_ticks "$rpid")
    [[ $got == "$bytes" ]] || die "$path $dir carried $got bytes, expected $bytes"
    local secs gib
    secs=$(awk -v a="$t0" -v b="$t1" 'BEGIN{printf "%.4f", (b-a)/1e9}')
    gib=$(awk -v b="$bytes" 'BEGIN{print b/1073741824}')
    record "tput_$dir" "$path" "$(awk -v b="$bytes" -v s="$secs" 'BEGIN{printf "%.1f", b/s/1e6}')"
    read -r u s m <"$TMP/time.out"
    record "ccpu_$dir" "$path" "$(awk -v u="$u" -v s="$s" -v g="$gib" 'BEGIN{printf "%.2f", (u+s)/g}')"
    record "rcpu_$dir" "$path" "$(awk -v a="$c0" -v b="$c1" -v t="$CLK_TCK" -v g="$gib" 'BEGIN{printf "%.2f", (b-a)/t/g}')"
    record "rss_$dir" "$path" "$(awk -v m="$m" 'BEGIN{printf "%.1f", m/1024}')"
    log "$path $dir $((bytes >> 20)) MiB: ${secs}s"
}

SSH_OPTS=(-F /dev/null -i "$TMP/ssh/id" -o Port="$SSH_PORT" -o User=root -o IdentitiesOnly=yes
    -o BatchMode=yes -o UserKnownHostsFile="$TMP/ssh/known_hosts" -o GlobalKnownHostsFile=/dev/null
    -o StrictHostKeyChecking=yes -o UpdateHostKeys=no -o LogLevel=ERROR -o ConnectTimeout=30
    -o ControlMaster=no -o ControlPath=none)
proxy_for() {
    case $1 in
    direct) echo "socat - TCP:127.0.0.1:%p" ;;
    socat) echo "socat -b 131072 - TCP:127.0.0.1:${SOCAT_RELAY_PORT[$SSH_PORT]}" ;;
    iap-ssh) echo "$BIN/iap-ssh --endpoint $RELAY_URL --ca-file $TMP/ca.pem --access-token-file $TMP/token $INSTANCE.$ZONE.$PROJECT %p" ;;
    iap-ssh-prev) echo "$PREV/iap-ssh --endpoint $RELAY_URL --ca-file $TMP/ca.pem --access-token-file $TMP/token $INSTANCE.$ZONE.$PROJECT %p" ;;
    gcloud) echo "$GCLOUD compute start-iap-tunnel $INSTANCE %p --zone $ZONE --project $PROJECT --listen-on-stdin --iap-tunnel-url-override=$RELAY_URL --verbosity=warning" ;;
    esac
}

# scp_run PATH DIR BYTES
scp_run() {
    local path=$1 dir=$2 bytes=$3 t0 t1 src=$SHM/blob
    [[ $bytes == "$GC_BYTES" ]] && src=$SHM/blob_gc
    rm -f "$SHM/dst"
    t0=$(now_ns)
    if [[ $dir == up ]]; then
        timeout "$STEP_LIMIT" scp -q "${SSH_OPTS[@]}" -o ProxyCommand="$(proxy_for "$path")" "$src" "$INSTANCE:$SHM/dst"
    else
        timeout "$STEP_LIMIT" scp -q "${SSH_OPTS[@]}" -o ProxyCommand="$(proxy_for "$path")" "$INSTANCE:$src" "$SHM/dst"
    fi || die "scp $dir through $path failed"
    t1=$(now_ns)
    [[ $(stat -c %s "$SHM/dst") == "$bytes" ]] || die "scp $dir through $path: wrong size"
    record "scp_$dir" "$path" "$(awk -v b="$bytes" -v a="$t0" -v c="$t1" 'BEGIN{printf "%.1f", b/((c-a)/1e9)/1e6}')"
    log "scp $path $dir $((bytes >> 20)) MiB: $(((t1 - t0) / 1000000)) ms"
}

# ---------------------------------------------------------------------------------------------
step bulk && log "bulk: $RUNS runs of $SIZE_MIB MiB each way (socat, iap-ssh), $GC_MIB MiB for gcloud"
step bulk && for r in $(seq "$RUNS"); do
    for path in socat socat-tls iap-ssh ${PREV:+iap-ssh-prev}; do
        bulk "$path" up "$BYTES"
        bulk "$path" down "$BYTES"
    done
    if [[ -n $GCLOUD ]]; then
        bulk gcloud up "$GC_BYTES"
        bulk gcloud down "$GC_BYTES"
    fi
done

step scp && log "scp: $RUNS runs"
step scp && head -c "$BYTES" /dev/zero >"$SHM/blob"
step scp && head -c "$GC_BYTES" /dev/zero >"$SHM/blob_gc"
step scp && for r in $(seq "$RUNS"); do
    for path in socat iap-ssh; do
        scp_run "$path" up "$BYTES"
        scp_run "$path" down "$BYTES"
    done
    if [[ -n $GCLOUD ]]; then
        scp_run gcloud up "$GC_BYTES"
        scp_run gcloud down "$GC_BYTES"
    fi
done
rm -f "$SHM/blob" "$SHM/blob_gc" "$SHM/dst"

step startup && log "start-up: $STARTUP_RUNS runs of ssh ... true, and time to first byte / session id"
startup_paths=(direct iap-ssh)
[[ -n $GCLOUD ]] && startup_paths+=(gcloud)
[[ -n $PREV ]] && startup_paths+=(iap-ssh-prev)
step startup && for r in $(seq "$STARTUP_RUNS"); do
    for path in "${startup_paths[@]}"; do
        t0=$(now_ns)
        timeout 120 ssh "${SSH_OPTS[@]}" -o ProxyCommand="$(proxy_for "$path")" "$INSTANCE" true ||
            die "ssh true through $path failed"
        t1=$(now_ns)
        record ssh_true "$path" "$(((t1 - t0) / 1000000))"
        # Time from exec to the first byte from the backend (sshd's banner, sent as soon as the
        # relay has connected it), and for iap-ssh to its "tunnel open" log line (session id).
        marker=""
        [[ $path == iap-ssh* ]] && marker="tunnel open"
        pc=$(proxy_for "$path")
        pc=${pc//%p/$SSH_PORT}
        if [[ $path == iap-ssh* ]]; then pc="${pc/--endpoint/-v -v --endpoint}"; fi
        out=$(timeout 120 "$TOOL" ttfb "$marker" -- $pc)
        fb=$(sed -n 's/.*first_byte_ms=\([^ ]*\).*/\1/p' <<<"$out")
        mk=$(sed -n 's/.*marker_ms=\([^ ]*\).*/\1/p' <<<"$out")
        record first_byte "$path" "$fb"
        [[ $path == iap-ssh* ]] && record session_id "$path" "$mk"
    done
done

# ---------------------------------------------------------------------------------------------
# Stalls: the sequence that showed gcloud's send-queue deadlock (README "Compatibility"): for
# each run a freshly started iap-relay, then through a fresh ProxyCommand each: ssh login, a
# 16 MiB upload, a 16 MiB download. A download that the relay reports as stalled (a "stall"
# audit line: no ACK for 10 s with more than 32 KiB unacknowledged) is counted and stopped. gcloud runs with --verbosity=error, as ssh users run it; iap-ssh the same.
STALL_BYTES=$((16 << 20))
# stall_step PATH AUDIT login|up|down: 0 done, 1 failed, 2 stalled.
stall_step() {
    local path=$1 audit=$2 what=$3 pc pid i
    pc=$(proxy_for "$path")
    pc=${pc/--verbosity=warning/--verbosity=error}
    case $what in
    login) ssh "${SSH_OPTS[@]}" -o ProxyCommand="$pc" "$INSTANCE" true </dev/null >/dev/null & ;;
    up) ssh "${SSH_OPTS[@]}" -o ProxyCommand="$pc" "$INSTANCE" "cat >$SHM/stall-file" <"$SHM/stall-blob" >/dev/null & ;;
    down) ssh "${SSH_OPTS[@]}" -o ProxyCommand="$pc" "$INSTANCE" "cat $SHM/stall-file" </dev/null >"$SHM/stall-back" & ;;
    esac
    pid=$!
    PIDS+=("$pid")
    for i in $(seq $((STEP_LIMIT * 10))); do
        if ! kill -0 "$pid" 2>/dev/null; then
            if wait "$pid"; then return 0; else return 1; fi
        fi
        if grep -q '"event":"stall"' "$audit" 2>/dev/null; then
            # ssh ends its ProxyCommand (gcloud) when it is stopped.
            kill -TERM "$pid" 2>/dev/null || true
            wait "$pid" 2>/dev/null || true
            return 2
        fi
        sleep 0.1
    done
    kill -TERM "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
    return 1
}
if step stall; then
    stall_paths=(iap-ssh)
    [[ -n $GCLOUD ]] && stall_paths+=(gcloud)
    log "stalls: $STALL_RUNS runs of login, 16 MiB up, 16 MiB down, fresh relay each (${stall_paths[*]})"
    head -c "$STALL_BYTES" /dev/urandom >"$SHM/stall-blob"
    MAIN_RELAY_URL=$RELAY_URL MAIN_RELAY_PID=$RELAY_PID
    for path in "${stall_paths[@]}"; do
        stalls=0
        for r in $(seq "$STALL_RUNS"); do
            audit=$TMP/stall-$path-$r.jsonl
            # audit_log is a top-level key: put it before the first table.
            # A stopped relay need not wait for a stalled session to drain.
            { echo "audit_log = \"$audit\""; cat "$TMP/relay.toml"; echo "drain_secs = 1"; } >"$TMP/relay-stall.toml"
            RELAY_TOML=$TMP/relay-stall.toml start_relay "$BIN/iap-relay" "relay-stall"
            result=done
            for what in login up down; do
                rc=0
                stall_step "$path" "$audit" "$what" || rc=$?
                if ((rc == 2)); then
                    result="stalled at $what"
                    [[ $what == down ]] && stalls=$((stalls + 1))
                    break
                elif ((rc != 0)); then
                    die "stall run $r: $path $what failed (see $TMP)"
                fi
            done
            if [[ $result == done ]] && ! cmp -s "$SHM/stall-blob" "$SHM/stall-back"; then
                die "stall run $r: $path download differs"
            fi
            [[ $result == "stalled at up" || $result == "stalled at login" ]] &&
                die "stall run $r: $path $result (not a download stall; see $TMP)"
            log "stall run $r/$STALL_RUNS $path: $result"
            kill "$RELAY_PID" 2>/dev/null || true
            wait "$RELAY_PID" 2>/dev/null || true
            rm -f "$SHM/stall-file" "$SHM/stall-back"
        done
        record stalls "$path" "$stalls"
        record stall_runs "$path" "$STALL_RUNS"
    done
    rm -f "$SHM/stall-blob"
    RELAY_URL=$MAIN_RELAY_URL RELAY_PID=$MAIN_RELAY_PID
fi

# ---------------------------------------------------------------------------------------------
# Latency: request/response round trips to the echo service (p50, p99, p99.9), through a
# client's stdin/stdout (stdio mode) and through a local port (listener mode).
# opt_record METRIC PATH OUTPUT KEY: records KEY=VALUE from OUTPUT, or "-".
opt_record() { record "$1" "$2" "$(sed -n "s/.*$4=\([^ ]*\).*/\1/p" <<<"$3" | grep . || echo -)"; }
if step latency; then
log "latency: $LAT_COUNT round trips of 1 B and 1 KiB per path, $RUNS runs"
"$BIN/iap-ssh" --listen 127.0.0.1:0 --endpoint "$RELAY_URL" --ca-file "$TMP/ca.pem" \
    --access-token-file "$TMP/token" "$INSTANCE.$ZONE.$PROJECT" "$ECHO" <&3 >"$TMP/listen.out" 2>"$TMP/listen.log" &
PIDS+=($!)
wait_for grep -q 'Listening on port' "$TMP/listen.out" || die "iap-ssh --listen did not start: $(tail -3 "$TMP/listen.log")"
IAP_LISTEN_PORT=$(sed -n 's/Listening on port \[\([0-9]*\)\]\./\1/p' "$TMP/listen.out")
TLS_LISTEN_PORT=$(free_port)
socat "TCP-LISTEN:$TLS_LISTEN_PORT,bind=127.0.0.1,reuseaddr,fork,nodelay" \
    "OPENSSL:127.0.0.1:${SOCAT_TLS_PORT[$ECHO]},cafile=$TMP/ca.pem,nodelay" 2>/dev/null &
PIDS+=($!)
wait_for port_open "$TLS_LISTEN_PORT" || die "socat TLS listener did not start"
# lat NAME SIZE RTT-ARGS...
lat() {
    local name=$1 size=$2 out
    shift 2
    out=$(timeout "$STEP_LIMIT" "$NET" rtt "$size" "$LAT_COUNT" "$@") || die "latency $name $size B failed"
    for p in 50 99 999; do opt_record "lat${p}_$size" "$name" "$out" "p${p}_us"; done
    log "latency $name $size B: $out"
}
for r in $(seq "$RUNS"); do
    for size in 1 1024; do
        lat direct "$size" tcp "$ECHO"
        # shellcheck disable=SC2046 # the client command is words
        lat socat-tls "$size" stdio -- $(client_cmd socat-tls "$ECHO")
        # shellcheck disable=SC2046
        lat iap-ssh "$size" stdio -- $(client_cmd iap-ssh "$ECHO")
        if [[ -n $PREV ]]; then
            # shellcheck disable=SC2046
            lat iap-ssh-prev "$size" stdio -- $(client_cmd iap-ssh-prev "$ECHO")
        fi
        lat socat-tls-listen "$size" tcp "$TLS_LISTEN_PORT"
        lat iap-ssh-listen "$size" tcp "$IAP_LISTEN_PORT"
    done
done
fi

# ---------------------------------------------------------------------------------------------
# Many tunnels at once: 16 and 64 downloads of PAR_MIB each through one relay.
if step concurrency; then
log "concurrency: 16 and 64 downloads of $PAR_MIB MiB at once"
for r in $(seq "$RUNS"); do
    for n in 16 64; do
        for path in socat-tls iap-ssh; do
            # shellcheck disable=SC2046
            out=$(timeout "$STEP_LIMIT" "$NET" parallel "$n" "$PAR_BYTES" -- $(client_cmd "$path" "$SRC_PAR")) ||
                die "$n parallel downloads through $path failed"
            opt_record "par_mbps_$n" "$path" "$out" mbps
            opt_record "par_fast_$n" "$path" "$out" fastest_s
            opt_record "par_slow_$n" "$path" "$out" slowest_s
            log "concurrency $path x$n: $out"
        done
    done
done
fi

# ---------------------------------------------------------------------------------------------
# Tunnel setup rate: 64 dialers, each a connect, one byte echoed and a close; iap-relay against
# HAProxy terminating TLS in front of the same echo service.
if step setup; then
log "setup rate: $SETUPS setups, 64 at once, iap-relay and HAProxy"
cat "$TMP/relay-cert.pem" "$TMP/relay-key.pem" >"$TMP/haproxy.pem"
HA_PORT=$(free_port)
cat >"$TMP/haproxy.cfg" <<EOF
global
    maxconn 4096
defaults
    mode tcp
    timeout connect 5s
    timeout client 30s
    timeout server 30s
frontend tls
    bind 127.0.0.1:$HA_PORT ssl crt $TMP/haproxy.pem
    default_backend echo
backend echo
    server echo 127.0.0.1:$ECHO
EOF
haproxy -db -f "$TMP/haproxy.cfg" >"$TMP/haproxy.log" 2>&1 &
PIDS+=($!)
wait_for port_open "$HA_PORT" || die "haproxy did not start: $(tail -3 "$TMP/haproxy.log")"
for r in $(seq "$RUNS"); do
    out=$(timeout "$STEP_LIMIT" "$NET" setup relay "$RELAY_URL" "$TMP/ca.pem" "$TMP/token" "$PROJECT" "$ZONE" \
        "$INSTANCE" "$ECHO" "$SETUPS" 64) || die "setups through iap-relay failed"
    opt_record setup_rate iap-relay "$out" rate
    opt_record setup_p50 iap-relay "$out" p50_ms
    opt_record setup_p99 iap-relay "$out" p99_ms
    log "setup iap-relay: $out"
    out=$(timeout "$STEP_LIMIT" "$NET" setup tls "127.0.0.1:$HA_PORT" "$TMP/ca.pem" "$SETUPS" 64) ||
        die "setups through haproxy failed"
    opt_record setup_rate haproxy "$out" rate
    opt_record setup_p50 haproxy "$out" p50_ms
    opt_record setup_p99 haproxy "$out" p99_ms
    log "setup haproxy: $out"
done
fi

# ---------------------------------------------------------------------------------------------
# Distance: a delay line of DELAY_MS each way in front of the relays; bulk each way.
if step distance; then
log "distance: ${DELAY_MS} ms each way, $DELAY_MIB MiB each way ($GC_MIB MiB for gcloud)"
DELAY_BYTES=$((DELAY_MIB << 20))
SRC_DELAY=$(free_port)
socat -U "TCP-LISTEN:$SRC_DELAY,bind=127.0.0.1,reuseaddr,fork" SYSTEM:"head -c $DELAY_BYTES /dev/zero" 2>/dev/null &
PIDS+=($!)
socat_tls_relay "$SRC_DELAY"
wait_for port_open "${SOCAT_TLS_PORT[$SRC_DELAY]}" || die "socat TLS relay did not start"
# delay_line TARGET_PORT: starts a delay line in front of TARGET_PORT; sets DELAY_PORT.
delay_line() {
    local out=$TMP/delay.$1.out
    "$NET" delay 0 "$1" "$DELAY_MS" <&3 >"$out" &
    PIDS+=($!)
    wait_for grep -q port "$out" || die "delay line to $1 did not start"
    DELAY_PORT=$(awk '{print $2}' "$out")
}
RELAY_PORT=${RELAY_URL##*:}
RELAY_PORT=${RELAY_PORT%%/*}
delay_line "$RELAY_PORT"
DELAY_RELAY=$DELAY_PORT
declare -A DELAY_TLS
for b in "$SINK" "$SRC_DELAY"; do
    delay_line "${SOCAT_TLS_PORT[$b]}"
    DELAY_TLS[$b]=$DELAY_PORT
done
# far_cmd PATH BACKEND: the client command line through the delay line.
far_cmd() {
    case $1 in
    socat-tls) echo "socat -b 131072 - OPENSSL:127.0.0.1:${DELAY_TLS[$2]},cafile=$TMP/ca.pem,nodelay" ;;
    iap-ssh) echo "$BIN/iap-ssh --endpoint wss://127.0.0.1:$DELAY_RELAY --ca-file $TMP/ca.pem --access-token-file $TMP/token $INSTANCE.$ZONE.$PROJECT $2" ;;
    gcloud) echo "$GCLOUD compute start-iap-tunnel $INSTANCE $2 --zone $ZONE --project $PROJECT --listen-on-stdin --iap-tunnel-url-override=wss://127.0.0.1:$DELAY_RELAY --verbosity=warning" ;;
    esac
}
# far PATH DIR BYTES: one transfer through the delay line; records far_DIR (MB/s). gcloud's
# failures are recorded as "-" (its own stall, see README "Compatibility"), others end the run.
far() {
    local path=$1 dir=$2 bytes=$3 backend t0 t1 got cmd
    if [[ $dir == up ]]; then backend=$SINK; else backend=$SRC_DELAY; fi
    [[ $path == gcloud && $dir == down ]] && backend=$SRC_GC
    cmd=$(far_cmd "$path" "$backend")
    : >"$TMP/sink.count"
    t0=$(now_ns)
    if [[ $dir == up ]]; then
        if ! head -c "$bytes" /dev/zero | timeout "$STEP_LIMIT" $cmd >/dev/null; then
            [[ $path == gcloud ]] && { record "far_$dir" "$path" -; return; }
            die "$path upload through the delay line failed"
        fi
        t1=$(now_ns)
        wait_for test -s "$TMP/sink.count" || die "$path far upload: the sink saw no end"
        got=$(tail -1 "$TMP/sink.count")
    else
        timeout "$STEP_LIMIT" $cmd <&3 | { head -c "$bytes" | wc -c >"$TMP/got"; now_ns >"$TMP/t1"; }
        got=$(<"$TMP/got") t1=$(<"$TMP/t1")
    fi
    if [[ $got != "$bytes" ]]; then
        [[ $path == gcloud ]] && { record "far_$dir" "$path" -; return; }
        die "$path $dir through the delay line carried $got bytes, expected $bytes"
    fi
    record "far_$dir" "$path" "$(awk -v b="$bytes" -v a="$t0" -v c="$t1" 'BEGIN{printf "%.1f", b/((c-a)/1e9)/1e6}')"
    log "far $path $dir $((bytes >> 20)) MiB: $(((t1 - t0) / 1000000)) ms"
}
for r in $(seq "$RUNS"); do
    for path in socat-tls iap-ssh; do
        far "$path" up "$DELAY_BYTES"
        far "$path" down "$DELAY_BYTES"
    done
    if [[ -n $GCLOUD ]]; then
        far gcloud up "$GC_BYTES"
        far gcloud down "$GC_BYTES"
    fi
done
fi

# ---------------------------------------------------------------------------------------------
# A whole Ansible run: FLEET_HOSTS inventory hosts (instances of the relay leading to the
# loopback sshd), forks=10, four tasks, no fact gathering; through direct socat, iap-ssh and
# gcloud without connection sharing, and iap-ssh with ControlPersist.
if [[ $FLEET == 1 ]] && step fleet; then
    VENV=$ROOT/target/ansible-venv
    if [[ ! -x $VENV/bin/ansible-playbook ]]; then
        log "making the ansible virtualenv in $VENV"
        python3 -m venv "$VENV" && "$VENV/bin/pip" install -q --disable-pip-version-check 'ansible-core>=2.17,<2.18' >&2 ||
            die "could not install ansible-core"
    fi
    FL=$TMP/fleet
    mkdir -p "$FL"
    head -c 102400 /dev/urandom >"$FL/blob"
    {
        echo "[fleet]"
        for i in $(seq "$FLEET_HOSTS"); do echo "host-$i"; done
        echo "[fleet:vars]"
        echo "ansible_port=$SSH_PORT"
        echo "ansible_user=root"
        echo "ansible_ssh_private_key_file=$TMP/ssh/id"
        echo "ansible_python_interpreter=/usr/bin/python3"
    } >"$FL/inventory"
    cat >"$FL/play.yml" <<EOF
- hosts: fleet
  gather_facts: false
  tasks:
    - command: "true"
    - copy:
        src: $FL/blob
        dest: "$SHM/fleet-{{ inventory_hostname }}"
    - shell: "echo {{ inventory_hostname }}"
    - stat:
        path: "$SHM/fleet-{{ inventory_hostname }}"
EOF
    fleet_proxy() {
        case $1 in
        direct | direct-cp) echo "socat - TCP:127.0.0.1:%p" ;;
        iap-ssh | iap-ssh-cp) echo "$BIN/iap-ssh --endpoint $RELAY_URL --ca-file $TMP/ca.pem --access-token-file $TMP/token --zone $ZONE --project $PROJECT %h %p" ;;
        gcloud) echo "$GCLOUD compute start-iap-tunnel %h %p --zone $ZONE --project $PROJECT --listen-on-stdin --iap-tunnel-url-override=$RELAY_URL --verbosity=warning" ;;
        esac
    }
    fleet_run() {
        local path=$1 share="-o ControlMaster=no -o ControlPath=none" t0 t1
        [[ $path == *-cp ]] && share="-o ControlMaster=auto -o ControlPersist=60s -o ControlPath=$FL/cm-%C"
        local args="-F /dev/null -o UserKnownHostsFile=$TMP/ssh/known_hosts -o GlobalKnownHostsFile=/dev/null -o StrictHostKeyChecking=no -o LogLevel=ERROR $share -o ProxyCommand='$(fleet_proxy "$path")'"
        t0=$(now_ns)
        ANSIBLE_HOST_KEY_CHECKING=False ANSIBLE_SSH_ARGS="$args" ANSIBLE_FORKS=10 ANSIBLE_NOCOLOR=1 \
            ANSIBLE_LOCAL_TEMP="$FL/tmp" ANSIBLE_REMOTE_TEMP="$FL/remote" ANSIBLE_PYTHON_INTERPRETER=/usr/bin/python3 \
            /usr/bin/time -f '%U %S' -o "$FL/time" timeout "$STEP_LIMIT" \
            "$VENV/bin/ansible-playbook" -i "$FL/inventory" "$FL/play.yml" >"$FL/$path.log" 2>&1 ||
            die "ansible through $path failed: $(tail -5 "$FL/$path.log")"
        t1=$(now_ns)
        grep -q "failed=0" "$FL/$path.log" || die "ansible through $path: a task failed: $(tail -5 "$FL/$path.log")"
        read -r u s <"$FL/time"
        record fleet_wall "$path" "$(awk -v a="$t0" -v b="$t1" 'BEGIN{printf "%.1f", (b-a)/1e9}')"
        record fleet_cpu "$path" "$(awk -v u="$u" -v s="$s" 'BEGIN{printf "%.1f", u+s}')"
        log "ansible $path: $(((t1 - t0) / 1000000)) ms, CPU ${u}+${s} s"
        if [[ $path == *-cp ]]; then
            for i in $(seq "$FLEET_HOSTS"); do
                ssh -F /dev/null -o ControlPath="$FL/cm-%C" -p "$SSH_PORT" -l root -O exit "host-$i" 2>/dev/null || true
            done
        fi
    }
    fleet_paths=(direct direct-cp iap-ssh iap-ssh-cp)
    [[ -n $GCLOUD ]] && fleet_paths+=(gcloud)
    log "ansible: $FLEET_HOSTS hosts, forks=10, 4 tasks; ${fleet_paths[*]}"
    for r in $(seq "$RUNS"); do
        for path in "${fleet_paths[@]}"; do fleet_run "$path"; done
    done
fi

# ---------------------------------------------------------------------------------------------
# Idle tunnels: a fresh relay, an idle backend, N open tunnels.
max_tunnels=$(((NOFILE - 256) / 2))
steps="" LIMITED=""
IFS=, read -ra want <<<"$IDLE_STEPS"
for n in "${want[@]}"; do
    if ((n > max_tunnels)); then
        n=$((max_tunnels / 100 * 100)) LIMITED=1
        log "open-file limit $NOFILE (hard) allows about $max_tunnels tunnels (2 fds each in the relay): using $n"
    fi
    steps+="${steps:+,}$n"
done
if step idle; then
log "idle tunnels: steps $steps"
"$TOOL" backend <&3 >"$TMP/backend.out" &
PIDS+=($!)
wait_for grep -q port "$TMP/backend.out" || die "idle backend did not start"
IDLE_PORT=$(awk '{print $2}' "$TMP/backend.out")
start_relay "$BIN/iap-relay" relay-idle
timeout 900 "$TOOL" idle "$RELAY_URL" "$TMP/ca.pem" "$TMP/token" "$PROJECT" "$ZONE" "$INSTANCE" \
    "$IDLE_PORT" "$RELAY_PID" "$steps" >"$TMP/idle.out" || die "idle tunnels failed: $(tail -3 "$TMP/idle.out")"
cat "$TMP/idle.out" >&2
rss0=$(awk -F'[ =]' '$2==0{print $4}' "$TMP/idle.out")
while read -r line; do
    n=$(sed -n 's/tunnels=\([0-9]*\).*/\1/p' <<<"$line")
    r=$(sed -n 's/.*rss_kib=\([0-9]*\).*/\1/p' <<<"$line")
    ((n > 0)) || continue
    record "relay_rss_at_$n" iap-relay "$(awk -v r="$r" 'BEGIN{printf "%.1f", r/1024}')"
    record "relay_kib_per_tunnel_at_$n" iap-relay "$(awk -v r="$r" -v z="$rss0" -v n="$n" 'BEGIN{printf "%.1f", (r-z)/n}')"
done <"$TMP/idle.out"
record relay_rss_at_0 iap-relay "$(awk -v r="$rss0" 'BEGIN{printf "%.1f", r/1024}')"
kill "$RELAY_PID" 2>/dev/null || true
fi

# ---------------------------------------------------------------------------------------------
# Profile: callgrind on the unstripped build, one short transfer each way.
PROF=$TMP/profile
if [[ $PROFILE == 1 ]]; then
    log "profile: callgrind, $PROFILE_MIB MiB each way"
    mkdir -p "$PROF"
    PBIN=$ROOT/target/bench-profile/release
    pbytes=$((PROFILE_MIB << 20))
    PSRC=$(free_port)
    socat -U "TCP-LISTEN:$PSRC,bind=127.0.0.1,reuseaddr,fork" SYSTEM:"head -c $pbytes /dev/zero" 2>/dev/null &
    PIDS+=($!)
    start_relay "$PBIN/iap-relay" relay-prof valgrind --tool=callgrind --callgrind-out-file="$PROF/relay.%p.out"
    PROF_RELAY=$RELAY_PID
    pclient="$PBIN/iap-ssh --endpoint $RELAY_URL --ca-file $TMP/ca.pem --access-token-file $TMP/token $INSTANCE.$ZONE.$PROJECT"
    head -c "$pbytes" /dev/zero | timeout "$STEP_LIMIT" valgrind -q --tool=callgrind \
        --callgrind-out-file="$PROF/client-up.out" $pclient "$SINK" >/dev/null 2>"$PROF/client-up.log" ||
        die "profiled upload failed"
    timeout "$STEP_LIMIT" valgrind -q --tool=callgrind --callgrind-out-file="$PROF/client-down.out" \
        $pclient "$PSRC" <&3 2>"$PROF/client-down.log" | wc -c >/dev/null || die "profiled download failed"
    kill -INT "$PROF_RELAY" 2>/dev/null || true
    for i in $(seq 300); do kill -0 "$PROF_RELAY" 2>/dev/null || break; sleep 0.1; done
    kill "$PROF_RELAY" 2>/dev/null || true
    wait "$PROF_RELAY" 2>/dev/null || true
    # top self-cost functions (instructions), as "percent function"
    top() {
        callgrind_annotate --inclusive=no "$1" 2>/dev/null | awk '
            /PROGRAM TOTALS/ { gsub(",", "", $1); total=$1 }
            /^ *[0-9,]+ \(/ && total && !/PROGRAM TOTALS/ && n < 15 {
                ir=$1; gsub(",", "", ir); $1=""; $2=""; sub(/^ +/, "");
                sub(/^[^:]*:/, ""); sub(/ \[[^]]*\]$/, "");
                printf "%5.1f%%  %s\n", 100*ir/total, $0; n++ }'
    }
    top "$PROF/client-up.out" >"$PROF/top-client-up.txt"
    top "$PROF/client-down.out" >"$PROF/top-client-down.txt"
    top "$(ls "$PROF"/relay.*.out | head -1)" >"$PROF/top-relay.txt"
    for f in "$PROF"/*.out; do
        callgrind_annotate --inclusive=no --tree=caller "$f" >"${f%.out}.callers.txt" 2>/dev/null || true
    done
    # Keep the raw profiles for a closer look (kcachegrind, callgrind_annotate --tree=caller).
    rm -rf "$ROOT/target/bench-profile/last" && cp -r "$PROF" "$ROOT/target/bench-profile/last"
fi

# ---------------------------------------------------------------------------------------------
# Report: medians, ratios of medians from this run.
med() { # med METRIC PATH
    awk -v m="$1" -v p="$2" '$1==m && $2==p && $3!="-" {print $3}' "$RESULTS" | sort -g |
        awk '{a[NR]=$1} END{if(NR==0){print "-"} else if(NR%2){print a[(NR+1)/2]} else {printf "%.1f\n",(a[NR/2]+a[NR/2+1])/2}}'
}
cnt() { awk -v m="$1" -v p="$2" '$1==m && $2==p && $3!="-"' "$RESULTS" | wc -l; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN{ if (a=="-"||b=="-"||b==0) print "-"; else printf "%.2f", a/b }'; }
ratio0() { awk -v a="$1" -v b="$2" 'BEGIN{ if (a=="-"||b=="-"||b==0) print "-"; else printf "%.0f", a/b }'; }
verdict() { [[ $1 == - ]] && echo "not measured" || { awk -v v="$1" -v t="$3" "BEGIN{exit !(v $2 t)}" && echo "**met**" || echo "**not met**"; }; }

declare -A M
for m in tput_up tput_down ccpu_up ccpu_down rcpu_up rcpu_down rss_up rss_down scp_up scp_down ssh_true first_byte session_id \
    lat50_1 lat99_1 lat999_1 lat50_1024 lat99_1024 lat999_1024 par_mbps_16 par_fast_16 par_slow_16 \
    par_mbps_64 par_fast_64 par_slow_64 setup_rate setup_p50 setup_p99 far_up far_down fleet_wall fleet_cpu stalls stall_runs; do
    for p in socat socat-tls iap-ssh iap-ssh-prev gcloud direct socat-tls-listen iap-ssh-listen iap-relay haproxy direct-cp iap-ssh-cp; do
        M[$m,$p]=$(med "$m" "$p")
    done
done
sum() { awk -v a="$1" -v b="$2" 'BEGIN{ if (a=="-"||b=="-") print "-"; else printf "%.2f", a+b }'; }
for d in up down; do
    M[cpu_$d,socat-tls]=$(sum "${M[ccpu_$d,socat-tls]}" "${M[rcpu_$d,socat-tls]}")
    M[cpu_$d,iap-ssh]=$(sum "${M[ccpu_$d,iap-ssh]}" "${M[rcpu_$d,iap-ssh]}")
done
WINDOW_MBPS=$(awk -v ms="$DELAY_MS" 'BEGIN{printf "%.1f", 1048576/(2*ms/1000)/1e6}')
far_bound() { awk -v w="$WINDOW_MBPS" -v s="$1" 'BEGIN{ if (s=="-") print w; else printf "%.1f", (s<w?s:w) }'; }
IFS=, read -ra idle_n <<<"$steps"
N1=${idle_n[0]} N2=${idle_n[-1]}
for n in "${idle_n[@]}"; do
    M[rr,$n]=$(med "relay_rss_at_$n" iap-relay)
    M[pt,$n]=$(med "relay_kib_per_tunnel_at_$n" iap-relay)
done
M[rr,0]=$(med relay_rss_at_0 iap-relay)
rss_peak=$(awk '$1 ~ /^rss_/ && $2=="iap-ssh" {print $3}' "$RESULTS" | sort -g | tail -1)
rss_peak=${rss_peak:--}

R_up=$(ratio "${M[tput_up,iap-ssh]}" "${M[tput_up,socat]}")
R_down=$(ratio "${M[tput_down,iap-ssh]}" "${M[tput_down,socat]}")
R_gc_up=$(ratio0 "${M[tput_up,iap-ssh]}" "${M[tput_up,gcloud]}")
R_gc_down=$(ratio0 "${M[tput_down,iap-ssh]}" "${M[tput_down,gcloud]}")
R_ssh=$(ratio "${M[ssh_true,iap-ssh]}" "${M[ssh_true,direct]}")
R_ssh_gc=$(ratio "${M[ssh_true,gcloud]}" "${M[ssh_true,iap-ssh]}")

table() {
    local n1=$1 n2=$2
    cat <<EOF
| measure | socat relay (ceiling) | iap-ssh ↔ iap-relay | gcloud ↔ iap-relay | ratios (same run) |
|---|---:|---:|---:|---|
| upload, MB/s ($SIZE_MIB MiB; gcloud $GC_MIB MiB) | ${M[tput_up,socat]} | ${M[tput_up,iap-ssh]} | ${M[tput_up,gcloud]} | iap-ssh/socat **$R_up**; iap-ssh/gcloud **${R_gc_up}×** |
| download, MB/s | ${M[tput_down,socat]} | ${M[tput_down,iap-ssh]} | ${M[tput_down,gcloud]} | iap-ssh/socat **$R_down**; iap-ssh/gcloud **${R_gc_down}×** |
| scp upload, MB/s | ${M[scp_up,socat]} | ${M[scp_up,iap-ssh]} | ${M[scp_up,gcloud]} | iap-ssh/socat $(ratio "${M[scp_up,iap-ssh]}" "${M[scp_up,socat]}"); iap-ssh/gcloud $(ratio0 "${M[scp_up,iap-ssh]}" "${M[scp_up,gcloud]}")× |
| scp download, MB/s | ${M[scp_down,socat]} | ${M[scp_down,iap-ssh]} | ${M[scp_down,gcloud]} | iap-ssh/socat $(ratio "${M[scp_down,iap-ssh]}" "${M[scp_down,socat]}"); iap-ssh/gcloud $(ratio0 "${M[scp_down,iap-ssh]}" "${M[scp_down,gcloud]}")× |
| client CPU s/GiB, upload | ${M[ccpu_up,socat]} | ${M[ccpu_up,iap-ssh]} | ${M[ccpu_up,gcloud]} | iap-ssh/socat $(ratio "${M[ccpu_up,iap-ssh]}" "${M[ccpu_up,socat]}") |
| client CPU s/GiB, download | ${M[ccpu_down,socat]} | ${M[ccpu_down,iap-ssh]} | ${M[ccpu_down,gcloud]} | iap-ssh/socat $(ratio "${M[ccpu_down,iap-ssh]}" "${M[ccpu_down,socat]}") |
| relay CPU s/GiB, upload | ${M[rcpu_up,socat]} | ${M[rcpu_up,iap-ssh]} | ${M[rcpu_up,gcloud]} | iap-relay/socat $(ratio "${M[rcpu_up,iap-ssh]}" "${M[rcpu_up,socat]}") |
| relay CPU s/GiB, download | ${M[rcpu_down,socat]} | ${M[rcpu_down,iap-ssh]} | ${M[rcpu_down,gcloud]} | iap-relay/socat $(ratio "${M[rcpu_down,iap-ssh]}" "${M[rcpu_down,socat]}") |
| client peak RSS, MiB (upload / download) | ${M[rss_up,socat]} / ${M[rss_down,socat]} | ${M[rss_up,iap-ssh]} / ${M[rss_down,iap-ssh]} | ${M[rss_up,gcloud]} / ${M[rss_down,gcloud]} | gcloud/iap-ssh $(ratio0 "${M[rss_up,gcloud]}" "${M[rss_up,iap-ssh]}")× |
| \`ssh … true\`, ms (direct: \`socat - TCP:%h:%p\`) | ${M[ssh_true,direct]} (direct) | ${M[ssh_true,iap-ssh]} | ${M[ssh_true,gcloud]} | iap-ssh/direct **$R_ssh**; gcloud/iap-ssh ${R_ssh_gc}× |
| exec → first backend byte (sshd banner), ms | ${M[first_byte,direct]} (direct) | ${M[first_byte,iap-ssh]} | ${M[first_byte,gcloud]} | gcloud/iap-ssh $(ratio0 "${M[first_byte,gcloud]}" "${M[first_byte,iap-ssh]}")× |
| exec → session id (\`tunnel open\`, -vv), ms | | ${M[session_id,iap-ssh]} | | |
| iap-relay RSS idle, MiB: 0 / $n1 / $n2 tunnels | | ${M[rr,0]} / ${M[rr,$n1]} / ${M[rr,$n2]} | | per tunnel: $n1 → **${M[pt,$n1]} KiB**, $n2 → **${M[pt,$n2]} KiB** |
| 16 MiB downloads that stalled for good (login, up, down; fresh relay each run) | | ${M[stalls,iap-ssh]} of ${M[stall_runs,iap-ssh]} | ${M[stalls,gcloud]} of ${M[stall_runs,gcloud]} | gcloud's own send-queue deadlock (README "Compatibility") |
EOF
}

round_two() {
    local s mode name n d
    cat <<EOF
| measure | direct TCP | socat TLS pair | iap-ssh ↔ iap-relay | ratio iap-ssh / socat TLS |
|---|---:|---:|---:|---|
EOF
    for s in 1 1024; do
        for mode in "" -listen; do
            name="stdio"
            [[ -n $mode ]] && name="listener"
            echo "| ${s} B round trip, $name, µs p50 / p99 / p99.9 | ${M[lat50_$s,direct]} / ${M[lat99_$s,direct]} / ${M[lat999_$s,direct]} | ${M[lat50_$s,socat-tls$mode]} / ${M[lat99_$s,socat-tls$mode]} / ${M[lat999_$s,socat-tls$mode]} | ${M[lat50_$s,iap-ssh$mode]} / ${M[lat99_$s,iap-ssh$mode]} / ${M[lat999_$s,iap-ssh$mode]} | p50 **$(ratio "${M[lat50_$s,iap-ssh$mode]}" "${M[lat50_$s,socat-tls$mode]}")**, p99 **$(ratio "${M[lat99_$s,iap-ssh$mode]}" "${M[lat99_$s,socat-tls$mode]}")** |"
        done
    done
    for n in 16 64; do
        echo "| $n downloads of $PAR_MIB MiB at once: aggregate MB/s (fastest / slowest s) | | ${M[par_mbps_$n,socat-tls]} (${M[par_fast_$n,socat-tls]} / ${M[par_slow_$n,socat-tls]}) | ${M[par_mbps_$n,iap-ssh]} (${M[par_fast_$n,iap-ssh]} / ${M[par_slow_$n,iap-ssh]}) | **$(ratio "${M[par_mbps_$n,iap-ssh]}" "${M[par_mbps_$n,socat-tls]}")**; slowest/fastest $(ratio "${M[par_slow_$n,iap-ssh]}" "${M[par_fast_$n,iap-ssh]}") |"
    done
    for d in up down; do
        echo "| bulk $d, MB/s ($SIZE_MIB MiB) | | ${M[tput_$d,socat-tls]} | ${M[tput_$d,iap-ssh]} | **$(ratio "${M[tput_$d,iap-ssh]}" "${M[tput_$d,socat-tls]}")** |"
        echo "| CPU s/GiB $d, client + relay | | ${M[ccpu_$d,socat-tls]} + ${M[rcpu_$d,socat-tls]} = ${M[cpu_$d,socat-tls]} | ${M[ccpu_$d,iap-ssh]} + ${M[rcpu_$d,iap-ssh]} = ${M[cpu_$d,iap-ssh]} | **$(ratio "${M[cpu_$d,iap-ssh]}" "${M[cpu_$d,socat-tls]}")** |"
    done
    cat <<EOF

| measure | HAProxy (TLS terminated) | iap-relay | ratio |
|---|---:|---:|---|
| tunnel setups per second, 64 dialers ($SETUPS) | ${M[setup_rate,haproxy]} | ${M[setup_rate,iap-relay]} | **$(ratio "${M[setup_rate,iap-relay]}" "${M[setup_rate,haproxy]}")** |
| setup latency p50 / p99, ms | ${M[setup_p50,haproxy]} / ${M[setup_p99,haproxy]} | ${M[setup_p50,iap-relay]} / ${M[setup_p99,iap-relay]} | p99 **$(ratio "${M[setup_p99,iap-relay]}" "${M[setup_p99,haproxy]}")** |

| through a delay line, ${DELAY_MS} ms each way | socat TLS pair | iap-ssh ↔ iap-relay | gcloud ↔ iap-relay | window/RTT bound (1 MiB) |
|---|---:|---:|---:|---:|
| upload, MB/s ($DELAY_MIB MiB; gcloud $GC_MIB MiB) | ${M[far_up,socat-tls]} | ${M[far_up,iap-ssh]} | ${M[far_up,gcloud]} | $WINDOW_MBPS |
| download, MB/s | ${M[far_down,socat-tls]} | ${M[far_down,iap-ssh]} | ${M[far_down,gcloud]} | $WINDOW_MBPS |

| Ansible, $FLEET_HOSTS hosts, forks=10, 4 tasks | direct (socat) | direct, ControlPersist | iap-ssh | iap-ssh, ControlPersist | gcloud |
|---|---:|---:|---:|---:|---:|
| wall time, s | ${M[fleet_wall,direct]} | ${M[fleet_wall,direct-cp]} | ${M[fleet_wall,iap-ssh]} | ${M[fleet_wall,iap-ssh-cp]} | ${M[fleet_wall,gcloud]} |
| control-node CPU, s | ${M[fleet_cpu,direct]} | ${M[fleet_cpu,direct-cp]} | ${M[fleet_cpu,iap-ssh]} | ${M[fleet_cpu,iap-ssh-cp]} | ${M[fleet_cpu,gcloud]} |
EOF
}

targets_two() {
    local s mode name p r n d bound
    cat <<EOF
| target | figure | status |
|---|---|---|
EOF
    for s in 1 1024; do
        for mode in "" -listen; do
            name="stdio"
            [[ -n $mode ]] && name="listener"
            for p in 50 99; do
                r=$(ratio "${M[lat${p}_$s,iap-ssh$mode]}" "${M[lat${p}_$s,socat-tls$mode]}")
                echo "| latency p$p ≤ 1.1× socat TLS, $s B, $name | ${r}× (${M[lat${p}_$s,iap-ssh$mode]} vs ${M[lat${p}_$s,socat-tls$mode]} µs) | $(verdict "$r" '<=' 1.1) |"
            done
        done
    done
    r=$(ratio "${M[fleet_wall,iap-ssh]}" "${M[fleet_wall,direct]}")
    echo "| Ansible ≤ 1.05× direct, no ControlPersist | ${r}× (${M[fleet_wall,iap-ssh]} vs ${M[fleet_wall,direct]} s); gcloud $(ratio "${M[fleet_wall,gcloud]}" "${M[fleet_wall,direct]}")× | $(verdict "$r" '<=' 1.05) |"
    r=$(ratio "${M[fleet_wall,iap-ssh-cp]}" "${M[fleet_wall,direct-cp]}")
    echo "| Ansible ≤ 1.05× direct, ControlPersist | ${r}× (${M[fleet_wall,iap-ssh-cp]} vs ${M[fleet_wall,direct-cp]} s) | $(verdict "$r" '<=' 1.05) |"
    for n in 16 64; do
        r=$(ratio "${M[par_mbps_$n,iap-ssh]}" "${M[par_mbps_$n,socat-tls]}")
        echo "| aggregate at $n tunnels ≥ 1.0× socat TLS | ${r}× | $(verdict "$r" '>=' 1.0) |"
        r=$(ratio "${M[par_slow_$n,iap-ssh]}" "${M[par_fast_$n,iap-ssh]}")
        echo "| slowest ≤ 1.5× fastest at $n | ${r}× | $(verdict "$r" '<=' 1.5) |"
    done
    r=$(ratio "${M[setup_rate,iap-relay]}" "${M[setup_rate,haproxy]}")
    echo "| setup rate ≥ 0.8× HAProxy | ${r}× (${M[setup_rate,iap-relay]} vs ${M[setup_rate,haproxy]}/s) | $(verdict "$r" '>=' 0.8) |"
    r=$(ratio "${M[setup_p99,iap-relay]}" "${M[setup_p99,haproxy]}")
    echo "| setup p99 ≤ 2× HAProxy | ${r}× | $(verdict "$r" '<=' 2) |"
    for d in up down; do
        r=$(ratio "${M[cpu_$d,iap-ssh]}" "${M[cpu_$d,socat-tls]}")
        echo "| client + relay CPU/GiB ≤ socat TLS pair, $d | ${r}× | $(verdict "$r" '<=' 1.0) |"
        bound=$(far_bound "${M[far_$d,socat-tls]}")
        r=$(ratio "${M[far_$d,iap-ssh]}" "$bound")
        echo "| delay line $d ≥ 0.9× min(window/RTT, socat TLS) | ${r}× (${M[far_$d,iap-ssh]} vs $bound MB/s) | $(verdict "$r" '>=' 0.9) |"
        r=$(ratio "${M[tput_$d,iap-ssh]}" "${M[tput_$d,socat-tls]}")
        echo "| bulk $d ≥ 1.0× socat TLS | ${r}× | $(verdict "$r" '>=' 1.0) |"
    done
    echo "| relay ≤ 16 KiB per idle tunnel | ${M[pt,$N2]} KiB at $N2 | $(verdict "${M[pt,$N2]}" '<=' 16) |"
    echo "| exec to session id ≤ 3 ms | ${M[session_id,iap-ssh]} ms | $(verdict "${M[session_id,iap-ssh]}" '<=' 3) |"
}

targets() {
    cat <<EOF
| target | figure | status |
|---|---|---|
| throughput iap-ssh ≥ 50 % of socat, upload | $R_up of socat (${M[tput_up,iap-ssh]} vs ${M[tput_up,socat]} MB/s) | $(verdict "$R_up" '>=' 0.5) |
| throughput iap-ssh ≥ 50 % of socat, download | $R_down of socat (${M[tput_down,iap-ssh]} vs ${M[tput_down,socat]} MB/s) | $(verdict "$R_down" '>=' 0.5) |
| upload ≥ 100× gcloud | ${R_gc_up}× (${M[tput_up,iap-ssh]} vs ${M[tput_up,gcloud]} MB/s) | $(verdict "$R_gc_up" '>=' 100) |
| \`ssh … true\` ≤ 1.15× nc/socat | ${R_ssh}× (${M[ssh_true,iap-ssh]} vs ${M[ssh_true,direct]} ms) | $(verdict "$R_ssh" '<=' 1.15) |
| iap-ssh peak RSS ≤ 10 MB | $rss_peak MiB (max over all bulk runs) | $(verdict "$rss_peak" '<=' 9.54) |
| iap-relay ≤ 64 KiB per idle tunnel at 10,000 | ${M[pt,$N2]} KiB at $N2 tunnels | $(verdict "${M[pt,$N2]}" '<=' 64)$([[ -n $LIMITED ]] && echo " (at $N2, the most this machine's open-file limit of $NOFILE allows)") |
EOF
}

echo
echo "Medians of $RUNS runs (start-up: $STARTUP_RUNS runs); MB = 10^6 bytes; ratios are of medians from this run."
table "$N1" "$N2"
echo
targets
echo
round_two
echo
targets_two
if [[ $PROFILE == 1 ]]; then
    for f in client-up client-down relay; do
        echo
        echo "callgrind top self cost, $f:"
        cat "$PROF/top-$f.txt"
    done
fi
if [[ -n $PREV ]]; then
    echo
    echo "iap-ssh against the earlier build in $PREV (medians of this run; stdio latency, socat TLS pair alongside):"
    echo
    echo "| figure | socat TLS | earlier | this build | this / earlier |"
    echo "|---|---|---|---|---|"
    for m in lat50_1 lat99_1 lat50_1024 lat99_1024 session_id tput_up tput_down ccpu_up ccpu_down; do
        echo "| $m | ${M[$m,socat-tls]} | ${M[$m,iap-ssh-prev]} | ${M[$m,iap-ssh]} | $(ratio "${M[$m,iap-ssh]}" "${M[$m,iap-ssh-prev]}") |"
    done
fi

[[ $OUT == - ]] && exit 0
cpu=$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')
mem=$(awk '/MemTotal/{printf "%.1f GiB", $2/1048576}' /proc/meminfo)
rev=$(cd "$ROOT" && git rev-parse --short HEAD 2>/dev/null || echo unknown)
dirty=$(cd "$ROOT" && git status --porcelain -- src Cargo.toml 2>/dev/null | head -1 || true)
analysis=""
if [[ -f $OUT ]]; then
    analysis=$(awk '/<!-- analysis -->/{f=1} f{print} /<!-- \/analysis -->/{f=0}' "$OUT")
fi
{
    cat <<EOF
# Benchmarks

Produced by \`$COMMAND\` (see [bench/README.md](bench/README.md)) on $(date -u '+%Y-%m-%d %H:%M UTC'),
at commit \`$rev\`$([[ -n $dirty ]] && echo " with uncommitted changes in src/")$([[ -n $LIMITED ]] && echo ", open-file limit $NOFILE").

**Machine:** $(nproc) CPUs ($cpu), $mem RAM, Linux $(uname -r), $(. /etc/os-release && echo "$PRETTY_NAME").
Versions: $(socat -V 2>/dev/null | sed -n 's/^socat version \([^ ]*\).*/socat \1/p'), $(ssh -V 2>&1 | cut -d, -f1), $([[ -n $GCLOUD ]] && "$GCLOUD" version 2>/dev/null | head -1), $(rustc --version | cut -d' ' -f1-2).

Everything runs on loopback on this one machine: client, relay, backend and sshd share the
$(nproc) CPUs, so a path's throughput is bounded by the CPU that all its processes use together.
Each figure is the median of $RUNS runs ($STARTUP_RUNS for start-up); ratios are between medians
measured in the same run. MB = 10^6 bytes. "socat relay" is \`socat -b 131072\` as client and as
relay (a plain TCP relay with no TLS, no WebSocket: the ceiling); every path has the same hops:
client → relay → backend (a socat sink counting bytes, or a socat source of zeros). Upload is
timed until the client exits, which for iap-ssh and gcloud is after the relay acknowledged the
last byte; download until the last byte reached the reader (gcloud lingers
for seconds after the tunnel closed, which is not counted). CPU is user+system time
of the client process (GNU time) and of the relay process (/proc/PID/stat, including socat's
forked workers) per GiB carried. Peak RSS is GNU time's maximum resident set size.

## Results

$(table "$N1" "$N2")

## Targets

$(targets)

## Latency, concurrency, setup rate, distance and whole Ansible runs

Latency is request/response round trips of 1 B and 1 KiB to an echo service (TCP_NODELAY),
$LAT_COUNT per figure after a tenth as warm-up, through a client's stdin/stdout (stdio) or a
local port (listener: \`iap-ssh --listen\`, \`socat TCP-LISTEN … OPENSSL:…\`). The socat TLS
pair is \`socat - OPENSSL:…\` → \`socat OPENSSL-LISTEN:… TCP:backend\` with the relay's
certificate: the same shape as iap-ssh ↔ iap-relay, in C with OpenSSL. Concurrency runs N
client processes at once, each downloading $PAR_MIB MiB. Setup is a connect, one byte echoed
and a close, 64 at a time, against HAProxy terminating TLS in front of the same echo service.
The delay line (\`examples/bench_net.rs delay\`) holds each chunk ${DELAY_MS} ms in each
direction with no bandwidth limit (tokio's timer rounds each hold up to the next millisecond).
The Ansible rows time \`ansible-playbook\` over $FLEET_HOSTS inventory hosts (instances of the
relay, all leading to the loopback sshd) with forks=10 and four tasks (command, copy of
100 KiB, shell, stat); CPU is GNU time's user+system of ansible-playbook and everything it
waited for (workers, ssh, ProxyCommands), not sshd's. "direct" is \`socat - TCP:%h:%p\`
(nc is not installed).

$(round_two)

$(targets_two)
EOF

    if [[ $PROFILE == 1 ]]; then
        cat <<EOF

## Profile of this run

\`valgrind --tool=callgrind\` (this machine's perf has no hardware counters: \`perf stat -e
instructions\` reports "not supported") on an unstripped build of the same code
(\`target/bench-profile\`), $PROFILE_MIB MiB each way. Self cost in instructions executed in
user space, top 15 functions; time in the kernel (socket and pipe syscalls) is not counted here,
compare the user/system split from GNU time.

| iap-ssh, upload | iap-ssh, download | iap-relay, both directions |
|---|---|---|
$(paste -d'|' <(sed 's/|/\\|/g; s/^/`/; s/$/`/' "$PROF/top-client-up.txt") <(sed 's/|/\\|/g; s/^/`/; s/$/`/' "$PROF/top-client-down.txt") <(sed 's/|/\\|/g; s/^/`/; s/$/`/' "$PROF/top-relay.txt") | sed 's/^/| /; s/$/ |/')
EOF
    fi
    echo
    if [[ -n $analysis ]]; then
        echo "$analysis"
    else
        cat <<'EOF'
<!-- analysis -->
## What limits each figure

(Written by hand from the profile above; kept when the harness rewrites this file.)
<!-- /analysis -->
EOF
    fi
} >"$OUT"
log "wrote $OUT"
