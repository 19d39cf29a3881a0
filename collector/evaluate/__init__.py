"""The detector's evaluation on labelled traces built from public data (issue 6, ``make eval``)."""
