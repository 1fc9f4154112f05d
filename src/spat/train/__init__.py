"""Training: the loop (:mod:`spat.train.loop`), optimiser and schedules
(:mod:`spat.train.optim`), validation (:mod:`spat.train.validate`) and a whole run
(:mod:`spat.train.training`: the run folder :mod:`~spat.train.folder`, resume
:mod:`~spat.train.resume`, the final test :mod:`~spat.train.final_test`, the result
:mod:`~spat.train.result`). The configuration is :mod:`spat.config`.

``spat.train`` is also the facade's training call: ``spat.train(config)`` trains a run (see
:func:`spat.train.training.train`). Python binds a subpackage as an attribute of its parent once it
is imported, so the name ``spat.train`` is this package whichever way it was reached; the
package is therefore made callable instead of being shadowed by a function. Importing it stays
light: nothing below is imported until it is called.
"""

from __future__ import annotations

import sys
import types
from typing import Any


class _CallablePackage(types.ModuleType):
    def __call__(self, config: Any, **kwargs: Any) -> Any:
        """``spat.train(config, **kwargs)``: :func:`spat.api.train` —
        :func:`spat.train.training.train` without a progress bar unless ``progress=True``;
        returns the run's :class:`~spat.build.TrainResult`."""
        from spat.train.training import train

        kwargs.setdefault("progress", False)
        return train(config, **kwargs)


sys.modules[__name__].__class__ = _CallablePackage
