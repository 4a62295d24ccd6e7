"""The seam to git: ``runner`` starts every git child, in the environment ``env`` builds."""
