-- retention by index: old finished deliveries, old received events, deliveries by event
CREATE INDEX deliveries_event ON deliveries(event_id);
CREATE INDEX deliveries_finished ON deliveries(updated_at) WHERE status IN ('succeeded', 'dead');
CREATE INDEX events_received ON events(created_at) WHERE direction = 'received';
DELETE FROM received_webhooks WHERE webhook_id NOT IN
    (SELECT webhook_id FROM events WHERE direction = 'received' AND webhook_id IS NOT NULL);
