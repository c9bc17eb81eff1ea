-- per-subscription due index for the delivery claim
CREATE INDEX deliveries_sub_due ON deliveries(subscription_id, next_attempt_at)
    WHERE status IN ('pending', 'failed');
