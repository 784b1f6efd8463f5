-- Which caller first recorded each property and type: a relay key's name, or `hubspot` /
-- `stripe` for what their webhooks and backfills send. A name belongs to the caller of its
-- oldest row and counts against that caller's RELAY_CATALOGUE_NAMES_PER_CALLER; rows recorded
-- before this version belong to no caller ('').
ALTER TABLE property_catalogue ADD COLUMN caller TEXT NOT NULL DEFAULT '';
