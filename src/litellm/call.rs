//! The LiteLLM admin-API endpoints orgkeeper calls (and the simulator
//! serves), each with one name: its path without the leading `/`. Error
//! texts, the `call` label of `orgkeeper_external_call_duration_seconds`,
//! the simulator's counters and its `--fail` flag all use it.

use crate::names::named_enum;
use reqwest::Method;

named_enum! {
    /// A LiteLLM endpoint, named by its path (`team/new`).
    pub enum Call ("LiteLLM endpoint") {
        /// `POST /team/new`.
        TeamNew = "team/new",
        /// `GET /team/info`.
        TeamInfo = "team/info",
        /// `POST /team/update`.
        TeamUpdate = "team/update",
        /// `POST /team/delete`.
        TeamDelete = "team/delete",
        /// `POST /team/member_add`.
        TeamMemberAdd = "team/member_add",
        /// `POST /team/member_update`.
        TeamMemberUpdate = "team/member_update",
        /// `POST /team/member_delete`.
        TeamMemberDelete = "team/member_delete",
        /// `POST /user/new`.
        UserNew = "user/new",
        /// `GET /user/info`.
        UserInfo = "user/info",
        /// `POST /user/update`.
        UserUpdate = "user/update",
        /// `POST /key/generate`.
        KeyGenerate = "key/generate",
        /// `GET /key/info`.
        KeyInfo = "key/info",
        /// `GET /key/list`.
        KeyList = "key/list",
        /// `POST /key/update`.
        KeyUpdate = "key/update",
        /// `POST /key/delete`.
        KeyDelete = "key/delete",
        /// `GET /v1/models` (with a virtual key: does it still work).
        Models = "v1/models",
    }
}

impl Call {
    /// The HTTP method of the endpoint.
    pub fn method(self) -> Method {
        match self {
            Call::TeamInfo | Call::UserInfo | Call::KeyInfo | Call::KeyList | Call::Models => {
                Method::GET
            }
            _ => Method::POST,
        }
    }
}
