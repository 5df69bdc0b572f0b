"""Plotly views of safety neurons, edits and outcomes (each function returns a `go.Figure`)."""
