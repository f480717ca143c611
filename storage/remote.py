"""Reading a study's results from anywhere: a local path, an object store or a served URL.

``connect(url, token=..., storage_options=...)`` gives one object with the same calls for

- a local store path (``out/quickstart.zarr``) or an fsspec URL (``s3://bucket/study.zarr``,
  credentials and endpoint from ``storage_options`` or the usual ``AWS_*`` variables):
  :class:`StoreReader`, which reads the store's files itself;
- a store served by ``jetscan serve`` (``http://HOST:PORT/stores/NAME``): :class:`HttpReader`,
  which asks the service's query API (Arrow IPC pages) and opens zarr over HTTP.

Both answer ``samples()``, ``runs()``, ``results(query, columns)`` (``pyarrow.Table``; call
``.to_pandas()`` for pandas), ``roc(run, signal)``, ``histograms(run)`` and ``zarr(path)``
(a read-only ``zarr.Group``), and give the same tables for the same store. ``jetscan serve``
answers its query endpoints with a :class:`StoreReader`, so the rules live here once.

Filters (:func:`parse_filter`) are a tiny, safe language: comparisons of a column with a
constant joined by ``and``/``or``/``not``, e.g. ``model == 'pca' and signal in ['top', 'gluino']
and e100 > 0.1``. The text is parsed with :mod:`ast` and only a whitelist of node types is
turned into a ``pyarrow.compute`` expression; nothing is ever evaluated as Python.

JSON has no NaN or infinity: :func:`json_safe` writes them as the strings ``"NaN"``,
``"Infinity"`` and ``"-Infinity"`` (the zarr v3 spec's convention, as in the results attrs).
"""

from __future__ import annotations

import ast
import io
import json
import math
import os
import threading
import warnings
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from jetscan.core.errors import ConfigError, StorageError
from jetscan.storage import results as res
from jetscan.storage.catalog import CATALOG_DIR

__all__ = [
    "connect",
    "StoreReader",
    "HttpReader",
    "parse_filter",
    "filter_table",
    "json_safe",
    "table_to_ipc",
    "table_from_ipc",
    "consolidated_group_json",
    "MAX_QUERY_CHARS",
    "MAX_ROC_POINTS",
    "MAX_HIST_BINS",
]

MAX_QUERY_CHARS = 2000
MAX_QUERY_NODES = 200
MAX_ROC_POINTS = res.MAX_ROC_POINTS
MAX_HIST_BINS = 200

# --------------------------------------------------------------------------------------
# filters


_COMPARE = {
    ast.Eq: lambda f, v: f == v,
    ast.NotEq: lambda f, v: f != v,
    ast.Lt: lambda f, v: f < v,
    ast.LtE: lambda f, v: f <= v,
    ast.Gt: lambda f, v: f > v,
    ast.GtE: lambda f, v: f >= v,
}
_FLIP = {ast.Lt: ast.Gt, ast.LtE: ast.GtE, ast.Gt: ast.Lt, ast.GtE: ast.LtE, ast.Eq: ast.Eq, ast.NotEq: ast.NotEq}
_SCALAR_TYPES = (str, int, float, bool)
_HELP = (
    "write comparisons of a column with a constant, joined by and/or/not, e.g. "
    "\"model == 'pca' and signal in ['top', 'gluino'] and e100 > 0.1\""
)


def _constant(node: ast.AST, query: str) -> Any:
    if isinstance(node, ast.Constant) and (node.value is None or isinstance(node.value, _SCALAR_TYPES)):
        return node.value
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub) and isinstance(node.operand, ast.Constant):
        v = node.operand.value
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            return -v
    raise ConfigError(f"filter {query!r}: {ast.unparse(node)!r} is not a constant (a string, number, true/false or None); {_HELP}")


_FIX = {
    "text": "quote the value, e.g. {c} == 'top'",
    "numbers": "give a number, e.g. {c} > 0.1",
    "true/false": "use true or false, e.g. {c} == true",
}
_COMPARE_IT = {"text": "compare it, e.g. {c} == 'top'", "numbers": "compare it, e.g. {c} > 0.1"}
_ARROW_ERRORS = (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError, OverflowError)


