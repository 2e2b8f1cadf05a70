"""Build of the native kernel core (ops_native._core).

Every C file under ops_native/src is compiled into one extension. SIMD translation units are
compiled with their own ISA flags (``*_avx2.c`` with -mavx2 -mfma on x86-64, ``*_neon.c`` on
aarch64), so the rest of the library stays portable and the fast path is chosen at run time.
"""

import glob
import os
import platform
from concurrent.futures import ThreadPoolExecutor

import numpy
from Cython.Build import cythonize
from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

try:
    from setuptools.modified import newer_group
except ImportError:  # setuptools < 69
    from distutils.dep_util import newer_group

MACHINE = platform.machine().lower()
HERE = os.path.dirname(os.path.abspath(__file__))
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
    """Compile every C source with its own ISA flags, all at once on every core, then link them in.

    The base class compiles one file after another; the kernel files take from seconds to half a
    minute each, so on a 2-core machine the parallel build halves the time of a fresh install.
    """

    def finalize_options(self):
        super().finalize_options()
        # one object folder for every build: `pip install -e` builds in a fresh temporary folder, which
        # would compile everything again after each install and again for `build_ext --inplace`
        self.build_temp = os.path.join(HERE, "build", "native-objects")

    def build_extension(self, ext):
        ext_path = self.get_ext_fullpath(ext.name)
        inputs = list(ext.sources) + list(ext.depends)
        if not (self.force or newer_group(inputs, ext_path, "newer")):
            return
        jobs = []
        for src in ext.sources:
            flags = next((f for sfx, f in ISA_FLAGS.items() if src.endswith(sfx)), [])
            jobs.append((src, list(ext.extra_compile_args or []) + flags))
        macros = list(ext.define_macros) + [(name,) for name in ext.undef_macros]

        def compile_one(job):
            src, flags = job
            obj = self.compiler.object_filenames([src], output_dir=self.build_temp)[0]
            if not self.force and os.path.exists(obj) and not newer_group([src] + list(ext.depends), obj, "newer"):
                return [obj]  # unchanged since the last build
            return self.compiler.compile([src], output_dir=self.build_temp, include_dirs=ext.include_dirs,
                                         macros=macros, extra_postargs=flags, depends=ext.depends)

        # the long ones first (Cython's module, then the SIMD kernels), so none starts last and runs alone
        jobs.sort(key=lambda job: (not job[0].endswith("_core.c"), len(job[1]) == len(ext.extra_compile_args or []),
                                   -os.path.getsize(job[0])))
        with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
            objects = [obj for objs in pool.map(compile_one, jobs) for obj in objs]
        self.compiler.link_shared_object(
            objects + list(ext.extra_objects or []), ext_path, libraries=self.get_libraries(ext),
            library_dirs=ext.library_dirs, runtime_library_dirs=ext.runtime_library_dirs,
            extra_postargs=ext.extra_link_args, export_symbols=self.get_export_symbols(ext),
            debug=self.debug, build_temp=self.build_temp, target_lang=self.compiler.detect_language(ext.sources))


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
