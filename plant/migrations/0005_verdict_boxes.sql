-- adfm-plant schema 5: an operator's own boxes on a verdict (decision `defect_wrong_box`: the model
-- found a defect but boxed the wrong place; the operator redrew it), in original-image pixels as
-- [{"x1": …, "y1": …, "x2": …, "y2": …, "label": …}], empty for every other decision.

ALTER TABLE verdicts ADD COLUMN boxes jsonb NOT NULL DEFAULT '[]'::jsonb;
