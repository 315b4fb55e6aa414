"""The Typer CLI: one module per command; the only package that imports Typer."""
