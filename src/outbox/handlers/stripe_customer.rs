//! `stripe.migrate_customer` / `stripe.rollback_customer`: tag a migrated
//! user's Stripe customer with their org (and untag it on rollback).
//!
//! The update is naturally idempotent, and every call carries an
//! `Idempotency-Key` derived from the action id, so Stripe replays a retry.

use super::{call, payload_str, ActionError, Finish, Services};
use crate::outbox::Action;
use crate::stripe::Call as StripeCall;
use crate::stripe::StripeClient;
use serde_json::{json, Value};

fn stripe(services: &Services) -> Result<&StripeClient, ActionError> {
    services.stripe.as_ref().ok_or_else(|| {
        ActionError::Permanent(
            "Stripe is not configured: set STRIPE_API_KEY (and STRIPE_BASE_URL), then orgkeeper actions retry".into(),
        )
    })
}

/// Sets `metadata[org_id]`, clears `metadata[user_id]` and sets the contact email.
pub async fn migrate(services: &Services, action: &Action) -> Result<Finish, ActionError> {
    let stripe = stripe(services)?;
    let customer = payload_str(action, "stripe_customer_id")?;
    let org_id = payload_str(action, "org_id")?;
    let email = action.payload.get("email").and_then(Value::as_str);
    let key = format!("orgkeeper-action-{}", action.id);
    let tags = [("org_id", org_id), ("user_id", "")];
    let updated = call(services, StripeCall::UpdateCustomer, || {
        stripe.update_customer(customer, &tags, email, &key)
    })
    .await?;
    Ok(Finish::Result(
        json!({ "customer_id": updated.id, "metadata": updated.metadata }),
    ))
}

/// Puts the user tag back and clears the org tag.
pub async fn rollback(services: &Services, action: &Action) -> Result<Finish, ActionError> {
    let stripe = stripe(services)?;
    let customer = payload_str(action, "stripe_customer_id")?;
    let user_id = payload_str(action, "user_id")?;
    let key = format!("orgkeeper-action-{}", action.id);
    let tags = [("org_id", ""), ("user_id", user_id)];
    let updated = call(services, StripeCall::UpdateCustomer, || {
        stripe.update_customer(customer, &tags, None, &key)
    })
    .await?;
    Ok(Finish::Result(
        json!({ "customer_id": updated.id, "metadata": updated.metadata }),
    ))
}

perform_only_handler!(
    /// The `stripe.migrate_customer` handler.
    MigrateCustomer,
    |services, _outbox, action| migrate(services, action)
);

perform_only_handler!(
    /// The `stripe.rollback_customer` handler.
    RollbackCustomer,
    |services, _outbox, action| rollback(services, action)
);
