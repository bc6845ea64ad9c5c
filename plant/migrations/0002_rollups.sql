-- adfm-plant schema 2: hourly counts and weekly gate-score bins, kept by the collector in the same
-- statement that stores the results (so they count each part once, as the results do); the view
-- reads these instead of scanning results over long ranges.

CREATE TABLE hourly (
    station          text NOT NULL,
    hour             timestamptz NOT NULL,   -- UTC hour of captured_at
    recipe           text NOT NULL,
    model_id         text NOT NULL,
    parts            integer NOT NULL,
    passed           integer NOT NULL,
    flagged          integer NOT NULL,
    review           integer NOT NULL,
    by_gate          integer NOT NULL,
    by_vlm           integer NOT NULL,
    failsafe         integer NOT NULL,
    deadline_missed  integer NOT NULL,
    PRIMARY KEY (station, hour, recipe, model_id)
);
CREATE INDEX hourly_hour ON hourly (hour);

-- gate scores in fine bins: bin = floor(100 * ln(1 + max(score, 0))), about 1 % wide whatever the
-- score's scale (the gate's distances are unbounded); the view merges them into its display bins
CREATE TABLE gate_bins (
    station   text NOT NULL,
    week      timestamptz NOT NULL,          -- UTC week (Monday) of captured_at
    recipe    text NOT NULL,
    model_id  text NOT NULL,
    bin       integer NOT NULL,
    n         integer NOT NULL,
    PRIMARY KEY (station, week, recipe, model_id, bin)
);
CREATE INDEX gate_bins_week ON gate_bins (week);

INSERT INTO hourly
SELECT station, date_trunc('hour', captured_at AT TIME ZONE 'UTC') AT TIME ZONE 'UTC', recipe, model_id, count(*),
       count(*) FILTER (WHERE verdict = 'pass'), count(*) FILTER (WHERE verdict <> 'pass'),
       count(*) FILTER (WHERE verdict = 'review'), count(*) FILTER (WHERE decision_source = 'gate'),
       count(*) FILTER (WHERE decision_source = 'vlm'), count(*) FILTER (WHERE decision_source LIKE 'failsafe%'),
       count(*) FILTER (WHERE deadline_missed)
FROM results WHERE first_stored GROUP BY 1, 2, 3, 4;

INSERT INTO gate_bins
SELECT station, date_trunc('week', captured_at AT TIME ZONE 'UTC') AT TIME ZONE 'UTC', recipe, model_id,
       floor(100 * ln(1 + greatest(gate_score, 0)))::integer, count(*)
FROM results WHERE first_stored AND gate_score IS NOT NULL GROUP BY 1, 2, 3, 4, 5;
