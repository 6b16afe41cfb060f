"""The shared core: configuration, the database and its models, the job protocol, workflows,
schedules, storage, embeddings and the services the edge and the job path share. It imports
neither the HTTP edge (``webapp.edge``), the command line, the local run tools nor the job path
(``jobs``): ``.importlinter`` holds this."""
