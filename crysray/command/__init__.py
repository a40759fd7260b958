"""The command line's parts: one module per ``crysray`` subcommand, the shared runner here.

Each subcommand module has ``add_arguments(parser)`` and ``run(args) -> int``; the Ray pipelines
they start live in crysray.distributed, everything else in the library.
"""
