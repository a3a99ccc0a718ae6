"""cxrlib: the helper package of cxr-study.

One module per stage of the data flow (see README.md): ``manifest`` (the schema), ``profiles``,
``synthetic`` (the embedded cohort), ``splits``, ``audit``, ``runner``; notebooks import what
they need from each. Importing ``cxrlib`` itself loads nothing heavy.
"""
__version__ = "0.1.0"
