"""sorahook: a dependable relay for OpenAI async-job webhooks."""
