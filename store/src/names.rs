//! What names and labels may be: cluster and node names are DNS labels,
//! cluster labels are Kubernetes labels. Checked alike by the agent's
//! configuration and by `fleetnet cluster join`.

/// `value` is a DNS label (RFC 1123, as Kubernetes names are); the error
/// names `key`.
pub fn check_dns_label(key: &str, value: &str) -> Result<(), String> {
    let valid = !value.is_empty()
        && value.len() <= 63
        && value
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && !value.starts_with('-')
        && !value.ends_with('-');
    if valid {
        Ok(())
    } else {
        Err(format!(
            "{key} {value:?} is not a valid name (lowercase letters, digits and '-', at most 63, as in Kubernetes)"
        ))
    }
}

/// A label as Kubernetes allows it (the name part of the key, and the
/// value): at most 63 of letters, digits, '-', '_', '.', alphanumeric at
/// both ends; values may be empty.
pub fn check_label(what: &str, key: &str, value: &str) -> Result<(), String> {
    let fits = |text: &str| {
        text.len() <= 63
            && text
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
            && text
                .chars()
                .next()
                .is_none_or(|c| c.is_ascii_alphanumeric())
            && text
                .chars()
                .last()
                .is_none_or(|c| c.is_ascii_alphanumeric())
    };
    let name = key.rsplit_once('/').map_or(key, |(_, name)| name);
    if name.is_empty() || !fits(name) {
        return Err(format!(
            "{what} key {key:?} is not a valid label key (letters, digits, '-', '_', '.', at most 63, optionally prefix/)"
        ));
    }
    if !fits(value) {
        return Err(format!(
            "{what} value {value:?} of {key} is not a valid label value (letters, digits, '-', '_', '.', at most 63)"
        ));
    }
    Ok(())
}
