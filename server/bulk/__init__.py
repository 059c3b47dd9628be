"""CSV bulk uploads: reading the file (csv_records) and applying its records (runner)."""
