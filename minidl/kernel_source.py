"""What a kernel source says about itself, read from its text: below both the loader
(``minidl/cuda.py``) and the emulator (``minidl/emulator.py``), which compile what this finds.

Each ``kernels/<file>.cu`` holds ``template <typename T> __global__ void name(...)`` kernels and
may name the element types they are instantiated for on a ``// minidl-types: ...`` line
(``kernels/common.cuh``); a file without one is compiled for float and double.
"""

from __future__ import annotations

import re

# The C element types a kernel may be instantiated for, with the dtype each one stores. A file's
# types are checked against these names, never against what this process can make: without
# ml_dtypes (bfloat16) installed, a file that also lists __nv_bfloat16 still serves float32.
CTYPE_NAMES = {
    "float": "float32",
    "double": "float64",
    "__half": "float16",
    "__nv_bfloat16": "bfloat16",
}
DEFAULT_TYPES = ("float", "double")  # a .cu file without a "// minidl-types:" line


def kernel_names(source: str) -> list[str]:
    """The templated ``__global__`` kernels a source defines."""
    return re.findall(r"template\s*<\s*typename\s+T\s*>\s*__global__\s+void\s+(\w+)", source)


def kernel_parameters(source: str) -> dict[str, list[str]]:
    """Each templated kernel's parameter list, as written: {"name": ["const T* x", ...]}."""
    found = re.findall(
        r"template\s*<\s*typename\s+T\s*>\s*__global__\s+void\s+(\w+)\s*\(([^)]*)\)", source
    )
    return {name: [" ".join(p.split()) for p in params.split(",") if p.strip()]
            for name, params in found}  # fmt: skip


def parameter_type(parameter: str) -> tuple[str, bool]:
    """A parameter's base C type and whether it is a pointer: "const T* x" -> ("T", True),
    "acc_t<T> alpha" -> ("acc_t<T>", False), "long long n" -> ("long long", False)."""
    words = parameter.replace("*", " * ").split()[:-1]  # the last word is the name
    base = " ".join(w for w in words if w not in ("const", "*", "__restrict__"))
    return base, "*" in words


def kernel_types(source: str) -> tuple[str, ...]:
    """The element types a file's kernels are instantiated for: its ``// minidl-types: ...`` line
    (see kernels/common.cuh), or float and double for a file that has none."""
    found = re.search(r"^// minidl-types:(.*)$", source, re.MULTILINE)
    if found is None:
        return DEFAULT_TYPES
    types = tuple(found.group(1).split())
    unknown = set(types) - set(CTYPE_NAMES)
    if unknown:
        raise ValueError(f"minidl-types: unknown {sorted(unknown)}; known: {list(CTYPE_NAMES)}")
    return types


def name_expressions(source: str) -> list[str]:
    types = kernel_types(source)
    return [f"{name}<{ctype}>" for name in kernel_names(source) for ctype in types]
