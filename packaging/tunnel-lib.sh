# shellcheck shell=bash
# Shared by test-packages.sh and test-image.sh (sourced, not run): a test CA, an echo backend,
# a relay started from a given command, and one tunnel through iap-ssh whose bytes are compared.
# Everything listens on 127.0.0.1 only. Processes started here are ended by pid in stop_all.

# Temporary folder and the pids this script started.
work=$(mktemp -d)
chmod 755 "$work" # the relay may run as a system user and reads its files from here
started_pids=()

fail() {
    echo "$(basename "$0"): FAILED: $*" >&2
    exit 1
}
ok() {
    echo "ok: $*"
}

stop_all() {
    local pid
    for pid in "${started_pids[@]}"; do
        kill "$pid" 2>/dev/null || true
    done
    for pid in "${started_pids[@]}"; do
        wait "$pid" 2>/dev/null || true
    done
    started_pids=()
}

# A CA and a server certificate for 127.0.0.1 and localhost: $work/ca.pem,
# $work/relay-cert.pem, $work/relay-key.pem.
make_pki() {
    (
        cd "$work"
        openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 \
            -subj "/CN=iap-ssh package test CA" -keyout ca-key.pem -out ca.pem
        openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
            -subj "/CN=127.0.0.1" -keyout relay-key.pem -out relay.csr
        printf 'subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n' >ext.cnf
        openssl x509 -req -in relay.csr -CA ca.pem -CAkey ca-key.pem -CAcreateserial -days 2 \
            -extfile ext.cnf -out relay-cert.pem
    ) >"$work/openssl.log" 2>&1 || { cat "$work/openssl.log" >&2; fail "making the test CA with openssl"; }
    # The static token the client presents; the relay stores only its SHA-256.
    head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$work/token"
    token_sha256=$(tr -d '\n' <"$work/token" | sha256sum | cut -d' ' -f1)
}

# A free TCP port on 127.0.0.1 (the kernel picks it; socat then binds it).
free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# socat echoing every byte back, on $echo_port.
start_echo() {
    echo_port=$(free_port)
    socat "TCP-LISTEN:$echo_port,bind=127.0.0.1,reuseaddr,fork" PIPE &
    started_pids+=($!)
    local i
    for ((i = 0; i < 100; i++)); do
        if (exec 3<>"/dev/tcp/127.0.0.1/$echo_port") 2>/dev/null; then return 0; fi
        sleep 0.1
    done
    fail "the socat echo backend did not listen on 127.0.0.1:$echo_port"
}

# Writes a relay.toml to $1 that admits the test token to the echo backend by instance name
# (pkg-test/loopback/echo) and by host name (echo-backend.test in destination group
# echo-group). $2: the folder the relay sees its certificate in; $3: its audit log path.
write_relay_config() {
    cat >"$1" <<TOML
listen = "127.0.0.1:0"
audit_log = "$3"

[tls]
cert = "$2/relay-cert.pem"
key = "$2/relay-key.pem"

[[static_tokens]]
principal = "user:package-test@example.com"
sha256 = "$token_sha256"

[[instances]]
project = "pkg-test"
zone = "loopback"
name = "echo"
interfaces = { nic0 = "127.0.0.1" }

[[dest_groups]]
project = "pkg-test"
region = "loopback"
name = "echo-group"
cidrs = ["127.0.0.0/8"]
fqdns = ["echo-backend.test"]

[[bindings]]
role = "roles/iap.tunnelResourceAccessor"
members = ["user:package-test@example.com"]
resource = "projects/pkg-test"
ports = [$echo_port]
TOML
}

# Runs a relay command in the background and waits for its readiness line; sets $relay_port.
start_relay() {
    local out="$work/relay.out"
    : >"$out"
    "$@" >"$out" 2>"$work/relay.err" &
    started_pids+=($!)
    local pid=$! i line
    for ((i = 0; i < 200; i++)); do
        line=$(grep -m1 '^iap-relay listening on ' "$out" || true)
        [[ -n "$line" ]] && break
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    [[ -n "$line" ]] || {
        cat "$work/relay.err" >&2
        fail "the relay ($*) did not print its readiness line"
    }
    [[ "$line" == "iap-relay listening on wss://127.0.0.1:"* ]] || fail "unexpected readiness line: $line"
    relay_port=${line##*:}
}

# One tunnel: 4 MiB of random bytes into iap-ssh's stdin, echoed back on its stdout, compared.
# stdin stays open until the echo is complete, as ssh keeps a ProxyCommand's stdin open.
# $1: a label; $2: the iap-ssh binary; the rest: its target options and arguments.
tunnel_roundtrip() {
    local label=$1 client=$2
    shift 2
    local in="$work/upload" out="$work/download" size i
    head -c $((4 * 1024 * 1024)) /dev/urandom >"$in"
    size=$(stat -c %s "$in")
    : >"$out"
    set +e
    {
        cat "$in"
        for ((i = 0; i < 600; i++)); do
            (($(stat -c %s "$out") >= size)) && break
            sleep 0.1
        done
    } | timeout 120 "$client" --endpoint "wss://127.0.0.1:$relay_port" --ca-file "$work/ca.pem" \
        --access-token-file "$work/token" --no-token-cache "$@" >"$out" 2>"$work/client.err"
    local status=("${PIPESTATUS[@]}")
    set -e
    if [[ ${status[1]} -ne 0 ]]; then
        cat "$work/client.err" "$work/relay.err" >&2
        fail "$label: iap-ssh exited with status ${status[1]}"
    fi
    cmp -s "$in" "$out" || fail "$label: the bytes that came back differ from those sent ($(stat -c %s "$out") of $size bytes back)"
    ok "$label: $size bytes through the tunnel and back, identical"
}
