//! The HTTP side: routing a request to its endpoint, authentication, fault
//! injection, `--perform-then-502` and the request log.

use super::models::models_list;
use super::replies::{
    abbreviate, proxy_error, str_field, string_list, token_of, validation_error, Reply,
};
use super::{Faults, Shared, BAD_GATEWAY_HTML, UNAVAILABLE_HTML};
use crate::litellm::client::hash_key;
use crate::litellm::Call;
use crate::simkit::{self, ConnHandle, Roll};
use axum::body::Bytes;
use axum::extract::{ConnectInfo, State};
use axum::http::header::{AUTHORIZATION, CONTENT_TYPE, LOCATION};
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use rand::RngExt;
use secrecy::ExposeSecret;
use serde_json::{json, Map, Value};
use std::sync::atomic::Ordering;
use std::sync::Arc;

/// The identity of the resource a mutating call touches, for `--perform-then-502`.
fn resource_of(call: Call, body: &Map<String, Value>, reply: &Reply) -> Option<String> {
    let s = |f: &str| str_field(body, f).unwrap_or("");
    let from_reply = |f: &str| match reply {
        Reply::Json(_, v) => v.get(f).and_then(Value::as_str).unwrap_or("").to_owned(),
        Reply::Html(..) => String::new(),
    };
    Some(match call {
        Call::TeamNew => format!("team:{}", from_reply("team_id")),
        Call::UserNew => format!("user:{}", from_reply("user_id")),
        Call::UserUpdate => format!("user-update:{}", s("user_id")),
        Call::TeamUpdate => format!("team-update:{}", s("team_id")),
        Call::TeamMemberUpdate => format!("member-update:{}:{}", s("team_id"), s("user_id")),
        Call::TeamMemberAdd => {
            let member = body.get("member").map(Value::to_string).unwrap_or_default();
            format!("member:{}:{member}", s("team_id"))
        }
        Call::TeamMemberDelete => format!(
            "member-delete:{}:{}:{}",
            s("team_id"),
            s("user_id"),
            s("user_email")
        ),
        Call::TeamDelete => {
            let mut ids = string_list(body, "team_ids").unwrap_or_default();
            ids.sort();
            format!("team-delete:{}", ids.join(","))
        }
        Call::KeyGenerate => format!("key:{}", hash_key(&from_reply("key"))),
        Call::KeyUpdate => format!("key-update:{}", token_of(s("key"))),
        Call::KeyDelete => {
            let mut keys: Vec<String> = string_list(body, "keys")
                .unwrap_or_default()
                .iter()
                .map(|k| token_of(k))
                .collect();
            keys.sort();
            let mut aliases = string_list(body, "key_aliases").unwrap_or_default();
            aliases.sort();
            format!("key-delete:{}:{}", keys.join(","), aliases.join(","))
        }
        _ => return None,
    })
}

/// A query string as a JSON object of decoded strings; a repeated parameter
/// becomes a list of its values.
pub(super) fn query_json(query: &str) -> Value {
    let mut out = Map::new();
    for (k, v) in form_urlencoded::parse(query.as_bytes()) {
        let (k, v) = (k.into_owned(), Value::String(v.into_owned()));
        match out.get_mut(&k) {
            None => {
                out.insert(k, v);
            }
            Some(Value::Array(list)) => list.push(v),
            Some(first) => *first = json!([first.take(), v]),
        }
    }
    Value::Object(out)
}

/// Percent-decodes one query parameter (`+` is a space, as FastAPI reads it).
pub(super) fn query_param(query: &str, name: &str) -> Option<String> {
    form_urlencoded::parse(query.as_bytes())
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.into_owned())
}

fn endpoint_name(path: &str) -> &'static str {
    let path = path.trim_start_matches('/');
    path.parse::<Call>().map_or(
        match path {
            "health/liveliness" | "health/readiness" => "health",
            // The proxy serves the OpenAI model list under both paths.
            "models" => Call::Models.as_str(),
            _ => "other",
        },
        Call::as_str,
    )
}

fn method_of(endpoint: &str) -> Method {
    match endpoint.parse::<Call>() {
        Ok(call) => call.method(),
        Err(_) if endpoint == "health" => Method::GET,
        Err(_) => Method::POST,
    }
}

fn into_response(reply: Reply) -> Response {
    match reply {
        Reply::Json(status, body) => {
            let bytes = serde_json::to_vec(&body).unwrap_or_default();
            (
                StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
                [(CONTENT_TYPE, "application/json")],
                bytes,
            )
                .into_response()
        }
        Reply::Html(status, html) => (
            StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
            [(CONTENT_TYPE, "text/html")],
            html,
        )
            .into_response(),
    }
}

/// Checks the master key the way the proxy does (see [`presented_key`]).
#[cfg(test)]
fn authenticate(headers: &HeaderMap, master_key: &str) -> Result<(), Reply> {
    let presented = presented_key(headers)?;
    if presented == master_key {
        return Ok(());
    }
    Err(invalid_key(&presented))
}

