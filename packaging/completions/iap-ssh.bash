# bash completion for iap-ssh. Installed as /usr/share/bash-completion/completions/iap-ssh.
# Keep the option lists in step with `iap-ssh --help` (packaging/test-packages.sh checks it).

# COMPREPLY from compgen's lines (file names may hold spaces).
_iap_ssh_reply() {
    mapfile -t COMPREPLY < <(compgen "$@")
}

_iap_ssh() {
    local cur prev
    cur=${COMP_WORDS[COMP_CWORD]}
    prev=
    ((COMP_CWORD > 0)) && prev=${COMP_WORDS[COMP_CWORD - 1]}

    # Options that take a file name.
    local file_opts="--ca-file --client-cert --client-key --access-token-file --credentials-file"
    # Options that take some other value.
    local value_opts="--project --zone --interface --region --network --dest-group
        --host-suffix --listen --endpoint --proxy --resume-timeout --credentials
        --request-reason --universe-domain"
    local switches="--check --no-check --print-ssh-config --no-token-cache -v --verbose
        --version -V --help -h"

    local opt
    for opt in $file_opts; do
        if [[ $prev == "$opt" ]]; then
            _iap_ssh_reply -f -- "$cur"
            return 0
        fi
    done
    for opt in $value_opts; do
        if [[ $prev == "$opt" ]]; then
            case $prev in
            --listen) _iap_ssh_reply -W "127.0.0.1:0 [::1]:0" -- "$cur" ;;
            --interface) _iap_ssh_reply -W "nic0 nic1 nic2 nic3" -- "$cur" ;;
            --proxy) _iap_ssh_reply -W "none http://" -- "$cur" ;;
            --credentials)
                # A source name, or a credentials file.
                _iap_ssh_reply -W "gcloud adc" -- "$cur"
                local files
                mapfile -t files < <(compgen -f -- "$cur")
                COMPREPLY+=("${files[@]}")
                ;;
            *) COMPREPLY=() ;;
            esac
            return 0
        fi
    done
    if [[ $cur == -* ]]; then
        _iap_ssh_reply -W "$file_opts $value_opts $switches" -- "$cur"
        return 0
    fi
    # HOST, then PORT: host names this machine knows.
    _iap_ssh_reply -A hostname -- "$cur"
    return 0
}
complete -o default -F _iap_ssh iap-ssh
