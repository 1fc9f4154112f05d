"""Finished results of an evaluation, saved as they finish so that an interrupted evaluation
resumes and a rerun with the same settings reuses them: ``<root>/<key>-<digest>.json``, written
atomically, each holding its fingerprint (:mod:`spat.evaluation.fingerprint`)."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from spat.evaluation.fingerprint import json_digest
from spat.utils.distributed import SINGLE, DistContext
from spat.utils.io import atomic_write_text
from spat.validation import loads_json

CACHE_FORMAT = "spat.eval-cache/1"


class ResultCache:
    """Saved results under ``root`` (None: nothing is saved or reused); ``resume`` False
    recomputes everything. Under torchrun (``dist``) rank 0 reads and writes and tells the
    others. ``log`` says when a saved result is unreadable or was made with other settings."""

    def __init__(self, root: Path | None, resume: bool, log: Callable[[str], None],
                 dist: DistContext = SINGLE) -> None:
        self.root = root
        self.resume = resume
        self.log = log
        self.dist = dist

    def own(self) -> ResultCache:
        """The same folder for this process alone (no collective reads)."""
        return ResultCache(self.root, self.resume, self.log)

    def path(self, key: str, fp: dict[str, Any], suffix: str = ".json") -> Path | None:
        """Where the result of ``key`` with fingerprint ``fp`` is saved (None: no saving)."""
        return None if self.root is None else self.root / f"{key}-{json_digest(fp)}{suffix}"

    def get(self, key: str, label: str, fp: dict[str, Any]) -> dict[str, Any] | None:
        """The saved result of ``key`` with fingerprint ``fp``, or None (``label`` names it in
        messages)."""
        return self.dist.on_main(lambda: self._get(key, label, fp))

    def _get(self, key: str, label: str, fp: dict[str, Any]) -> dict[str, Any] | None:
        path = self.path(key, fp)
        if path is None or not self.resume:
            return None
        if path.is_file():
            try:
                doc = loads_json(path.read_text(encoding="utf-8"))
            except (ValueError, OSError):  # not JSON, not UTF-8, nested too deeply
                self.log(f"{label}: saved result {path} is unreadable; recomputing")
                return None
            if (isinstance(doc, dict) and doc.get("format") == CACHE_FORMAT
                    and doc.get("fingerprint") == fp):
                return doc["result"]
        assert self.root is not None
        own = re.compile(re.escape(key) + r"-[0-9a-f]{12}\.json")
        for other in sorted(self.root.glob(f"{key}-*.json")):
            if other == path or not own.fullmatch(other.name):
                continue
            try:
                old = loads_json(other.read_text(encoding="utf-8")).get("fingerprint", {})
            except (ValueError, OSError, AttributeError):
                continue
            changed = sorted(k for k in set(fp) | set(old) if fp.get(k) != old.get(k))
            self.log(f"{label}: a saved result exists for other settings "
                     f"({', '.join(changed)} differ); computing for these settings")
            break
        return None

    def put(self, key: str, fp: dict[str, Any], result: dict[str, Any]) -> None:
        """Save ``result`` of ``key`` under fingerprint ``fp`` (rank 0; nothing without a
        root)."""
        path = self.path(key, fp)
        if path is not None and self.dist.is_main:
            atomic_write_text(path, json.dumps({"format": CACHE_FORMAT, "fingerprint": fp,
                                                "saved": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                                                "result": result}))
