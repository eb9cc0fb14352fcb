#!/usr/bin/env bash
# Installs the Debian packages from target/debian (built by packaging/build-debs.sh), checks
# what they put where, runs one tunnel through the installed /usr/bin/iap-ssh and
# /usr/bin/iap-relay, then purges them and checks that nothing is left but what Debian's
# purge policy keeps (the iap-relay system user). Runs lintian on the packages first.
#
# Needs root (dpkg), socat, openssl, python3, lintian; fish and zsh for their completion
# checks. Starts no service: nothing here runs systemd, and a policy-rc.d refuses starts
# while the packages install. Each check prints "ok: ..." or stops with "FAILED: ...".
# It purges any iap-ssh and iap-relay packages installed before it: run it on a test machine.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
# shellcheck source=packaging/tunnel-lib.sh
source packaging/tunnel-lib.sh
policy=/usr/sbin/policy-rc.d
made_policy=
cleanup() {
    stop_all
    rm -rf "$work"
    if [[ -n "$made_policy" ]]; then rm -f "$policy"; fi
}
trap cleanup EXIT

[[ $(id -u) -eq 0 ]] || fail "run as root (dpkg -i, dpkg --purge)"
version=$(sed -n 's/^version = "\(.*\)"$/\1/p' Cargo.toml | head -n 1)
ssh_deb=target/debian/iap-ssh_${version}-1_amd64.deb
relay_deb=target/debian/iap-relay_${version}-1_amd64.deb
for deb in "$ssh_deb" "$relay_deb"; do
    [[ -f "$deb" ]] || fail "$deb is missing: run packaging/build-debs.sh"
done

# --- lintian --------------------------------------------------------------------------------
# Errors fail; warnings are printed. (Running as root draws a notice on stderr, dropped here.)
lintian_out=$(lintian --fail-on error --display-level '>=warning' "$ssh_deb" "$relay_deb" 2>/dev/null) ||
    { echo "$lintian_out" >&2; fail "lintian reports errors"; }
ok "lintian: no errors${lintian_out:+; warnings:}"
[[ -z "$lintian_out" ]] || echo "$lintian_out" | sed 's/^/    /'

# --- install --------------------------------------------------------------------------------
# Start from nothing (a machine that ran this before).
dpkg --purge iap-ssh iap-relay >/dev/null 2>&1 || true
if [[ ! -e "$policy" ]]; then
    printf '#!/bin/sh\nexit 101\n' >"$policy"
    chmod 755 "$policy"
    made_policy=1
fi
dpkg -i "$ssh_deb" "$relay_deb" >"$work/dpkg.log" 2>&1 || { cat "$work/dpkg.log" >&2; fail "dpkg -i"; }
# A second install of the same version runs the maintainer scripts again (as an upgrade does).
dpkg -i "$relay_deb" >"$work/dpkg.log" 2>&1 || { cat "$work/dpkg.log" >&2; fail "dpkg -i again (maintainer scripts must be idempotent)"; }
for pkg in iap-ssh iap-relay; do
    [[ $(dpkg-query -W -f='${Status}' "$pkg") == "install ok installed" ]] || fail "$pkg is not installed"
done
ok "dpkg -i: iap-ssh and iap-relay $version installed"

# --- what went where ------------------------------------------------------------------------
expect_file() {
    [[ -f "$1" ]] || fail "$1 is missing after installation"
}
for f in /usr/bin/iap-ssh /usr/share/man/man1/iap-ssh.1.gz /usr/share/doc/iap-ssh/ssh_config.example \
    /usr/share/bash-completion/completions/iap-ssh /usr/share/zsh/vendor-completions/_iap-ssh \
    /usr/share/fish/vendor_completions.d/iap-ssh.fish /usr/share/doc/iap-ssh/copyright \
    /usr/bin/iap-relay /usr/share/man/man8/iap-relay.8.gz /usr/share/man/man5/iap-relay.toml.5.gz \
    /etc/iap-relay/relay.toml /etc/logrotate.d/iap-relay /usr/lib/systemd/system/iap-relay.service \
    /usr/share/doc/iap-relay/relay.toml.example; do
    expect_file "$f"
done
ok "files in place"

