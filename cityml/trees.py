"""A blend's trees as flat arrays, walked by one compiled loop: its raw outputs for a few rows.

LightGBM walks a single row's trees fast, but a served request walks six boosters' 1,700 trees one
``Tree`` object at a time, each a dozen separate heap vectors, after the request's other work has
pushed them out of the CPU caches: 435 us a row where the same trees hot took 230 us. Here every
member's trees sit in a few contiguous arrays, and one ``numba`` loop walks them all for every row
of a run: 140 us a row in the same cache-cold loop (``bench/RESULTS.md`` has the served figures).

The answers are LightGBM's, bit for bit. The loop applies LightGBM's own decision rules
(``Tree::NumericalDecision`` and ``Tree::CategoricalDecision``: missing types, default directions,
category bitsets) and adds the trees' leaf values in LightGBM's order. :func:`flatten` reads the
model text LightGBM writes, with thresholds and leaf values printed to the last bit, and refuses
what the loop does not do (linear trees, several trees per iteration, averaged output, an
objective whose prediction is not its raw score): those models stay on LightGBM.
:func:`mismatch` compares the two on rows built to sit on every split's edges; serving uses the
flat trees only when that finds none.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

log = logging.getLogger(__name__)

#: Objectives whose prediction is the raw score (LightGBM converts nothing): regression losses.
RAW_OBJECTIVES = frozenset({"regression", "regression_l1", "huber", "fair", "quantile", "mape"})
INT_LIMIT = 2.0**31  # past it, C++'s cast of a category to int is undefined; x86 makes it negative: right
#: LightGBM's ``kZeroThreshold`` (a float constant, 1e-35f): its input rows hold no value closer to 0
#: than that (they become 0), and a "zero" missing type is a value within it.
ZERO = float(np.float32(1e-35))


class Unsupported(ValueError):
    """A model the compiled loop does not walk (it stays on LightGBM); the message says why."""


@dataclass(frozen=True)
class FlatTrees:
    """The trees of a blend's members, member after member, each tree's nodes as LightGBM numbers them.

    Per internal node: ``feature`` (a column of the blend's input matrix), ``threshold`` (for a
    categorical split, the index of its bitset in ``cat_bounds``), ``left``/``right`` (a node of
    the same tree, or ``~leaf``) and ``decision`` (LightGBM's decision type bits). Per tree: where
    its nodes and leaves start (``node_start`` -1: a tree of one leaf). ``member_start``: each
    member's first tree, and the end.
    """

    feature: np.ndarray
    threshold: np.ndarray
    left: np.ndarray
    right: np.ndarray
    decision: np.ndarray
    leaf_value: np.ndarray
    node_start: np.ndarray
    leaf_start: np.ndarray
    member_start: np.ndarray
    cat_bounds: np.ndarray
    cat_bits: np.ndarray

    @property
    def members(self) -> int:
        return len(self.member_start) - 1

    @property
    def nbytes(self) -> int:
        return sum(getattr(self, f).nbytes for f in self.__dataclass_fields__)

    def raw(self, x: np.ndarray) -> np.ndarray:
        """Every member's raw score for every row of ``x`` (rows × the blend's columns): members × rows."""
        rows = np.ascontiguousarray(x, dtype="float64")
        out = np.empty((self.members, len(rows)), dtype="float64")
        _kernel()(
            rows,
            self.feature,
            self.threshold,
            self.left,
            self.right,
            self.decision,
            self.leaf_value,
            self.node_start,
            self.leaf_start,
            self.member_start,
            self.cat_bounds,
            self.cat_bits,
            out,
        )
        return out


def flatten(model_texts: Sequence[str], columns: Sequence[np.ndarray | None]) -> FlatTrees:
    """The flat trees of a blend from each member's model text (``booster.model_to_string`` with the
    iterations it predicts with) and its columns of the blend's matrix (None: the same columns).

    Raises :class:`Unsupported` naming what the loop does not do.
    """
    parts: dict[str, list[np.ndarray]] = {
        k: [] for k in ("feature", "threshold", "left", "right", "decision", "leaf_value", "cat_bits")
    }
    node_start: list[int] = []
    leaf_start: list[int] = []
    member_start = [0]
    cat_bounds: list[np.ndarray] = []
    nodes = leaves = bits = bitsets = 0
    for m, (text, cols) in enumerate(zip(model_texts, columns, strict=True)):
        for tree in _trees(text, m):
            n_leaves = int(tree["num_leaves"])
            node_start.append(nodes if n_leaves > 1 else -1)
            leaf_start.append(leaves)
            values = np.fromstring(tree["leaf_value"], sep=" ")  # text mode: C's strtod, every bit
            if len(values) != n_leaves:
                raise Unsupported(f"member {m}: a tree's leaf_value holds {len(values)} values for {n_leaves} leaves")
            parts["leaf_value"].append(values)
            leaves += n_leaves
            if n_leaves == 1:
                continue
            split = n_leaves - 1
            feature = _ints(tree, "split_feature", split)
            decision = _ints(tree, "decision_type", split).astype(np.uint8)
            threshold = np.fromstring(tree["threshold"], sep=" ")
            if len(threshold) != split:
                raise Unsupported(f"member {m}: a tree's threshold holds {len(threshold)} values for {split} splits")
            categorical = (decision & 1) == 1
            if categorical.any():
                bounds = _ints(tree, "cat_boundaries", int(tree["num_cat"]) + 1)
                words = _ints(tree, "cat_threshold", int(bounds[-1])).astype(np.uint32)
                threshold = threshold.copy()
                threshold[categorical] += bitsets  # this tree's bitset k is the blend's k + bitsets
                cat_bounds.append(bounds[:-1] + bits)
                parts["cat_bits"].append(words)
                bits += len(words)
                bitsets += len(bounds) - 1
            parts["feature"].append(feature if cols is None else np.asarray(cols)[feature])
            parts["threshold"].append(threshold)
            parts["left"].append(_ints(tree, "left_child", split))
            parts["right"].append(_ints(tree, "right_child", split))
            parts["decision"].append(decision)
            nodes += split
        member_start.append(len(node_start))

    def joined(name: str, dtype: str) -> np.ndarray:
        return np.concatenate(parts[name]).astype(dtype) if parts[name] else np.empty(0, dtype=dtype)

    return FlatTrees(
        feature=joined("feature", "int32"),
        threshold=joined("threshold", "float64"),
        left=joined("left", "int32"),
        right=joined("right", "int32"),
        decision=joined("decision", "uint8"),
        leaf_value=joined("leaf_value", "float64"),
        node_start=np.array(node_start, dtype="int32"),
        leaf_start=np.array(leaf_start, dtype="int32"),
        member_start=np.array(member_start, dtype="int32"),
        cat_bounds=np.append(np.concatenate(cat_bounds) if cat_bounds else np.empty(0), bits).astype("int32"),
        cat_bits=joined("cat_bits", "uint32"),
    )


def _trees(text: str, member: int) -> list[dict[str, str]]:
    """The ``key=value`` lines of each tree of a model text, after checking its header."""
    end = text.find("end of trees")
    first = text.find("\nTree=")
    if end < 0:
        raise Unsupported(f"member {member}: not a LightGBM model text (no 'end of trees')")
    header = dict(line.partition("=")[::2] for line in text[: first if first >= 0 else end].splitlines())
    objective = header.get("objective", "").strip()  # one word: "regression sqrt" squares its output
    if objective not in RAW_OBJECTIVES:
        raise Unsupported(f"member {member}: objective {objective!r} converts its raw score")
    if header.get("num_tree_per_iteration", "1") != "1":
        raise Unsupported(f"member {member}: {header['num_tree_per_iteration']} trees per iteration")
    if "average_output" in header:
        raise Unsupported(f"member {member}: averaged output (random forest)")
    trees = []
    for block in text[first:end].split("\nTree=")[1:] if first >= 0 else []:
        tree = dict(line.partition("=")[::2] for line in block.splitlines()[1:] if line)
        if tree.get("is_linear", "0") != "0":
            raise Unsupported(f"member {member}: linear trees")
        trees.append(tree)
    return trees


def _ints(tree: dict[str, str], key: str, n: int) -> np.ndarray:
    values = np.array(tree.get(key, "").split(), dtype="int64")
    if len(values) != n:
        raise Unsupported(f"a tree's {key} holds {len(values)} values where {n} belong")
    return values


def mismatch(flat: FlatTrees, members: Sequence[Callable[[np.ndarray], np.ndarray]], n_features: int) -> str | None:
    """Where the flat trees and LightGBM differ on probe rows, or None where they agree bit for bit.

    ``members``: each member's LightGBM raw prediction on the blend's matrix (its own columns taken).
    Two kinds of probe rows (:func:`probe_rows`): rows steered down a path to a chosen split of each
    tree, that split's own value then set to one of its edge cases; and rows whose every value is
    an edge of some split of its feature or a special value. A check, not a proof: it catches a
    model the parser or the loop reads differently (an objective that transforms its output, a
    misaligned tree), and a wrong rule wherever a probe reaches it.
    """
    rows = probe_rows(flat, n_features)
    got = np.empty((flat.members, len(rows)))
    for start in range(0, len(rows), PROBE_CHUNK):  # short calls: the loop holds the GIL while it runs
        got[:, start : start + PROBE_CHUNK] = flat.raw(rows[start : start + PROBE_CHUNK])
    for m, predict in enumerate(members):
        # LightGBM's single-row path on the first rows, its batch path on all, in short calls: a
        # served request on the same booster waits for its lock (holding the GIL) while one runs.
        want = np.concatenate(
            [predict(rows[:8])] + [predict(rows[a : a + LIGHTGBM_CHUNK]) for a in range(8, len(rows), LIGHTGBM_CHUNK)]
        )
        if not np.array_equal(got[m], want):
            i = int(np.flatnonzero(got[m] != want)[0])
            return f"member {m}, probe row {i}: flat trees {got[m][i]!r}, LightGBM {want[i]!r}"
    return None


PROBE_CHUNK = 16
LIGHTGBM_CHUNK = 64
PROBE_ROWS = 4096  # at most, steered ones included
SPECIAL = np.array([0.0, -0.0, -1.0, -0.5, 1e-36, -1e-36, ZERO, np.nan, np.nan, np.inf, -np.inf, INT_LIMIT, 1e300])


def probe_rows(flat: FlatTrees, n_features: int, seed: int = 0) -> np.ndarray:
    """Rows for :func:`mismatch`: steered to splits of every tree (up to :data:`PROBE_ROWS`), then random edges."""
    rng = np.random.default_rng(seed)
    categorical = (flat.decision & 1) == 1
    widest = int(np.diff(flat.cat_bounds).max()) if len(flat.cat_bounds) > 1 else 0
    cats = np.arange(0.0, min(32 * widest + 2, 4096))  # the categories bitsets hold, and the next ones
    edges = []
    for f in range(n_features):
        at = flat.threshold[(flat.feature == f) & ~categorical]
        values = [at, np.nextafter(at, np.inf), np.nextafter(at, -np.inf)]
        values.append(cats if np.any((flat.feature == f) & categorical) else np.empty(0))
        edges.append(np.concatenate(values) if sum(map(len, values)) else np.zeros(1))

    def random_rows(n: int) -> np.ndarray:
        rows = np.column_stack([rng.choice(e, n) for e in edges]) if n_features else np.empty((n, 0))
        special = rng.random(rows.shape) < 0.3
        rows[special] = rng.choice(SPECIAL, int(special.sum()))
        return rows

    steered = _steered(flat, random_rows, rng)
    return np.vstack([steered, random_rows(max(PROBE_ROWS // 4, PROBE_ROWS - len(steered)))])


def _steered(flat: FlatTrees, random_rows: Callable[[int], np.ndarray], rng: np.random.Generator) -> np.ndarray:
    """One row per chosen split: the path from its tree's root followed, its own value an edge case."""
    trees = np.flatnonzero(flat.node_start >= 0)
    if len(trees) == 0:
        return np.empty((0, random_rows(1).shape[1]))
    picked = trees if len(trees) <= PROBE_ROWS // 2 else rng.choice(trees, PROBE_ROWS // 2, replace=False)
    rows = random_rows(2 * len(picked))
    for r, t in enumerate(np.repeat(picked, 2)):
        base = int(flat.node_start[t])
        size = _tree_end(flat, t) - base
        parent: dict[int, tuple[int, bool]] = {}
        for node in range(size):
            for child, went_left in ((int(flat.left[base + node]), True), (int(flat.right[base + node]), False)):
                if child >= 0:
                    parent[child] = (node, went_left)
        target = int(rng.integers(size))
        path = []
        node = target
        while node in parent:
            node, went_left = parent[node]
            path.append((node, went_left))
        for node, went_left in reversed(path):  # from the root down: each split sends the row the path's way
            rows[r, flat.feature[base + node]] = _going(flat, base + node, went_left)
        i = base + target
        if flat.decision[i] & 1:
            rows[r, flat.feature[i]] = rng.choice(
                [np.nan, -0.5, -1.0, INT_LIMIT, _going(flat, i, True), _going(flat, i, False)]
            )
        else:
            thr = flat.threshold[i]
            rows[r, flat.feature[i]] = rng.choice([np.nan, 0.0, -0.0, ZERO, thr, np.nextafter(thr, np.inf)])
    return rows


