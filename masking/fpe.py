"""Keyed format-preserving permutations of integer domains.

Terms:

- *domain*: the integers ``0 <= x < size``.
- *permutation*: a keyed bijection of the domain. It is a Feistel network over
  pairs ``(left, right)`` in ``Z_m x Z_m`` with ``m = ceil(sqrt(size))`` and
  HMAC-SHA256 as the round function, made a bijection of the domain by
  *cycle-walking*: a result ``>= size`` is fed through the network again until
  it falls inside. Because the domain covers at least a quarter of ``m*m``,
  walks are short (on average fewer than 1.02 extra steps for large domains).
- *accepted subset*: the members of the domain for which a predicate holds,
  e.g. the RUC bodies that have a check digit. Cycle-walking until the
  predicate is true turns the permutation into a bijection of the subset.
- *derangement*: ``D(x) = P^-1(next(P(x)))`` where ``next`` is the following
  accepted member in numeric order, wrapping around. It is conjugate to a
  single cycle through the whole subset, so no value maps to itself (when the
  subset has more than one member): every masked value differs from its
  original, which the proof relies on.

The construction follows the structure of NIST SP 800-38G FF1 (10 Feistel
rounds, cycle-walking) but it is not FF1 and has no certification: it keeps
joins intact and is one-way without the key, which is what masking needs.

>>> d = Derangement(b"k" * 32, b"demo", 1000)
>>> values = [d.apply(x) for x in range(1000)]
>>> sorted(values) == list(range(1000))
True
>>> any(d.apply(x) == x for x in range(1000))
False
"""

from __future__ import annotations

import weakref
from math import isqrt
from typing import Callable

try:
    # The C function behind hmac.digest, without the wrapper's argument checks:
    # the round function runs 20 times per masked value.
    from _hashlib import hmac_digest as _hmac_digest
except ImportError:  # pragma: no cover - Python builds without OpenSSL
    from hmac import digest as _hmac_digest

ROUNDS = 10
MAX_WALK = 10_000

# Round values are memoised in one list per round when the half-domain m is at
# most this size: the list then costs 8 bytes per slot plus an int per filled
# slot, at most about 47 MB per permutation when every slot is used. A
# 10-digit domain (m = 100,000) fits. Every half of such a domain repeats
# across inputs (a million cédulas share 12,248 right halves), so after the
# first few thousand values each round costs a list lookup instead of an
# HMAC call, about 1.3 µs with OpenSSL 3.
MEMO_MAX_M = 1 << 17
# Memo slots that the live permutations of one process may hold together
# (64 MiB of list slots). Maskers create a permutation per layout and kept
# prefix, so an account column with thousands of prefixes would otherwise
# allocate thousands of memo tables. A permutation gets its memo lists only
# after MEMO_AFTER_PASSES Feistel passes, so one used for a few values never
# takes any. While the budget is spent it computes every round directly and
# asks again after as many passes. A collected permutation returns its slots.
MEMO_BUDGET_SLOTS = 1 << 23
MEMO_AFTER_PASSES = 64
_memo_slots_used = 0


def _reserve_memo_slots(slots: int) -> None:
    global _memo_slots_used
    _memo_slots_used += slots


def _release_memo_slots(slots: int) -> None:
    global _memo_slots_used
    _memo_slots_used -= slots


