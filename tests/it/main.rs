//! orgkeeper's integration tests: stories against a real PostgreSQL (the
//! one in `DATABASE_URL`, or a private throwaway cluster), with LiteLLM and
//! Stripe faked at the HTTP boundary by the project's simulators. One test
//! binary, so the suite links once and shares one server; every test gets
//! its own database. `support` is the harness; each other module is one
//! family of stories.

mod support;

mod billing_customers;
mod credentials;
mod litellm_simulator;
mod migration_daemon;
mod openhands;
mod operations;
mod org_deletion;
mod org_management;
mod pooler;
mod provisioning;
mod readme;
mod row_security;
mod schema;
mod schema_dump;
mod secrets_rotation;
mod stripe_simulator;
mod tenant_boundaries;
mod user_migration;
mod write_backs;
mod young_tables;
