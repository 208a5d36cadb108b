"""Clarion benchmarks: explain (SHAP speed and agreement), classify (HTTP throughput), coldstart."""
