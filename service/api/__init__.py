"""The bearer-token HTTP API under /v1: jobs, subscriptions, deliveries."""
