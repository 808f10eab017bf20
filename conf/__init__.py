# Makes conf/ importable as `dlrun.conf` (see pyproject.toml) so Hydra finds the
# YAML groups with `pkg://dlrun.conf` wherever dlrun is installed.
