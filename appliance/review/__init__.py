"""adfm.appliance.review: `adfm-review`, the operators' dashboard for flagged parts.

A Textual app that follows one station — live through the appliance's client library
(`--connect`), or read-only from a journal (`--journal`) — shows the live feed, the review queue,
each part's image with the model's boxes and reasoning, and the station's health; operators decide
flagged parts with single keys. Verdicts go to the station's control socket through a local,
persistent outbox, so none is lost while the station is unreachable and none is journaled twice.
`adfm-review export-labels` turns operator decisions back into a training dataset.
"""
