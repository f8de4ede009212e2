//! The customer endpoints: create, update, get, delete, list and search.

use super::search::SearchQuery;
use super::server::Endpoint;
use super::{Inner, Stored, MAX_METADATA_KEYS, MAX_METADATA_KEY_LEN, MAX_METADATA_VALUE_LEN};
use crate::stripe::Call;
use axum::http::StatusCode;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::time::Instant;

/// The result of running an endpoint. `executed` is false when the request
/// was refused before acting (parameter validation), which stores nothing
/// under its idempotency key.
pub(super) struct Outcome {
    pub(super) status: StatusCode,
    pub(super) body: Value,
    pub(super) executed: bool,
}

impl Outcome {
    fn ok(body: Value) -> Self {
        Outcome {
            status: StatusCode::OK,
            body,
            executed: true,
        }
    }

    fn invalid(message: String, param: Option<&str>, code: Option<&str>) -> Self {
        let mut error = json!({"type": "invalid_request_error", "message": message});
        if let Some(param) = param {
            error["param"] = json!(param);
        }
        if let Some(code) = code {
            error["code"] = json!(code);
        }
        Outcome {
            status: StatusCode::BAD_REQUEST,
            body: json!({ "error": error }),
            executed: false,
        }
    }

    fn missing(id: &str) -> Self {
        Outcome {
            status: StatusCode::NOT_FOUND,
            body: json!({"error": {
                "type": "invalid_request_error",
                "code": "resource_missing",
                "param": "id",
                "message": format!("No such customer: '{id}'"),
                "doc_url": "https://stripe.com/docs/error-codes/resource-missing"
            }}),
            executed: true,
        }
    }
}

pub(super) fn execute(
    inner: &mut Inner,
    endpoint: Endpoint,
    id: Option<&str>,
    params: &[(String, String)],
) -> Outcome {
    let id = id.unwrap_or_default();
    match endpoint {
        Endpoint::Call(Call::CreateCustomer) => {
            let changes = match CustomerChanges::parse(params) {
                Ok(c) => c,
                Err(o) => return o,
            };
            let mut metadata = BTreeMap::new();
            if let Err(o) = changes.apply_metadata(&mut metadata) {
                return o;
            }
            let empty_is_none = |v: Option<String>| v.filter(|s| !s.is_empty());
            let new_id = inner.insert_customer(
                empty_is_none(changes.name),
                empty_is_none(changes.email),
                metadata,
                empty_is_none(changes.description),
                empty_is_none(changes.phone),
            );
            inner.stats.mutations += 1;
            Outcome::ok(inner.customers[&new_id].to_json())
        }
        Endpoint::Call(Call::UpdateCustomer) => {
            let changes = match CustomerChanges::parse(params) {
                Ok(c) => c,
                Err(o) => return o,
            };
            let Some(stored) = inner.customers.get_mut(id).filter(|c| !c.deleted) else {
                return Outcome::missing(id);
            };
            let mut metadata = stored.customer.metadata.clone();
            if let Err(o) = changes.apply_metadata(&mut metadata) {
                return o;
            }
            stored.customer.metadata = metadata;
            let set = |field: &mut Option<String>, value: Option<String>| {
                if let Some(v) = value {
                    *field = (!v.is_empty()).then_some(v);
                }
            };
            set(&mut stored.customer.name, changes.name);
            set(&mut stored.customer.email, changes.email);
            set(&mut stored.description, changes.description);
            set(&mut stored.phone, changes.phone);
            let body = stored.to_json();
            inner.stats.mutations += 1;
            Outcome::ok(body)
        }
        Endpoint::Call(Call::GetCustomer) => {
            if let Some(o) = unknown_param(params, &[]) {
                return o;
            }
            match inner.customers.get(id) {
                Some(stored) => Outcome::ok(stored.to_json()),
                None => Outcome::missing(id),
            }
        }
        Endpoint::Call(Call::DeleteCustomer) => {
            match inner.customers.get_mut(id).filter(|c| !c.deleted) {
                Some(stored) => {
                    stored.deleted = true;
                    inner.stats.mutations += 1;
                    Outcome::ok(json!({"id": id, "object": "customer", "deleted": true}))
                }
                None => Outcome::missing(id),
            }
        }
        Endpoint::Call(Call::ListCustomers) => list(inner, params),
        Endpoint::Call(Call::SearchCustomers) => search(inner, params),
        Endpoint::Unknown => Outcome::invalid("Unrecognized request URL.".into(), None, None),
    }
}

