-- delivery retries: a manual retry's fresh schedule, and what each attempt's response said
ALTER TABLE deliveries ADD COLUMN retry_base INTEGER NOT NULL DEFAULT 0;
ALTER TABLE delivery_attempts ADD COLUMN response_body TEXT;