[[ $(/usr/bin/iap-ssh --version) == "iap-ssh $version" ]] || fail "iap-ssh --version printed '$(/usr/bin/iap-ssh --version)', not 'iap-ssh $version'"
ok "iap-ssh --version: $(/usr/bin/iap-ssh --version)"

conffiles=$(dpkg-query -W -f='${Conffiles}' iap-relay)
for f in /etc/iap-relay/relay.toml /etc/logrotate.d/iap-relay; do
    grep -q "^ $f " <<<"$conffiles" || fail "$f is not a conffile of iap-relay"
done
ok "conffiles: /etc/iap-relay/relay.toml, /etc/logrotate.d/iap-relay"

# The system user and its log folder.
entry=$(getent passwd iap-relay) || fail "no iap-relay user after installation"
IFS=: read -r _ _ uid gid _ home shell <<<"$entry"
((uid < 1000)) || fail "iap-relay has uid $uid, not a system uid"
[[ "$home" == /nonexistent && "$shell" == */nologin ]] || fail "iap-relay has home $home and shell $shell"
[[ $(getent group iap-relay | cut -d: -f3) == "$gid" ]] || fail "iap-relay's primary group is not iap-relay"
[[ $(stat -c '%U:%G %a' /var/log/iap-relay) == "iap-relay:iap-relay 750" ]] ||
    fail "/var/log/iap-relay is $(stat -c '%U:%G %a' /var/log/iap-relay), not iap-relay:iap-relay 750"
ok "system user iap-relay (uid $uid, $shell) and /var/log/iap-relay (iap-relay, 0750)"

# The service: installed, not enabled, and a valid unit.
[[ ! -e /etc/systemd/system/multi-user.target.wants/iap-relay.service ]] || fail "the package enabled iap-relay.service"
if command -v systemd-analyze >/dev/null; then
    analyze=$(systemd-analyze verify /usr/lib/systemd/system/iap-relay.service 2>&1) ||
        { echo "$analyze" >&2; fail "systemd-analyze verify iap-relay.service"; }
    [[ -z "$analyze" ]] || { echo "$analyze" >&2; fail "systemd-analyze verify iap-relay.service has complaints"; }
    ok "iap-relay.service: not enabled; systemd-analyze verify is clean"
else
    ok "iap-relay.service: not enabled (skip: no systemd-analyze on this machine)"
fi

# The packaged configuration checks clean as installed, as the service's user (as the unit's
# ExecStartPre runs it), and serves nothing: no tokens, no bindings.
setpriv --reuid=iap-relay --regid=iap-relay --init-groups \
    /usr/bin/iap-relay --config /etc/iap-relay/relay.toml --check-config >"$work/check.out" 2>&1 ||
    { cat "$work/check.out" >&2; fail "iap-relay --check-config /etc/iap-relay/relay.toml"; }
ok "iap-relay --config /etc/iap-relay/relay.toml --check-config: $(cat "$work/check.out")"
! grep -Eq '^\[\[(static_tokens|jwt|bindings)\]\]|^\[tokeninfo\]' /etc/iap-relay/relay.toml ||
    fail "the packaged relay.toml admits someone; it should serve nothing until configured"

# Manual pages: found by man, rendered with no warnings.
for page in iap-ssh iap-relay iap-relay.toml; do
    path=$(man -w "$page") || fail "man cannot find $page"
    warnings=$(MANWIDTH=80 man --warnings -l "$path" 2>&1 >/dev/null)
    [[ -z "$warnings" ]] || { echo "$warnings" >&2; fail "man $page renders with warnings"; }
done
ok "man iap-ssh, iap-relay, iap-relay.toml: found and rendered without warnings"