fn list(inner: &Inner, params: &[(String, String)]) -> Outcome {
    if let Some(o) = unknown_param(params, &["email", "limit", "starting_after"]) {
        return o;
    }
    let get = |name: &str| {
        params
            .iter()
            .rev()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    };
    let limit = match get("limit") {
        None => 10,
        Some(s) => match s.parse::<usize>() {
            Ok(n) if (1..=100).contains(&n) => n,
            _ => {
                return Outcome::invalid(
                    format!("Invalid integer: {s}; limit must be between 1 and 100."),
                    Some("limit"),
                    None,
                )
            }
        },
    };
    let email = get("email");
    let mut matching: Vec<&Stored> = inner
        .customers
        .values()
        .filter(|c| !c.deleted)
        .filter(|c| email.is_none_or(|e| c.customer.email.as_deref() == Some(e)))
        .collect();
    // Newest first, as Stripe lists.
    matching.sort_by_key(|c| std::cmp::Reverse((c.created, c.seq)));
    if let Some(after) = get("starting_after") {
        match matching.iter().position(|c| c.customer.id == after) {
            Some(i) => {
                matching.drain(..=i);
            }
            None => {
                return Outcome::invalid(
                    format!("No such customer: '{after}'"),
                    Some("starting_after"),
                    Some("resource_missing"),
                )
            }
        }
    }
    let has_more = matching.len() > limit;
    let data: Vec<Value> = matching.iter().take(limit).map(|c| c.to_json()).collect();
    Outcome::ok(json!({
        "object": "list",
        "data": data,
        "has_more": has_more,
        "url": "/v1/customers"
    }))
}

fn search(inner: &Inner, params: &[(String, String)]) -> Outcome {
    if let Some(o) = unknown_param(params, &["query", "limit", "page"]) {
        return o;
    }
    let get = |name: &str| {
        params
            .iter()
            .rev()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    };
    let Some(query) = get("query") else {
        return Outcome::invalid(
            "Missing required param: query.".into(),
            Some("query"),
            Some("parameter_missing"),
        );
    };
    let limit = match get("limit") {
        None => 10,
        Some(s) => match s.parse::<usize>() {
            Ok(n) if (1..=100).contains(&n) => n,
            _ => {
                return Outcome::invalid(
                    format!("Invalid integer: {s}; limit must be between 1 and 100."),
                    Some("limit"),
                    None,
                )
            }
        },
    };
    if let Some(page) = get("page") {
        return Outcome::invalid(
            format!("Invalid page: {page:?} is not a page this search returned."),
            Some("page"),
            None,
        );
    }
    let query = match SearchQuery::parse(query) {
        Ok(q) => q,
        Err(problem) => {
            return Outcome::invalid(
                format!("Invalid search query {query:?}: {problem}. Customer search clauses look like metadata['key']:'value' or email:'value', joined by AND or OR."),
                Some("query"),
                None,
            )
        }
    };
    let now = Instant::now();
    let mut matching: Vec<&Stored> = inner
        .customers
        .values()
        .filter(|c| !c.deleted)
        .filter(|c| now.duration_since(c.born) >= inner.search_lag)
        .filter(|c| query.matches(c))
        .collect();
    matching.sort_by_key(|c| std::cmp::Reverse((c.created, c.seq)));
    let has_more = matching.len() > limit;
    let data: Vec<Value> = matching.iter().take(limit).map(|c| c.to_json()).collect();
    Outcome::ok(json!({
        "object": "search_result",
        "data": data,
        "has_more": has_more,
        "next_page": null,
        "url": "/v1/customers/search"
    }))
}

/// A 400 for the first parameter that is not in `allowed` (`expand[]` is always allowed).
fn unknown_param(params: &[(String, String)], allowed: &[&str]) -> Option<Outcome> {
    params
        .iter()
        .find(|(k, _)| !allowed.contains(&k.as_str()) && !k.starts_with("expand["))
        .map(|(k, _)| {
            Outcome::invalid(
                format!("Received unknown parameter: {k}"),
                Some(k),
                Some("parameter_unknown"),
            )
        })
}

