"""The message queue: durable, at-least-once delivery between services (MessageService)."""
