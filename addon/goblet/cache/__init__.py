"""The bare-repo cache: naming, creation, fills, locks and git invocation."""
