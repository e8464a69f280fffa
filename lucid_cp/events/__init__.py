"""The event stream (lucid.messaging.v1.EventService): an append-only, sequenced log of service
events with durable subscriptions, pull, stream and push delivery, retention, and the control
plane's own changes published as events. ``module.EventSystem`` is the system."""
