"""Data-set jobs: manifests and lazily decoded data sets (``manifest``), one Worker per job
kind (``workers``) and one executor with an in-process and a Ray backend
(``executor``, ``ray_backend``); ``python -m analysis.dataset`` runs jobs from the shell."""
