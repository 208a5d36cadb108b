"""What goes in and out: request schemas, result objects, and the record formats (JSON Lines, CSV)."""
