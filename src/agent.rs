//! Agent IDs: the names agents and CI jobs go by.
//!
//! An ID becomes part of a branch name, a directory name and file names in
//! the state directory, so it is kept to a safe alphabet: it starts with a
//! letter or digit, continues with letters, digits, `.`, `_` or `-`, and is
//! at most 64 characters. No `/`, no `..`, no spaces.

/// The rule, as stated in error messages.
pub const RULE: &str =
    "an agent ID is 1-64 characters from `A-Z a-z 0-9 . _ -`, starting with a letter or digit";

/// Checks `id` against [`RULE`]; used as clap's value parser.
pub fn parse(id: &str) -> Result<String, String> {
    let mut chars = id.chars();
    let first_ok = chars.next().is_some_and(|c| c.is_ascii_alphanumeric());
    let rest_ok = chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    if first_ok && rest_ok && id.len() <= 64 && !id.contains("..") {
        Ok(id.to_string())
    } else {
        Err(format!("`{id}` is not a valid agent ID: {RULE}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rstest::rstest;

    #[rstest]
    #[case("a", true)]
    #[case("agent-1", true)]
    #[case("ci_7.x", true)]
    #[case(&"a".repeat(64), true)]
    #[case(&"a".repeat(65), false)]
    #[case("", false)]
    #[case("-a", false)]
    #[case(".hidden", false)]
    #[case("a/b", false)]
    #[case("a..b", false)]
    #[case("a b", false)]
    #[case("é", false)]
    fn ids(#[case] id: &str, #[case] ok: bool) {
        assert_eq!(parse(id).is_ok(), ok, "{id}");
    }
}
