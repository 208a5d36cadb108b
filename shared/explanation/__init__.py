"""Explanation: SHAP's Owen recursion (owen), the players at each granularity (units), how a mask
becomes a row (masking), and the explainer that drives them through the engine."""
