"""Explanations drawn as HTML: one renderer for the API's views, the web page and the CLI's report."""
