-- adfm-plant schema 4: shadow results — a candidate model's answers on parts the line decided with
-- another model (never acted on), as each station journals and publishes them (`shadow.<station>`).
-- Keyed by the station's journal row id, so a result received twice is stored once.

CREATE TABLE shadow_results (
    station      text NOT NULL,
    epoch        text NOT NULL,
    row_id       bigint NOT NULL,
    seq          bigint NOT NULL,
    model_id     text NOT NULL,
    verdict      text NOT NULL,
    answer       text NOT NULL,
    reason       text NOT NULL,
    boxes        jsonb NOT NULL,
    captured_at  timestamptz NOT NULL,
    stored_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (station, epoch, row_id)
);

CREATE INDEX shadow_by_model ON shadow_results (model_id, captured_at);
CREATE INDEX shadow_by_part ON shadow_results (station, epoch, seq);