class Permutation:
    """A keyed bijection of ``range(size)``.

    The round function of round ``r`` is ``F_r(right) = int(HMAC-SHA256(K_r,
    right as big-endian bytes)) mod m``. Reducing mod m before the addition
    gives the same result as reducing after it, so memoised and direct rounds
    agree bit for bit.
    """

    def __init__(self, key: bytes, tweak: bytes, size: int, rounds: int = ROUNDS):
        if size < 1:
            raise ValueError(f"domain size must be positive, got {size}")
        self.size = size
        self.m = isqrt(size - 1) + 1
        self.rounds = rounds
        self._width = max(1, (self.m.bit_length() + 7) // 8)
        self._round_keys = [
            _hmac_digest(key, b"fpe:" + tweak + b":" + str(size).encode() + b":" + bytes([r]), "sha256")
            for r in range(rounds)
        ]
        # One memo list per round, filled on first use of each half value.
        self._memos: list[list[int | None]] | None = None
        # Passes computed without memo lists; None when m is too large to memoise.
        self._direct_passes: int | None = 0 if self.m <= MEMO_MAX_M else None

    def _count_direct_pass(self) -> None:
        """Allocate the memo lists once the permutation is busy and the process budget allows."""
        if self._direct_passes is None:
            return
        self._direct_passes += 1
        if self._direct_passes < MEMO_AFTER_PASSES:
            return
        self._direct_passes = 0
        slots = self.rounds * self.m
        if _memo_slots_used + slots > MEMO_BUDGET_SLOTS:
            return
        self._memos = [[None] * self.m for _ in range(self.rounds)]
        self._direct_passes = None
        _reserve_memo_slots(slots)
        weakref.finalize(self, _release_memo_slots, slots)

    def _round_value(self, round_index: int, half: int) -> int:
        digest = _hmac_digest(self._round_keys[round_index], half.to_bytes(self._width, "big"), "sha256")
        value = int.from_bytes(digest, "big") % self.m
        if self._memos is not None:
            self._memos[round_index][half] = value
        return value

    # _forward and _backward inline the memo lookup: they dominate masking time.
    def _forward(self, x: int) -> int:
        m = self.m
        left, right = divmod(x, m)
        memos = self._memos
        if memos is None:
            self._count_direct_pass()
            width = self._width
            for key in self._round_keys:
                digest = _hmac_digest(key, right.to_bytes(width, "big"), "sha256")
                left, right = right, (left + int.from_bytes(digest, "big")) % m
            return left * m + right
        round_value = self._round_value
        for index, memo in enumerate(memos):
            value = memo[right]
            if value is None:
                value = round_value(index, right)
            left, right = right, (left + value) % m
        return left * m + right

    def _backward(self, y: int) -> int:
        m = self.m
        left, right = divmod(y, m)
        memos = self._memos
        if memos is None:
            self._count_direct_pass()
            width = self._width
            for key in reversed(self._round_keys):
                digest = _hmac_digest(key, left.to_bytes(width, "big"), "sha256")
                left, right = (right - int.from_bytes(digest, "big")) % m, left
            return left * m + right
        round_value = self._round_value
        for index in range(self.rounds - 1, -1, -1):
            value = memos[index][left]
            if value is None:
                value = round_value(index, left)
            left, right = (right - value) % m, left
        return left * m + right

    def encrypt(self, x: int) -> int:
        """Map ``x`` to its image; ``x`` must be in the domain."""
        if not 0 <= x < self.size:
            raise ValueError(f"{x} is outside the domain of size {self.size}")
        if self.size == 1:
            return 0
        y = self._forward(x)
        while y >= self.size:
            y = self._forward(y)
        return y

    def decrypt(self, y: int) -> int:
        """Map an image back to its preimage."""
        if not 0 <= y < self.size:
            raise ValueError(f"{y} is outside the domain of size {self.size}")
        if self.size == 1:
            return 0
        x = self._backward(y)
        while x >= self.size:
            x = self._backward(x)
        return x


class Derangement:
    """A keyed bijection of the accepted subset of ``range(size)`` without fixed points."""

    def __init__(self, key: bytes, tweak: bytes, size: int, accept: Callable[[int], bool] | None = None):
        self.permutation = Permutation(key, tweak, size)
        self.size = size
        self.accept = accept

    def _walk(self, step: Callable[[int], int], value: int) -> int:
        if self.accept is None:
            return step(value)
        value = step(value)
        for _ in range(MAX_WALK):
            if self.accept(value):
                return value
            value = step(value)
        raise RuntimeError("cycle-walking did not reach an accepted value; the accepted subset is too sparse")

    def _next_accepted(self, y: int) -> int:
        for _ in range(MAX_WALK):
            y = (y + 1) % self.size
            if self.accept is None or self.accept(y):
                return y
        raise RuntimeError("no accepted value follows; the accepted subset is too sparse")

    def apply(self, x: int) -> int:
        """Return the masked image of ``x`` (which must be accepted)."""
        if self.accept is None:
            # The same steps as below without the predicate calls.
            permutation = self.permutation
            return permutation.decrypt((permutation.encrypt(x) + 1) % self.size)
        y = self._walk(self.permutation.encrypt, x)
        return self._walk(self.permutation.decrypt, self._next_accepted(y))
