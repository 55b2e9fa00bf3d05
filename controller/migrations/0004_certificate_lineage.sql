-- The certificate a renewal was signed over: revoking a certificate also revokes every
-- certificate renewed from it, transitively. NULL = issued at enrollment, login or init.
ALTER TABLE certificates ADD COLUMN parent_serial TEXT;
CREATE INDEX certificates_parent ON certificates (parent_serial);