/// The key a request presents, looked for the way the proxy does:
/// `x-litellm-api-key`, then `Authorization: Bearer`, then `api-key`,
/// `x-api-key`, `x-goog-api-key`. A 401 when there is none or
/// `Authorization` lacks `Bearer `.
fn presented_key(headers: &HeaderMap) -> Result<String, Reply> {
    let header = |name: &str| {
        headers
            .get(name)
            .map(|v| String::from_utf8_lossy(v.as_bytes()).trim().to_owned())
    };
    let strip_bearer = |v: String| match v
        .strip_prefix("Bearer ")
        .or_else(|| v.strip_prefix("bearer "))
    {
        Some(k) => k.trim().to_owned(),
        None => v,
    };
    let presented = if let Some(v) = header("x-litellm-api-key") {
        strip_bearer(v)
    } else if let Some(v) = header(AUTHORIZATION.as_str()) {
        match v.strip_prefix("Bearer ").or_else(|| v.strip_prefix("bearer ")) {
            Some(k) => k.trim().to_owned(),
            None => {
                return Err(proxy_error(
                    401,
                    format!("Authentication Error, Malformed API Key passed in. Ensure Key has `Bearer ` prefix. Passed in: {v}"),
                    "auth_error",
                    "None",
                ))
            }
        }
    } else if let Some(v) = header("api-key")
        .or_else(|| header("x-api-key"))
        .or_else(|| header("x-goog-api-key"))
    {
        v
    } else {
        return Err(proxy_error(
            401,
            "Authentication Error, No api key passed in.",
            "auth_error",
            "None",
        ));
    };
    Ok(presented)
}

/// The proxy's 401 for a key it does not know (it abbreviates and hashes
/// the key it received, as the real proxy does).
fn invalid_key(presented: &str) -> Reply {
    proxy_error(
        401,
        format!(
            "Authentication Error, Invalid proxy server token passed. Received API Key = {}, Key Hash (Token) ={}. Unable to find token in cache or `LiteLLM_VerificationTokenTable`",
            abbreviate(presented),
            hash_key(presented)
        ),
        "auth_error",
        "None",
    )
}

pub(super) async fn handle(
    State(shared): State<Arc<Shared>>,
    ConnectInfo(conn): ConnectInfo<ConnHandle>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let endpoint = endpoint_name(uri.path());
    shared.record_request(endpoint, &uri, &body);
    if let Some(base) = shared.redirect_to() {
        shared.record(endpoint, 307);
        let path_and_query = uri.path_and_query().map_or("/", |pq| pq.as_str());
        return (
            StatusCode::TEMPORARY_REDIRECT,
            [(LOCATION, format!("{base}{path_and_query}"))],
        )
            .into_response();
    }
    if endpoint == "health" {
        shared.record(endpoint, 200);
        return into_response(Reply::Json(200, json!("I'm alive!")));
    }
    let faults = shared.faults();
    let roll = simkit::roll(&faults, endpoint);
    simkit::pause(roll.delay).await;
    if roll.drop {
        shared.record(endpoint, 0);
        shared.dropped.fetch_add(1, Ordering::Relaxed);
        return conn.drop_connection();
    }
    let reply = respond(
        &shared, &faults, &roll, endpoint, &method, &uri, &headers, &body,
    );
    shared.record(endpoint, reply.status());
    into_response(reply)
}

