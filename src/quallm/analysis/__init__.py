"""Numbers from a run, never the model layer: synthesis (matrix, prevalence, exact tests)."""
