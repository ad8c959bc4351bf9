"""Writes the synchronous client (``src/creditd/_sync_client.py``) from the asynchronous one
(``src/creditd/_async_client.py``): one source for both, as httpcore does it.

    python scripts/unasync.py          # rewrite the file
    python scripts/unasync.py --check  # exit 1 if it is out of date
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "src" / "creditd"
SOURCE = PACKAGE / "_async_client.py"
TARGET = PACKAGE / "_sync_client.py"

# Whole words, in order.
REPLACEMENTS = [
    (r"\basync def\b", "def"),
    (r"\basync with\b", "with"),
    (r"\basync for\b", "for"),
    (r"\bawait ", ""),
    (r"\b__aenter__\b", "__enter__"),
    (r"\b__aexit__\b", "__exit__"),
    (r"\baclose\b", "close"),
    (r"\baread\b", "read"),
    (r"\baiter_lines\b", "iter_lines"),
    (r"^from \._compat import asleep$", "from time import sleep"),
    (r"\basleep\(", "sleep("),
    (r"\b_Async(?=[A-Z])", "_"),
    (r"\bAsync(?=[A-Z])", ""),
]

HEADER = '''"""The synchronous client, :class:`Creditd`.

Generated from ``_async_client.py`` by ``scripts/unasync.py``: do not edit; edit the
asynchronous client and run ``python scripts/unasync.py``.
"""
'''


def generate() -> str:
    text = SOURCE.read_text(encoding="utf-8")
    # Replace the module docstring.
    end = text.index('"""', 3) + 3
    body = text[end:]
    for pattern, replacement in REPLACEMENTS:
        body = re.sub(pattern, replacement, body, flags=re.MULTILINE)
    return HEADER + body


def main() -> int:
    generated = generate()
    if "--check" in sys.argv[1:]:
        current = TARGET.read_text(encoding="utf-8") if TARGET.exists() else ""
        if current != generated:
            print(f"{TARGET} is out of date: run python scripts/unasync.py", file=sys.stderr)
            return 1
        return 0
    TARGET.write_text(generated, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
