"""Who is asking (credentials and tenants) and what upstream said about it (verdicts)."""
