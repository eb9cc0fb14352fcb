#!/usr/bin/env bash
# Builds the iap-relay container image with podman from the release build (run
# `cargo build --release --locked` first; nothing is rebuilt here).
#
#   packaging/build-image.sh
#   IMAGE=registry.example.com/iap-relay:0.1.0 packaging/build-image.sh
#
# The image is FROM scratch: this script stages its root filesystem in target/image/context
# from the binary and the files of this (Debian) machine that the binary needs at run time:
# the dynamic loader and the libraries ldd lists, their copyright files, an nsswitch.conf
# (glibc 2.34 and later has the "files" and "dns" lookups built in, so no NSS modules are
# needed), the CA bundle for the relay's own HTTPS lookups, and passwd/group entries for the
# non-root user 65532. Extra podman options (such as --storage-driver vfs) come from
# PODMAN_OPTS.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
IMAGE=${IMAGE:-registry.example.com/iap-relay:latest}
read -r -a podman_opts <<<"${PODMAN_OPTS:-}"
bin=target/release/iap-relay
[[ -x "$bin" ]] || {
    echo "build-image: $bin is missing: run cargo build --release --locked" >&2
    exit 1
}

ctx=target/image/context
root=$ctx/rootfs
rm -rf "$ctx"
# /var/log/iap-relay itself comes from the Containerfile's COPY --chown, owned by the user.
mkdir -p "$root/usr/bin" "$root/etc/iap-relay" "$root/etc/ssl/certs" "$root/var/log" "$ctx/audit"
install -m 0755 "$bin" "$root/usr/bin/iap-relay"

# The loader and every library, at the paths the binary asks for (the loader's path is
# written in the binary; libraries are found in the loader's default folders).
libs=$(ldd "$bin" | awk '$2 == "=>" && $3 ~ /^\// { print $3 } $1 ~ /^\// { print $1 }')
[[ -n "$libs" ]] || { echo "build-image: ldd listed no libraries for $bin" >&2; exit 1; }
for lib in $libs; do
    mkdir -p "$root$(dirname "$lib")"
    cp -L "$lib" "$root$lib"
    # Its Debian package's copyright file, as the libraries' licences ask.
    # (dpkg knows the path before or after /usr merging, depending on the release.)
    pkg=$( (dpkg -S "$lib" || dpkg -S "$(readlink -f "$lib")") 2>/dev/null | head -n 1 | cut -d: -f1 || true)
    if [[ -n "$pkg" && -f /usr/share/doc/$pkg/copyright ]]; then
        mkdir -p "$root/usr/share/doc/$pkg"
        cp /usr/share/doc/"$pkg"/copyright "$root/usr/share/doc/$pkg/"
    fi
done

cp -L /etc/ssl/certs/ca-certificates.crt "$root/etc/ssl/certs/"
cat >"$root/etc/nsswitch.conf" <<'NSS'
passwd: files
group: files
hosts: files dns
NSS
printf 'root:x:0:0:root:/root:/sbin/nologin\niap-relay:x:65532:65532:iap-relay:/nonexistent:/sbin/nologin\n' >"$root/etc/passwd"
printf 'root:x:0:\niap-relay:x:65532:\n' >"$root/etc/group"
chmod -R go-w "$root"

podman "${podman_opts[@]}" build --pull=never --file packaging/image/Containerfile --tag "$IMAGE" "$ctx"
echo "build-image: built $IMAGE"
