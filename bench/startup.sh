#!/usr/bin/env bash
# Start-up cost of one iap-ssh run, per credential source: `iap-ssh --check` against a local
# iap-relay over TLS, N times, as ssh would start it once per connection. Prints one row per
# binary and source: median wall time from exec to exit (the check opens the tunnel, waits for
# the session id, closes), median of iap-ssh's own "tunnel opened in" figure (token, TCP, TLS,
# upgrade, session id), and median peak RSS (GNU time).
#
#   bash bench/startup.sh [N] BIN [BIN...]      e.g. bash bench/startup.sh 30 old/iap-ssh target/release/iap-ssh
#
# Needs openssl, python3, /usr/bin/time, and target/release/iap-relay (cargo build --release).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
N=${1:-30}
shift
RELAY=target/release/iap-relay
TMP=$(mktemp -d)
PIDS=()
cleanup() {
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    rm -rf "$TMP"
}
trap cleanup EXIT
[[ -n "${BENCH_KEEP:-}" ]] && trap - EXIT && echo "kept $TMP" >&2

openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 \
    -subj /CN=iap-bench-ca -keyout "$TMP/ca.key" -out "$TMP/ca.pem" 2>/dev/null
openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
    -subj /CN=127.0.0.1 -addext "subjectAltName=IP:127.0.0.1" \
    -keyout "$TMP/relay-key.pem" -out "$TMP/relay.csr" 2>/dev/null
openssl x509 -req -in "$TMP/relay.csr" -CA "$TMP/ca.pem" -CAkey "$TMP/ca.key" -CAcreateserial \
    -days 2 -copy_extensions copy -out "$TMP/relay-cert.pem" 2>/dev/null
TOKEN=ya29.bench-$(openssl rand -hex 16)
printf %s "$TOKEN" >"$TMP/token"
TOKEN_SHA=$(printf %s "$TOKEN" | sha256sum | cut -d' ' -f1)
cat >"$TMP/relay.toml" <<EOF
listen = "127.0.0.1:0"
[tls]
cert = "relay-cert.pem"
key = "relay-key.pem"
[[static_tokens]]
principal = "user:bench@example.com"
sha256 = "$TOKEN_SHA"
[[instances]]
project = "bench-project"
zone = "bench-zone"
name = "vm-1"
interfaces = { nic0 = "127.0.0.1" }
[[bindings]]
role = "roles/iap.tunnelResourceAccessor"
members = ["user:bench@example.com"]
resource = "projects/bench-project"
EOF

# A backend that accepts connections, and a token endpoint plus token-info stand-in that
# hand out $TOKEN (for the first, uncached run of the key and authorized_user sources).
cat >"$TMP/stand-ins.py" <<'EOF'
import http.server, json, socket, sys, threading, time
token = sys.argv[1]
backend = socket.socket(); backend.bind(("127.0.0.1", 0)); backend.listen(64)
def accept():
    while True:
        c, _ = backend.accept(); threading.Thread(target=lambda: (c.recv(1 << 16), c.close())).start()
threading.Thread(target=accept, daemon=True).start()
class H(http.server.BaseHTTPRequestHandler):
    def log_message(self, *a): pass
    def do_POST(self):
        self.rfile.read(int(self.headers.get("content-length", 0)))
        exp = int(time.time()) + 3600
        body = {"exp": str(exp), "email": "bench@example.com"} if self.path.startswith("/tokeninfo") \
            else {"access_token": token, "expires_in": 3600, "token_type": "Bearer"}
        out = json.dumps(body).encode()
        self.send_response(200); self.send_header("content-length", str(len(out))); self.end_headers(); self.wfile.write(out)
srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), H)
print(backend.getsockname()[1], srv.server_address[1], flush=True)
srv.serve_forever()
EOF
python3 "$TMP/stand-ins.py" "$TOKEN" >"$TMP/ports" &
PIDS+=($!)
for _ in $(seq 100); do [[ -s "$TMP/ports" ]] && break; sleep 0.05; done
read -r BACKEND HTTP <"$TMP/ports"

"$RELAY" --config "$TMP/relay.toml" >"$TMP/relay.out" 2>"$TMP/relay.log" &
PIDS+=($!)
for _ in $(seq 200); do grep -q 'listening on' "$TMP/relay.out" 2>/dev/null && break; sleep 0.05; done
URL=$(sed -n 's/^iap-relay listening on //p' "$TMP/relay.out")

openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out "$TMP/sa.pem" 2>/dev/null
python3 - "$TMP" "$HTTP" <<'EOF'
import json, sys
tmp, port = sys.argv[1], sys.argv[2]
json.dump({"type": "service_account", "project_id": "bench-project", "private_key_id": "k1",
           "private_key": open(f"{tmp}/sa.pem").read(), "client_email": "bench@bench-project.iam.gserviceaccount.com",
           "client_id": "1", "token_uri": f"http://127.0.0.1:{port}/token"}, open(f"{tmp}/sa.json", "w"))
json.dump({"type": "authorized_user", "client_id": "c", "client_secret": "s", "refresh_token": "r",
           "token_uri": f"http://127.0.0.1:{port}/token"}, open(f"{tmp}/user.json", "w"))
EOF

median() { sort -n | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }

# bench BIN LABEL ARGS...: a warm-up run (fills the token cache), then N measured runs.
bench() {
    local bin=$1 label=$2
    shift 2
    local cache="$TMP/cache-$RANDOM"
    local walls=() opened=() rss=()
    local i
    for i in $(seq 0 "$N"); do
        local t0 t1
        t0=$(date +%s%N)
        env -i PATH=/usr/bin:/bin HOME="$TMP/home" XDG_CACHE_HOME="$cache" CLOUDSDK_CONFIG="$TMP/gcloud" \
            IAP_SSH_TOKENINFO_URL="http://127.0.0.1:$HTTP/tokeninfo" \
            /usr/bin/time -f '%M' -o "$TMP/time" \
            "$bin" --check --endpoint "$URL" --ca-file "$TMP/ca.pem" "$@" vm-1.bench-zone.bench-project "$BACKEND" \
            >"$TMP/out" 2>"$TMP/err" || { echo "$label failed: $(cat "$TMP/err")" >&2; return; }
        t1=$(date +%s%N)
        [[ $i -eq 0 ]] && continue
        walls+=($(((t1 - t0) / 100000)))
        opened+=("$(sed -n 's/.*tunnel opened in \([0-9]*\) ms.*/\1/p' "$TMP/out")")
        rss+=("$(tail -1 "$TMP/time")")
    done
    printf '| %s | %s | %s | %s | %s |\n' "$bin" "$label" \
        "$(printf '%s\n' "${walls[@]}" | median | awk '{printf "%.1f", $1/10}')" \
        "$(printf '%s\n' "${opened[@]}" | median)" \
        "$(printf '%s\n' "${rss[@]}" | median | awk '{printf "%.1f", $1/1024}')"
}

echo "| binary | credentials | exec to exit, ms (median of $N) | tunnel opened in, ms | peak RSS, MiB |"
echo "|---|---|---:|---:|---:|"
for bin in "$@"; do
    bench "$bin" "access-token file" --access-token-file "$TMP/token"
    bench "$bin" "service-account key, cached token" --credentials-file "$TMP/sa.json"
    # Only builds that read authorized_user files get a row here.
    GOOGLE=1 bench "$bin" "authorized_user, cached token" --credentials-file "$TMP/user.json" 2>/dev/null || true
done
