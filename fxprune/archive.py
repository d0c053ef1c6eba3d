"""Check a ``.pt2`` archive before ``torch.export.load`` reads it: the safety half of ``load``.

Guarantee: ``check_archive`` raises ``InputError`` unless the archive holds only what
``fxprune.save`` writes, and ``check_targets`` raises it unless the program torch built calls
only operators. Between them they close every path to unpickling and to code execution found
in torch 2.14's loader. They are checks against one torch version's deserializer, not an audit
of all of it: re-audit this module on each torch upgrade (read the files named below again,
and rerun tests/test_archive.py, whose tampered archives each run code under a plain
``torch.export.load(path).module()(x)``).

Why ``load`` checks the archive first. ``torch.export.load`` does NOT restrict itself to
weights-only loading in torch 2.14 (read in ``torch/export/pt2_archive/_package.py`` and
``torch/_export/serde/serialize.py``): weights and constants whose config says
``use_pickle`` are read with ``torch.load(..., weights_only=False)``, ``opaque_obj_*``
constants with ``pickle.loads``, ``custom_obj_*`` constants with the TorchScript unpickler,
``data/aotinductor/`` loads compiled native code, and the example inputs (and the legacy
layout's weights) fall back to ``weights_only=False`` when weights-only loading fails. Its
docstring says "Never load data from an untrusted source". Besides pickle, the JSON graph
reaches code too: symbolic shape strings go through ``sympy.sympify`` (which evaluates
Python), node names are pasted into the Python source that ``GraphModule`` compiles,
``.module()`` compiles the ``guards_code`` strings with ``exec`` into a check run on every
call, and call targets are looked up as any attribute under ``torch`` (``torch.os.system``
resolves).

``fxprune.save`` writes none of those risky parts, so ``check_archive`` rejects, before torch
reads the file, any archive that holds one: entries outside the layout ``torch.export.save``
writes for raw tensors, a duplicated entry, a payload marked ``use_pickle`` or not a raw
tensor, example inputs that do not load with ``weights_only=True``, names with characters that
could end a string literal or a statement, symbolic expressions with anything but sympy
constructors, numbers and operators, and guards with anything but size arithmetic. After torch
has built the program, ``check_targets`` requires every called function to be an ATen op, a
higher-order op or a ``_operator``/``math``/``torch.sym_*`` function. Load only files you
trust to have come from ``fxprune.save``.
"""

from __future__ import annotations

import ast
import io
import json
import math
import operator
import re
import tokenize
import zipfile
import zlib
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import IO, Any

import torch
from torch.export import ExportedProgram

from fxprune.errors import InputError, first_line


class _Unsafe(Exception):
    """The archive holds something torch.export.load would unpickle or execute."""


def check_archive(f: IO[bytes], path: Path) -> None:
    """Raise `InputError`, naming `path`, unless `f` is an intact archive holding only what
    `fxprune.save` writes. Leaves `f` at no particular offset: seek before reading it again."""
    try:
        with zipfile.ZipFile(f) as zf:
            entries = _entries(zf)
            _check_payloads(zf, entries)
            _check_sample_inputs(zf, entries)
            _check_model_json(json.loads(zf.read(entries["models/model.json"])))
    except _Unsafe as exc:
        raise InputError(
            f"refusing to load {path}: {exc}. torch.export.load would unpickle or run it; "
            "fxprune.save never writes that, so the file was not written by fxprune.save or "
            "was changed since. Re-save the model with fxprune.save."
        ) from exc
    except (
        zipfile.BadZipFile,
        zlib.error,
        KeyError,
        ValueError,
        TypeError,
        AttributeError,
        OSError,
        EOFError,
    ) as exc:
        # ValueError: bad JSON; KeyError: a missing entry or field; Type/AttributeError: JSON
        # of the wrong shape.
        raise InputError(
            f"cannot load {path}: it is not an intact fxprune archive ({type(exc).__name__}: "
            f"{first_line(exc)}). The file is truncated or damaged, or is not a file "
            "written by fxprune.save: re-save the model with fxprune.save."
        ) from exc


# Every entry torch.export.save writes for a program with raw tensor weights and constants
# (paths below the archive's one root folder). Anything else is read by a riskier loader.
_LAYOUT = re.compile(
    r"archive_format|archive_version|byteorder|\.data/(version|serialization_id)"
    r"|models/model\.json|data/sample_inputs/model\.pt"
    r"|data/weights/(model_weights_config\.json|weight_\d+)"
    r"|data/constants/(model_constants_config\.json|tensor_\d+)"
)


