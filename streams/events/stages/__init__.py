"""The stages of a batch of events, each a function over the batch: validate, admit,
history, user vectors, online writes, outputs (:class:`streams.events.handler.EventsHandler`
runs them in that order)."""
