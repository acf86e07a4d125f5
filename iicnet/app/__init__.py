"""What users touch: the ``iicnet`` command (:mod:`~iicnet.app.cli`), the Python API
(:mod:`~iicnet.app.api`, ``iicnet.load``) and ``iicnet eval``'s tables
(:mod:`~iicnet.app.evaluation`)."""
