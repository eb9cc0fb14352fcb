//! `--print-ssh-config`: a ready `Host *.iap` block for `~/.ssh/config`.

use std::fmt::Write as _;

/// What goes into the printed block.
#[derive(Clone, Debug, Default)]
pub struct SshConfigBlock {
    /// The `iap-ssh` program to run: its name when `PATH` finds this binary, else its full
    /// path.
    pub program: String,
    /// The suffix the `Host` pattern matches and iap-ssh strips (default `.iap`).
    pub suffix: String,
    /// Options to pass before `%h %p` (e.g. `--project`, `--zone`, `--endpoint`): a flag and
    /// its value, or a switch alone.
    pub options: Vec<(String, Option<String>)>,
}

/// Quotes `word` for ssh's ProxyCommand: ssh expands `%` tokens, then hands the line to
/// `/bin/sh`.
fn proxy_word(word: &str) -> String {
    let plain = !word.is_empty()
        && word
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_./:=@,+~".contains(&b));
    let quoted = if plain {
        word.to_owned()
    } else {
        format!("'{}'", word.replace('\'', r"'\''"))
    };
    quoted.replace('%', "%%")
}

impl SshConfigBlock {
    /// The block, with comments saying how to use it.
    pub fn render(&self) -> String {
        let suffix = if self.suffix.is_empty() {
            ".iap"
        } else {
            &self.suffix
        };
        let mut command = proxy_word(&self.program);
        for (flag, value) in &self.options {
            let _ = write!(command, " {flag}");
            if let Some(value) = value {
                let _ = write!(command, " {}", proxy_word(value));
            }
        }
        let has = |flag: &str| self.options.iter().any(|(f, _)| f == flag);
        let short = if has("--zone") && has("--project") {
            format!("INSTANCE{suffix}, or ")
        } else {
            String::new()
        };
        format!(
            "# iap-ssh: reach VMs through Identity-Aware Proxy TCP forwarding (from iap-ssh --print-ssh-config).
# Add this to ~/.ssh/config; then `ssh {short}INSTANCE.ZONE.PROJECT{suffix}`. scp, sftp,
# rsync -e ssh, git and Ansible go through it the same way.
Host *{suffix}
    ProxyCommand {command} %h %p
    # Connection sharing: later ssh, scp and Ansible runs reuse the first tunnel.
    #ControlMaster auto
    #ControlPath ~/.ssh/cm-%C
    #ControlPersist 10m
"
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn block_quotes_for_ssh_and_names_the_short_form() {
        let block = SshConfigBlock {
            program: "/opt/my tools/iap-ssh".into(),
            suffix: ".iap".into(),
            options: vec![
                ("--project".into(), Some("my-proj".into())),
                ("--zone".into(), Some("us-central1-a".into())),
                ("--ca-file".into(), Some("/etc/ca 100%.pem".into())),
                ("--no-token-cache".into(), None),
                ("-v".into(), None),
            ],
        };
        let text = block.render();
        assert!(text.contains("\nHost *.iap\n"), "{text}");
        assert!(
            text.contains("    ProxyCommand '/opt/my tools/iap-ssh' --project my-proj --zone us-central1-a --ca-file '/etc/ca 100%%.pem' --no-token-cache -v %h %p\n"),
            "{text}"
        );
        assert!(
            text.contains("ssh INSTANCE.iap, or INSTANCE.ZONE.PROJECT.iap"),
            "{text}"
        );
        let plain = SshConfigBlock {
            program: "iap-ssh".into(),
            ..Default::default()
        }
        .render();
        assert!(
            plain.contains("ProxyCommand iap-ssh %h %p")
                && plain.contains("ssh INSTANCE.ZONE.PROJECT.iap")
        );
    }
}
