-- The property catalogue: per property and type seen, how many values, when first and last
-- (unix seconds), and by which sources (a bit per source: api 1, bulk 2, hubspot 4, stripe 8).
CREATE TABLE property_catalogue (
    name TEXT NOT NULL,
    type TEXT NOT NULL,
    seen BIGINT NOT NULL,
    first_seen DOUBLE PRECISION NOT NULL,
    last_seen DOUBLE PRECISION NOT NULL,
    sources INTEGER NOT NULL,
    PRIMARY KEY (name, type)
);
