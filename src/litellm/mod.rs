//! LiteLLM: the admin-API client and the simulator (being written).
