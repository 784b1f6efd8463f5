-- Issue 20: an operator may abandon a bulk job (`abandoned`, by whom and when), and the shared
-- send-slot row says why sends are paused.
ALTER TABLE bulk_jobs DROP CONSTRAINT IF EXISTS bulk_jobs_status_check;
ALTER TABLE bulk_jobs ADD CONSTRAINT bulk_jobs_status_check CHECK (
    status IN ('waiting', 'running', 'completed', 'failed', 'split', 'rejected', 'abandoned'));
ALTER TABLE bulk_jobs ADD COLUMN abandoned_by TEXT;
ALTER TABLE bulk_jobs ADD COLUMN abandoned_at DOUBLE PRECISION;
ALTER TABLE pacing ADD COLUMN pause_reason TEXT;