# Every option --help lists is in the man page and in each completion file.
help_options() {
    "$1" --help | sed -n '/^Options:/,$p' | grep -oE '^  (-[a-zA-Z], )?--[a-z0-9-]+' | grep -oE -- '--[a-z0-9-]+'
}
in_man() { # page option (the page as a reader sees it, in a file: no early exit in a pipe)
    [[ -f "$work/$1.txt" ]] || MANWIDTH=80 man -l "$(man -w "$1")" 2>/dev/null | col -b >"$work/$1.txt"
    grep -qE -- "(^|[^a-z0-9-])$2([^a-z0-9-]|$)" "$work/$1.txt"
}
for opt in $(help_options /usr/bin/iap-ssh); do
    in_man iap-ssh "$opt" || fail "iap-ssh(1) does not mention $opt (docs/man/iap-ssh.1.md)"
    grep -qE -- "(^|[ \"])$opt([ \"]|$)" /usr/share/bash-completion/completions/iap-ssh ||
        fail "the bash completion lacks $opt (packaging/completions/iap-ssh.bash)"
    grep -qF -- "${opt}[" /usr/share/zsh/vendor-completions/_iap-ssh ||
        grep -qF -- "$opt}" /usr/share/zsh/vendor-completions/_iap-ssh ||
        fail "the zsh completion lacks $opt (packaging/completions/_iap-ssh)"
    grep -qE -- "-l ${opt#--}( |$)" /usr/share/fish/vendor_completions.d/iap-ssh.fish ||
        fail "the fish completion lacks $opt (packaging/completions/iap-ssh.fish)"
done
for opt in $(help_options /usr/bin/iap-relay); do
    in_man iap-relay "$opt" || fail "iap-relay(8) does not mention $opt (docs/man/iap-relay.8.md)"
done
ok "every option of iap-ssh --help is in iap-ssh(1) and the bash, zsh and fish completions; iap-relay's in iap-relay(8)"
# Every section and key of relay.toml (the example shows them all, some commented out) is in
# iap-relay.toml(5).
in_man iap-relay.toml listen || fail "cannot read iap-relay.toml(5)"
keys=$(sed -nE 's/^# ?\[\[?([a-z_]+)\]\]?.*/\1/p; s/^\[\[?([a-z_]+)\]\]?.*/\1/p; s/^#? ?([a-z0-9_]+) = .*/\1/p' \
    /usr/share/doc/iap-relay/relay.toml.example | sort -u)
(($(wc -w <<<"$keys") > 30)) || fail "found only these keys in relay.toml.example: $keys"
for key in $keys; do
    grep -qE -- "(^|[^a-z0-9_-])$key([^a-z0-9_-]|$)" "$work/iap-relay.toml.txt" ||
        fail "iap-relay.toml(5) does not mention $key of relay.toml.example (docs/man/iap-relay.toml.5.md)"
done
ok "all $(wc -w <<<"$keys") sections and keys of relay.toml.example are in iap-relay.toml(5)"

