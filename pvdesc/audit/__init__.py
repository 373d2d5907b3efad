"""Judging layouts: ``pvdesc check`` and ``pvdesc diff``, and the findings they report."""
