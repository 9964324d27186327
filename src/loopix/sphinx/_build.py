"""cffi build script (API mode, out-of-line) for the C core in csrc/.

`pip install` runs it through setup.py's cffi_modules. LOOPIX_CFLAGS / LOOPIX_LDFLAGS add flags, e.g. the
sanitizer build of scripts/sanitize.
"""

import os
import re
import shlex
from pathlib import Path

from cffi import FFI

ROOT = Path(__file__).resolve().parents[3]
# setuptools wants sources relative to setup.py, which is where pip runs this script from.
CSRC = Path(os.path.relpath(ROOT / "csrc", Path.cwd()))

HEADERS = ("sphinx.h", "x25519.h", "csprng.h", "plan.h", "ringscan.h", "pacer.h", "node.h")  # in include order
_COMMENT = re.compile(r"/\*.*?\*/|//[^\n]*", re.S)
_DEFINE = re.compile(r"#\s*define\s+(LX_\w+)\s+\(?(-?(?:0x[0-9a-fA-F]+|\d+))[uUlL]*\)?\s*$")
# what the Python side calls in libsodium directly (sodium.h is not ours to parse)
SODIUM = """
    int crypto_scalarmult(unsigned char *q, const unsigned char *n, const unsigned char *p);
    int crypto_scalarmult_base(unsigned char *q, const unsigned char *n);
    void randombytes_buf(void * const buf, const size_t size);
"""


def declarations(csrc: Path = ROOT / "csrc") -> str:
    """What cffi declares: the headers themselves (one home for every type, function and constant),
    without comments and with their preprocessor lines reduced to the integer constants."""
    out = []
    for name in HEADERS:
        for line in _COMMENT.sub("", (csrc / name).read_text()).splitlines():
            if line.lstrip().startswith("#"):
                m = _DEFINE.match(line.strip())
                if m:
                    out.append(f"#define {m[1]} {int(m[2], 0)}")
                continue
            out.append(line)
    return "\n".join(out) + SODIUM


ffibuilder = FFI()
ffibuilder.cdef(declarations())
ffibuilder.set_source(
    "loopix.sphinx._sphinx_c",
    "".join(f'#include "{h}"\n' for h in HEADERS) + "#include <sodium.h>\n",
    sources=[str(CSRC / h.replace(".h", ".c")) for h in HEADERS],
    include_dirs=[str(CSRC)],
    libraries=["sodium", "crypto", "pthread", "m"],
    # -O3: the field arithmetic in x25519.c needs its loops unrolled (see the note there)
    extra_compile_args=["-O3", "-std=gnu11", "-Wall", "-Wextra", *shlex.split(os.environ.get("LOOPIX_CFLAGS", ""))],
    extra_link_args=shlex.split(os.environ.get("LOOPIX_LDFLAGS", "")),
)

if __name__ == "__main__":
    ffibuilder.compile(tmpdir=str(ROOT / "build" / "cffi"), verbose=True)
