//! Redaction of secrets in text bound for logs, errors and the database.

/// Replaces every API-key-looking token (`sk-…`, `sk_…`, `rk_…`, `whsec_…`,
/// `Bearer …`) in `text` with a short, non-reversible marker.
pub fn redact_secrets(text: &str) -> String {
    const PREFIXES: [&str; 5] = ["sk-", "sk_", "rk_", "whsec_", "Bearer "];
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some((at, prefix)) = PREFIXES
        .iter()
        .filter_map(|p| rest.find(p).map(|i| (i, *p)))
        .min_by_key(|(i, _)| *i)
    {
        out.push_str(&rest[..at]);
        let after = &rest[at + prefix.len()..];
        let len = after
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.'))
            .unwrap_or(after.len());
        if len >= 4 {
            out.push_str(prefix);
            out.push_str("[REDACTED]");
        } else {
            out.push_str(&rest[at..at + prefix.len() + len]);
        }
        rest = &after[len..];
    }
    out.push_str(rest);
    out
}

/// The error text for a 3xx answer, which the clients never follow (a
/// redirect would carry the credentials to a host nobody configured): names
/// the setting, the URL asked and the `Location` offered.
pub fn redirect_refused(setting: &str, url: &str, headers: &reqwest::header::HeaderMap) -> String {
    let location = headers
        .get(reqwest::header::LOCATION)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("(none)");
    redact_secrets(&format!(
        "{url} answered with a redirect to {location}, which orgkeeper never follows \
         (credentials go only to the configured host): set {setting} to the address that serves the API itself"
    ))
}

#[cfg(test)]
mod tests {
    use super::redact_secrets;

    #[test]
    fn keys_and_bearer_tokens_are_redacted() {
        let text = r#"{"key":"sk-abcdef123456","h":"Bearer sk_live_XYZ0987"} sk-1"#;
        let red = redact_secrets(text);
        assert!(
            !red.contains("abcdef123456") && !red.contains("XYZ0987"),
            "{red}"
        );
        assert_eq!(
            red,
            r#"{"key":"sk-[REDACTED]","h":"Bearer [REDACTED]"} sk-1"#
        );
    }
}
