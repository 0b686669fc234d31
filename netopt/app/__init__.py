"""The application `netopt` (the CLI) runs: config files in, jobs, reports out.

- `netopt.app.config`: the config files (TOML or YAML), validated by frozen pydantic models;
- `netopt.app.factory`: config to objects (the problem, the strategies);
- `netopt.app.jobs`: `netopt adapt` and `netopt compare`;
- `netopt.app.reports`: what they print.

The library (`netopt.ir`, `netopt.bridge`, `netopt.strategies`, ...) never imports this package.
"""
