"""Dataset analyses: global attributions per label and cohort, faithfulness, and drift."""
