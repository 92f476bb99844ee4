"""Trial configs built from a study's base config, sharing what they have in common.

Expanding a 100,000-trial grid writes a handful of values into each trial's config; a deep
copy of the base per trial, and the canonical JSON of the whole config for its id, cost more
than everything else. Here each section of the config (seed, data, model, train, ...) is
built, and its canonical text made, once per distinct set of values written into it; trials
with the same values share the section object. Trial configs are therefore read-only:
copy one before changing it.
"""

from __future__ import annotations

import gc
import hashlib
import json
from contextlib import contextmanager
from typing import Any, Iterator

from ..errors import StudyError
from .paths import canonical, fast_copy, set_path_shared
from .schema import TRIAL_KEYS

_encode_str = json.encoder.encode_basestring_ascii


@contextmanager
def gc_paused() -> Iterator[None]:
    """Python's cyclic collector off while a study's trials are made and validated: they are
    hundreds of thousands of long-lived, acyclic objects, and every collection rescans all
    of them (about 40% of a 100,000-trial plan's time). The previous state comes back after."""
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()


def is_config_path(key: str) -> bool:
    return key.split(".", 1)[0] in TRIAL_KEYS


def memo_key(v: Any) -> Any:
    # Values are told apart as the id's JSON tells them apart: 1, 1.0 and True by their type;
    # 0.0 and -0.0 are equal but print differently.
    return (type(v), v if type(v) is not float or v else repr(v))


class Configs:
    """Builds trial configs over one base: `build(writes, free)` -> (config, the canonical text
    of each section in sorted key order, the trial id: space.trial_hash of config and free,
    hashed from those texts). The texts are exactly `canonical()`'s, section by section."""

    def __init__(self, base: dict, file: str):
        self.base = base
        self.file = file
        self.keys = sorted(base)
        self._heads = [_encode_str(k) + ":" for k in self.keys]
        self._texts = {k: canonical(v) for k, v in base.items()}
        # (section, its writes) -> (section object, its text); texts are interned through it,
        # so 100,000 trials hold one copy of each distinct text.
        self._memo: dict[tuple, tuple[Any, str]] = {}
        self._free_texts: dict[tuple, str] = {}
        self._sections: dict[str, str] = {}      # path -> its section
        self._trie: tuple[Any, dict] = (hashlib.sha1(b'{"config":{'), {})

    def build(self, writes: list[tuple[str, Any, str]], free: dict) -> tuple[dict, tuple[str, ...], str]:
        """`writes`: (config path, value, the space entry that sets it), applied in order."""
        by_section: dict[str, list] = {}
        for path, value, key in writes:
            by_section.setdefault(self._section(path, key), []).append((path, value, key))
        config = dict(self.base)
        texts = self._texts
        if by_section:
            texts = dict(texts)
            for s, ws in by_section.items():
                config[s], texts[s] = self._built(s, ws)
        sections = tuple(texts[k] for k in self.keys)
        return config, sections, self._id(sections, self._free(free))

    def _id(self, sections: tuple[str, ...], free: str) -> str:
        """trial_hash of the config whose section texts are `sections`: the SHA-1 of
        '{"config":{<head><text>,...},"free":<free>}'. The hash state after each leading run
        of sections is kept (a trie over the texts, all but the last section): trials that
        share the sections before the one they vary in hash only the rest."""
        node = self._trie
        for i, t in enumerate(sections[:-1]):
            nxt = node[1].get(t)
            if nxt is None:
                h = node[0].copy()
                h.update(self._piece(i, t).encode())
                nxt = node[1][t] = (h, {})
            node = nxt
        h = node[0].copy()
        tail = self._piece(len(sections) - 1, sections[-1]) if sections else ""
        h.update((tail + '},"free":' + free + "}").encode())
        return h.hexdigest()[:10]

    def _piece(self, i: int, text: str) -> str:
        return ("," if i else "") + self._heads[i] + text

    def _free(self, free: dict) -> str:
        try:
            key = tuple((k, memo_key(v)) for k, v in free.items())
            text = self._free_texts.get(key)
        except TypeError:
            return canonical(free)
        if text is None:
            text = self._free_texts[key] = canonical(free)
        return text

    def _section(self, path: str, key: str) -> str:
        s = self._sections.get(path)
        if s is None:
            if not is_config_path(path):
                raise StudyError(f"'{path}' is not a config path", file=self.file, path=f"space.{key}",
                                 expected="a path starting with " + "/".join(sorted(TRIAL_KEYS)))
            s = self._sections[path] = path.split(".", 1)[0]
        return s

    def _built(self, s: str, ws: list[tuple[str, Any, str]]) -> tuple[Any, str]:
        key: tuple | None = (s, *((p, memo_key(v)) for p, v, _ in ws))
        try:
            hit = self._memo.get(key)
        except TypeError:      # a list or mapping among the values: built every time
            key, hit = None, None
        if hit is not None:
            return hit
        # Copy on write: only the containers on a written path are copied from the base.
        root = {s: self.base[s]}
        owned: dict[int, Any] = {id(root): root}
        for path, value, entry in ws:
            try:
                set_path_shared(root, path, fast_copy(value), owned)
            except (KeyError, IndexError, TypeError, ValueError) as e:
                raise StudyError(f"cannot set '{path}' ({e})", file=self.file, path=f"space.{entry}") from None
        hit = (root[s], canonical(root[s]))
        if key is not None:
            self._memo[key] = hit
        return hit
