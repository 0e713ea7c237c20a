"""Is the difference real, and what to show: comparisons over repeats (`compare`), the report
folder (`report`). Reads the stores; never trains."""