# Completions work: bash through its completion function, fish through complete -C, zsh parses.
bash_out=$(bash --norc --noprofile -c '
    source /usr/share/bash-completion/completions/iap-ssh
    complete -p iap-ssh
    COMP_WORDS=(iap-ssh --end); COMP_CWORD=1; _iap_ssh; echo "words: ${COMPREPLY[*]}"
    COMP_WORDS=(iap-ssh --zone); COMP_CWORD=2; COMP_WORDS+=(""); _iap_ssh; echo "after --zone: ${COMPREPLY[*]}"
') || fail "sourcing the bash completion"
grep -qx 'complete -o default -F _iap_ssh iap-ssh' <<<"$bash_out" || fail "bash: complete -p iap-ssh printed: $bash_out"
grep -qx 'words: --endpoint' <<<"$bash_out" || fail "bash: --end did not complete to --endpoint: $bash_out"
ok "bash completion: complete -p iap-ssh is registered; --end completes to --endpoint"
if command -v fish >/dev/null; then
    fish_out=$(fish --no-config -c 'source /usr/share/fish/vendor_completions.d/iap-ssh.fish; complete -C"iap-ssh --end"') ||
        fail "fish could not load the completion"
    [[ $(cut -f1 <<<"$fish_out") == "--endpoint" ]] || fail "fish: --end completed to: $fish_out"
    ok "fish completion: --end completes to --endpoint"
else
    [[ -z "${CI:-}" ]] || fail "fish is not installed (CI installs it)"
    echo "skip: fish not installed"
fi
if command -v zsh >/dev/null; then
    zsh -n /usr/share/zsh/vendor-completions/_iap-ssh || fail "zsh cannot parse _iap-ssh"
    ok "zsh completion parses"
else
    [[ -z "${CI:-}" ]] || fail "zsh is not installed (CI installs it)"
    echo "skip: zsh not installed"
fi

# --- one tunnel through the installed programs ----------------------------------------------
make_pki
chgrp iap-relay "$work/relay-key.pem"
chmod 640 "$work/relay-key.pem"
start_echo
write_relay_config "$work/relay.toml" "$work" /var/log/iap-relay/audit.jsonl
# As the service runs it: the packaged binary as the iap-relay user.
start_relay setpriv --reuid=iap-relay --regid=iap-relay --init-groups \
    /usr/bin/iap-relay --config "$work/relay.toml"
ok "/usr/bin/iap-relay (as user iap-relay) listening on wss://127.0.0.1:$relay_port"
tunnel_roundtrip "/usr/bin/iap-ssh -> /usr/bin/iap-relay -> socat echo" /usr/bin/iap-ssh \
    --project pkg-test --zone loopback echo "$echo_port"
stop_all
grep -q '"principal":"user:package-test@example.com"' /var/log/iap-relay/audit.jsonl ||
    fail "the relay's audit log /var/log/iap-relay/audit.jsonl has no line for the tunnel"
ok "the relay wrote its audit log to /var/log/iap-relay/audit.jsonl as iap-relay"

# The packaged logrotate entry rotates that log (logrotate reports errors but exits 0).
if command -v logrotate >/dev/null; then
    lines=$(wc -l </var/log/iap-relay/audit.jsonl)
    logrotate --force --verbose --state "$work/logrotate.state" /etc/logrotate.d/iap-relay >"$work/logrotate.log" 2>&1 ||
        { cat "$work/logrotate.log" >&2; fail "logrotate /etc/logrotate.d/iap-relay"; }
    ! grep -qi 'error' "$work/logrotate.log" || { cat "$work/logrotate.log" >&2; fail "logrotate reported errors"; }
    [[ -s /var/log/iap-relay/audit.jsonl.1 && ! -s /var/log/iap-relay/audit.jsonl ]] ||
        fail "logrotate did not move the audit log to audit.jsonl.1 and empty it"
    [[ $(wc -l </var/log/iap-relay/audit.jsonl.1) -eq $lines && $(stat -c '%U %a' /var/log/iap-relay/audit.jsonl.1) == "iap-relay 600" ]] ||
        fail "the rotated audit log lost lines or its owner or mode: $(stat -c '%U %a' /var/log/iap-relay/audit.jsonl.1)"
    ok "logrotate rotates /var/log/iap-relay/audit.jsonl ($lines lines, kept 0600, owned by iap-relay)"
else
    [[ -z "${CI:-}" ]] || fail "logrotate is not installed (CI installs it)"
    echo "skip: logrotate not installed"
fi

# --- purge ----------------------------------------------------------------------------------
# Everything dpkg installed, to check it is gone afterwards.
installed=$(dpkg -L iap-ssh iap-relay)
dpkg --purge iap-ssh iap-relay >"$work/dpkg.log" 2>&1 || { cat "$work/dpkg.log" >&2; fail "dpkg --purge"; }
for pkg in iap-ssh iap-relay; do
    if dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q installed; then
        fail "$pkg is still installed after dpkg --purge"
    fi
done
left=()
while read -r path; do
    # Shared folders (/usr/bin, /etc, ...) stay; the packages' own files and folders go.
    [[ -f "$path" || -L "$path" ]] && left+=("$path")
done <<<"$installed"
for path in /etc/iap-relay /var/log/iap-relay /usr/share/doc/iap-ssh /usr/share/doc/iap-relay \
    /etc/systemd/system/multi-user.target.wants/iap-relay.service \
    /var/lib/systemd/deb-systemd-helper-enabled/iap-relay.service.dsh-also \
    /var/lib/systemd/deb-systemd-helper-masked/iap-relay.service; do
    [[ -e "$path" || -L "$path" ]] && left+=("$path")
done
((${#left[@]} == 0)) || fail "left behind after dpkg --purge: ${left[*]}"
ok "dpkg --purge: no binaries, man pages, completions, unit, /etc/iap-relay or /var/log/iap-relay left"
# Debian practice: the system user stays (files it owned may remain; its id is not reused).
getent passwd iap-relay >/dev/null || fail "the iap-relay user was removed; the package promises to keep it"
ok "the iap-relay system user is kept after purge, as the maintainer scripts say"
echo "test-packages: all checks passed"
