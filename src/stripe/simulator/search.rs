//! Stripe's search query language for customers, as far as orgkeeper needs it.

use super::Stored;

/// A parsed customer search query: clauses joined by one operator.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct SearchQuery {
    clauses: Vec<(SearchField, String)>,
    /// `true`: every clause must match (`AND`, or a single clause); `false`: any (`OR`).
    all: bool,
}

#[derive(Debug, PartialEq, Eq)]
enum SearchField {
    Metadata(String),
    Email,
    Name,
    Phone,
    Description,
}

impl SearchQuery {
    pub(super) fn parse(query: &str) -> Result<Self, String> {
        let mut rest = query.trim();
        if rest.is_empty() {
            return Err("the query is empty".into());
        }
        let mut clauses = Vec::new();
        let mut operator: Option<&str> = None;
        loop {
            let (field, after_field) = parse_search_field(rest)?;
            let after_colon = after_field
                .strip_prefix(':')
                .ok_or_else(|| format!("expected ':' after the field at {after_field:?} (only exact matches are supported)"))?;
            let (value, after_value) = parse_quoted(after_colon)?;
            clauses.push((field, value));
            rest = after_value.trim_start();
            if rest.is_empty() {
                break;
            }
            let (op, after_op) = rest
                .split_once(char::is_whitespace)
                .ok_or_else(|| format!("expected AND or OR at {rest:?}"))?;
            if op != "AND" && op != "OR" {
                return Err(format!("expected AND or OR at {rest:?}"));
            }
            match operator {
                Some(previous) if previous != op => {
                    return Err("a query cannot mix AND and OR".into())
                }
                _ => operator = Some(op),
            }
            rest = after_op.trim_start();
        }
        Ok(SearchQuery {
            clauses,
            all: operator != Some("OR"),
        })
    }

    pub(super) fn matches(&self, c: &Stored) -> bool {
        let one = |(field, value): &(SearchField, String)| {
            let actual = match field {
                SearchField::Metadata(key) => c.customer.metadata.get(key),
                SearchField::Email => c.customer.email.as_ref(),
                SearchField::Name => c.customer.name.as_ref(),
                SearchField::Phone => c.phone.as_ref(),
                SearchField::Description => c.description.as_ref(),
            };
            actual == Some(value)
        };
        if self.all {
            self.clauses.iter().all(one)
        } else {
            self.clauses.iter().any(one)
        }
    }
}

/// A field at the start of `s`: `metadata['key']` (or `["key"]`) or a plain field name.
fn parse_search_field(s: &str) -> Result<(SearchField, &str), String> {
    if let Some(after) = s.strip_prefix("metadata[") {
        let (key, after_key) = parse_quoted(after)?;
        let rest = after_key
            .strip_prefix(']')
            .ok_or_else(|| format!("expected ']' after the metadata key at {after_key:?}"))?;
        if key.is_empty() {
            return Err("the metadata key is empty".into());
        }
        return Ok((SearchField::Metadata(key), rest));
    }
    let end = s
        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .unwrap_or(s.len());
    let (name, rest) = s.split_at(end);
    let field = match name {
        "email" => SearchField::Email,
        "name" => SearchField::Name,
        "phone" => SearchField::Phone,
        "description" => SearchField::Description,
        "" => return Err(format!("expected a field at {s:?}")),
        other => {
            return Err(format!(
            "field {other:?} is not supported (metadata['key'], email, name, phone, description)"
        ))
        }
    };
    Ok((field, rest))
}

/// A `'…'` or `"…"` string at the start of `s` (a backslash escapes the
/// next character); returns it unescaped and what follows.
fn parse_quoted(s: &str) -> Result<(String, &str), String> {
    let mut chars = s.char_indices();
    let quote = match chars.next() {
        Some((_, q @ ('\'' | '"'))) => q,
        _ => return Err(format!("expected a quoted value at {s:?}")),
    };
    let mut value = String::new();
    let mut escaped = false;
    for (i, c) in chars {
        if escaped {
            value.push(c);
            escaped = false;
        } else if c == '\\' {
            escaped = true;
        } else if c == quote {
            return Ok((value, &s[i + c.len_utf8()..]));
        } else {
            value.push(c);
        }
    }
    Err(format!("unterminated string in {s:?}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn search_queries_parse_like_stripes() {
        let q = SearchQuery::parse("metadata['org_id']:'o-1'").unwrap();
        assert_eq!(
            q.clauses,
            vec![(SearchField::Metadata("org_id".into()), "o-1".into())]
        );
        let q = SearchQuery::parse(r#"metadata["a"]:"x\"y" OR email:'e@x.io'"#).unwrap();
        assert!(!q.all);
        assert_eq!(q.clauses[0].1, "x\"y");
        assert_eq!(q.clauses[1], (SearchField::Email, "e@x.io".into()));
        for bad in [
            "",
            "metadata['org_id']:o-1",
            "metadata['org_id']'o-1'",
            "metadata['org_id':'o-1'",
            "metadata['org_id']:'o-1",
            "created>10",
            "email:'a' AND name:'b' OR phone:'c'",
            "email:'a' and name:'b'",
            "email:'a' name:'b'",
        ] {
            assert!(SearchQuery::parse(bad).is_err(), "{bad:?}");
        }
    }
}
