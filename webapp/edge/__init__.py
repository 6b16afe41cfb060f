"""The HTTP edge: blueprints, authentication, errors as JSON, the gunicorn worker class, the
rq-dashboard mount and the OpenAPI document. It imports the core, never the job path."""
