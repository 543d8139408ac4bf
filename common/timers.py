"""A Nameko timer whose interval is read from config, so operators and tests can set it."""

from __future__ import annotations

from nameko.timer import Timer


class ConfiguredTimer(Timer):
    """``@configured_timer("PAYMENTS_RECOVERY_SECONDS", default=10)``: fires every
    ``config[config_key]`` seconds (``default`` when absent), from the service's start."""

    def __init__(self, config_key: str, default: float, **kwargs) -> None:
        self.config_key = config_key
        self.default_interval = default
        super().__init__(interval=default, **kwargs)

    def setup(self) -> None:
        self.interval = float(self.container.config.get(self.config_key) or self.default_interval)
        if self.interval <= 0:
            raise ValueError(f"{self.config_key} must be a positive number of seconds")


configured_timer = ConfiguredTimer.decorator