def _holds(type_: pa.DataType | None) -> str | None:
    """What a column of ``type_`` holds, as a filter's constants name it (None: not checked here)."""
    if type_ is None:
        return None
    if pa.types.is_string(type_) or pa.types.is_large_string(type_):
        return "text"
    if pa.types.is_integer(type_) or pa.types.is_floating(type_):
        return "numbers"
    if pa.types.is_boolean(type_):
        return "true/false"
    return None  # e.g. null (no run has a value yet): every comparison matches nothing


def _fits(holds: str | None, value: Any) -> bool:
    if value is None or holds is None:
        return True
    if holds == "text":
        return isinstance(value, str)
    if holds == "numbers":
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    return isinstance(value, bool)


def _typed(name: str, value: Any, columns: dict, query: str) -> Any:
    """``value`` checked against the type of column ``name``: one ConfigError naming the column,
    its type and the fix when they do not match. Integers beyond int64 compare as floats."""
    holds = _holds(columns[name])
    if not _fits(holds, value):
        raise ConfigError(
            f"filter {query!r}: column {name!r} holds {holds} ({columns[name]}), not {type(value).__name__} {value!r}: "
            + _FIX[holds].format(c=name)
        )
    if isinstance(value, int) and not isinstance(value, bool) and not -(2**63) <= value < 2**63:
        return float(value)
    return value


def _isin(name: str, values: list, columns: dict, query: str) -> pc.Expression:
    """``name in values`` with the values as an array of the column's type (``in []`` matches no row)."""
    values = [_typed(name, v, columns, query) for v in values]
    type_ = columns[name]
    field = pc.field(name)
    if type_ is not None and pa.types.is_null(type_):  # no value yet: only None is in
        return field.is_null() if None in values else field.is_valid()
    if _holds(type_) == "numbers" and (pa.types.is_floating(type_) or any(isinstance(v, float) for v in values)):
        if not pa.types.is_floating(type_):
            field = field.cast(pa.float64())  # 4 in [4.0, 8.5]: compare by value
        return field.isin(pa.array(values, pa.float64()))
    return field.isin(pa.array(values, type_) if _holds(type_) else pa.array(values))


def _column(node: ast.AST, columns: list[str], query: str) -> str:
    if isinstance(node, ast.Name):
        if node.id not in columns:
            raise ConfigError(f"filter {query!r}: no column {node.id!r}; columns are: {', '.join(columns)}")
        return node.id
    raise ConfigError(f"filter {query!r}: {ast.unparse(node)!r} is not a column name; {_HELP}")


def _compare(op: ast.cmpop, left: ast.AST, right: ast.AST, columns: list[str], query: str) -> pc.Expression:
    if isinstance(op, (ast.In, ast.NotIn)):
        name = _column(left, columns, query)
        if not isinstance(right, (ast.List, ast.Tuple, ast.Set)):
            raise ConfigError(f"filter {query!r}: 'in' takes a list of constants, e.g. signal in ['top', 'gluino']")
        expr = _isin(name, [_constant(v, query) for v in right.elts], columns, query)
        return ~expr if isinstance(op, ast.NotIn) else expr
    if isinstance(op, (ast.Is, ast.IsNot)):
        name = _column(left, columns, query)
        if _constant(right, query) is not None:
            raise ConfigError(f"filter {query!r}: 'is' compares with None only ('col is None', 'col is not None')")
        return pc.field(name).is_valid() if isinstance(op, ast.IsNot) else pc.field(name).is_null()
    if type(op) not in _COMPARE:
        raise ConfigError(f"filter {query!r}: operator {type(op).__name__} is not allowed; {_HELP}")
    if not isinstance(left, ast.Name) and isinstance(right, ast.Name):  # 0.1 < e100
        left, right, op = right, left, _FLIP[type(op)]()
    name = _column(left, columns, query)
    value = _typed(name, _constant(right, query), columns, query)
    if value is None:
        if isinstance(op, ast.Eq):
            return pc.field(name).is_null()
        if isinstance(op, ast.NotEq):
            return pc.field(name).is_valid()
        raise ConfigError(f"filter {query!r}: None compares with == and != only")
    return _COMPARE[type(op)](pc.field(name), value)


