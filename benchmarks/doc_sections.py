# Copyright (c) monai_adv contributors
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at
#     http://www.apache.org/licenses/LICENSE-2.0

"""Write one benchmark's section of a Markdown document, leaving the other sections as they are."""

from __future__ import annotations

from pathlib import Path

from monai_adv.benchmark.io import write_text_atomic

__all__ = ["replace_section"]


def replace_section(doc: Path, heading: str, section: str) -> None:
    """Replace the section of ``doc`` that starts at the line ``heading`` (up to the next ``## `` heading) by
    ``section``, or append ``section`` when ``doc`` has no such heading; written atomically."""
    text = doc.read_text() if doc.exists() else ""
    start = text.find(heading + "\n")
    if start < 0:
        text = text.rstrip("\n") + ("\n\n" if text else "") + section
    else:
        end = text.find("\n## ", start + len(heading))
        text = text[:start] + section + ("\n" + text[end + 1 :] if end >= 0 else "")
        text = text if text.endswith("\n") else text + "\n"
    write_text_atomic(doc, text)
