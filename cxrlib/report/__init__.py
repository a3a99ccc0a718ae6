"""What reviewers read: tables and figures beside the papers' numbers (``cv_report``, reading
:mod:`cxrlib.paper_tables`), the run's landing page (``landing``), reporting checklists and model
cards (``checklist``, ``model_cards``), provenance (``provenance``), the comparison of two runs
(``compare``) and notebook widgets (``widgets``)."""