def _tree_end(flat: FlatTrees, t: int) -> int:
    """Where tree ``t``'s nodes end: the next tree with nodes starts there, or the arrays end."""
    later = flat.node_start[t + 1 :]
    later = later[later >= 0]
    return int(later[0]) if len(later) else len(flat.feature)


def _going(flat: FlatTrees, i: int, left: bool) -> float:
    """A value that split ``i`` sends left (or right)."""
    if not flat.decision[i] & 1:
        thr = float(flat.threshold[i])
        return thr if left else float(np.nextafter(thr, np.inf))
    k = int(flat.threshold[i])
    words = flat.cat_bits[flat.cat_bounds[k] : flat.cat_bounds[k + 1]]
    bits = np.flatnonzero(np.unpackbits(words.astype("<u4").view(np.uint8), bitorder="little"))
    if left:
        return float(bits[0]) if len(bits) else -1.0
    return -1.0  # a negative category always goes right


@functools.cache
def _kernel() -> Callable[..., None]:
    """The compiled loop (numba; compiled on first use and cached on disk, so warm it before serving)."""
    import numba

    def walk(
        x: np.ndarray,
        feature: np.ndarray,
        threshold: np.ndarray,
        left: np.ndarray,
        right: np.ndarray,
        decision: np.ndarray,
        leaf_value: np.ndarray,
        node_start: np.ndarray,
        leaf_start: np.ndarray,
        member_start: np.ndarray,
        cat_bounds: np.ndarray,
        cat_bits: np.ndarray,
        out: np.ndarray,
    ) -> None:
        for r in range(x.shape[0]):
            for m in range(member_start.shape[0] - 1):
                total = 0.0
                for t in range(member_start[m], member_start[m + 1]):
                    base = node_start[t]
                    node = -1  # ~0: a tree of one leaf is its leaf 0
                    if base >= 0:
                        node = 0
                    while node >= 0:
                        i = base + node
                        value = x[r, feature[i]]
                        if -ZERO <= value <= ZERO:
                            value = 0.0
                        kind = decision[i]
                        go_left = False
                        if kind & 1:  # categorical: left when the category is in the split's bitset
                            if not np.isnan(value) and -INT_LIMIT < value < INT_LIMIT:
                                category = int(value)  # toward zero, as C++ casts
                                if category >= 0:
                                    k = int(threshold[i])
                                    lo = cat_bounds[k]
                                    word = category // 32
                                    if word < cat_bounds[k + 1] - lo:
                                        go_left = ((cat_bits[lo + word] >> (category % 32)) & 1) == 1
                        else:
                            missing = (kind >> 2) & 3  # 0 none, 1 zero, 2 NaN
                            if np.isnan(value) and missing != 2:
                                value = 0.0
                            if (missing == 1 and -ZERO <= value <= ZERO) or (missing == 2 and np.isnan(value)):
                                go_left = (kind & 2) != 0  # the default direction
                            else:
                                go_left = value <= threshold[i]
                        node = left[i] if go_left else right[i]
                    total += leaf_value[leaf_start[t] + ~node]
                out[m, r] = total

    try:
        return numba.njit(cache=True, boundscheck=False)(walk)  # type: ignore[no-any-return]
    except RuntimeError as exc:  # no folder to cache in (read-only code, no home): compile every start
        log.warning("the compiled tree loop is not cached on disk (%s); set NUMBA_CACHE_DIR", exc)
        return numba.njit(boundscheck=False)(walk)  # type: ignore[no-any-return]


def warm() -> None:
    """Compile the loop now (or load it from numba's disk cache), not on a request."""
    flat = FlatTrees(
        feature=np.zeros(1, "int32"),
        threshold=np.zeros(1),
        left=np.array([-1], "int32"),
        right=np.array([-2], "int32"),
        decision=np.zeros(1, "uint8"),
        leaf_value=np.zeros(2),
        node_start=np.zeros(1, "int32"),
        leaf_start=np.zeros(1, "int32"),
        member_start=np.array([0, 1], "int32"),
        cat_bounds=np.zeros(1, "int32"),
        cat_bits=np.zeros(0, "uint32"),
    )
    flat.raw(np.zeros((1, 1)))
