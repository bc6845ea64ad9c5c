"""adfm.appliance.review: `adfm-review`, the operators' dashboard for flagged parts.

A Textual app that follows one station — live through the appliance's client library
(`--connect`), or read-only from a journal (`--journal`) — opens on a run view for the shop floor
(a large OK/NG tile, the last part's picture with the model's boxes or the gate's heat map, the
shift's counts and yield, a filmstrip of flagged parts), and has the review queue, the live feed,
each part's detail and the station's health; operators decide flagged parts with single keys
(defect, defect with the box redrawn, false alarm, unsure, skip). Verdicts go to the station's
control socket through a local, persistent outbox, so none is lost while the station is unreachable
and none is journaled twice.
`adfm-review export-labels` turns operator decisions back into a training dataset.
"""
