"""A Nameko timer whose interval is a declared setting, so operators and tests can set it."""

from __future__ import annotations

from typing import Any

from nameko.timer import Timer

from common.settings import Setting


class ConfiguredTimer(Timer):
    """``@configured_timer(PaymentsSettings.recovery_seconds)``: fires every that many
    seconds (the setting's default when the config leaves it out), from the start."""

    def __init__(self, setting: Setting[float], **kwargs: Any) -> None:
        self.setting = setting
        super().__init__(interval=setting.default, **kwargs)

    def setup(self) -> None:
        self.interval = self.setting.read(self.container.config)


configured_timer = ConfiguredTimer.decorator
