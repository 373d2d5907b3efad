"""The Jinja2 templates of every text output; packaged as ``pvdesc.templates`` (pyproject.toml)."""