def _expr(node: ast.AST, columns: list[str], query: str) -> pc.Expression:
    if isinstance(node, ast.BoolOp):
        parts = [_expr(v, columns, query) for v in node.values]
        out = parts[0]
        for p in parts[1:]:
            out = (out & p) if isinstance(node.op, ast.And) else (out | p)
        return out
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.Not):
        return ~_expr(node.operand, columns, query)
    if isinstance(node, ast.Compare):
        operands = [node.left, *node.comparators]
        parts = [_compare(op, a, b, columns, query) for op, a, b in zip(node.ops, operands, operands[1:])]
        out = parts[0]
        for p in parts[1:]:  # 0.1 < e100 < 0.5
            out = out & p
        return out
    if isinstance(node, ast.Name):  # a boolean column on its own
        name = _column(node, columns, query)
        holds = _holds(columns[name])
        if holds not in (None, "true/false"):
            fix = _COMPARE_IT[holds].format(c=name)
            raise ConfigError(f"filter {query!r}: column {name!r} holds {holds} ({columns[name]}), not true/false: {fix}")
        return pc.field(name) == True  # noqa: E712 - a pyarrow expression
    raise ConfigError(f"filter {query!r}: {ast.unparse(node)!r} is not allowed; {_HELP}")


def _spaces_outside_quotes(text: str) -> str:
    """``text`` with each run of whitespace (newlines, tabs) outside string literals as one
    space, so a query typed over several lines parses; quoted text is kept exactly."""
    out: list[str] = []
    quote, escaped = None, False
    for ch in text.strip():
        if quote is not None:
            out.append(ch)
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == quote:
                quote = None
        elif ch.isspace():
            if out[-1] != " ":
                out.append(" ")
        else:
            out.append(ch)
            if ch in "'\"":
                quote = ch
    return "".join(out)


def parse_filter(query: str, columns: list[str] | pa.Schema) -> pc.Expression | None:
    """The ``pyarrow.compute`` expression of a filter over ``columns`` (None for an empty one).

    Allowed: ``col OP constant`` with OP one of ``== != < <= > >=``, ``col in [...]``,
    ``col not in [...]``, ``col is None`` / ``col is not None``, chained comparisons, and
    ``and``/``or``/``not`` with parentheses. Constants are strings, numbers, ``True``/``False``
    (also ``true``/``false``) and ``None``. Anything else is a :class:`ConfigError`.

    Given the table's schema as ``columns``, every constant must suit its column: text for
    string columns, numbers for numeric ones (ints and floats compare by value), true/false for
    boolean ones, None for any; a mismatch is one ConfigError naming the column, its type and
    the fix. As in Python, ``col in []`` matches no row and ``col not in []`` every row.
    """
    if query is None or not str(query).strip():
        return None
    query = str(query)
    if isinstance(columns, pa.Schema):
        columns = {f.name: f.type for f in columns}
    else:
        columns = dict.fromkeys(columns)  # names only: types are left to pyarrow
    if len(query) > MAX_QUERY_CHARS:
        raise ConfigError(f"filter is {len(query)} characters long; the limit is {MAX_QUERY_CHARS}")
    text = _spaces_outside_quotes(query)
    try:
        tree = ast.parse(text, mode="eval")
    except SyntaxError as exc:
        raise ConfigError(f"filter {query!r} does not parse ({exc.msg}); {_HELP}") from None
    if sum(1 for _ in ast.walk(tree)) > MAX_QUERY_NODES:
        raise ConfigError(f"filter {query!r} is too complex (more than {MAX_QUERY_NODES} parts)")
    # true/false/null as JSON spells them
    for node in ast.walk(tree):
        if isinstance(node, ast.Name) and node.id in ("true", "false", "null") and node.id not in columns:
            node.__class__ = ast.Constant
            node.value = {"true": True, "false": False, "null": None}[node.id]
    try:
        return _expr(tree.body, columns, query)
    except _ARROW_ERRORS as exc:
        raise ConfigError(f"filter {query!r} does not suit the columns' types ({str(exc).splitlines()[0]}); {_HELP}") from None


def filter_table(table: pa.Table, query: str | None = None, columns: list[str] | None = None) -> pa.Table:
    """Rows of ``table`` matching ``query`` (:func:`parse_filter`), then only ``columns``."""
    expr = parse_filter(query, table.schema) if query else None
    if expr is not None:
        try:
            table = table.filter(expr)
        except _ARROW_ERRORS as exc:
            raise ConfigError(f"filter {query!r} does not apply to the columns' types: {str(exc).splitlines()[0]}") from None
    if columns:
        unknown = [c for c in columns if c not in table.column_names]
        if unknown:
            raise ConfigError(f"no column(s) {unknown}; columns are: {', '.join(table.column_names)}")
        table = table.select(list(columns))
    return table