#[allow(clippy::too_many_arguments)]
fn respond(
    shared: &Shared,
    faults: &Faults,
    roll: &Roll<'_>,
    endpoint: &'static str,
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
    body: &Bytes,
) -> Reply {
    if roll.error {
        return match rand::rng().random_range(0..3u8) {
            0 => proxy_error(
                500,
                "Internal Server Error, simulated fault (--error-rate)",
                "internal_server_error",
                "None",
            ),
            1 => Reply::Html(502, BAD_GATEWAY_HTML),
            _ => Reply::Html(503, UNAVAILABLE_HTML),
        };
    }
    if endpoint == "other" {
        return Reply::Json(404, json!({"detail": "Not Found"}));
    }
    if method != method_of(endpoint) {
        return Reply::Json(405, json!({"detail": "Method Not Allowed"}));
    }
    let presented = match presented_key(headers) {
        Ok(k) => k,
        Err(reply) => return reply,
    };
    let master_key = shared.master_key.expose_secret();
    // `/v1/models` takes virtual keys too; the admin endpoints only the master key.
    let models = if endpoint == Call::Models.as_str() {
        let models = shared.db().models_for(&presented, master_key);
        match models {
            Some(m) => Some(m),
            None => return invalid_key(&presented),
        }
    } else if presented != master_key {
        return invalid_key(&presented);
    } else {
        None
    };
    if let Some((_, status)) = roll.fail {
        return proxy_error(
            status,
            format!("simulated failure (--fail {endpoint}={status})"),
            if status >= 500 {
                "internal_server_error"
            } else {
                "bad_request_error"
            },
            "None",
        );
    }
    if let Some(models) = models {
        return Reply::Json(200, models_list(&models));
    }
    let query = uri.query().unwrap_or("");
    let empty = Map::new();
    let parsed;
    let body = if *method == Method::POST {
        parsed = match serde_json::from_slice::<Value>(body) {
            Ok(Value::Object(o)) => o,
            Ok(_) => return validation_error("body", "Input should be a valid dictionary"),
            Err(e) => return validation_error("body", &format!("JSON decode error: {e}")),
        };
        &parsed
    } else {
        &empty
    };
    let mut db = shared.db();
    let outcome = match endpoint.parse::<Call>() {
        Ok(Call::TeamNew) => db.team_new(body),
        Ok(Call::TeamInfo) => db.team_info(query_param(query, "team_id").as_deref()),
        Ok(Call::TeamDelete) => db.team_delete(body),
        Ok(Call::TeamMemberAdd) => db.member_add(body),
        Ok(Call::TeamMemberDelete) => db.member_delete(body),
        Ok(Call::TeamUpdate) => db.team_update(body),
        Ok(Call::TeamMemberUpdate) => db.member_update(body),
        Ok(Call::UserNew) => db.user_new(body),
        Ok(Call::UserInfo) => db.user_info(query_param(query, "user_id").as_deref()),
        Ok(Call::UserUpdate) => db.user_update(body),
        Ok(Call::KeyGenerate) => db.key_generate(body),
        Ok(Call::KeyInfo) => db.key_info(query_param(query, "key").as_deref()),
        Ok(Call::KeyList) => db.key_list(query),
        Ok(Call::KeyUpdate) => db.key_update(body),
        Ok(Call::KeyDelete) => db.key_delete(body),
        _ => Err(Reply::Json(404, json!({"detail": "Not Found"}))),
    };
    match outcome {
        Ok(reply) => {
            if faults.perform_then_502 && *method == Method::POST {
                if let Some(resource) = endpoint
                    .parse()
                    .ok()
                    .and_then(|call| resource_of(call, body, &reply))
                {
                    if db.performed.insert(resource) {
                        return Reply::Html(502, BAD_GATEWAY_HTML);
                    }
                }
            }
            reply
        }
        Err(reply) => reply,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::litellm::simulator::{parse_fail, DEFAULT_MASTER_KEY};

    #[test]
    fn query_parameters_are_decoded() {
        assert_eq!(
            query_param("a=1&user_id=x%40y.z+w", "user_id").as_deref(),
            Some("x@y.z w")
        );
        assert_eq!(query_param("a=1", "user_id"), None);
        assert_eq!(query_param("a=100%", "a").as_deref(), Some("100%"));
        assert_eq!(query_param("a=%4", "a").as_deref(), Some("%4"));
        assert_eq!(
            query_json("a=1&b=x%20y&a=2&a=3&c"),
            json!({"a": ["1", "2", "3"], "b": "x y", "c": ""})
        );
        assert_eq!(query_json(""), json!({}));
    }

    #[test]
    fn endpoints_have_names_and_methods() {
        assert_eq!(endpoint_name("/key/delete"), "key/delete");
        assert_eq!(method_of("key/delete"), Method::POST);
        assert_eq!(endpoint_name("/v1/models"), "v1/models");
        assert_eq!(endpoint_name("/models"), "v1/models");
        assert_eq!(method_of("v1/models"), Method::GET);
        assert_eq!(
            parse_fail("v1/models=401").unwrap(),
            ("v1/models".into(), 401)
        );
        let body = json!({"keys": ["sk-b-0123456789abcdef", "aa"], "key_aliases": ["z", "y"]});
        let reply = Reply::Json(200, json!({}));
        assert_eq!(
            resource_of(Call::KeyDelete, body.as_object().unwrap(), &reply).unwrap(),
            format!("key-delete:{}:y,z", {
                let mut t = [hash_key("sk-b-0123456789abcdef"), "aa".to_string()];
                t.sort();
                t.join(",")
            })
        );
    }

    #[test]
    fn auth_accepts_every_header_form() {
        let key = DEFAULT_MASTER_KEY;
        for (name, value) in [
            ("authorization", format!("Bearer {key}")),
            ("x-litellm-api-key", key.to_owned()),
            ("x-goog-api-key", key.to_owned()),
            ("x-api-key", key.to_owned()),
            ("api-key", key.to_owned()),
        ] {
            let mut h = HeaderMap::new();
            h.insert(
                axum::http::HeaderName::from_static(name),
                value.parse().unwrap(),
            );
            assert!(authenticate(&h, key).is_ok(), "{name}");
        }
        let mut h = HeaderMap::new();
        h.insert(AUTHORIZATION, key.parse().unwrap());
        assert_eq!(authenticate(&h, key).unwrap_err().status(), 401);
        assert_eq!(
            authenticate(&HeaderMap::new(), key).unwrap_err().status(),
            401
        );
    }
}
