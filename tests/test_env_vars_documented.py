"""Every environment variable the library reads is PYHYPERSPHERE_-prefixed and in the
README's table (issue 27: no hidden knobs)."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SOURCES = [p for p in [*(ROOT / "pyhypersphere").rglob("*.py"), *(ROOT / "csrc").rglob("*")]
           if p.suffix in (".py", ".cpp", ".h", ".cu", ".cuh") and "tests" not in p.relative_to(ROOT).parts]  # fmt: skip
READ = re.compile(r"""(?:getenv|environ(?:\.get)?|environ\[)\s*\(?\s*["']([A-Z][A-Z0-9_]*)["']""")
# Read by the library but owned by other tools: torch.distributed's launcher, XDG, Triton.
FOREIGN = {"LOCAL_RANK", "LOCAL_WORLD_SIZE", "WORLD_SIZE", "RANK", "XDG_CACHE_HOME", "TRITON_DEFAULT_FP_FUSION",
           "TRITON_INTERPRET"}


def variables_read():
    found = {}
    for path in SOURCES:
        for name in READ.findall(path.read_text(errors="replace")):
            found.setdefault(name, path.relative_to(ROOT))
    return found


def test_every_variable_is_prefixed_and_documented():
    readme = (ROOT / "README.md").read_text()
    found = variables_read()
    assert "PYHYPERSPHERE_CPU_ISA" in found  # the scan sees C++ reads
    own = {name: where for name, where in found.items() if name not in FOREIGN}
    unprefixed = {name: str(where) for name, where in own.items() if not name.startswith("PYHYPERSPHERE_")}
    assert not unprefixed, f"variables read without the PYHYPERSPHERE_ prefix: {unprefixed}"
    undocumented = {name: str(where) for name, where in own.items() if f"`{name}" not in readme}
    assert not undocumented, f"variables missing from the README's table: {undocumented}"
