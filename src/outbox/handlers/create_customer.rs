//! `stripe.create_customer`: a billing customer for a new team organization
//! (enqueued by the `org_billing_customer` trigger when deployment setting
//! `billing` is on).
//!
//! Exactly one customer per organization, whatever crashes or duplicate
//! deliveries happen:
//! 1. a customer already recorded for the org in `stripe_customers` is
//!    reused (nothing is asked of Stripe);
//! 2. otherwise Stripe is searched for a customer tagged
//!    `metadata['org_id']` with the org; the oldest found is recorded;
//! 3. otherwise the customer is created with `name`, `email` (the owner's
//!    verified address, or none) and `metadata[org_id]`, under the
//!    `Idempotency-Key` `orgkeeper-action-<id>`. The parameters come from the
//!    action's payload, fixed when the org was inserted, so every attempt
//!    sends the same request and Stripe replays the first answer.
//!
//! The two protections cover each other's gap: Stripe's search is eventually
//! consistent (a customer created seconds ago may be missing), which the
//! idempotency key covers, and Stripe forgets idempotency keys after 24
//! hours, which the search covers. A crash between Stripe's answer and the
//! write-back is therefore harmless.
//!
//! The write-back (`orgkeeper.record_billing_customer`) records the customer
//! and marks the action done in one transaction fenced on the lease. An org
//! deleted before anything was created ends the action done without a
//! customer; one deleted while Stripe answered leaves the customer recorded
//! detached (`org_id` NULL), as `delete_org` does with an org's customers.

use super::{call, payload_str, ActionError, Finish, Services};
use crate::outbox::Action;
use crate::stripe::Call as StripeCall;
use crate::stripe::{Customer, StripeClient};
use serde_json::{json, Value};
use sqlx::Row;
use uuid::Uuid;

fn stripe(services: &Services) -> Result<&StripeClient, ActionError> {
    services.stripe.as_ref().ok_or_else(|| {
        ActionError::Permanent(
            "Stripe is not configured: set STRIPE_API_KEY (and STRIPE_BASE_URL) for the daemon, then orgkeeper actions retry; if this deployment bills no one, cancel it and set ORGKEEPER_BILLING=off".into(),
        )
    })
}

/// What the database knows about the org; `None` = the org is gone.
async fn context(services: &Services, org_id: Uuid) -> Result<Option<Vec<String>>, ActionError> {
    let row = sqlx::query("SELECT * FROM orgkeeper.billing_customer_context($1)")
        .bind(org_id)
        .fetch_optional(&services.pool)
        .await?;
    Ok(match row {
        Some(r) => Some(r.try_get("recorded_customer_ids")?),
        None => None,
    })
}

/// Searches, creates if needed, records.
pub async fn perform(services: &Services, action: &Action) -> Result<Finish, ActionError> {
    let org_id = action
        .org_id
        .ok_or_else(|| ActionError::Permanent(format!("action {} has no org_id", action.id)))?;
    let owner: Uuid = payload_str(action, "owner_id")?
        .parse()
        .map_err(|e| ActionError::Permanent(format!("payload owner_id is not a UUID: {e}")))?;
    let name = payload_str(action, "name")?;
    let email = action
        .payload
        .get("email")
        .and_then(Value::as_str)
        .filter(|e| !e.is_empty());

    let Some(recorded) = context(services, org_id).await? else {
        return Ok(Finish::Result(json!({
            "created": false,
            "customer_id": null,
            "reason": "the organization was deleted before its billing customer was created; nothing was created at Stripe",
        })));
    };
    if let Some(existing) = recorded.first() {
        return Ok(Finish::Result(json!({
            "created": false,
            "customer_id": existing,
            "source": "already_recorded",
        })));
    }

    let stripe = stripe(services)?;
    let org = org_id.to_string();
    let found = call(services, StripeCall::SearchCustomers, || {
        stripe.search_customers_by_org(&org)
    })
    .await?;
    // Only customers whose tag is exactly this org (never trust a match blindly).
    let mut tagged: Vec<Customer> = found
        .customers
        .into_iter()
        .filter(|c| c.metadata.get("org_id").map(String::as_str) == Some(org.as_str()))
        .collect();
    let (customer, source) = if tagged.is_empty() {
        let key = format!("orgkeeper-action-{}", action.id);
        let tags = [("org_id", org.as_str())];
        let created = call(services, StripeCall::CreateCustomer, || {
            stripe.create_customer(name, email, &tags, &key)
        })
        .await?;
        (created, "created")
    } else {
        // Search results come newest first (as Stripe sorts them): adopt the oldest.
        (tagged.pop().expect("not empty"), "found_by_search")
    };
    let others: Vec<&str> = tagged.iter().map(|c| c.id.as_str()).collect();

    let result = json!({
        "created": source == "created",
        "customer_id": customer.id,
        "source": source,
        "email_sent": email.is_some(),
        "other_tagged_customers": others,
    });
    let recorded: String =
        sqlx::query_scalar("SELECT orgkeeper.record_billing_customer($1, $2, $3, $4, $5)")
            .bind(action.id)
            .bind(&action.lease)
            .bind(&customer.id)
            .bind(owner)
            .bind(&result)
            .fetch_one(&services.pool)
            .await?;
    match recorded.as_str() {
        "done" | "org_gone" => Ok(Finish::Recorded),
        _ => Err(ActionError::LeaseLost),
    }
}

perform_only_handler!(
    /// The `stripe.create_customer` handler.
    CreateCustomer,
    |services, _outbox, action| perform(services, action)
);