def _entries(zf: zipfile.ZipFile) -> dict[str, str]:
    """Map each entry's path below the archive root to its full name; check the layout."""
    names = zf.namelist()
    roots = {name.partition("/")[0] for name in names}
    if len(roots) != 1 or any("/" not in name for name in names):
        raise ValueError(f"not the one root folder of a .pt2 archive: {sorted(roots)}")
    if len(set(names)) != len(names):
        # zipfile reads the last copy of a name, torch's reader may read another one.
        raise _Unsafe("it holds two entries with the same name")
    entries = {name.partition("/")[2]: name for name in names}
    # Intact before safe: a truncated file can still parse as a zip (the example inputs are
    # a zip inside the zip), and that is damage, not an attack.
    for required in ("archive_format", "models/model.json", "data/sample_inputs/model.pt"):
        if required not in entries:
            raise KeyError(f"{required} is missing")
    if zf.read(entries["archive_format"]) != b"pt2":
        raise ValueError("archive_format is not pt2")
    for entry in entries:
        if not _LAYOUT.fullmatch(entry):
            raise _Unsafe(f"it holds {entry!r}, which is not part of a saved program")
    return entries


def _check_payloads(zf: zipfile.ZipFile, entries: dict[str, str]) -> None:
    """Every weight and constant must be raw tensor bytes, never a pickle."""
    for config_entry, prefix in (
        ("data/weights/model_weights_config.json", "weight_"),
        ("data/constants/model_constants_config.json", "tensor_"),
    ):
        if config_entry not in entries:
            raise KeyError(f"{config_entry} is missing")
        config = json.loads(zf.read(entries[config_entry]))["config"]
        for fqn, meta in config.items():
            _check_name(fqn)
            if meta.get("use_pickle") is not False:
                raise _Unsafe(f"{fqn!r} is stored as a pickle")
            if not re.fullmatch(re.escape(prefix) + r"\d+", str(meta.get("path_name"))):
                raise _Unsafe(f"{fqn!r} is stored as {meta.get('path_name')!r}, not a tensor")


def _check_sample_inputs(zf: zipfile.ZipFile, entries: dict[str, str]) -> None:
    # torch tries weights_only=True first and falls back to weights_only=False only if that
    # fails; bytes that load here never reach the fallback.
    data = zf.read(entries["data/sample_inputs/model.pt"])
    try:
        torch.load(io.BytesIO(data), weights_only=True)
    except Exception as exc:  # noqa: BLE001 - the unpickler raises many kinds
        raise _Unsafe(
            f"its example inputs do not load with weights_only=True ({type(exc).__name__})"
        ) from exc


# Names are pasted into the Python source GraphModule compiles: node and argument names as
# variables (word characters and dots only), attribute paths such as "blocks.conv-1.weight"
# inside a double-quoted getattr(self, "...") (anything that cannot end that string literal).
_VARIABLE = re.compile(r"(\w+(\.\w+)*)?")
_ATTRIBUTE_PATH = re.compile(r"[^\s\"'\\\x00-\x1f\x7f]*")


def _check_name(text: str, pattern: re.Pattern[str] = _ATTRIBUTE_PATH) -> None:
    if not pattern.fullmatch(text):
        raise _Unsafe(f"the name {text!r} has characters a name never has")


def _strings(obj: object, key: str = "") -> Iterator[tuple[str, str]]:
    """Every string in a JSON value, with the key it sits under."""
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield from _strings(v, k)
    elif isinstance(obj, list):
        for v in obj:
            yield from _strings(v, key)
    elif isinstance(obj, str):
        yield key, obj


def _check_model_json(program: dict[str, Any]) -> None:
    for key, text in _strings(program):
        if key == "expr_str":
            _check_sym_expr(text)
        elif key == "guards_code":
            _check_guard(text)
        elif key == "name" or key.endswith("_names"):
            _check_name(text, _VARIABLE)
        elif key in ("target", "fqn") or key.endswith("_name"):
            _check_name(text)


# sympy constructors that torch's printer (sympy.srepr) emits for shape expressions.
_SYMPY_NAMES = frozenset(
    "Symbol Integer Rational Float Add Mul Pow Mod Max Min Abs floor ceiling "
    "Eq Ne Lt Le Gt Ge Equality Unequality StrictLessThan StrictGreaterThan LessThan "
    "GreaterThan And Or Not Piecewise ExprCondPair true false BooleanTrue BooleanFalse "
    "oo zoo nan Infinity NegativeInfinity NaN ComplexInfinity Zero One NegativeOne Half "
    # Symbol assumptions, passed as keywords.
    "integer real positive negative nonnegative nonpositive nonzero zero finite infinite "
    "rational irrational even odd prime composite commutative complex imaginary "
    "extended_real extended_positive extended_negative extended_nonnegative "
    "extended_nonpositive extended_nonzero True False None".split()
)
_SYMPY_OPS = frozenset("( ) , = + - * / // % ** < > <= >= == != & | ~".split())
_QUOTED_NAME = re.compile(r"'\w+'|\"\w+\"")


