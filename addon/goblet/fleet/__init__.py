"""The fleet tier: what instances share (an S3-compatible object store) and how they
take turns (Redis). See docs/operations/fleet.md."""
