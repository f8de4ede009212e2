//! Stripe: the client and the simulator (being written).
