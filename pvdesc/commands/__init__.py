"""The command line and the commands that drive whole pipelines: validate, prove, map."""
