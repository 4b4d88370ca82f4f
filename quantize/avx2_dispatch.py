"""Run XNNPACK's AVX2 kernels on a CPU that has more (``ctedge bench --dispatch avx2``).

XNNPACK chooses its kernels once per process, from the instruction-set flags that the runtime's
bundled copy of cpuinfo read with CPUID. A mini-PC with AVX2 + FMA only (Intel before Ice Lake,
AMD Zen 2/3) runs the AVX2 kernels; a development machine with AVX-512 VNNI never does. This
module clears the AVX-512, AVX-VNNI and AMX flags in that cpuinfo copy before XNNPACK
initialises, so this process runs the kernels an AVX2-only CPU runs, on this CPU's cores: the
ratios between variants predict the AVX2 box, the absolute times still belong to this CPU.

It writes a private variable of the ai-edge-litert build (``cpuinfo_isa``, found in the library's
ELF symbol table). It refuses rather than guesses: a library without that symbol, a flag layout
that does not match this CPU's ``/proc/cpuinfo``, or XNNPACK already initialised in this process.
"""

from __future__ import annotations

import ctypes
import platform
import struct
from pathlib import Path

LIBRARY = "libpywrap_litert_common.so"
ISA_SIZE = 86                     # sizeof(struct cpuinfo_x86_isa) in the layout below
# Byte offsets in struct cpuinfo_x86_isa of this layout, checked against /proc/cpuinfo's flags.
LAYOUT_CHECKS = {19: "sse4_2", 22: "avx", 23: "avx_vnni", 24: "fma", 27: "f16c", 28: "avx2", 29: "avx512f",
                 34: "avx512bw", 35: "avx512vl", 41: "avx512_vnni", 61: "cx16", 63: "movbe", 67: "popcnt",
                 69: "bmi1", 70: "bmi2", 71: "adx", 72: "aes", 74: "pclmulqdq", 77: "rdrand"}
HIDDEN = (23, *range(29, 61))     # avx_vnni; avx512*, amx_*, avx_vnni_int8/16, avx10, TSX, MPX
NAMES = {**LAYOUT_CHECKS, 32: "avx512cd", 33: "avx512dq", 36: "avx512ifma", 37: "avx512vbmi", 38: "avx512_vbmi2",
         39: "avx512_bitalg", 40: "avx512_vpopcntdq", 42: "avx512_bf16", 43: "avx512_fp16"}


class DispatchError(RuntimeError):
    """The AVX2 dispatch cannot be set up in this process (the reason names what is missing)."""


def _symbols(path: Path) -> dict[str, tuple[int, int]]:
    """name -> (value, size) from an ELF64 little-endian file's .symtab."""
    data = path.read_bytes()
    if data[:4] != b"\x7fELF" or data[4] != 2 or data[5] != 1:
        raise DispatchError(f"{path}: not a 64-bit little-endian ELF file")
    shoff, = struct.unpack_from("<Q", data, 0x28)
    shentsize, shnum = struct.unpack_from("<HH", data, 0x3A)
    sections = [struct.unpack_from("<IIQQQQIIQQ", data, shoff + i * shentsize) for i in range(shnum)]
    symtab = next((s for s in sections if s[1] == 2), None)          # SHT_SYMTAB
    if symtab is None:
        raise DispatchError(f"{path}: no symbol table (a stripped build); cannot find cpuinfo_isa")
    strings = sections[symtab[6]]
    out = {}
    for at in range(symtab[4], symtab[4] + symtab[5], 24):
        name_at, _, _, _, value, size = struct.unpack_from("<IBBHQQ", data, at)
        start = strings[4] + name_at
        out[data[start:data.index(b"\0", start)].decode()] = (value, size)
    return out


def _loaded_library() -> tuple[Path, int]:
    """Path and load address of the runtime library in this process (importing the runtime if needed)."""
    from ai_edge_litert import interpreter  # noqa: F401 - loads the library

    maps = [line.split() for line in Path("/proc/self/maps").read_text().splitlines() if line.endswith(LIBRARY)]
    first = next((m for m in maps if int(m[2], 16) == 0), None)
    if first is None:
        raise DispatchError(f"{LIBRARY} is not mapped in this process")
    return Path(first[-1]), int(first[0].split("-")[0], 16)


def cpu_flags() -> set[str]:
    """This x86 CPU's flags as the kernel reports them (empty on other CPUs)."""
    line = next((x for x in Path("/proc/cpuinfo").read_text().splitlines() if x.startswith("flags")), "flags:")
    return set(line.split(":", 1)[1].split())


def dispatch_avx2() -> list[str]:
    """Hide every instruction-set extension beyond AVX2 + FMA from XNNPACK in this process; returns
    the flags hidden (empty on an AVX2-only CPU). Call before the first interpreter is created."""
    if platform.machine() not in ("x86_64", "AMD64"):
        raise DispatchError(f"AVX2 kernels exist on x86-64 only, not on this {platform.machine()} CPU")
    path, base = _loaded_library()
    symbols = _symbols(path)
    for name in ("cpuinfo_isa", "cpuinfo_initialize", "hardware_config"):
        if name not in symbols:
            raise DispatchError(f"{path}: no symbol {name}; this ai-edge-litert build is not supported")
    if symbols["cpuinfo_isa"][1] != ISA_SIZE:
        raise DispatchError(f"{path}: cpuinfo_isa is {symbols['cpuinfo_isa'][1]} bytes, not {ISA_SIZE}: unknown layout")
    config_at, config_size = symbols["hardware_config"]
    if any((ctypes.c_uint8 * config_size).from_address(base + config_at)):
        raise DispatchError("XNNPACK is already initialised in this process: dispatch before loading any model")
    if not ctypes.CFUNCTYPE(ctypes.c_bool)(base + symbols["cpuinfo_initialize"][0])():
        raise DispatchError("cpuinfo_initialize failed")
    isa = (ctypes.c_uint8 * ISA_SIZE).from_address(base + symbols["cpuinfo_isa"][0])
    flags = cpu_flags()
    wrong = [name for at, name in LAYOUT_CHECKS.items() if bool(isa[at]) != (name in flags)]
    if wrong:
        raise DispatchError(f"{path}: cpuinfo_isa does not match /proc/cpuinfo at {', '.join(wrong)}: unknown layout")
    if not (isa[28] and isa[24]):
        raise DispatchError("this CPU has no AVX2 + FMA: there are no AVX2 kernels to run")
    hidden = [NAMES.get(at, f"cpuinfo_isa byte {at}") for at in HIDDEN if isa[at]]
    for at in HIDDEN:
        isa[at] = 0
    return hidden


def xnnpack_config() -> bytes:
    """XNNPACK's hardware configuration in this process (all zero before it initialises)."""
    path, base = _loaded_library()
    at, size = _symbols(path)["hardware_config"]
    return bytes((ctypes.c_uint8 * size).from_address(base + at))
