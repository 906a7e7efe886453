"""Planning without loading: the memory planner, model references and deployment-file rendering."""
