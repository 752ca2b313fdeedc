"""Task distributions: each module samples meta-batches of tasks with a leading task axis."""
