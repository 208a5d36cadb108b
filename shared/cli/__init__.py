"""The command line: `clarion serve | worker | config | explain` (main), and `clarion explain` (explain)."""