/// The parameters of a create or update.
#[derive(Default)]
struct CustomerChanges {
    name: Option<String>,
    email: Option<String>,
    description: Option<String>,
    phone: Option<String>,
    /// `metadata=` (empty): remove every key first.
    clear_metadata: bool,
    /// `metadata[k]=v` in order; an empty `v` removes `k`.
    metadata: Vec<(String, String)>,
}

impl CustomerChanges {
    fn parse(params: &[(String, String)]) -> Result<Self, Outcome> {
        let mut changes = CustomerChanges::default();
        for (k, v) in params {
            match k.as_str() {
                "name" => changes.name = Some(v.clone()),
                "email" => {
                    if v.len() > 512 {
                        return Err(Outcome::invalid(
                            "Invalid email: must be at most 512 characters.".into(),
                            Some("email"),
                            None,
                        ));
                    }
                    changes.email = Some(v.clone())
                }
                "description" => changes.description = Some(v.clone()),
                "phone" => changes.phone = Some(v.clone()),
                "metadata" if v.is_empty() => {
                    changes.clear_metadata = true;
                    changes.metadata.clear();
                }
                _ if k.starts_with("expand[") => {}
                _ => match k
                    .strip_prefix("metadata[")
                    .and_then(|r| r.strip_suffix(']'))
                {
                    Some(key) if !key.is_empty() && !key.contains(['[', ']']) => {
                        changes.metadata.push((key.to_string(), v.clone()))
                    }
                    _ => {
                        return Err(Outcome::invalid(
                            format!("Received unknown parameter: {k}"),
                            Some(k),
                            Some("parameter_unknown"),
                        ))
                    }
                },
            }
        }
        Ok(changes)
    }

    /// Applies the metadata changes to `metadata`, or refuses them (Stripe's limits).
    fn apply_metadata(&self, metadata: &mut BTreeMap<String, String>) -> Result<(), Outcome> {
        if self.clear_metadata {
            metadata.clear();
        }
        for (k, v) in &self.metadata {
            if k.chars().count() > MAX_METADATA_KEY_LEN {
                return Err(Outcome::invalid(
                    format!("Metadata keys can have up to {MAX_METADATA_KEY_LEN} characters: {k}"),
                    Some(&format!("metadata[{k}]")),
                    None,
                ));
            }
            if v.chars().count() > MAX_METADATA_VALUE_LEN {
                return Err(Outcome::invalid(
                    format!("Metadata values can have up to {MAX_METADATA_VALUE_LEN} characters."),
                    Some(&format!("metadata[{k}]")),
                    None,
                ));
            }
            if v.is_empty() {
                metadata.remove(k);
            } else {
                metadata.insert(k.clone(), v.clone());
            }
        }
        if metadata.len() > MAX_METADATA_KEYS {
            return Err(Outcome::invalid(
                format!("Metadata can have up to {MAX_METADATA_KEYS} keys."),
                Some("metadata"),
                None,
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stripe::simulator::server::parse_urlencoded;

    #[test]
    fn metadata_changes_follow_stripe() {
        let params = parse_urlencoded("metadata[a]=1&metadata[b]=&metadata[c]=3");
        let changes = CustomerChanges::parse(&params).ok().unwrap();
        let mut md = BTreeMap::from([
            ("b".to_string(), "old".to_string()),
            ("d".to_string(), "4".to_string()),
        ]);
        changes.apply_metadata(&mut md).ok().unwrap();
        assert_eq!(md.keys().collect::<Vec<_>>(), ["a", "c", "d"]);
        let clear = CustomerChanges::parse(&parse_urlencoded("metadata=&metadata[x]=1"))
            .ok()
            .unwrap();
        clear.apply_metadata(&mut md).ok().unwrap();
        assert_eq!(md.keys().collect::<Vec<_>>(), ["x"]);
        assert!(CustomerChanges::parse(&parse_urlencoded("nmae=typo")).is_err());
    }
}
