"""`prune`: the stage table, the runner that skips finished stages, the run layout, the report."""
