"""The Jobmon HTTP app: State Manager routes (and, later, query and viz routes)."""
