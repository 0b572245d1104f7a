"""The export program: runs -> table, comparison with the published references, plots."""
