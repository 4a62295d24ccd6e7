"""The bare-repo cache: naming, creation, fills, locks, recovery, upkeep and eviction."""
