"""Neural networks of the generators (torch only)."""
