"""Decoding text files (metadata tables, manifests, mapping files) whatever their encoding.

Kept apart from :mod:`cxrlib.data.importers.common` so that :mod:`cxrlib.data.manifest` can use it too
without an import cycle.
"""
from __future__ import annotations

import codecs
import gzip
from pathlib import Path

#: Encodings tried, in this order, on metadata text files: UTF-8 (a byte-order mark, if any, is
#: dropped), Windows-1252 (files saved on Western-European Windows: a degree sign is byte 0xB0),
#: Latin-1 (decodes any byte, so a file always decodes). A file that starts with a UTF-16
#: byte-order mark (spreadsheets' "Unicode text") is read as UTF-16.
TEXT_ENCODINGS = ("utf-8-sig", "cp1252", "latin-1")


def read_text_file(path: str | Path) -> tuple[str, str]:
    """The text of a metadata file (CSV, TSV, TXT, JSON) and the encoding that decoded it.

    ``.gz`` files are decompressed first. The encoding is the first of ``TEXT_ENCODINGS`` that
    decodes every byte, named ``utf-8`` (no byte-order mark), ``utf-8-sig`` (a BOM, left out of
    the text), ``cp1252`` or ``latin-1``; ``utf-16`` for a file with a UTF-16 BOM. Decoding
    never fails (Latin-1 maps every byte to a character); line ends are left as they are.
    """
    path = Path(path)
    data = path.read_bytes()
    if path.suffix.lower() == ".gz":
        data = gzip.decompress(data)
    if data.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        try:
            return data.decode("utf-16"), "utf-16"
        except UnicodeDecodeError:
            pass
    for encoding in TEXT_ENCODINGS:
        try:
            text = data.decode(encoding)
        except UnicodeDecodeError:
            continue
        if encoding == "utf-8-sig" and not data.startswith(codecs.BOM_UTF8):
            encoding = "utf-8"
        return text, encoding
    raise AssertionError("unreachable: latin-1 decodes any byte")
