"""Build of the native kernel core (ops_native._core).

Every C file under ops_native/src is compiled into one extension. SIMD translation units are
compiled with their own ISA flags (``*_avx2.c`` with -mavx2 -mfma on x86-64, ``*_neon.c`` on
aarch64), so the rest of the library stays portable and the fast path is chosen at run time.
"""

import glob
import platform

import numpy
from Cython.Build import cythonize
from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

MACHINE = platform.machine().lower()
IS_X86 = MACHINE in ("x86_64", "amd64")
IS_ARM64 = MACHINE in ("aarch64", "arm64")

# Flags per ISA-specific translation unit, keyed by file-name suffix.
ISA_FLAGS = {"_avx2.c": ["-mavx2", "-mfma", "-mf16c"], "_avx512.c": ["-mavx512f", "-mavx2", "-mfma", "-mf16c"],
             "_neon.c": []}
BASE_CFLAGS = ["-O3", "-std=c11", "-Wall", "-Wextra", "-Wno-unused-parameter", "-fno-math-errno", "-pthread"]


def native_sources():
    sources = sorted(glob.glob("ops_native/src/*.c"))
    if IS_X86:
        sources += sorted(glob.glob("ops_native/src/x86/*.c"))
    if IS_ARM64:
        sources += sorted(glob.glob("ops_native/src/arm/*.c"))
    return sources


class BuildExtPerFileFlags(build_ext):
    """Compile ISA-specific sources separately with their own flags, then link them in."""

    def build_extension(self, ext):
        plain, special = [], []
        for src in ext.sources:
            flags = next((f for sfx, f in ISA_FLAGS.items() if src.endswith(sfx)), None)
            (plain if flags is None else special).append((src, flags))
        objects = []
        for src, flags in special:
            objects += self.compiler.compile(
                [src],
                output_dir=self.build_temp,
                include_dirs=ext.include_dirs,
                macros=ext.define_macros,
                extra_postargs=BASE_CFLAGS + flags,
                depends=ext.depends,
            )
        ext.sources = [s for s, _ in plain]
        ext.extra_objects = list(ext.extra_objects or []) + objects
        # the base class relinks only when a source or dependency is newer than the extension; without
        # this an edit to an ISA-specific file alone would be compiled and then never linked in
        ext.depends = list(ext.depends) + [s for s, _ in special]
        super().build_extension(ext)


core = Extension(
    "ops_native._core",
    sources=["ops_native/_core.pyx"] + native_sources(),
    include_dirs=["ops_native/include", "ops_native/src", numpy.get_include()],
    define_macros=[("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION")],
    extra_compile_args=BASE_CFLAGS,
    extra_link_args=["-pthread", "-lm"],
    depends=glob.glob("ops_native/include/*.h") + glob.glob("ops_native/src/*.h") + glob.glob("ops_native/src/*/*.h")
    + glob.glob("ops_native/*.pxi"),
)

setup(
    ext_modules=cythonize(
        [core],
        compiler_directives={"language_level": "3", "boundscheck": False, "wraparound": False, "cdivision": True},
        include_path=["ops_native"],
    ),
    cmdclass={"build_ext": BuildExtPerFileFlags},
)