# --------------------------------------------------------------------------------------
# encodings


json_safe = res.json_safe  # one strict-JSON rule for zarr attrs and the served API


def _floats(values: list) -> np.ndarray:
    return np.asarray([res.NONFINITE.get(v, v) if isinstance(v, str) else v for v in values], dtype=np.float64)


def table_to_ipc(table: pa.Table) -> bytes:
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return sink.getvalue().to_pybytes()


def table_from_ipc(data: bytes) -> pa.Table:
    return pa.ipc.open_stream(pa.py_buffer(data)).read_all()


def table_to_parquet(table: pa.Table) -> bytes:
    buf = io.BytesIO()
    pq.write_table(table, buf)
    return buf.getvalue()


# --------------------------------------------------------------------------------------
# consolidated metadata (a hierarchy readable without listing)


def consolidated_group_json(root: str, group_path: str = "", cache: dict | None = None) -> dict:
    """The ``zarr.json`` of the group at ``<root>/<group_path>`` (a local folder) with zarr's
    inline consolidated metadata of every node below it, built in memory (nothing is written).

    HTTP cannot list folders (zarr #1568, #2984): ``jetscan serve`` answers a group's
    ``zarr.json`` with this, so a zarr client opens and walks any served group. Only folders
    whose names a served path may hold are included (no ``_catalog``, no hidden files).

    ``cache`` (a dict the caller keeps) skips re-reading when no ``zarr.json`` below changed
    (same paths, sizes and modification times): the walk and its stats remain, the parsing goes.
    """
    base = os.path.join(root, group_path) if group_path else root
    found = []
    kinds = cache.setdefault("node_types", {}) if cache is not None else {}
    for dirpath, dirnames, filenames in os.walk(base, followlinks=False):
        dirnames[:] = sorted(d for d in dirnames if _servable_name(d) and not os.path.islink(os.path.join(dirpath, d)))
        if "zarr.json" in filenames:
            path = os.path.join(dirpath, "zarr.json")
            st = os.stat(path)
            found.append((os.path.relpath(dirpath, base).replace(os.sep, "/"), st.st_size, st.st_mtime_ns))
            key = (path, st.st_size, st.st_mtime_ns)
            if key not in kinds:
                with open(path, "rb") as f:
                    kinds[key] = json.load(f).get("node_type")
            if kinds[key] == "array":
                dirnames[:] = []  # an array's folders hold chunks, never nodes
    signature = tuple(found)
    if cache is not None and cache.get(base, (None,))[0] == signature:
        return cache[base][1]
    if len(kinds) > 100_000:
        kinds.clear()
    with open(os.path.join(base, "zarr.json"), "rb") as f:
        node = json.load(f)
    if node.get("node_type") != "group":
        return node
    empty = {"kind": "inline", "must_understand": False, "metadata": {}}
    flat: dict[str, dict] = {}
    for rel, _, _ in found:
        if rel == ".":
            continue
        with open(os.path.join(base, rel, "zarr.json"), "rb") as f:
            child = json.load(f)
        if child.get("node_type") == "group":
            child["consolidated_metadata"] = empty  # children, if any, are filled in by zarr
        flat[rel] = child
    node["consolidated_metadata"] = {
        "kind": "inline",
        "must_understand": False,
        "metadata": {k: flat[k] for k in sorted(flat, key=lambda k: (k.count("/"), k))},
    }
    if cache is not None:
        if len(cache) > 256:
            cache.clear()
            cache["node_types"] = kinds
        cache[base] = (signature, node)
    return node


def _servable_name(name: str) -> bool:
    return bool(name) and (name[0].isalnum()) and all(c.isalnum() or c in "_.-" for c in name)


# --------------------------------------------------------------------------------------
# readers


