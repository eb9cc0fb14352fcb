//! Unit tests of tokens and token sources: redaction, validation, the access-token file.

use super::*;

#[test]
fn token_is_redacted_and_validated() {
    let token = Token::new("  ya29.secret-value\n").unwrap();
    assert_eq!(format!("{token:?}"), "Token(<redacted>)");
    let header = token.authorization();
    assert!(header.is_sensitive());
    assert_eq!(header.to_str().unwrap(), "Bearer ya29.secret-value");
    for bad in ["", "  \n", "two words", "caf\u{e9}"] {
        let err = Token::new(bad).unwrap_err().to_string();
        assert!(!err.contains("words") && !err.contains("caf"), "{err}");
    }
}

#[tokio::test]
async fn token_file_is_read_per_call_and_errors_name_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("token");
    let creds = Credentials::access_token_file(path.clone(), "--access-token-file");
    let err = creds.token().await.unwrap_err();
    assert!(
        err.message.contains("reading access token file")
            && err.message.contains("--access-token-file"),
        "{err}"
    );
    std::fs::write(&path, "first\n").unwrap();
    assert_eq!(creds.token().await.unwrap().authorization(), "Bearer first");
    std::fs::write(&path, "second").unwrap();
    assert_eq!(
        creds.token().await.unwrap().authorization(),
        "Bearer second"
    );
    std::fs::write(&path, "not a token").unwrap();
    let err = creds.token().await.unwrap_err().message;
    assert!(
        err.contains("access token file") && !err.contains("not a token"),
        "{err}"
    );
}
