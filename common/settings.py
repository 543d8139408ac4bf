"""Settings declared once: key, kind, default and meaning, read and checked at start.

A service (or a shared dependency) declares what it reads from ``config.yml`` as a
:class:`Settings` subclass, one line a setting::

    class OrdersSettings(Settings):
        reservation_minutes = Setting(
            "ORDER_RESERVATION_MINUTES", positive_number, 15, "Minutes an unpaid order holds stock."
        )

``OrdersSettings.read(config)`` returns the values (``settings.reservation_minutes``), or
raises :class:`SettingError` naming the key whose value is unusable. The
:class:`SettingsProvider` dependency reads them in ``setup()``, so a wrong value stops
the container before it starts, and hands every worker the same values. The defaults live
here only: ``config.yml`` maps each key to its environment variable without repeating them
(``KEY: ${KEY}``; an unset variable reads as absent, so the default applies).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from nameko.extensions import DependencyProvider

T = TypeVar("T")
S = TypeVar("S", bound="Settings")


class SettingError(ValueError):
    """A setting's value cannot be used; the message names the key."""


def text(value: Any) -> str:
    """A string; numbers and booleans from YAML are refused rather than guessed at."""
    if not isinstance(value, str):
        raise ValueError(f"must be text, not {type(value).__name__}")
    return value


def positive_number(value: Any) -> float:
    """A number above zero (YAML's ``2`` or ``"2.5"`` from the environment)."""
    number = _number(value)
    if not number > 0:
        raise ValueError("must be a number above 0")
    return number


def positive_int(value: Any) -> int:
    """A whole number above zero."""
    number = whole_number(value)
    if number < 1:
        raise ValueError("must be a whole number above 0")
    return number


def whole_number(value: Any) -> int:
    """A whole number, zero or more."""
    number = _number(value)
    if number != int(number) or number < 0:
        raise ValueError("must be a whole number, 0 or more")
    return int(number)


def _number(value: Any) -> float:
    if isinstance(value, bool):
        raise ValueError("must be a number, not a boolean")
    try:
        return float(value)
    except (TypeError, ValueError):
        raise ValueError("must be a number") from None


@dataclass(frozen=True)
class Setting(Generic[T]):
    """One key of the config: how its value is read, its default and what it means.

    As an attribute of a :class:`Settings` class it reads as the value on an instance
    and as the declaration itself on the class (``PaymentsSettings.recovery_seconds.key``).
    """

    key: str
    kind: Callable[[Any], T]
    default: T
    meaning: str
    #: Never quote the value in an error (passwords, signing keys).
    secret: bool = False

    def read(self, config: Mapping[str, Any]) -> T:
        """The value in ``config`` (the default when absent or empty), checked by ``kind``."""
        value = config.get(self.key)
        if value is None or value == "":
            return self.default
        try:
            return self.kind(value)
        except (TypeError, ValueError) as exc:
            shown = "" if self.secret else f" (got {value!r})"
            raise SettingError(f"{self.key} {exc}{shown}: {self.meaning}") from None

    def __get__(self, instance: Settings | None, owner: type) -> Any:
        if instance is None:
            return self
        return instance.values[self.key]


class Settings:
    """The values of the settings a subclass declares, read from a config at once."""

    def __init__(self, values: Mapping[str, Any]) -> None:
        self.values = dict(values)

    @classmethod
    def declared(cls) -> Iterator[Setting]:
        """Every setting of this class and of the classes it extends."""
        seen: set[str] = set()
        for klass in cls.__mro__:
            for name, attribute in vars(klass).items():
                if isinstance(attribute, Setting) and name not in seen:
                    seen.add(name)
                    yield attribute

    @classmethod
    def read(cls: type[S], config: Mapping[str, Any]) -> S:
        """Every declared setting from ``config``; ``SettingError`` on the first bad one."""
        settings = cls({setting.key: setting.read(config) for setting in cls.declared()})
        settings.check()
        return settings

    def check(self) -> None:
        """Checks across settings (a secret against the environment); override to add."""

    def __repr__(self) -> str:
        shown = {
            setting.key: "***" if setting.secret else self.values[setting.key]
            for setting in self.declared()
        }
        return f"{type(self).__name__}({shown})"


class SettingsProvider(DependencyProvider, Generic[S]):
    """Reads a :class:`Settings` class at ``setup()`` and hands every worker its values."""

    def __init__(self, declaration: type[S]) -> None:
        self.declaration = declaration

    def setup(self) -> None:
        self.settings = self.declaration.read(self.container.config)

    def get_dependency(self, worker_ctx: Any) -> S:
        return self.settings
