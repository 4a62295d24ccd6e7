"""The seam to git: ``runner`` starts every git child, in the environment ``env`` builds;
``repo`` reads and writes a repo's small files in process (GitPython), starting none."""
