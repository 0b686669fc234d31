"""Run directories: config, history, the family of networks, atomic files, resume."""

from netopt.runs.files import append_line, read_lines, save_tensors, write_atomic, write_json
from netopt.runs.rundir import FORMAT_VERSION, RunDir, RunError, load

__all__ = ["FORMAT_VERSION", "RunDir", "RunError", "append_line", "load", "read_lines", "save_tensors", "write_atomic",
           "write_json"]
