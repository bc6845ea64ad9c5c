-- adfm-plant schema 1: every station's results, revisions and operator verdicts.
-- Results are partitioned by month of captured_at (native range partitioning); the collector
-- creates each month's partition before it writes into it (plant/partitions.py).

CREATE TABLE stations (
    station      text PRIMARY KEY,
    line         text NOT NULL DEFAULT '',
    epoch        text NOT NULL DEFAULT '',   -- the journal epoch next_seq counts in
    next_seq     bigint NOT NULL DEFAULT 1,  -- the first seq not yet stored in that epoch
    publish      text NOT NULL DEFAULT '',
    control      text NOT NULL DEFAULT '',
    updated_at   timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE results (
    station          text NOT NULL,
    epoch            text NOT NULL,
    seq              bigint NOT NULL,
    revision         integer NOT NULL,
    first_stored     boolean NOT NULL,       -- the part's first stored row: what the views count
    part_id          text NOT NULL,
    camera           text NOT NULL,
    frame_number     bigint NOT NULL,
    captured_at      timestamptz NOT NULL,
    verdict          text NOT NULL,
    reason           text NOT NULL,
    decision         boolean,
    score            real,
    gate_score       real,
    boxes            jsonb NOT NULL,
    think            text NOT NULL,
    rethink          text NOT NULL,
    answer           text NOT NULL,
    format_ok        boolean NOT NULL,
    problems         jsonb NOT NULL,
    prompt_version   text NOT NULL,
    model_id         text NOT NULL,
    image_path       text NOT NULL,
    image_width      integer NOT NULL,
    image_height     integer NOT NULL,
    gate_map_path    text NOT NULL,
    latency_ms       jsonb NOT NULL,
    attempts         integer NOT NULL,
    decision_source  text,
    action           text,
    decided_at       timestamptz,
    triggered_at     timestamptz,
    deadline_ms      real,
    deadline_missed  boolean NOT NULL,       -- decided after its deadline (line stations)
    recipe           text NOT NULL,
    stored_at        timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (station, epoch, seq, revision, captured_at)
) PARTITION BY RANGE (captured_at);

CREATE INDEX results_time ON results (captured_at);
CREATE INDEX results_station_time ON results (station, captured_at);
CREATE INDEX results_flagged ON results (captured_at DESC) WHERE verdict <> 'pass' AND first_stored;

CREATE TABLE verdicts (
    station      text NOT NULL,
    verdict_id   text NOT NULL,
    epoch        text NOT NULL,
    seq          bigint NOT NULL,
    part_id      text NOT NULL,
    decision     text NOT NULL,
    operator     text NOT NULL,
    note         text NOT NULL,
    at           timestamptz NOT NULL,
    client       text NOT NULL,
    stored_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (station, verdict_id)
);
CREATE INDEX verdicts_part ON verdicts (station, epoch, seq, at DESC);

-- images of flagged parts copied from the stations (collector.copy_flagged_images)
CREATE TABLE images (
    station      text NOT NULL,
    epoch        text NOT NULL,
    seq          bigint NOT NULL,
    kind         text NOT NULL,
    media_type   text NOT NULL,
    data         bytea NOT NULL,
    PRIMARY KEY (station, epoch, seq, kind)
);
