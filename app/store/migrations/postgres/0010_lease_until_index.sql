-- Issue 20: an expired lease is found through an index of the leased rows alone. The one on
-- status = 'delivering' also held every row of a running bulk job (no lease of their own), so
-- each claim walked them all (the status index won the plan) and each pack wrote them into it.
CREATE INDEX deliveries_lease_until ON deliveries (lease_until) WHERE lease_until IS NOT NULL;
DROP INDEX deliveries_lease;
