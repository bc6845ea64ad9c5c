-- adfm-plant schema 3: each verdict carries its part's capture time, model, recipe and line verdict
-- (copied from the part's first stored result when both are stored), so the operators-vs-model page
-- reads the verdicts of a time range by index instead of joining every verdict to the results.

ALTER TABLE verdicts ADD COLUMN captured_at timestamptz, ADD COLUMN model_id text, ADD COLUMN recipe text,
    ADD COLUMN line_verdict text;

UPDATE verdicts v SET captured_at = r.captured_at, model_id = r.model_id, recipe = r.recipe, line_verdict = r.verdict
FROM results r
WHERE r.station = v.station AND r.epoch = v.epoch AND r.seq = v.seq AND r.first_stored;

CREATE INDEX verdicts_captured ON verdicts (captured_at);
-- verdicts whose part is not stored yet (a live verdict ahead of a catch-up): filled in by the collector
CREATE INDEX verdicts_unplaced ON verdicts (station) WHERE captured_at IS NULL;