@cache
def _torch_sympy_names() -> frozenset[str]:
    """The sympy functions torch defines (FloorDiv, ModularIndexing, ...)."""
    import sympy
    import torch.utils._sympy.functions as functions

    return frozenset(
        name
        for name, obj in vars(functions).items()
        if isinstance(obj, type) and issubclass(obj, sympy.Basic)
    )


def _check_sym_expr(text: str) -> None:
    """Allow only what `sympy.srepr` prints: sympy.sympify evaluates the string as Python."""
    try:
        tokens = list(tokenize.generate_tokens(io.StringIO(text).readline))
    except (tokenize.TokenError, SyntaxError) as exc:
        raise _Unsafe(f"the symbolic shape {text!r} does not parse") from exc
    for tok in tokens:
        if (
            tok.type == tokenize.NUMBER
            or (tok.type in (tokenize.NEWLINE, tokenize.ENDMARKER) and not tok.string)
            or (tok.type == tokenize.OP and tok.string in _SYMPY_OPS)
            or (tok.type == tokenize.STRING and _QUOTED_NAME.fullmatch(tok.string))
            or (
                tok.type == tokenize.NAME
                and (tok.string in _SYMPY_NAMES or tok.string in _torch_sympy_names())
            )
        ):
            continue
        raise _Unsafe(f"the symbolic shape {text!r} contains {tok.string!r}")


# Guards are size arithmetic on the inputs, e.g. "L['x'].size()[0] >= 2"; `.module()` execs
# them with all builtins in scope, so only these names and attributes may appear.
_GUARD_NAMES = frozenset(
    {"L", "inf", "math", "torch", "max", "min", "abs", "int", "float", "round", "bool"}
    | {"IsNonOverlappingAndDenseIndicator", "cast_symbool_to_symint_guardless"}
)
_TENSOR_ATTRS = frozenset({"size", "stride", "storage_offset", "dim", "numel"})
_GUARD_NODES = (
    ast.Expression,
    ast.BoolOp,
    ast.BinOp,
    ast.UnaryOp,
    ast.Compare,
    ast.IfExp,
    ast.Call,
    ast.Subscript,
    ast.Attribute,
    ast.Name,
    ast.Constant,
    ast.Tuple,
    ast.Load,
    ast.boolop,
    ast.operator,
    ast.unaryop,
    ast.cmpop,
)


def _check_guard(text: str) -> None:
    try:
        tree = ast.parse(text, mode="eval")
    except SyntaxError as exc:
        raise _Unsafe(f"the guard {text!r} does not parse") from exc
    for node in ast.walk(tree):
        if not isinstance(node, _GUARD_NODES) or not _guard_node_ok(node):
            raise _Unsafe(f"the guard {text!r} contains {ast.dump(node)[:80]}")


def _guard_node_ok(node: ast.AST) -> bool:
    if isinstance(node, ast.Name):
        return node.id in _GUARD_NAMES
    if isinstance(node, ast.Attribute):
        base = node.value.id if isinstance(node.value, ast.Name) else None
        if base == "math":
            return not node.attr.startswith("_")
        if base == "torch":
            return node.attr.lstrip("_").startswith("sym_")
        return node.attr in _TENSOR_ATTRS
    if isinstance(node, ast.Call):
        return not node.keywords
    if isinstance(node, ast.Constant):
        return isinstance(node.value, (int, float, str, bool)) or node.value is None
    return True


# The `operator` functions a graph of shapes and ops calls; the others (attrgetter,
# methodcaller, ...) could reach arbitrary attributes.
_OPERATOR_FUNCTIONS = frozenset(
    getattr(operator, name)
    for name in "getitem add sub mul truediv floordiv mod pow neg pos abs eq ne lt le gt ge "
    "and_ or_ xor not_ invert lshift rshift matmul".split()
)


def _target_ok(target: object) -> bool:
    if isinstance(target, (torch._ops.OpOverload, torch._ops.HigherOrderOperator)):
        return True
    if target in _OPERATOR_FUNCTIONS:
        return True
    name = getattr(target, "__name__", "")
    if getattr(math, name, None) is target:
        return True
    return name.lstrip("_").startswith("sym_") and getattr(torch, name, None) is target


def check_targets(program: ExportedProgram, path: Path) -> None:
    """Every function the graph calls must be an op, never an arbitrary torch attribute."""
    for module in program.graph_module.modules():
        if not isinstance(module, torch.fx.GraphModule):
            continue
        for node in module.graph.nodes:
            if node.op == "call_function" and not _target_ok(node.target):
                raise InputError(
                    f"refusing to load {path}: its graph calls {node.target!r} (node "
                    f"{node.name}), which is not an operator; fxprune.save never writes "
                    "that. Re-save the model with fxprune.save."
                )


__all__ = ["check_archive", "check_targets"]
