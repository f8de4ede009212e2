//! The Stripe customer endpoints orgkeeper calls (and the simulator serves),
//! each with one name used by error texts, the `call` label of
//! `orgkeeper_external_call_duration_seconds`, the simulator's counters and
//! its `--fail` flag.

use crate::names::named_enum;

named_enum! {
    /// A Stripe customer endpoint.
    pub enum Call ("Stripe endpoint") {
        /// `POST /v1/customers`.
        CreateCustomer = "create_customer",
        /// `POST /v1/customers/{id}`.
        UpdateCustomer = "update_customer",
        /// `GET /v1/customers/{id}`.
        GetCustomer = "get_customer",
        /// `GET /v1/customers?email=&limit=&starting_after=`.
        ListCustomers = "list_customers",
        /// `GET /v1/customers/search?query=&limit=`.
        SearchCustomers = "search_customers",
        /// `DELETE /v1/customers/{id}`.
        DeleteCustomer = "delete_customer",
    }
}
