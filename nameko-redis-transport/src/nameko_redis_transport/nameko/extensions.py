"""``nameko.extensions`` on a hot path: an entrypoint checks a call's arguments against a
signature computed once, not with ``inspect.getcallargs`` per message.

Seam: :class:`nameko_redis_transport.nameko.rpc.Rpc` uses :func:`check_signature`.
Patch ``signature-check``: Nameko's ``Entrypoint.check_signature`` is replaced by it,
for every entrypoint (Nameko has no setting naming an entrypoint class).
"""

from __future__ import annotations

import inspect
from types import ModuleType
from typing import Any

from nameko.extensions import Entrypoint

#: Call shapes remembered per entrypoint method (and methods remembered); a method
#: taking ``**kwargs`` binds any keyword names.
MAX_CALL_SHAPES = 256

#: Nameko's own check, which runs ``inspect.getcallargs``.
_nameko_check_signature = Entrypoint.check_signature
#: method -> call shapes (number of positional args, keyword names) that bind
_shapes: dict[Any, set[tuple]] = {}


def _binds(fn: Any, args: Any, kwargs: Any) -> bool:
    # Anything odd (arguments of a malformed message) is left to Nameko's check.
    if type(args) not in (list, tuple) or type(kwargs) is not dict:
        return False
    try:
        shape = (len(args), tuple(kwargs))
        known = _shapes.get(fn)
        if known is not None and shape in known:
            return True
        # As getcallargs: the argspec of the function itself, wrappers not followed.
        inspect.signature(fn, follow_wrapped=False).bind(None, *args, **kwargs)
    except (TypeError, ValueError):
        return False
    if known is None or len(known) >= MAX_CALL_SHAPES:
        if len(_shapes) >= MAX_CALL_SHAPES:  # methods replaced again and again (mocks)
            _shapes.clear()
        known = _shapes[fn] = set()
    known.add(shape)
    return True


def check_signature(self, args, kwargs) -> None:
    """``Entrypoint.check_signature``, answered from a cache of call shapes that bind.

    Nameko runs ``inspect.getcallargs`` (which rebuilds the method's argspec) on every
    message: about 5% of a service's CPU per RPC. Whether a call binds depends only on
    the number of positional arguments and the keyword names, so the answer is kept per
    method and shape. A call that does not bind, and any method that is not a plain
    function, takes Nameko's own check, so ``IncorrectSignature`` carries exactly the
    message it did.
    """
    fn = getattr(self.container.service_cls, self.method_name)
    if inspect.isfunction(fn) and _binds(fn, args, kwargs):
        return
    _nameko_check_signature(self, args, kwargs)


check_signature.__wrapped__ = _nameko_check_signature


def patch_signature_check(extensions: ModuleType) -> None:
    """Every entrypoint checks its calls with :func:`check_signature`."""
    extensions.Entrypoint.check_signature = check_signature
