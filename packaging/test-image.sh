#!/usr/bin/env bash
# Checks the iap-relay image built by packaging/build-image.sh without a container runtime:
# exports the image's filesystem with podman, checks what is in it (the binary, its
# libraries, no shell) and its configuration (non-root user, entry point), then runs the
# relay from the exported tree with chroot as user 65532, the configuration and certificate
# placed read-only where a volume would be mounted, and carries one tunnel through it, once
# by instance name and once by a host name that the relay resolves through the tree's own
# NSS setup (/etc/hosts in the tree, as a container runtime provides it).
#
# Needs root (chroot), podman, socat, openssl, python3, and target/release/iap-ssh as the
# client. IMAGE and PODMAN_OPTS as for build-image.sh. Each check prints "ok: ..." or stops
# with "FAILED: ...".
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
# shellcheck source=packaging/tunnel-lib.sh
source packaging/tunnel-lib.sh
IMAGE=${IMAGE:-registry.example.com/iap-relay:latest}
read -r -a podman_opts <<<"${PODMAN_OPTS:-}"
podman=(podman "${podman_opts[@]}")
container=
cleanup() {
    stop_all
    if [[ -n "$container" ]]; then "${podman[@]}" rm "$container" >/dev/null 2>&1 || true; fi
    rm -rf "$work"
}
trap cleanup EXIT

[[ $(id -u) -eq 0 ]] || fail "run as root (chroot)"
client=target/release/iap-ssh
[[ -x "$client" ]] || fail "$client is missing: run cargo build --release --locked"

# The Kubernetes manifests run the image this recipe builds.
grep -qE "^ +image: ${IMAGE//./\\.}\$" deploy/k8s/relay.yaml ||
    fail "deploy/k8s/relay.yaml does not name the image $IMAGE"
ok "deploy/k8s/relay.yaml runs $IMAGE"

# --- the image's configuration --------------------------------------------------------------
inspect() { "${podman[@]}" image inspect --format "$1" "$IMAGE"; }
inspect '{{.Id}}' >/dev/null || fail "no image $IMAGE: run packaging/build-image.sh"
[[ $(inspect '{{.Config.User}}') == "65532:65532" ]] || fail "the image runs as '$(inspect '{{.Config.User}}')', not 65532:65532"
[[ $(inspect '{{json .Config.Entrypoint}}') == '["/usr/bin/iap-relay"]' ]] || fail "entry point is $(inspect '{{json .Config.Entrypoint}}')"
[[ $(inspect '{{json .Config.Cmd}}') == '["--config","/etc/iap-relay/relay.toml"]' ]] || fail "command is $(inspect '{{json .Config.Cmd}}')"
size=$(inspect '{{.Size}}')
ok "image $IMAGE: user 65532:65532, entry point /usr/bin/iap-relay --config /etc/iap-relay/relay.toml, $((size / 1024)) KiB"

# --- its filesystem -------------------------------------------------------------------------
tree="$work/tree"
mkdir "$tree"
container=$("${podman[@]}" create "$IMAGE") || fail "podman create $IMAGE"
"${podman[@]}" export "$container" | tar --numeric-owner -C "$tree" -xf - || fail "podman export"
"${podman[@]}" rm "$container" >/dev/null
container=
echo "files in the image:"
(cd "$tree" && find . -type f -o -type l | sort | sed 's/^\./    /')
for shell in bin/sh bin/bash bin/busybox usr/bin/sh usr/bin/bash usr/bin/busybox; do
    [[ ! -e "$tree/$shell" ]] || fail "the image has a shell: /$shell"
done
unexpected=$(cd "$tree" && find . -type f | grep -vE '^\./(usr/bin/iap-relay|lib(64)?/.*\.so(\.[0-9]+)*|usr/share/doc/[^/]+/copyright|etc/(passwd|group|nsswitch\.conf|ssl/certs/ca-certificates\.crt))$' || true)
[[ -z "$unexpected" ]] || fail "unexpected files in the image: $unexpected"
[[ $(stat -c '%u:%g' "$tree/var/log/iap-relay") == "65532:65532" ]] || fail "/var/log/iap-relay is not owned by 65532"
[[ $(stat -c '%u' "$tree/etc") == 0 ]] || fail "/etc in the image is not owned by root"
ok "no shell; only the binary, its libraries and loader, copyright files, passwd/group, nsswitch.conf, the CA bundle; /var/log/iap-relay owned by 65532"

# --- the relay from the image ---------------------------------------------------------------
make_pki
start_echo
# What the container runtime and the operator provide: /etc/hosts, and the configuration
# and certificates on a read-only volume at /etc/iap-relay (the key readable by the group).
printf '127.0.0.1 localhost\n127.0.0.1 echo-backend.test\n' >"$tree/etc/hosts"
cp "$work/relay-cert.pem" "$work/relay-key.pem" "$tree/etc/iap-relay/"
write_relay_config "$tree/etc/iap-relay/relay.toml" /etc/iap-relay /var/log/iap-relay/audit.jsonl
chgrp 65532 "$tree/etc/iap-relay/relay-key.pem"
chmod 0440 "$tree/etc/iap-relay/relay-key.pem"
chmod 0444 "$tree/etc/iap-relay/relay-cert.pem" "$tree/etc/iap-relay/relay.toml"
chmod 0555 "$tree/etc/iap-relay"
getent hosts echo-backend.test >/dev/null && fail "this machine resolves echo-backend.test itself: the test would prove nothing"

in_image=(chroot --userspec=65532:65532 "$tree" /usr/bin/iap-relay --config /etc/iap-relay/relay.toml)
"${in_image[@]}" --check-config >"$work/check.out" 2>&1 || { cat "$work/check.out" >&2; fail "iap-relay --check-config in the image"; }
ok "in the image, as 65532: $(cat "$work/check.out")"
start_relay "${in_image[@]}"
ok "the image's iap-relay (chroot, user 65532) listening on wss://127.0.0.1:$relay_port"
tunnel_roundtrip "iap-ssh -> the image's iap-relay -> echo, by instance name" "$client" \
    --project pkg-test --zone loopback echo "$echo_port"
tunnel_roundtrip "iap-ssh -> the image's iap-relay -> echo-backend.test, resolved in the image" "$client" \
    --project pkg-test --region loopback --network default --dest-group echo-group \
    echo-backend.test "$echo_port"
stop_all
[[ $(grep -c '"principal":"user:package-test@example.com"' "$tree/var/log/iap-relay/audit.jsonl") -ge 2 ]] ||
    fail "the image's relay wrote no audit lines to /var/log/iap-relay"
ok "the image's relay wrote its audit log as 65532"
echo "test-image: all checks passed"