class StoreReader:
    """Queries on a store read directly: a local path or an fsspec URL (``s3://...``).

    Holds the store's filesystem and a small cache of the results table (re-read when the
    ``_results`` listing changes). ``name`` is how error messages name the store (default: its
    URL); ``jetscan serve`` gives the served name, so its answers never show the server's folders.
    """

    def __init__(self, url: str, storage_options: dict | None = None, *, name: str | None = None):
        import fsspec

        self.url = str(url).rstrip("/")
        self.name = name or self.url
        self.storage_options = dict(storage_options or {})
        self.fs, path = fsspec.core.url_to_fs(self.url, **self.storage_options)
        self.base = path.rstrip("/")
        self._lock = threading.Lock()
        self._results_key = None
        self._results_table: pa.Table | None = None
        self._cache: dict = {}
        res.forget_listings(self.fs, self.base)
        if not self.fs.exists(f"{self.base}/zarr.json"):
            raise StorageError(
                f"no jetscan store at {self.url!r} (no zarr.json there): run the study's stages first, or check the path"
            )

    def __repr__(self) -> str:
        return f"StoreReader({self.url!r})"

    # raw files -------------------------------------------------------------------------
    def _json(self, rel: str) -> dict:
        try:
            return json.loads(self.fs.cat_file(f"{self.base}/{rel}"))
        except FileNotFoundError:
            raise StorageError(f"store {self.name!r} has no {rel!r}") from None

    def _glob(self, pattern: str, detail: bool = False):
        """``fs.glob`` of ``<store>/<pattern>``, listed afresh (object stores keep listings)."""
        fixed = pattern.split("*", 1)[0].rpartition("/")[0]  # the folder above the first wildcard
        res.forget_listings(self.fs, f"{self.base}/{fixed}" if fixed else self.base)
        return self.fs.glob(f"{self.base}/{pattern}", detail=detail)

    def _parquet(self, pattern: str) -> tuple[list[str], list[pa.Table]]:
        files = sorted(self._glob(pattern))
        tables = []
        for path in files:
            with self.fs.open(path, "rb") as f:
                tables.append(pq.read_table(f))
        return files, tables

    # queries ---------------------------------------------------------------------------
    def info(self) -> dict:
        attrs = self._json("zarr.json").get("attributes", {})
        return {
            "study": attrs.get("study"),
            "jetscan": attrs.get("jetscan"),
            "samples": sorted(attrs.get("samples", {})),
            "runs": self.run_names(),
        }

    def run_names(self) -> list[str]:
        files = self._glob(f"{res.RESULTS_DIR}/*.parquet")
        return sorted(p.rsplit("/", 1)[-1][: -len(".parquet")] for p in files)

    def samples(self) -> pa.Table:
        """One row per sample: process, jets committed (from the shard catalog), planned, shards."""
        pattern = f"{CATALOG_DIR}/*/shard-*.parquet"
        key = ("samples", self._signature(pattern), self._signature("*/zarr.json"), self._signature("zarr.json"))
        with self._lock:
            if key in self._cache:
                return self._cache[key]
        table = self._samples(pattern)
        with self._lock:
            self._cache = {k: v for k, v in self._cache.items() if k[0] != "samples"}
            self._cache[key] = table
        return table

    def _signature(self, pattern: str) -> tuple:
        """Names, sizes and modification times of the files matching ``pattern`` (cache keys)."""
        found = self._glob(pattern, detail=True)
        return tuple(sorted((p, d.get("size"), str(d.get("mtime", d.get("LastModified", d.get("ETag"))))) for p, d in found.items()))

    def _samples(self, pattern: str) -> pa.Table:
        attrs = self._json("zarr.json").get("attributes", {})
        _, tables = self._parquet(pattern)
        committed: dict[str, list[int]] = {}
        for t in tables:
            for s, n in zip(t.column("sample").to_pylist(), t.column("n_jets").to_pylist()):
                committed.setdefault(s, []).append(int(n))
        rows = []
        for name, meta in sorted(attrs.get("samples", {}).items()):
            try:
                g = self._json(f"{name}/zarr.json").get("attributes", {})
            except StorageError:
                g = {}
            n_planned = int(g.get("n_jets", meta.get("n_jets", 0)) or 0)
            shard_jets = int(g.get("shard_jets", 0) or 0)
            rows.append(
                {
                    "sample": name,
                    "process": meta.get("process", ""),
                    "n_jets": sum(committed.get(name, [])),
                    "n_jets_planned": n_planned,
                    "shards": len(committed.get(name, [])),
                    "shards_planned": -(-n_planned // shard_jets) if shard_jets else 0,
                    "settings_hash": meta.get("settings_hash", ""),
                }
            )
        schema = pa.schema(
            [("sample", pa.string()), ("process", pa.string()), ("n_jets", pa.int64()), ("n_jets_planned", pa.int64()),
             ("shards", pa.int64()), ("shards_planned", pa.int64()), ("settings_hash", pa.string())]
        )
        return pa.Table.from_pylist(rows, schema=schema)

    def runs(self) -> pa.Table:
        """One row per evaluated run: kind, background, signals (JSON text), created_utc and
        every setting of the run as its own column."""
        tables = []
        for run in self.run_names():
            try:
                attrs = self._json(f"{res.RESULTS_GROUP}/{run}/zarr.json").get("attributes", {})
            except StorageError:
                continue  # committed rows without arrays cannot happen through write_run
            row = {
                "run": run,
                "study": attrs.get("study"),
                "kind": attrs.get("kind"),
                "background": attrs.get("background"),
                "signals": json.dumps(list(attrs.get("signals", []))),
                "created_utc": attrs.get("created_utc"),
            }
            for key, value in dict(attrs.get("config", {})).items():
                row[key if key not in row else f"config_{key}"] = value
            tables.append(pa.Table.from_pylist([row]))
        if not tables:
            return pa.table({c: pa.array([], pa.string()) for c in ("run", "study", "kind", "background", "signals", "created_utc")})
        return res._unify(tables)

    def results_table(self) -> pa.Table:
        """Every committed summary row, as :func:`jetscan.storage.results.read_results` gives them."""
        key = self._signature(f"{res.RESULTS_DIR}/*.parquet")
        with self._lock:
            if key == self._results_key and self._results_table is not None:
                return self._results_table
        files, tables = self._parquet(f"{res.RESULTS_DIR}/*.parquet")
        if not tables:
            table = pa.table({c: pa.array([], type=res._EMPTY_TYPES.get(c, pa.float64())) for c in res.RESULT_COLUMNS})
        else:
            table = res._unify(tables)
            order = [c for c in res.RESULT_COLUMNS if c in table.column_names]
            order += [c for c in table.column_names if c not in order]
            table = table.select(order).sort_by([("run", "ascending"), ("signal", "ascending")])
        with self._lock:
            self._results_key, self._results_table = key, table
        return table

    def results(self, query: str | None = None, columns: list[str] | None = None) -> pa.Table:
        """The metrics table (one row per run and signal), filtered by ``query``, only ``columns``."""
        return filter_table(self.results_table(), query, columns)

    def _run_group(self, run: str):
        res._check_run_name(run)
        if run not in self.run_names():
            known = self.run_names()
            raise StorageError(
                f"store {self.name!r} has no results for run {run!r}; "
                + (f"runs with results: {', '.join(known)}" if known else "no run has been evaluated yet")
            )
        return self.zarr(f"{res.RESULTS_GROUP}/{run}")

    def roc(self, run: str, signal: str, max_points: int = 200) -> pa.Table:
        """The ROC of ``run`` for ``signal``: columns eps_b, eps_s, threshold, at most
        ``max_points`` points (both ends kept; half evenly along the curve, half at log-spaced
        background efficiencies)."""
        max_points = _bounded("max_points", max_points, 10, MAX_ROC_POINTS)
        group = self._run_group(run)
        signals = list(group.attrs.get("signals", []))
        if signal not in signals:
            raise StorageError(f"run {run!r} has no ROC for signal {signal!r}; its signals are: {', '.join(signals)}")
        eps_b, eps_s, thr = (group[f"roc/{signal}/{k}"][...] for k in ("eps_b", "eps_s", "threshold"))
        eps_b, eps_s, thr = res._downsample_roc(eps_b, eps_s, thr, n_max=max_points)
        return pa.table({"eps_b": eps_b, "eps_s": eps_s, "threshold": thr})

    def histograms(self, run: str, bins: int = 40) -> dict:
        """Score and jet-mass histograms of one run, at most ``bins`` bins each.

        ``{"score": {"edges", "counts": {sample: ...}}, "mass": {"edges", "counts": {sample: ...},
        "background": name, "inclusive", "selections": {"reject_50": {"counts", "jsd",
        "threshold"}, ...}}}``; the background mass selections are the stored 40-bin histograms
        re-binned by summing neighbours when ``bins`` is smaller.
        """
        bins = _bounded("bins", bins, 2, MAX_HIST_BINS)
        group = self._run_group(run)
        attrs = dict(group.attrs)
        names = list(attrs.get("samples", []))
        scores = {s: group[f"samples/{s}/score"][...] for s in names}
        masses = {s: group[f"samples/{s}/mass"][...] for s in names}
        finite = np.concatenate([v[np.isfinite(v)] for v in scores.values()] or [np.zeros(0)])
        lo, hi = (float(finite.min()), float(finite.max())) if len(finite) else (0.0, 1.0)
        if hi <= lo:
            hi = lo + 1.0
        score_edges = np.linspace(lo, hi, bins + 1)
        stored_edges = group["mass/bins"][...]
        factor = max(1, math.ceil((len(stored_edges) - 1) / bins))
        mass_edges = stored_edges[::factor] if (len(stored_edges) - 1) % factor == 0 else np.r_[stored_edges[::factor], stored_edges[-1]]

        def rebin(counts: np.ndarray) -> np.ndarray:
            n = len(counts)
            return np.add.reduceat(counts, np.arange(0, n, factor))

        selections = {}
        for r in attrs.get("rejections", res.REJECTIONS):
            arr = group[f"mass/reject_{r}"]
            selections[f"reject_{r}"] = {"counts": rebin(arr[...]), **{k: res._float_back(v) for k, v in arr.attrs.items()}}
        return {
            "run": run,
            "score": {"edges": score_edges, "counts": {s: np.histogram(v, score_edges)[0] for s, v in scores.items()}},
            "mass": {
                "edges": mass_edges,
                "counts": {s: np.histogram(v, mass_edges)[0] for s, v in masses.items()},
                "background": attrs.get("background"),
                "inclusive": rebin(group["mass/inclusive"][...]),
                "selections": selections,
            },
        }

    def zarr(self, path: str = ""):
        """The store (or the group at ``path`` inside it) as a read-only zarr group."""
        import zarr

        url = f"{self.url}/{path.strip('/')}" if path.strip("/") else self.url
        kwargs = {"storage_options": self.storage_options} if "://" in self.url else {}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # zarr warns about the non-zarr folders (_catalog, _results)
            try:
                return zarr.open_group(url, mode="r", zarr_format=3, **kwargs)
            except (FileNotFoundError, KeyError, zarr.errors.GroupNotFoundError):
                raise StorageError(f"no zarr group {path!r} in store {self.name!r}") from None


def _bounded(name: str, value: int, lo: int, hi: int) -> int:
    value = int(value)
    if not lo <= value <= hi:
        raise ConfigError(f"{name} must be between {lo} and {hi}, got {value}")
    return value


class HttpReader:
    """Queries on a store served by ``jetscan serve``, at ``http(s)://HOST:PORT/stores/NAME``.

    Tables come as Arrow IPC pages and are joined here; ``zarr()`` opens the store over HTTP
    (fsspec's HTTPFileSystem, the token as a bearer header). A service serving one store
    may be given as ``http://HOST:PORT`` alone.
    """

    def __init__(self, url: str, token: str | None = None, timeout_s: float = 60.0):
        import requests

        self.token = token
        self.timeout_s = timeout_s
        self.session = requests.Session()
        if token:
            self.session.headers["Authorization"] = f"Bearer {token}"
        url = url.rstrip("/")
        if "/stores/" in url:
            self.server, name = url.split("/stores/", 1)
            self.name = name.strip("/")
        else:
            self.server = url
            stores = self._get("/api/stores").json()
            if len(stores) != 1:
                names = ", ".join(s["name"] for s in stores)
                raise StorageError(f"{url} serves {len(stores)} stores ({names}): connect to {url}/stores/NAME")
            self.name = stores[0]["name"]
        self.url = f"{self.server}/stores/{self.name}"
        self.api = f"/api/stores/{self.name}"
        self.max_page_rows = int(self._get(self.api).json().get("max_page_rows", 1000))

    def __repr__(self) -> str:
        return f"HttpReader({self.url!r})"

    def _get(self, path: str, **params):
        import requests

        try:
            r = self.session.get(self.server + path, params={k: v for k, v in params.items() if v is not None}, timeout=self.timeout_s)
        except requests.ConnectionError as exc:
            raise StorageError(f"cannot reach {self.server}: {exc.__class__.__name__}; is 'jetscan serve' running there?") from None
        if r.status_code != 200:
            try:
                message = r.json().get("error", r.text)
            except ValueError:
                message = r.text[:500]
            if r.status_code in (401, 403):
                raise StorageError(f"{self.server} refused the request ({r.status_code}): {message}; pass token=... (or --token-file)")
            error = ConfigError if r.status_code in (400, 422) else StorageError
            raise error(f"{self.server}{path}: {r.status_code} {message}")
        return r

    def info(self) -> dict:
        return self._get(self.api).json()

    def run_names(self) -> list[str]:
        return list(self.info()["runs"])

    def _table(self, path: str, **params) -> pa.Table:
        parts, offset = [], 0
        while True:
            r = self._get(path, format="arrow", limit=self.max_page_rows, offset=offset, **params)
            parts.append(table_from_ipc(r.content))
            nxt = r.headers.get("x-next-offset")
            if not nxt:
                break
            offset = int(nxt)
        return pa.concat_tables(parts) if len(parts) > 1 else parts[0]

    def samples(self) -> pa.Table:
        return self._table(f"{self.api}/samples")

    def runs(self) -> pa.Table:
        return self._table(f"{self.api}/runs")

    def results(self, query: str | None = None, columns: list[str] | None = None) -> pa.Table:
        return self._table(f"{self.api}/results", query=query or None, columns=",".join(columns) if columns else None)

    def roc(self, run: str, signal: str, max_points: int = 200) -> pa.Table:
        d = self._get(f"{self.api}/runs/{run}/roc", signal=signal, max_points=max_points).json()
        return pa.table({k: _floats(d[k]) for k in ("eps_b", "eps_s", "threshold")})

    def histograms(self, run: str, bins: int = 40) -> dict:
        d = self._get(f"{self.api}/runs/{run}/histograms", bins=bins).json()
        score, mass = d["score"], d["mass"]
        return {
            "run": d["run"],
            "score": {"edges": _floats(score["edges"]), "counts": {k: np.asarray(v, np.int64) for k, v in score["counts"].items()}},
            "mass": {
                "edges": _floats(mass["edges"]),
                "counts": {k: np.asarray(v, np.int64) for k, v in mass["counts"].items()},
                "background": mass["background"],
                "inclusive": _floats(mass["inclusive"]),
                "selections": {
                    k: {**{a: (_floats([b])[0] if isinstance(b, (int, float, str)) else b) for a, b in v.items() if a != "counts"},
                        "counts": _floats(v["counts"])}
                    for k, v in mass["selections"].items()
                },
            },
        }

    def zarr(self, path: str = ""):
        """The served store (or a group in it) as a read-only zarr group over HTTP."""
        import zarr

        url = f"{self.url}/{path.strip('/')}" if path.strip("/") else self.url
        options = {"headers": {"Authorization": f"Bearer {self.token}"}} if self.token else {}
        return zarr.open_group(url, mode="r", zarr_format=3, storage_options=options)


def connect(url: str, token: str | None = None, storage_options: dict | None = None) -> StoreReader | HttpReader:
    """Open a store for queries: a local path, an fsspec URL (``s3://bucket/study.zarr``) or a
    ``jetscan serve`` URL (``http://HOST:PORT/stores/NAME``, with its ``token``).

    >>> db = jetscan.connect("http://10.0.0.5:8750/stores/quickstart", token=open("token").read().strip())
    >>> db.results("signal == 'gluino' and contamination_fraction == 0.01", columns=["run", "bottleneck", "e100"]).to_pandas()
    """
    url = str(url)
    if url.startswith(("http://", "https://")):
        if storage_options:
            raise ConfigError("storage_options apply to local and object-store URLs; a served URL takes token=...")
        return HttpReader(url, token=token)
    if token:
        raise ConfigError(f"token= is for served URLs (http://HOST:PORT/stores/NAME); {url!r} is read directly")
    return StoreReader(url, storage_options=storage_options)
