"""The sentiment task's own library code (its Task is textops.tasks.sentiment)."""
