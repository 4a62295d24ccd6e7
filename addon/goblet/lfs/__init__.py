"""Git LFS downloads through the cache: batch answers rewritten to goblet links."""
