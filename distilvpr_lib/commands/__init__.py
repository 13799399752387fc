"""Subcommands of the ``distilvpr`` CLI (see distilvpr_lib.cli)."""
